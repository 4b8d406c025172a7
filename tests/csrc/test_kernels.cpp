// Torch-free test of the CPU kernels on every ISA path this CPU supports: RoPE attention against
// a naive double-precision reference (fp32, bf16 and fp16 inputs / compute; with and without a
// key mask that removes memory frames, pointer tokens and, in batch row 2, every key), the perceiver
// cross-attention block against one too, and the spatial perceiver of each SIMD path against
// the scalar path. Built natively and cross-built for aarch64 (run under qemu) by
// tests/test_cpu_aarch64.py.
//
//   test_kernels [--expect-best ISA] [--expect-supported ISA,...]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../../csrc/dispatch.h"
#include "../../csrc/simd/convert.h"

using namespace edgetam_cpu;

namespace {

// A real thread pool stand-in: each chunk on its own std::thread, so chunking bugs show up.
void threads_run(void*, int64_t n, void* ctx, void (*body)(void*, int64_t, int64_t)) {
  const int64_t parts = n < 3 ? n : 3;
  std::vector<std::thread> ts;
  for (int64_t p = 0; p < parts; ++p)
    ts.emplace_back([=] { body(ctx, n * p / parts, n * (p + 1) / parts); });
  for (auto& t : ts) t.join();
}
const Parallel kPar{&threads_run, nullptr, 3};

int g_failures = 0;

void report(const char* what, double err, double tol) {
  const bool ok = err <= tol;  // NaN fails
  if (!ok) ++g_failures;
  std::printf("%-4s %-58s rel_l2 %.3e (budget %.1e)\n", ok ? "ok" : "FAIL", what, err, tol);
}

double rel_l2(const std::vector<double>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(out[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

float quantize(float x, int dtype) {
  return dtype == kBF16 ? round_bf16_scalar(x) : dtype == kF16 ? round_f16_scalar(x) : x;
}

struct AttnCase {
  const char* name;
  int64_t B, H, qh, qw, D, Dv, frames, kh, kw, lead, nptr;
  bool masked;  // key_mask: see key_mask_for
};

// Batch row b keeps frame f unless (f + b) % 3 == 1 and pointer j unless (j + b) % 4 == 0;
// row 2 keeps nothing (its output must be zeros).
std::vector<uint8_t> key_mask_for(const AttnCase& c) {
  const int64_t frame = c.lead + c.kh * c.kw, nrope = c.frames * frame, Nk = nrope + c.nptr;
  std::vector<uint8_t> m(static_cast<size_t>(c.B * Nk));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t n = 0; n < Nk; ++n)
      m[size_t(b * Nk + n)] = b != 2 && (n < nrope ? (n / frame + b) % 3 != 1
                                                   : (n - nrope + b) % 4 != 0);
  return m;
}

// Rotate pairs of x (fp32) at grid position (row, col) the way reference.apply_rope does.
void rope(float* x, int64_t D, int64_t row, int64_t col, double theta) {
  for (int64_t pr = 0; pr < D / 2; ++pr) {
    const int64_t j = pr % (D / 4);
    const float freq = 1.0f / std::pow(float(theta), float(4 * j) / float(D));
    const float ang = float(pr < D / 4 ? col : row) * freq;
    const float c = float(std::cos(double(ang))), s = float(std::sin(double(ang)));
    const float x0 = x[2 * pr], x1 = x[2 * pr + 1];
    x[2 * pr] = x0 * c - x1 * s;
    x[2 * pr + 1] = x0 * s + x1 * c;
  }
}

std::vector<double> attn_reference(const AttnCase& c, const std::vector<float>& q,
                                   const std::vector<float>& k, const std::vector<float>& v,
                                   int dtype, const std::vector<uint8_t>& mask) {
  const int64_t Nq = c.qh * c.qw, frame = c.lead + c.kh * c.kw, Nk = c.frames * frame + c.nptr;
  const int64_t nrope = c.frames * frame;
  std::vector<double> out(static_cast<size_t>(c.B * c.H * Nq * c.Dv));
  std::vector<float> qr(static_cast<size_t>(Nq * c.D)), kr(static_cast<size_t>(Nk * c.D));
  std::vector<double> p(static_cast<size_t>(Nk));
  const double scale = 1.0 / std::sqrt(double(c.D));
  for (int64_t bh = 0; bh < c.B * c.H; ++bh) {
    for (int64_t n = 0; n < Nq; ++n) {
      float* x = qr.data() + n * c.D;
      std::memcpy(x, q.data() + (bh * Nq + n) * c.D, size_t(c.D) * 4);
      rope(x, c.D, n / c.qw, n % c.qw, 1e4);
      for (int64_t d = 0; d < c.D; ++d) x[d] = quantize(x[d], dtype);
    }
    for (int64_t n = 0; n < Nk; ++n) {
      float* x = kr.data() + n * c.D;
      std::memcpy(x, k.data() + (bh * Nk + n) * c.D, size_t(c.D) * 4);
      const int64_t t = n % frame - c.lead;
      if (n < nrope && t >= 0) rope(x, c.D, t / c.kw, t % c.kw, 1e4);
      for (int64_t d = 0; d < c.D; ++d) x[d] = quantize(x[d], dtype);
    }
    const uint8_t* valid = mask.empty() ? nullptr : mask.data() + (bh / c.H) * Nk;
    for (int64_t i = 0; i < Nq; ++i) {
      double m = -INFINITY, sum = 0;
      for (int64_t j = 0; j < Nk; ++j) {
        double s = 0;
        for (int64_t d = 0; d < c.D; ++d) s += double(qr[i * c.D + d]) * kr[j * c.D + d];
        p[j] = valid && !valid[j] ? -INFINITY : s * scale;  // masked: left out
        m = p[j] > m ? p[j] : m;
      }
      for (int64_t j = 0; j < Nk; ++j) sum += (p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - m));
      for (int64_t e = 0; e < c.Dv; ++e) {
        double o = 0;
        for (int64_t j = 0; j < Nk; ++j) o += p[j] * v[(bh * Nk + j) * c.Dv + e];
        out[(bh * Nq + i) * c.Dv + e] = sum > 0 ? o / sum : 0.0;  // no valid key: zeros
      }
    }
  }
  return out;
}

void test_attention(int isa, const AttnCase& c, int dtype, int compute) {
  const int64_t Nq = c.qh * c.qw, frame = c.lead + c.kh * c.kw, Nk = c.frames * frame + c.nptr;
  std::mt19937 gen(42);
  std::normal_distribution<float> nd;
  auto fill = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& e : x) e = quantize(nd(gen), dtype);
    return x;
  };
  std::vector<float> q = fill(c.B * c.H * Nq * c.D), k = fill(c.B * c.H * Nk * c.D),
                     v = fill(c.B * c.H * Nk * c.Dv);
  auto to16 = [&](const std::vector<float>& x) {
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); ++i) h[i] = dtype == kBF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
    return h;
  };
  std::vector<uint16_t> q16, k16, v16;
  const size_t nout = size_t(c.B * c.H * Nq * c.Dv);
  std::vector<float> out32(nout, NAN);     // poisoned: unwritten elements fail
  std::vector<uint16_t> out16(nout, 0x7fc1);
  RopeAttnArgs a{};
  if (dtype == kF32) {
    a.q = q.data(); a.k = k.data(); a.v = v.data(); a.out = out32.data();
  } else {
    q16 = to16(q); k16 = to16(k); v16 = to16(v);
    a.q = q16.data(); a.k = k16.data(); a.v = v16.data(); a.out = out16.data();
  }
  a.dtype = dtype;
  a.compute = compute;
  a.B = c.B; a.H = c.H; a.Nq = Nq; a.Nk = Nk; a.D = c.D; a.Dv = c.Dv;
  a.q_w = c.qw; a.k_w = c.kw;
  a.k_nrope = c.frames * frame;
  a.k_frame = c.frames ? frame : 1;
  a.k_nrot = c.kh * c.kw;
  a.scale = float(1.0 / std::sqrt(double(c.D)));
  const std::vector<uint8_t> mask = c.masked ? key_mask_for(c) : std::vector<uint8_t>();
  if (c.masked) {
    a.key_mask = mask.data();
    a.key_mask_bstride = Nk;
  }
  set_isa(isa);
  rope_attention(a, c.qh, c.kh, 1e4, kPar);
  std::vector<double> out(nout);
  for (size_t i = 0; i < nout; ++i)
    out[i] = dtype == kF32 ? out32[i] : dtype == kBF16 ? bf16_to_f32(out16[i]) : f16_to_f32(out16[i]);
  const int eff = compute != kComputeF32 ? compute : dtype;  // precision that bounds the error
  const double tol = eff == kComputeBF16 ? 1.6e-2 : eff == kComputeF16 ? 1e-2 : 1e-5;
  static const char* dn[] = {"f32", "bf16", "f16"};
  char what[160];
  std::snprintf(what, sizeof what, "attention %-11s %-12s in %-4s compute %s", isa_name(isa), c.name,
                dn[dtype], dn[compute]);
  report(what, rel_l2(out, attn_reference(c, q, k, v, dtype, mask)), tol);
}

