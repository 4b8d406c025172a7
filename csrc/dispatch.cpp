// Which ISA path runs: detected once (cpuid / getauxval), overridable with set_isa().
#include "dispatch.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define EDGETAM_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define EDGETAM_ARM64 1
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#define EDGETAM_ARM64 1
#endif

namespace edgetam_cpu {

#define EDGETAM_DECLARE(ns) \
  namespace ns {                                                        \
  void rope_attention(const RopeAttnArgs&, const Parallel&);            \
  void spatial_perceiver(const PerceiverArgs&, const Parallel&);        \
  void perceiver_attention(const PerceiverAttnArgs&, const Parallel&);  \
  }
EDGETAM_DECLARE(scalar)
#if EDGETAM_X86
EDGETAM_DECLARE(avx2)
EDGETAM_DECLARE(avx512)
EDGETAM_DECLARE(avx512bf16)
#if defined(__linux__)
EDGETAM_DECLARE(avx512amx)
namespace avx512amx { bool amx_permitted(); }
#endif
#endif
#if EDGETAM_ARM64
EDGETAM_DECLARE(neon)
EDGETAM_DECLARE(neonfp16)
EDGETAM_DECLARE(neonbf16)
#endif

namespace {

struct Kernels {
  void (*rope_attention)(const RopeAttnArgs&, const Parallel&) = nullptr;
  void (*spatial_perceiver)(const PerceiverArgs&, const Parallel&) = nullptr;
  void (*perceiver_attention)(const PerceiverAttnArgs&, const Parallel&) = nullptr;
};

#define EDGETAM_KERNELS(ns) \
  k.rope_attention = ns::rope_attention;               \
  k.spatial_perceiver = ns::spatial_perceiver;         \
  k.perceiver_attention = ns::perceiver_attention;

Kernels table(int isa) {
  Kernels k;
  switch (isa) {
    case kScalar: EDGETAM_KERNELS(scalar) break;
#if EDGETAM_X86
    case kAvx2: EDGETAM_KERNELS(avx2) break;
    case kAvx512: EDGETAM_KERNELS(avx512) break;
    case kAvx512Bf16: EDGETAM_KERNELS(avx512bf16) break;
#if defined(__linux__)
    case kAvx512Amx: EDGETAM_KERNELS(avx512amx) break;
#endif
#endif
#if EDGETAM_ARM64
    case kNeon: EDGETAM_KERNELS(neon) break;
    case kNeonFp16: EDGETAM_KERNELS(neonfp16) break;
    case kNeonBf16: EDGETAM_KERNELS(neonbf16) break;
#endif
    default: break;
  }
  return k;
}

#if EDGETAM_X86
bool xgetbv_ok(uint64_t mask) {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t(edx) << 32 | eax) & mask) == mask;
}
#endif

bool detect(int isa) {
  if (isa == kScalar) return true;
#if EDGETAM_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !xgetbv_ok(0x6)) return false;  // XMM + YMM state enabled by the OS
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx2 = b & (1u << 5);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
  unsigned a1 = 0, b1, c1, d1;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  const bool bf16 = a1 & (1u << 5);
  const bool amx = (d & (1u << 24)) && (d & (1u << 22)) && xgetbv_ok(0x60000);  // tile, bf16
  const bool zmm_os = xgetbv_ok(0xe6);  // opmask + ZMM state
  switch (isa) {
    case kAvx2: return avx2 && fma && f16c;
    case kAvx512: return avx2 && fma && f16c && avx512 && zmm_os;
    case kAvx512Bf16: return avx2 && fma && f16c && avx512 && zmm_os && bf16;
#if defined(__linux__)
    case kAvx512Amx:
      return avx2 && fma && f16c && avx512 && zmm_os && bf16 && amx && avx512amx::amx_permitted();
#endif
    default: return false;
  }
#elif EDGETAM_ARM64
#if defined(__APPLE__)
  auto flag = [](const char* name) {
    int v = 0;
    size_t n = sizeof v;
    return sysctlbyname(name, &v, &n, nullptr, 0) == 0 && v != 0;
  };
  const bool fp16 = flag("hw.optional.arm.FEAT_FP16") && flag("hw.optional.arm.FEAT_FHM");
  const bool bf16 = flag("hw.optional.arm.FEAT_BF16");
#else
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  const bool fp16 = (hw & (1ul << 9)) && (hw & (1ul << 10)) &&  // HWCAP_FPHP, HWCAP_ASIMDHP
                    (hw & (1ul << 23));                           // HWCAP_ASIMDFHM (fmlal)
  const bool bf16 = hw2 & (1ul << 14);                          // HWCAP2_BF16
#endif
  switch (isa) {
    case kNeon: return true;
    case kNeonFp16: return fp16;
    case kNeonBf16: return fp16 && bf16;
    default: return false;
  }
#else
  return false;
#endif
}

