// ExecuTorch kernels for the edgetam::*.out operators of an exported program (.pte): thin
// wrappers that check the arguments and call the same torch-free kernels as the torch extension
// (dispatch.h: scalar / AVX2 / AVX-512 / AMX on x86-64, NEON / fp16 / bf16 on aarch64, chosen at
// run time). Work is spread over ExecuTorch's thread pool (the one XNNPACK uses).
//
// Argument lists follow the out-variant schemas in edgetam_kernels/ops.py exactly (ExecuTorch
// unboxes the program's values by position). `backend` is accepted and ignored: in a program
// these kernels are the only implementation.
//
// EDGETAM_KERNELS_CPU_ISA (e.g. "scalar", "avx2", "neon") forces an ISA path, read once when the
// library is loaded, as the torch extension does.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include "../dispatch.h"
#include "../work_queue.h"
#include "../simd/convert.h"

namespace {

using executorch::aten::ArrayRef;
using executorch::aten::IntArrayRef;
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;
using OptTensor = std::optional<Tensor>;

// Fails the op with a message naming what is wrong (ExecuTorch logs it; the method returns
// InvalidArgument) and returns `out` untouched.
#define EDGETAM_CHECK(cond, ...) \
  ET_KERNEL_CHECK_MSG(ctx, cond, InvalidArgument, out, __VA_ARGS__)

void et_run(void*, int64_t n, void* ctx, void (*body)(void*, int64_t, int64_t)) {
  edgetam_cpu::hand_out(n, int64_t(executorch::extension::get_thread_count()), ctx, body,
                        [](int64_t workers, const auto& worker) {
                          executorch::extension::parallel_for(0, workers, 1, worker);
                        });
}

edgetam_cpu::Parallel et_pool() {
  edgetam_cpu::Parallel p;
  p.run = &et_run;
  p.self = nullptr;
  p.threads = int(executorch::extension::get_thread_count());
  return p;
}

int dtype_code(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return edgetam_cpu::kF32;
    case ScalarType::BFloat16: return edgetam_cpu::kBF16;
    case ScalarType::Half: return edgetam_cpu::kF16;
    default: return -1;
  }
}

// The perceiver kernels compute in fp32. bf16 / fp16 tensors (a model exported in that dtype)
// are converted on the way in and out, as the torch CPU backend does (edgetam_kernels/cpu).
bool is_float(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype && dtype_code(dtype) >= 0 &&
         executorch::runtime::tensor_is_contiguous(t);
}

class Fp32 {
 public:
  const float* in(const Tensor& t) {
    if (t.scalar_type() == ScalarType::Float) return t.const_data_ptr<float>();
    const auto* src = static_cast<const uint16_t*>(t.const_data_ptr());
    bufs_.emplace_back(size_t(t.numel()));
    float* dst = bufs_.back().data();
    const bool bf16 = t.scalar_type() == ScalarType::BFloat16;
    for (ssize_t i = 0; i < t.numel(); ++i) dst[i] = bf16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]);
    return dst;
  }
  // Where the kernel writes: out itself when fp32, else a buffer that finish() converts back.
  float* out(Tensor& t) {
    if (t.scalar_type() == ScalarType::Float) return t.mutable_data_ptr<float>();
    out_buf_.assign(size_t(t.numel()), 0.f);
    return out_buf_.data();
  }
  void finish(Tensor& t) {
    if (t.scalar_type() == ScalarType::Float) return;
    auto* dst = static_cast<uint16_t*>(t.mutable_data_ptr());
    const bool bf16 = t.scalar_type() == ScalarType::BFloat16;
    for (ssize_t i = 0; i < t.numel(); ++i)
      dst[i] = bf16 ? f32_to_bf16(out_buf_[size_t(i)]) : f32_to_f16(out_buf_[size_t(i)]);
  }

 private:
  std::vector<std::vector<float>> bufs_;  // moving the outer vector keeps each buffer in place
  std::vector<float> out_buf_;
};

bool sizes_are(const Tensor& t, std::initializer_list<int64_t> s) {
  if (t.dim() != int64_t(s.size())) return false;
  int d = 0;
  for (int64_t v : s)
    if (t.size(d++) != v) return false;
  return true;
}

