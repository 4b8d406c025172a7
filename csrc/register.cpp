// The only file that sees torch: binds the torch-free kernels to torch.ops.edgetam_cpu.* on the
// CPU dispatch key through the LibTorch stable ABI (built with TORCH_TARGET_VERSION = 2.10, so
// one binary serves torch 2.10 and later), and runs them on torch's intra-op thread pool.
#include <Python.h>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <optional>
#include <vector>

#include "dispatch.h"
#include "work_queue.h"

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

namespace {

void torch_run(void*, int64_t n, void* ctx, void (*body)(void*, int64_t, int64_t)) {
  edgetam_cpu::hand_out(n, int64_t(torch::stable::get_num_threads()), ctx, body,
                        [](int64_t workers, const auto& worker) {
                          torch::stable::parallel_for(0, workers, 1, worker);
                        });
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
                      double scale, int64_t compute, std::optional<Tensor> key_mask) {
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
  if (key_mask.has_value()) {
    const Tensor& m = *key_mask;
    STD_TORCH_CHECK(m.is_cpu() && m.is_contiguous() && m.dim() == 2,
                    "key_mask must be a contiguous 2-D CPU tensor");
    STD_TORCH_CHECK(m.scalar_type() == ScalarType::Bool,
                    "key_mask must be a bool tensor");
    STD_TORCH_CHECK((m.size(0) == 1 || m.size(0) == a.B) && m.size(1) == a.Nk,
                    "key_mask must have shape (B or 1, Nk)");
    a.key_mask = static_cast<const uint8_t*>(m.data_ptr());
    a.key_mask_bstride = m.size(0) == 1 ? 0 : a.Nk;
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

const float* fptr(const Tensor& t, const char* name) {
  STD_TORCH_CHECK(t.is_cpu() && t.scalar_type() == ScalarType::Float && t.is_contiguous(), name,
                  " must be a contiguous float32 CPU tensor");
  return static_cast<const float*>(t.data_ptr());
}

Tensor spatial_perceiver(Tensor x, std::optional<Tensor> pos, std::optional<Tensor> latents_1d,
                         std::optional<Tensor> latents_2d, std::vector<Tensor> weights,
                         Tensor norm_w, Tensor norm_b, int64_t depth, int64_t heads,
                         bool use_self_attn, double eps, int64_t compute) {
  edgetam_cpu::PerceiverArgs a{};
  STD_TORCH_CHECK(compute == 0 || compute == 1, "compute must be 0 (fp32) or 1 (bf16)");
  a.compute = int(compute);
  STD_TORCH_CHECK(x.dim() == 4, "x must be (B, C, H, W)");
  a.x = fptr(x, "x");
  a.B = x.size(0);
  a.C = x.size(1);
  a.H = x.size(2);
  a.W = x.size(3);
  const int64_t N = a.H * a.W;
  STD_TORCH_CHECK(N > 0 && a.C > 0, "x must not be empty");
  a.pos = pos.has_value() ? fptr(*pos, "pos") : nullptr;
  if (a.pos) {
    STD_TORCH_CHECK(pos->dim() == 4 && (pos->size(0) == 1 || pos->size(0) == a.B) &&
                        pos->size(1) == a.C && pos->size(2) == a.H && pos->size(3) == a.W,
                    "pos must be (B or 1, C, H, W)");
    a.pos_bstride = pos->size(0) == 1 ? 0 : a.C * N;
  }
  a.lat1 = latents_1d.has_value() ? fptr(*latents_1d, "latents_1d") : nullptr;
  a.lat2 = latents_2d.has_value() ? fptr(*latents_2d, "latents_2d") : nullptr;
  STD_TORCH_CHECK(a.lat1 || a.lat2, "at least one latent group is needed");
  a.L1 = a.lat1 ? latents_1d->size(0) : 0;
  a.L2 = a.lat2 ? latents_2d->size(0) : 0;
  if (a.lat1) STD_TORCH_CHECK(latents_1d->dim() == 2 && latents_1d->size(1) == a.C, "latents_1d must be (L, C)");
  if (a.lat2) {
    STD_TORCH_CHECK(latents_2d->dim() == 2 && latents_2d->size(1) == a.C, "latents_2d must be (L, C)");
    int64_t nw = 0;
    while ((nw + 1) * (nw + 1) <= a.L2) ++nw;
    STD_TORCH_CHECK(nw * nw == a.L2 && a.H % nw == 0 && a.W == a.H, "windows do not tile x");
  }
  a.depth = depth;
  a.heads = heads;
  a.self_attn = use_self_attn;
  a.eps = float(eps);
  a.n_per_layer = use_self_attn ? 20 : 11;
  STD_TORCH_CHECK(depth >= 1 && int64_t(weights.size()) == depth * a.n_per_layer,
                  "weights must hold n_per_layer * depth tensors");
  std::vector<const float*> w(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) w[i] = fptr(weights[i], "weights");
  std::vector<int64_t> inner(depth), hidden(depth), inner_s(depth, 0), hidden_s(depth, 0);
  for (int64_t l = 0; l < depth; ++l) {
    const Tensor* p = weights.data() + l * a.n_per_layer;
    inner[l] = p[4].size(0);
    hidden[l] = p[9].size(0);
    STD_TORCH_CHECK(inner[l] % heads == 0, "heads must divide the inner dim");
    STD_TORCH_CHECK(p[5].size(0) == 2 * inner[l] && p[6].size(1) == inner[l] && p[10].size(1) == hidden[l],
                    "cross-attention / feed-forward weight shapes disagree");
    STD_TORCH_CHECK(!a.pos || inner[l] == a.C, "pos needs the inner dim to equal C");
    if (use_self_attn) {
      inner_s[l] = p[13].size(0);
      hidden_s[l] = p[18].size(0);
      STD_TORCH_CHECK(inner_s[l] % heads == 0, "heads must divide the self-attention inner dim");
      STD_TORCH_CHECK(p[14].size(0) == 2 * inner_s[l] && p[15].size(1) == inner_s[l] && p[19].size(1) == hidden_s[l],
                      "self-attention weight shapes disagree");
    }
  }
  a.w = w.data();
  a.inner = inner.data();
  a.hidden = hidden.data();
  a.inner_s = inner_s.data();
  a.hidden_s = hidden_s.data();
  a.norm_w = fptr(norm_w, "norm_w");
  a.norm_b = fptr(norm_b, "norm_b");
  Tensor out = torch::stable::new_empty(x, {a.B, a.L1 + a.L2, a.C});
  a.out = static_cast<float*>(out.mutable_data_ptr());
  edgetam_cpu::spatial_perceiver(a, torch_pool());
  return out;
}

// One perceiver cross-attention block (reference.perceiver_attention); fp32, contiguous.
Tensor perceiver_attention(Tensor latents, Tensor x, std::optional<Tensor> pos,
                           Tensor ln_latents_w, Tensor ln_latents_b, Tensor ln_x_w, Tensor ln_x_b,
                           Tensor w_q, Tensor w_kv, Tensor w_out, int64_t heads, double eps) {
  edgetam_cpu::PerceiverAttnArgs a{};
  STD_TORCH_CHECK(latents.dim() == 3, "latents must be (B, L, C)");
  STD_TORCH_CHECK(x.dim() == 3, "x must be (B, N, C)");
  a.latents = fptr(latents, "latents");
  a.x = fptr(x, "x");
  a.B = latents.size(0);
  a.L = latents.size(1);
  a.C = latents.size(2);
  a.N = x.size(1);
  STD_TORCH_CHECK(x.size(0) == a.B && x.size(2) == a.C, "x must be (B, N, C) like latents");
  STD_TORCH_CHECK(a.L > 0 && a.C > 0 && a.N > 0, "latents and x must not be empty");
  STD_TORCH_CHECK(w_q.dim() == 2 && w_q.size(1) == a.C && w_q.size(0) > 0, "w_q must be (inner, C)");
  a.inner = w_q.size(0);
  STD_TORCH_CHECK(w_kv.dim() == 2 && w_kv.size(0) == 2 * a.inner && w_kv.size(1) == a.C,
                  "w_kv must be (2 * inner, C)");
  STD_TORCH_CHECK(w_out.dim() == 2 && w_out.size(0) == a.C && w_out.size(1) == a.inner,
                  "w_out must be (C, inner)");
  STD_TORCH_CHECK(heads >= 1 && a.inner % heads == 0, "heads must divide the inner dim");
  a.heads = heads;
  const Tensor* lns[] = {&ln_latents_w, &ln_latents_b, &ln_x_w, &ln_x_b};
  const char* ln_names[] = {"ln_latents_w", "ln_latents_b", "ln_x_w", "ln_x_b"};
  const float** ln_ptrs[] = {&a.ln_lat_w, &a.ln_lat_b, &a.ln_x_w, &a.ln_x_b};
  for (int i = 0; i < 4; ++i) {
    STD_TORCH_CHECK(lns[i]->dim() == 1 && lns[i]->size(0) == a.C, ln_names[i], " must be (C,)");
    *ln_ptrs[i] = fptr(*lns[i], ln_names[i]);
  }
  a.w_q = fptr(w_q, "w_q");
  a.w_kv = fptr(w_kv, "w_kv");
  a.w_out = fptr(w_out, "w_out");
  a.pos = pos.has_value() ? fptr(*pos, "pos") : nullptr;
  if (a.pos) {
    STD_TORCH_CHECK(pos->dim() == 3 && (pos->size(0) == 1 || pos->size(0) == a.B) &&
                        pos->size(1) == a.N && pos->size(2) == a.inner,
                    "pos must be (B or 1, N, inner)");
    a.pos_bstride = pos->size(0) == 1 ? 0 : a.N * a.inner;
  }
  STD_TORCH_CHECK(eps > 0, "eps must be positive");
  a.eps = float(eps);
  Tensor out = torch::stable::new_empty(latents, {a.B, a.L, a.C});
  a.out = static_cast<float*>(out.mutable_data_ptr());
  edgetam_cpu::perceiver_attention(a, torch_pool());
  return out;
}

int64_t get_isa() { return edgetam_cpu::current_isa(); }
int64_t best_isa() { return edgetam_cpu::best_isa(); }
bool isa_supported(int64_t isa) { return edgetam_cpu::isa_supported(int(isa)); }
bool set_isa(int64_t isa) { return edgetam_cpu::set_isa(int(isa)); }

}  // namespace

STABLE_TORCH_LIBRARY(edgetam_cpu, m) {
  m.def("rope_attention(Tensor q, Tensor k, Tensor v, int q_h, int q_w, int k_h, int k_w, "
        "int k_repeat, int num_k_exclude_rope, float theta, float scale, int compute, "
        "Tensor? key_mask=None) -> Tensor");
  m.def("spatial_perceiver(Tensor x, Tensor? pos, Tensor? latents_1d, Tensor? latents_2d, "
        "Tensor[] weights, Tensor norm_w, Tensor norm_b, int depth, int heads, bool use_self_attn, "
        "float eps, int compute) -> Tensor");
  m.def("perceiver_attention(Tensor latents, Tensor x, Tensor? pos, Tensor ln_latents_w, "
        "Tensor ln_latents_b, Tensor ln_x_w, Tensor ln_x_b, Tensor w_q, Tensor w_kv, Tensor w_out, "
        "int heads, float eps) -> Tensor");
  m.def("get_isa() -> int");
  m.def("best_isa() -> int");
  m.def("isa_supported(int isa) -> bool");
  m.def("set_isa(int isa) -> bool");
}

STABLE_TORCH_LIBRARY_IMPL(edgetam_cpu, CPU, m) {
  m.impl("rope_attention", TORCH_BOX(&rope_attention));
  m.impl("spatial_perceiver", TORCH_BOX(&spatial_perceiver));
  m.impl("perceiver_attention", TORCH_BOX(&perceiver_attention));
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