// Spatial perceiver: every SIMD path against the scalar path on random weights.
std::vector<double> run_perceiver(int isa, int64_t heads) {
  const int64_t B = 2, C = 24, H = 8, L1 = 6, L2 = 16, depth = 2, inner = 24, hidden = 40;
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  std::vector<std::vector<float>> store;
  auto make = [&](int64_t n, float s, float off) {
    store.emplace_back(static_cast<size_t>(n));
    for (auto& e : store.back()) e = off + s * nd(gen);
    return store.back().data();
  };
  store.reserve(64);
  const float* x = make(B * C * H * H, 1, 0);
  const float* pos = make(B * C * H * H, 1, 0);
  const float* lat1 = make(L1 * C, 1, 0);
  const float* lat2 = make(L2 * C, 1, 0);
  std::vector<const float*> w;
  for (int64_t l = 0; l < depth; ++l) {
    const int64_t shapes[20][2] = {{C, 1}, {C, 1}, {C, 1}, {C, 1}, {inner, C}, {2 * inner, C},
                                   {C, inner}, {C, 1}, {C, 1}, {hidden, C}, {C, hidden},
                                   {C, 1}, {C, 1}, {inner, C}, {2 * inner, C}, {C, inner},
                                   {C, 1}, {C, 1}, {hidden, C}, {C, hidden}};
    for (int i = 0; i < 20; ++i) {
      const bool norm_w = shapes[i][1] == 1 && (i % 2 == 1 ? false : true) && i != 8 && i != 17;
      const float s = shapes[i][1] == 1 ? 0.1f : 1.0f / std::sqrt(float(shapes[i][1]));
      w.push_back(make(shapes[i][0] * shapes[i][1], s, norm_w ? 1.0f : 0.0f));
    }
  }
  const float* nw = make(C, 0.1f, 1);
  const float* nb = make(C, 0.1f, 0);
  std::vector<int64_t> in(depth, inner), hid(depth, hidden);
  std::vector<float> out(size_t(B * (L1 + L2) * C), NAN);
  PerceiverArgs a{};
  a.x = x; a.pos = pos; a.pos_bstride = C * H * H; a.lat1 = lat1; a.lat2 = lat2;
  a.L1 = L1; a.L2 = L2; a.B = B; a.C = C; a.H = H; a.W = H;
  a.depth = depth; a.heads = heads; a.n_per_layer = 20; a.self_attn = true; a.eps = 1e-5f;
  a.w = w.data(); a.inner = in.data(); a.hidden = hid.data(); a.inner_s = in.data();
  a.hidden_s = hid.data(); a.norm_w = nw; a.norm_b = nb; a.out = out.data();
  set_isa(isa);
  spatial_perceiver(a, kPar);
  return std::vector<double>(out.begin(), out.end());
}