Tensor& rope_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k,
                           const Tensor& v, IntArrayRef q_grid, IntArrayRef k_grid,
                           int64_t k_repeat, int64_t num_k_exclude_rope, double theta,
                           double scale, std::optional<ScalarType> compute_dtype,
                           OptTensor key_mask, std::string_view /*backend*/, Tensor& out) {
  const int dt = dtype_code(q.scalar_type());
  EDGETAM_CHECK(dt >= 0, "rope_attention: q must be float32, bfloat16 or float16");
  for (const Tensor* t : {&q, &k, &v}) {
    EDGETAM_CHECK(t->dim() == 4 && t->scalar_type() == q.scalar_type() &&
                      executorch::runtime::tensor_is_contiguous(*t),
                  "rope_attention: q, k, v must be contiguous (B, H, N, D) tensors of one dtype");
  }
  edgetam_cpu::RopeAttnArgs a{};
  a.B = q.size(0);
  a.H = q.size(1);
  a.Nq = q.size(2);
  a.D = q.size(3);
  a.Nk = k.size(2);
  a.Dv = v.size(3);
  EDGETAM_CHECK(k.size(0) == a.B && v.size(0) == a.B && k.size(1) == a.H && v.size(1) == a.H,
                "rope_attention: q, k, v batch and head counts differ");
  EDGETAM_CHECK(k.size(3) == a.D && v.size(2) == a.Nk, "rope_attention: k / v shapes do not match q");
  EDGETAM_CHECK(a.D > 0 && a.D % 4 == 0, "rope_attention: head dim must be a positive multiple of 4");
  EDGETAM_CHECK(a.Nq > 0 && a.Nk > 0 && a.Dv > 0, "rope_attention: q, k and v must not be empty");
  EDGETAM_CHECK(q_grid.size() == 2 && k_grid.size() == 2, "rope_attention: grids must be (rows, cols)");
  const int64_t q_h = q_grid[0], q_w = q_grid[1], k_h = k_grid[0], k_w = k_grid[1];
  EDGETAM_CHECK(q_w > 0 && q_h * q_w == a.Nq, "rope_attention: q_grid does not match q's length");
  EDGETAM_CHECK(num_k_exclude_rope >= 0 && num_k_exclude_rope <= a.Nk,
                "rope_attention: bad num_k_exclude_rope");
  const int64_t n_rope = a.Nk - num_k_exclude_rope;
  if (n_rope > 0) {
    EDGETAM_CHECK(k_repeat >= 1 && n_rope % k_repeat == 0, "rope_attention: bad k_repeat");
    EDGETAM_CHECK(k_w > 0 && k_h > 0 && k_h * k_w <= n_rope / k_repeat, "rope_attention: bad k_grid");
  }
  const ScalarType cd = compute_dtype.has_value() ? *compute_dtype : q.scalar_type();
  const int compute = dtype_code(cd);
  EDGETAM_CHECK(compute >= 0, "rope_attention: compute_dtype must be float32, bfloat16 or float16");
  if (key_mask.has_value()) {
    const Tensor& m = *key_mask;
    EDGETAM_CHECK(m.scalar_type() == ScalarType::Bool && m.dim() == 2 &&
                      (m.size(0) == 1 || m.size(0) == a.B) && m.size(1) == a.Nk &&
                      executorch::runtime::tensor_is_contiguous(m),
                  "rope_attention: key_mask must be a contiguous bool (B or 1, Nk) tensor");
    a.key_mask = reinterpret_cast<const uint8_t*>(m.const_data_ptr<bool>());
    a.key_mask_bstride = m.size(0) == 1 ? 0 : a.Nk;
  }
  const executorch::aten::SizesType out_sizes[4] = {
      executorch::aten::SizesType(a.B), executorch::aten::SizesType(a.H),
      executorch::aten::SizesType(a.Nq), executorch::aten::SizesType(a.Dv)};
  EDGETAM_CHECK(executorch::runtime::resize_tensor(out, {out_sizes, 4}) == Error::Ok &&
                    out.scalar_type() == q.scalar_type(),
                "rope_attention: out must be resizable to (B, H, Nq, Dv) with q's dtype");
  a.q = q.const_data_ptr();
  a.k = k.const_data_ptr();
  a.v = v.const_data_ptr();
  a.out = out.mutable_data_ptr();
  a.dtype = dt;
  a.compute = compute;
  a.q_w = q_w;
  a.k_w = k_w;
  a.k_nrope = n_rope;
  a.k_frame = n_rope > 0 ? n_rope / k_repeat : 1;
  a.k_nrot = k_h * k_w;
  a.scale = float(scale);
  edgetam_cpu::rope_attention(a, q_h, k_h, theta, et_pool());
  return out;
}

