// The only file that sees torch: binds the torch-free kernels to torch.ops.edgetam_cpu.* on the
// CPU dispatch key through the LibTorch stable ABI (built with TORCH_TARGET_VERSION = 2.10, so
// one binary serves torch 2.10 and later), and runs them on torch's intra-op thread pool.
#include <Python.h>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "dispatch.h"

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

namespace {

void torch_run(void*, int64_t n, void* ctx, void (*body)(void*, int64_t, int64_t)) {
  torch::stable::parallel_for(0, n, 1, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

edgetam_cpu::Parallel torch_pool() {
  edgetam_cpu::Parallel p;
  p.run = &torch_run;
  p.self = nullptr;
  p.threads = int(torch::stable::get_num_threads());
  return p;
}

int dtype_code(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case ScalarType::Float: return edgetam_cpu::kF32;
    case ScalarType::BFloat16: return edgetam_cpu::kBF16;
    case ScalarType::Half: return edgetam_cpu::kF16;
    default: STD_TORCH_CHECK(false, name, " must be float32, bfloat16 or float16");
  }
  return -1;
}

void check_input(const Tensor& t, const char* name, int64_t dim, int dtype) {
  STD_TORCH_CHECK(t.is_cpu(), name, " must be a CPU tensor");
  STD_TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions");
  STD_TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  STD_TORCH_CHECK(dtype_code(t, name) == dtype, name, " must have q's dtype");
}

Tensor rope_attention(Tensor q, Tensor k, Tensor v, int64_t q_h, int64_t q_w, int64_t k_h,
                      int64_t k_w, int64_t k_repeat, int64_t num_k_exclude_rope, double theta,
                      double scale, int64_t compute) {
  const int dt = dtype_code(q, "q");
  check_input(q, "q", 4, dt);
  check_input(k, "k", 4, dt);
  check_input(v, "v", 4, dt);
  edgetam_cpu::RopeAttnArgs a{};
  a.B = q.size(0);
  a.H = q.size(1);
  a.Nq = q.size(2);
  a.D = q.size(3);
  a.Nk = k.size(2);
  a.Dv = v.size(3);
  STD_TORCH_CHECK(k.size(0) == a.B && v.size(0) == a.B && k.size(1) == a.H && v.size(1) == a.H,
                  "q, k, v batch and head counts differ");
  STD_TORCH_CHECK(k.size(3) == a.D && v.size(2) == a.Nk, "k / v shapes do not match q");
  STD_TORCH_CHECK(a.D > 0 && a.D % 4 == 0, "head dim must be a positive multiple of 4");
  STD_TORCH_CHECK(a.Nk > 0 && a.Dv > 0, "k and v must not be empty");
  STD_TORCH_CHECK(q_h * q_w == a.Nq && q_w > 0, "q grid does not match q's length");
  STD_TORCH_CHECK(num_k_exclude_rope >= 0 && num_k_exclude_rope <= a.Nk, "bad num_k_exclude_rope");
  STD_TORCH_CHECK(compute >= 0 && compute <= 2, "compute must be 0 (fp32), 1 (bf16) or 2 (fp16)");
  const int64_t n_rope = a.Nk - num_k_exclude_rope;
  if (n_rope > 0) {
    STD_TORCH_CHECK(k_repeat >= 1 && n_rope % k_repeat == 0, "bad k_repeat");
    STD_TORCH_CHECK(k_w > 0 && k_h > 0 && k_h * k_w <= n_rope / k_repeat, "bad k grid");
  }
  Tensor out = torch::stable::new_empty(q, {a.B, a.H, a.Nq, a.Dv});
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.out = out.mutable_data_ptr();
  a.dtype = dt;
  a.compute = int(compute);
  a.q_w = q_w;
  a.k_w = k_w;
  a.k_nrope = n_rope;
  a.k_frame = n_rope > 0 ? n_rope / k_repeat : 1;
  a.k_nrot = k_h * k_w;
  a.scale = float(scale);
  edgetam_cpu::rope_attention(a, q_h, k_h, theta, torch_pool());
  return out;
}

int64_t get_isa() { return edgetam_cpu::current_isa(); }
int64_t best_isa() { return edgetam_cpu::best_isa(); }
bool isa_supported(int64_t isa) { return edgetam_cpu::isa_supported(int(isa)); }
bool set_isa(int64_t isa) { return edgetam_cpu::set_isa(int(isa)); }

}  // namespace

STABLE_TORCH_LIBRARY(edgetam_cpu, m) {
  m.def("rope_attention(Tensor q, Tensor k, Tensor v, int q_h, int q_w, int k_h, int k_w, "
        "int k_repeat, int num_k_exclude_rope, float theta, float scale, int compute) -> Tensor");
  m.def("get_isa() -> int");
  m.def("best_isa() -> int");
  m.def("isa_supported(int isa) -> bool");
  m.def("set_isa(int isa) -> bool");
}

STABLE_TORCH_LIBRARY_IMPL(edgetam_cpu, CPU, m) {
  m.impl("rope_attention", TORCH_BOX(&rope_attention));
}

STABLE_TORCH_LIBRARY_IMPL(edgetam_cpu, CompositeExplicitAutograd, m) {
  m.impl("get_isa", TORCH_BOX(&get_isa));
  m.impl("best_isa", TORCH_BOX(&best_isa));
  m.impl("isa_supported", TORCH_BOX(&isa_supported));
  m.impl("set_isa", TORCH_BOX(&set_isa));
}

// `import edgetam_kernels._C` loads this library (and with it the registrations above). The
// module has no Python functions: everything goes through torch.ops.edgetam_cpu.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                   nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