int detect_best() {
  for (int isa = kIsaCount - 1; isa > kScalar; --isa)
    if (detect(isa) && table(isa).rope_attention) return isa;
  return kScalar;
}

std::atomic<int> g_forced{-1};

}  // namespace

const char* isa_name(int isa) {
  static const char* names[kIsaCount] = {"scalar", "avx2", "avx512", "avx512_bf16",
                                         "avx512_amx", "neon", "neon_fp16", "neon_bf16"};
  return (isa >= 0 && isa < kIsaCount) ? names[isa] : "unknown";
}

bool isa_supported(int isa) {
  return isa >= 0 && isa < kIsaCount && table(isa).rope_attention && detect(isa);
}

int best_isa() {
  static const int best = detect_best();
  return best;
}

int current_isa() {
  const int f = g_forced.load();
  return f >= 0 ? f : best_isa();
}

bool set_isa(int isa) {
  if (isa != -1 && !isa_supported(isa)) return false;
  g_forced.store(isa);
  return true;
}

namespace {

// cos/sin records per grid position, in the fp32 arithmetic the reference uses
// (freq_j = 1 / theta^(4j/D), angle = position * freq_j, both rounded to fp32).
std::vector<float> rope_table(int64_t positions, int64_t D, double theta) {
  const int64_t Dh = D / 2, quarter = D / 4;
  std::vector<float> t(size_t(positions * D));
  for (int64_t p = 0; p < positions; ++p) {
    float* c = t.data() + p * D;
    float* s = c + Dh;
    for (int64_t j = 0; j < quarter; ++j) {
      const float expo = float(4 * j) / float(D);
      const float freq = 1.0f / std::pow(float(theta), expo);
      const float ang = float(p) * freq;
      const float cs = float(std::cos(double(ang))), sn = float(std::sin(double(ang)));
      c[2 * j] = cs;
      c[2 * j + 1] = cs;
      s[2 * j] = -sn;
      s[2 * j + 1] = sn;
    }
  }
  return t;
}

// Tables are kept by (positions, D, theta): building them (pow, cos, sin per entry) took about
// 0.65 ms per call at a 64 x 64 grid, serial, before the parallel kernel (~1 % of the fp32
// 4096 x 4096 attention at 2 threads). Shared pointers: a table in use outlives a cache flush.
std::shared_ptr<const std::vector<float>> cached_rope_table(int64_t positions, int64_t D,
                                                            double theta) {
  using Key = std::tuple<int64_t, int64_t, double>;
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<const std::vector<float>>> cache;
  const Key key(positions, D, theta);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 32) cache.clear();  // bounded: shapes seen by one process are few
  auto t = std::make_shared<const std::vector<float>>(rope_table(positions, D, theta));
  cache.emplace(key, t);
  return t;
}

}  // namespace

void rope_attention(RopeAttnArgs a, int64_t q_h, int64_t k_h, double theta, const Parallel& par) {
  const auto qc = cached_rope_table(a.q_w, a.D, theta), qr = cached_rope_table(q_h, a.D, theta);
  const auto kc = cached_rope_table(a.k_w, a.D, theta), kr = cached_rope_table(k_h, a.D, theta);
  a.q_col_tab = qc->data();
  a.q_row_tab = qr->data();
  a.k_col_tab = kc->data();
  a.k_row_tab = kr->data();
  if (a.k_nrope <= 0) {  // nothing rotated: keep the arithmetic in the kernel well defined
    a.k_nrope = 0;
    a.k_frame = 1;
    a.k_nrot = 0;
  }
  // With a mask the kernels set masked scores to -inf before scaling, so they need scale > 0:
  // q k * s = (-q) k * (-s) (RoPE is linear; negation flips the sign bit exactly in every
  // dtype), and scale 0 makes every score 0 whatever q, so zero queries with scale 1.
  std::vector<uint8_t> q_flipped;
  if (a.key_mask && !(a.scale > 0.0f)) {
    const int64_t esize = a.dtype == kF32 ? 4 : 2, n = a.B * a.H * a.Nq * a.D;
    q_flipped.assign(size_t(n * esize), 0);
    if (a.scale < 0.0f) {
      std::memcpy(q_flipped.data(), a.q, q_flipped.size());
      for (int64_t i = 0; i < n; ++i) q_flipped[size_t(i * esize + esize - 1)] ^= 0x80;
    }
    a.q = q_flipped.data();
    a.scale = a.scale < 0.0f ? -a.scale : 1.0f;
  }
  table(current_isa()).rope_attention(a, par);
}

void spatial_perceiver(const PerceiverArgs& a, const Parallel& par) {
  table(current_isa()).spatial_perceiver(a, par);
}

void perceiver_attention(const PerceiverAttnArgs& a, const Parallel& par) {
  table(current_isa()).perceiver_attention(a, par);
}

}  // namespace edgetam_cpu