Tensor& perceiver_attention_out(KernelRuntimeContext& ctx, const Tensor& latents, const Tensor& x,
                                OptTensor pos, const Tensor& ln_latents_w,
                                const Tensor& ln_latents_b, const Tensor& ln_x_w,
                                const Tensor& ln_x_b, const Tensor& w_q, const Tensor& w_kv,
                                const Tensor& w_out, int64_t heads, double eps,
                                std::string_view /*backend*/, Tensor& out) {
  const ScalarType dt = latents.scalar_type();
  for (const Tensor* t : {&latents, &x, &ln_latents_w, &ln_latents_b, &ln_x_w, &ln_x_b, &w_q,
                          &w_kv, &w_out, static_cast<const Tensor*>(&out)}) {
    EDGETAM_CHECK(is_float(*t, dt), "perceiver_attention: every tensor must be contiguous, of "
                                    "latents' dtype (float32, bfloat16 or float16)");
  }
  EDGETAM_CHECK(latents.dim() == 3 && x.dim() == 3, "perceiver_attention: latents and x must be 3-D");
  edgetam_cpu::PerceiverAttnArgs a{};
  Fp32 f32;
  a.B = latents.size(0);
  a.L = latents.size(1);
  a.C = latents.size(2);
  a.N = x.size(1);
  EDGETAM_CHECK(x.size(0) == a.B && x.size(2) == a.C, "perceiver_attention: x must be (B, N, C) like latents");
  EDGETAM_CHECK(a.L > 0 && a.C > 0 && a.N > 0, "perceiver_attention: latents and x must not be empty");
  a.inner = w_q.dim() == 2 ? w_q.size(0) : 0;
  EDGETAM_CHECK(a.inner > 0 && sizes_are(w_q, {a.inner, a.C}), "perceiver_attention: w_q must be (inner, C)");
  EDGETAM_CHECK(sizes_are(w_kv, {2 * a.inner, a.C}), "perceiver_attention: w_kv must be (2 * inner, C)");
  EDGETAM_CHECK(sizes_are(w_out, {a.C, a.inner}), "perceiver_attention: w_out must be (C, inner)");
  EDGETAM_CHECK(heads >= 1 && a.inner % heads == 0, "perceiver_attention: heads must divide the inner dim");
  for (const Tensor* t : {&ln_latents_w, &ln_latents_b, &ln_x_w, &ln_x_b})
    EDGETAM_CHECK(sizes_are(*t, {a.C}), "perceiver_attention: LayerNorm weights must be (C,)");
  if (pos.has_value()) {
    const Tensor& p = *pos;
    EDGETAM_CHECK(is_float(p, dt) && p.dim() == 3 && (p.size(0) == 1 || p.size(0) == a.B) &&
                      p.size(1) == a.N && p.size(2) == a.inner,
                  "perceiver_attention: pos must be contiguous (B or 1, N, inner) of latents' dtype");
    a.pos = f32.in(p);
    a.pos_bstride = p.size(0) == 1 ? 0 : a.N * a.inner;
  }
  EDGETAM_CHECK(eps > 0, "perceiver_attention: eps must be positive");
  EDGETAM_CHECK(executorch::runtime::resize_tensor(out, latents.sizes()) == Error::Ok,
                "perceiver_attention: out must be resizable to latents' shape");
  a.latents = f32.in(latents);
  a.x = f32.in(x);
  a.ln_lat_w = f32.in(ln_latents_w);
  a.ln_lat_b = f32.in(ln_latents_b);
  a.ln_x_w = f32.in(ln_x_w);
  a.ln_x_b = f32.in(ln_x_b);
  a.w_q = f32.in(w_q);
  a.w_kv = f32.in(w_kv);
  a.w_out = f32.in(w_out);
  a.heads = heads;
  a.eps = float(eps);
  a.out = f32.out(out);
  edgetam_cpu::perceiver_attention(a, et_pool());
  f32.finish(out);
  return out;
}

