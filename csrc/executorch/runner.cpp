// edgetam_runner: runs a .pte's `forward` from raw files, no libtorch. Linked with ExecuTorch's
// runtime, its optimized CPU kernels, the XNNPACK delegate and our edgetam kernels.
//
//   edgetam_runner PROGRAM.pte IN_DIR OUT_DIR [--steps T] [--feedback F]
//
// IN_DIR/input_<i>.bin holds input i as raw bytes (shape and dtype as the program says). Input 0
// may hold T stacked values (the frames of a clip): step t reads the t-th. With --feedback F the
// program is a recurrent step, `step(x, *state) -> (y_0 .. y_{F-1}, *new_state)`: after each step
// outputs F.. are copied into inputs 1.. (the tracker: F = 2, mask logits and scores). Each
// step's outputs 0..F-1 (all outputs without --feedback) are appended to OUT_DIR/output_<j>.bin;
// per-step wall time goes to stdout.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

using executorch::extension::from_blob;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

extern "C" const char* edgetam_executorch_isa();  // libedgetam_executorch

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "edgetam_runner: %s\n", msg.c_str());
  return 1;
}

bool read_file(const std::string& path, std::vector<char>& data) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return false;
  data.resize(size_t(f.tellg()));
  f.seekg(0);
  return bool(f.read(data.data(), std::streamsize(data.size())));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    return fail("usage: edgetam_runner PROGRAM.pte IN_DIR OUT_DIR [--steps T] [--feedback F]");
  }
  const std::string pte = argv[1], in_dir = argv[2], out_dir = argv[3];
  long steps = 1, feedback = -1;
  for (int i = 4; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atol(argv[i + 1]);
    else if (std::strcmp(argv[i], "--feedback") == 0) feedback = std::atol(argv[i + 1]);
    else return fail(std::string("unknown option ") + argv[i]);
  }
  if (steps < 1) return fail("--steps must be >= 1");

  Module module(pte, Module::LoadMode::Mmap);
  const auto meta = module.method_meta("forward");
  if (!meta.ok()) return fail("cannot load " + pte + " (error " + std::to_string(int(meta.error())) + ")");
  const size_t n_in = meta->num_inputs(), n_out = meta->num_outputs();
  if (feedback >= 0 && (feedback > long(n_out) || n_out - size_t(feedback) != n_in - 1)) {
    return fail("--feedback " + std::to_string(feedback) + ": the program has " +
                std::to_string(n_in) + " inputs and " + std::to_string(n_out) +
                " outputs, so outputs F.. cannot be inputs 1..");
  }

  // Inputs: raw files, checked against the program's sizes.
  std::vector<std::vector<char>> data(n_in);
  std::vector<TensorPtr> inputs;
  std::vector<size_t> nbytes(n_in);
  for (size_t i = 0; i < n_in; ++i) {
    const auto info = meta->input_tensor_meta(i);
    if (!info.ok()) return fail("input " + std::to_string(i) + " is not a tensor");
    nbytes[i] = info->nbytes();
    const std::string path = in_dir + "/input_" + std::to_string(i) + ".bin";
    if (!read_file(path, data[i])) return fail("cannot read " + path);
    const size_t want = nbytes[i] * (i == 0 ? size_t(steps) : 1);
    if (data[i].size() != want) {
      return fail(path + " holds " + std::to_string(data[i].size()) + " bytes, the program wants " +
                  std::to_string(want) + (i == 0 ? " (input 0 times --steps)" : ""));
    }
    std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
    inputs.push_back(from_blob(data[i].data(), sizes, info->scalar_type()));
  }

  std::vector<std::ofstream> outs(feedback >= 0 ? size_t(feedback) : n_out);
  for (size_t j = 0; j < outs.size(); ++j) {
    const std::string path = out_dir + "/output_" + std::to_string(j) + ".bin";
    outs[j].open(path, std::ios::binary | std::ios::trunc);
    if (!outs[j]) return fail("cannot write " + path);
  }

  std::printf("edgetam kernels: %s path\n", edgetam_executorch_isa());
  double total_ms = 0, first_ms = 0;
  for (long t = 0; t < steps; ++t) {
    std::vector<EValue> args;
    for (size_t i = 0; i < n_in; ++i) {
      if (i == 0) {  // frame t of input 0, without a copy
        const auto info = meta->input_tensor_meta(0);
        std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
        inputs[0] = from_blob(data[0].data() + size_t(t) * nbytes[0], sizes, info->scalar_type());
      }
      args.emplace_back(inputs[i]);
    }
    const auto start = std::chrono::steady_clock::now();
    const auto result = module.execute("forward", args);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!result.ok()) return fail("step " + std::to_string(t) + " failed (error " + std::to_string(int(result.error())) + ")");
    const auto& values = *result;
    for (size_t j = 0; j < outs.size(); ++j) {
      const auto& y = values[j].toTensor();
      outs[j].write(static_cast<const char*>(y.const_data_ptr()), std::streamsize(y.nbytes()));
    }
    if (feedback >= 0) {
      for (size_t i = 1; i < n_in; ++i) {
        const auto& s = values[size_t(feedback) + i - 1].toTensor();
        if (s.nbytes() != nbytes[i]) return fail("output " + std::to_string(feedback + i - 1) + " does not fit input " + std::to_string(i));
        std::memcpy(data[i].data(), s.const_data_ptr(), nbytes[i]);
      }
    }
    std::printf("step %ld: %.2f ms\n", t, ms);
    if (t == 0) first_ms = ms;
    total_ms += ms;
  }
  if (steps > 1) {
    std::printf("steps: %ld, first %.2f ms, mean of the rest %.2f ms\n", steps, first_ms,
                (total_ms - first_ms) / double(steps - 1));
  }
  return 0;
}