// One perceiver cross-attention block (perceiver_attention): every path against a naive
// double-precision reference. Output poisoned with NaN: an unwritten element fails.
struct BlockCase {
  const char* name;
  int64_t B, L, N, C, inner, heads;
  int pos;  // 0 none, 1 per batch element, 2 shared
};

void layer_norm(const float* x, int64_t C, const float* w, const float* b, double* y) {
  double mean = 0, var = 0;
  for (int64_t c = 0; c < C; ++c) mean += x[c];
  mean /= double(C);
  for (int64_t c = 0; c < C; ++c) var += (x[c] - mean) * (x[c] - mean);
  const double rstd = 1.0 / std::sqrt(var / double(C) + 1e-5);
  for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

void test_block(int isa, const BlockCase& c) {
  const int64_t B = c.B, L = c.L, N = c.N, C = c.C, I = c.inner, dh = I / c.heads;
  std::mt19937 gen(11);
  std::normal_distribution<float> nd;
  auto fill = [&](int64_t n, float s, float off) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& e : x) e = off + s * nd(gen);
    return x;
  };
  const std::vector<float> lat = fill(B * L * C, 1, 0), x = fill(B * N * C, 1, 0),
                           pos = fill((c.pos == 1 ? B : 1) * N * I, 1, 0),
                           lw = fill(C, 0.1f, 1), lb = fill(C, 0.1f, 0), xw = fill(C, 0.1f, 1),
                           xb = fill(C, 0.1f, 0), wq = fill(I * C, 1 / std::sqrt(float(C)), 0),
                           wkv = fill(2 * I * C, 1 / std::sqrt(float(C)), 0),
                           wo = fill(C * I, 1 / std::sqrt(float(I)), 0);
  std::vector<float> out32(static_cast<size_t>(B * L * C), NAN);
  PerceiverAttnArgs a{};
  a.latents = lat.data(); a.x = x.data(); a.pos = c.pos ? pos.data() : nullptr;
  a.pos_bstride = c.pos == 1 ? N * I : 0;
  a.ln_lat_w = lw.data(); a.ln_lat_b = lb.data(); a.ln_x_w = xw.data(); a.ln_x_b = xb.data();
  a.w_q = wq.data(); a.w_kv = wkv.data(); a.w_out = wo.data();
  a.B = B; a.L = L; a.N = N; a.C = C; a.inner = I; a.heads = c.heads; a.eps = 1e-5f;
  a.out = out32.data();
  set_isa(isa);
  perceiver_attention(a, kPar);

  std::vector<double> ref(out32.size()), ln(static_cast<size_t>(C)), q(static_cast<size_t>(I)),
      kv(static_cast<size_t>(N * 2 * I)), o(static_cast<size_t>(I)), p(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      layer_norm(x.data() + (b * N + n) * C, C, xw.data(), xb.data(), ln.data());
      for (int64_t r = 0; r < 2 * I; ++r) {
        double s = 0;
        for (int64_t ch = 0; ch < C; ++ch) s += wkv[r * C + ch] * ln[ch];
        if (c.pos) s += pos[((c.pos == 1 ? b : 0) * N + n) * I + r % I];
        kv[n * 2 * I + r] = s;
      }
    }
    for (int64_t l = 0; l < L; ++l) {
      layer_norm(lat.data() + (b * L + l) * C, C, lw.data(), lb.data(), ln.data());
      for (int64_t r = 0; r < I; ++r) {
        double s = 0;
        for (int64_t ch = 0; ch < C; ++ch) s += wq[r * C + ch] * ln[ch];
        q[r] = s;
      }
      for (int64_t h = 0; h < c.heads; ++h) {
        double m = -INFINITY, sum = 0;
        for (int64_t n = 0; n < N; ++n) {
          double s = 0;
          for (int64_t d = 0; d < dh; ++d) s += q[h * dh + d] * kv[n * 2 * I + h * dh + d];
          p[n] = s / std::sqrt(double(dh));
          m = p[n] > m ? p[n] : m;
        }
        for (int64_t n = 0; n < N; ++n) sum += (p[n] = std::exp(p[n] - m));
        for (int64_t d = 0; d < dh; ++d) {
          double s = 0;
          for (int64_t n = 0; n < N; ++n) s += p[n] * kv[n * 2 * I + I + h * dh + d];
          o[h * dh + d] = s / sum;
        }
      }
      for (int64_t ch = 0; ch < C; ++ch) {
        double s = 0;
        for (int64_t r = 0; r < I; ++r) s += wo[ch * I + r] * o[r];
        ref[(b * L + l) * C + ch] = s;
      }
    }
  }
  char what[120];
  std::snprintf(what, sizeof what, "perceiver_attention %-11s %s", isa_name(isa), c.name);
  report(what, rel_l2(std::vector<double>(out32.begin(), out32.end()), ref), 1e-5);
}

}  // namespace