Tensor& spatial_perceiver_out(KernelRuntimeContext& ctx, const Tensor& x, OptTensor pos,
                              OptTensor latents_1d, OptTensor latents_2d,
                              ArrayRef<Tensor> weights, const Tensor& norm_w, const Tensor& norm_b,
                              int64_t depth, int64_t heads, bool use_self_attn, double eps,
                              std::optional<ScalarType> compute_dtype,
                              std::string_view /*backend*/, Tensor& out) {
  const ScalarType dt = x.scalar_type();
  EDGETAM_CHECK(is_float(x, dt) && x.dim() == 4,
                "spatial_perceiver: x must be contiguous (B, C, H, W), float32, bfloat16 or float16");
  EDGETAM_CHECK(is_float(out, dt), "spatial_perceiver: out must have x's dtype");
  edgetam_cpu::PerceiverArgs a{};
  Fp32 f32;
  a.B = x.size(0);
  a.C = x.size(1);
  a.H = x.size(2);
  a.W = x.size(3);
  const int64_t N = a.H * a.W;
  EDGETAM_CHECK(N > 0 && a.C > 0 && a.B > 0, "spatial_perceiver: x must not be empty");
  const ScalarType cd = compute_dtype.has_value() ? *compute_dtype : dt;
  EDGETAM_CHECK(cd == ScalarType::Float || cd == ScalarType::BFloat16 || cd == ScalarType::Half,
                "spatial_perceiver: compute_dtype must be float32, bfloat16 or float16");
  // As the torch CPU backend: bf16 products where AMX has them, fp16 computes in fp32.
  a.compute = cd == ScalarType::BFloat16 ? edgetam_cpu::kComputeBF16 : edgetam_cpu::kComputeF32;
  if (pos.has_value()) {
    const Tensor& p = *pos;
    EDGETAM_CHECK(is_float(p, dt) && p.dim() == 4 && (p.size(0) == 1 || p.size(0) == a.B) &&
                      p.size(1) == a.C && p.size(2) == a.H && p.size(3) == a.W,
                  "spatial_perceiver: pos must be contiguous (B or 1, C, H, W) of x's dtype");
    a.pos = f32.in(p);
    a.pos_bstride = p.size(0) == 1 ? 0 : a.C * N;
  }
  if (latents_1d.has_value()) {
    EDGETAM_CHECK(is_float(*latents_1d, dt) && latents_1d->dim() == 2 && latents_1d->size(1) == a.C,
                  "spatial_perceiver: latents_1d must be contiguous (L, C) of x's dtype");
    a.lat1 = f32.in(*latents_1d);
    a.L1 = latents_1d->size(0);
  }
  if (latents_2d.has_value()) {
    EDGETAM_CHECK(is_float(*latents_2d, dt) && latents_2d->dim() == 2 && latents_2d->size(1) == a.C,
                  "spatial_perceiver: latents_2d must be contiguous (L, C) of x's dtype");
    a.lat2 = f32.in(*latents_2d);
    a.L2 = latents_2d->size(0);
    int64_t nw = 0;
    while ((nw + 1) * (nw + 1) <= a.L2) ++nw;
    EDGETAM_CHECK(nw > 0 && nw * nw == a.L2 && a.H % nw == 0 && a.W == a.H,
                  "spatial_perceiver: latents_2d windows do not tile x");
  }
  EDGETAM_CHECK(a.lat1 || a.lat2, "spatial_perceiver: at least one latent group is needed");
  a.depth = depth;
  a.heads = heads;
  a.self_attn = use_self_attn;
  a.eps = float(eps);
  a.n_per_layer = use_self_attn ? 20 : 11;
  EDGETAM_CHECK(depth >= 1 && heads >= 1 && int64_t(weights.size()) == depth * a.n_per_layer,
                "spatial_perceiver: weights must hold n_per_layer * depth tensors");
  std::vector<const float*> w(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    EDGETAM_CHECK(is_float(weights[i], dt), "spatial_perceiver: weights[%zu] must be contiguous, of x's dtype", i);
    w[i] = f32.in(weights[i]);
  }
  std::vector<int64_t> inner(depth), hidden(depth), inner_s(depth, 0), hidden_s(depth, 0);
  for (int64_t l = 0; l < depth; ++l) {
    const Tensor* p = weights.data() + l * a.n_per_layer;
    // Shapes as reference.PERCEIVER_LAYER_PARAMS lays them out (see register.cpp).
    EDGETAM_CHECK(p[4].dim() == 2 && p[5].dim() == 2 && p[6].dim() == 2 && p[9].dim() == 2 &&
                      p[10].dim() == 2,
                  "spatial_perceiver: layer %lld projection weights must be 2-D", (long long)l);
    inner[l] = p[4].size(0);
    hidden[l] = p[9].size(0);
    EDGETAM_CHECK(inner[l] % heads == 0, "spatial_perceiver: heads must divide the inner dim");
    EDGETAM_CHECK(p[5].size(0) == 2 * inner[l] && p[6].size(1) == inner[l] && p[10].size(1) == hidden[l],
                  "spatial_perceiver: cross-attention / feed-forward weight shapes disagree");
    EDGETAM_CHECK(!a.pos || inner[l] == a.C, "spatial_perceiver: pos needs the inner dim to equal C");
    if (use_self_attn) {
      EDGETAM_CHECK(p[13].dim() == 2 && p[14].dim() == 2 && p[15].dim() == 2 && p[18].dim() == 2 &&
                        p[19].dim() == 2,
                    "spatial_perceiver: layer %lld self-attention weights must be 2-D", (long long)l);
      inner_s[l] = p[13].size(0);
      hidden_s[l] = p[18].size(0);
      EDGETAM_CHECK(inner_s[l] % heads == 0, "spatial_perceiver: heads must divide the self-attention inner dim");
      EDGETAM_CHECK(p[14].size(0) == 2 * inner_s[l] && p[15].size(1) == inner_s[l] &&
                        p[19].size(1) == hidden_s[l],
                    "spatial_perceiver: self-attention weight shapes disagree");
    }
  }
  EDGETAM_CHECK(is_float(norm_w, dt) && is_float(norm_b, dt) && sizes_are(norm_w, {a.C}) &&
                    sizes_are(norm_b, {a.C}),
                "spatial_perceiver: norm_w and norm_b must be (C,) of x's dtype");
  const executorch::aten::SizesType out_sizes[3] = {executorch::aten::SizesType(a.B),
                                                     executorch::aten::SizesType(a.L1 + a.L2),
                                                     executorch::aten::SizesType(a.C)};
  EDGETAM_CHECK(executorch::runtime::resize_tensor(out, {out_sizes, 3}) == Error::Ok,
                "spatial_perceiver: out must be resizable to (B, L1 + L2, C)");
  a.x = f32.in(x);
  a.w = w.data();
  a.inner = inner.data();
  a.hidden = hidden.data();
  a.inner_s = inner_s.data();
  a.hidden_s = hidden_s.data();
  a.norm_w = f32.in(norm_w);
  a.norm_b = f32.in(norm_b);
  a.out = f32.out(out);
  edgetam_cpu::spatial_perceiver(a, et_pool());
  f32.finish(out);
  return out;
}

// EDGETAM_KERNELS_CPU_ISA, once at load time; an unknown or unsupported name keeps the best path
// and says so on stderr (a kernel library has no other channel before the first call).
struct IsaFromEnv {
  IsaFromEnv() {
    const char* want = std::getenv("EDGETAM_KERNELS_CPU_ISA");
    if (!want || !*want || std::strcmp(want, "auto") == 0) return;
    for (int i = 0; i < edgetam_cpu::kIsaCount; ++i) {
      if (std::strcmp(want, edgetam_cpu::isa_name(i)) == 0 && edgetam_cpu::set_isa(i)) return;
    }
    ET_LOG(Error, "EDGETAM_KERNELS_CPU_ISA=%s is unknown or unsupported here; using %s", want,
           edgetam_cpu::isa_name(edgetam_cpu::best_isa()));
  }
} isa_from_env;

}  // namespace

EXECUTORCH_LIBRARY(edgetam, "rope_attention.out", rope_attention_out);
EXECUTORCH_LIBRARY(edgetam, "perceiver_attention.out", perceiver_attention_out);
EXECUTORCH_LIBRARY(edgetam, "spatial_perceiver.out", spatial_perceiver_out);

// For runners and tests: which ISA path the kernels take in this process.
extern "C" __attribute__((visibility("default"))) const char* edgetam_executorch_isa() {
  return edgetam_cpu::isa_name(edgetam_cpu::current_isa());
}