int main(int argc, char** argv) {
  std::string expect_best, expect_supported;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--expect-best")) expect_best = argv[i + 1];
    if (!std::strcmp(argv[i], "--expect-supported")) expect_supported = argv[i + 1];
  }
  std::string supported;
  for (int isa = 0; isa < kIsaCount; ++isa)
    if (isa_supported(isa)) supported += std::string(supported.empty() ? "" : ",") + isa_name(isa);
  std::printf("best ISA: %s; supported: %s\n", isa_name(best_isa()), supported.c_str());
  if (!expect_best.empty() && expect_best != isa_name(best_isa())) {
    std::printf("FAIL expected best ISA %s\n", expect_best.c_str());
    ++g_failures;
  }
  if (!expect_supported.empty() && expect_supported != supported) {
    std::printf("FAIL expected supported %s\n", expect_supported.c_str());
    ++g_failures;
  }
  const AttnCase cases[] = {
      {"self_8x8", 1, 1, 8, 8, 64, 64, 1, 8, 8, 0, 0, false},
      {"odd_5x7", 2, 3, 5, 7, 36, 20, 3, 2, 3, 4, 16, false},
      {"cross_d256", 1, 1, 4, 4, 256, 256, 3, 4, 4, 16, 9, false},
      {"ptrs_only", 1, 2, 3, 3, 16, 8, 0, 1, 1, 0, 13, false},
      {"mask_5x7", 3, 2, 5, 7, 36, 20, 3, 2, 3, 4, 16, true},
      // several query blocks (keys prepared once per head), whole 96-key tiles masked
      {"mask_12x12", 3, 1, 12, 12, 32, 24, 4, 8, 8, 16, 8, true},
  };
  const BlockCase blocks[] = {
      {"b2_l70_n300_c32_heads2", 2, 70, 300, 32, 32, 2, 1},
      {"b1_l7_n33_c24_inner36_heads3", 1, 7, 33, 24, 36, 3, 2},
      {"b3_l1_n1_c16", 3, 1, 1, 16, 16, 1, 0},
  };
  for (int isa = 0; isa < kIsaCount; ++isa) {
    if (!isa_supported(isa)) continue;
    for (const auto& c : blocks) test_block(isa, c);
    for (const auto& c : cases) {
      test_attention(isa, c, kF32, kComputeF32);
      test_attention(isa, c, kF32, kComputeBF16);
      test_attention(isa, c, kBF16, kComputeBF16);
      test_attention(isa, c, kF16, kComputeF16);
      test_attention(isa, c, kF32, kComputeF16);
    }
    for (int64_t heads : {1, 3}) {
      char what[120];
      std::snprintf(what, sizeof what, "perceiver %-11s vs scalar, heads %d", isa_name(isa), int(heads));
      report(what, rel_l2(run_perceiver(isa, heads), run_perceiver(kScalar, heads)), 1e-5);
    }
  }
  set_isa(-1);
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
