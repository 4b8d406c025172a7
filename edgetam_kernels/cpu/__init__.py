"""CPU backend: C++ kernels from csrc/ (scalar, AVX2, AVX-512, NEON), chosen at run time.

The compiled extension `edgetam_kernels._C` registers `torch.ops.edgetam_cpu.*` through the
LibTorch stable ABI; this module is the thin Python side: it makes inputs contiguous, maps dtypes
to the kernels' compute modes and says which inputs the kernels take (`supports`).

ISA path: the best one the CPU supports (cpuid on x86, getauxval on aarch64). Force one with the
environment variable EDGETAM_KERNELS_CPU_ISA (read at import) or `set_isa(name)` /
`with force_isa(name):` (names in ISA_NAMES; None / "auto" = best).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from .._registry import Backend

ISA_NAMES = ("scalar", "avx2", "avx512", "avx512_bf16", "avx512_amx", "neon", "neon_fp16",
             "neon_bf16")
ENV_ISA = "EDGETAM_KERNELS_CPU_ISA"
_COMPUTE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

try:
    from .. import _C  # noqa: F401  (loading it registers torch.ops.edgetam_cpu)
    _ops = torch.ops.edgetam_cpu
    _ERROR = None
except ImportError as e:  # built without a compiler, or not built yet
    _ops = None
    _ERROR = f"extension not built ({e})"


def _isa_index(name: str) -> int:
    if name not in ISA_NAMES:
        raise ValueError(f"unknown CPU ISA {name!r}; choose one of {('auto',) + ISA_NAMES}")
    return ISA_NAMES.index(name)


def available_isas() -> tuple:
    """The ISA paths this build and this CPU can run."""
    if _ops is None:
        return ()
    return tuple(n for i, n in enumerate(ISA_NAMES) if _ops.isa_supported(i))


def isa() -> Optional[str]:
    """The ISA path the kernels use now (None without the extension)."""
    return ISA_NAMES[_ops.get_isa()] if _ops is not None else None


def best_isa() -> Optional[str]:
    return ISA_NAMES[_ops.best_isa()] if _ops is not None else None


def set_isa(name: Optional[str]) -> None:
    """Force an ISA path (e.g. "avx2"), or None / "auto" for the best one."""
    if _ops is None:
        raise RuntimeError(f"the CPU backend is unavailable: {_ERROR}")
    if name is None or name == "auto":
        _ops.set_isa(-1)
        return
    if not _ops.set_isa(_isa_index(name)):
        raise ValueError(f"CPU ISA {name!r} is not supported here; available: {available_isas()}")


@contextlib.contextmanager
def force_isa(name: Optional[str]):
    """`with force_isa("avx2"): ...` runs the CPU kernels on that path, then restores."""
    before = isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(before)


if _ops is not None:
    # Shapes for tracing (opcheck, torch.compile) of the raw kernel op.
    @torch.library.register_fake("edgetam_cpu::rope_attention")
    def _(q, k, v, q_h, q_w, k_h, k_w, k_repeat, num_k_exclude_rope, theta, scale, compute,
          key_mask=None):
        return q.new_empty((*q.shape[:3], v.shape[3]))

    @torch.library.register_fake("edgetam_cpu::spatial_perceiver")
    def _(x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth, heads, use_self_attn,
          eps, compute):
        n = sum(t.shape[0] for t in (latents_1d, latents_2d) if t is not None)
        return x.new_empty((x.shape[0], n, x.shape[1]))

    @torch.library.register_fake("edgetam_cpu::perceiver_attention")
    def _(latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out, heads,
          eps):
        return latents.new_empty(latents.shape)


if _ops is not None and os.environ.get(ENV_ISA, "").strip() not in ("", "auto"):
    try:
        set_isa(os.environ[ENV_ISA].strip())
    except ValueError as e:
        _ERROR = f"{ENV_ISA}: {e}"


# ---------------------------------------------------------------------------------------------
# Kernels: the reference functions' signatures
# ---------------------------------------------------------------------------------------------


def rope_attention(q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope=0, theta=10000.0,
                   scale=None, compute_dtype=None, key_mask=None):
    if scale is None:
        scale = q.shape[-1] ** -0.5
    compute = _COMPUTE[compute_dtype if compute_dtype is not None else q.dtype]
    return _ops.rope_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), int(q_grid[0]), int(q_grid[1]),
        int(k_grid[0]), int(k_grid[1]), int(k_repeat), int(num_k_exclude_rope), float(theta),
        float(scale), compute, None if key_mask is None else key_mask.contiguous())


def spatial_perceiver(x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth, heads=1,
                      use_self_attn=True, eps=1e-5, compute_dtype=None):
    # fp32 storage throughout; bf16 compute (asked for, or bf16 inputs) runs the global latents'
    # cross-attention products on bf16 operands where the CPU has AMX. fp16 has no such path:
    # it computes in fp32.
    compute = 1 if (compute_dtype if compute_dtype is not None else x.dtype) == torch.bfloat16 \
        else 0
    # 40-odd weights per call: skip the no-op conversions (each is a dispatcher round trip).
    if not all(w.dtype == torch.float32 and w.is_contiguous() for w in weights):
        weights = [_f32(w) for w in weights]
    out = _ops.spatial_perceiver(_f32(x), _f32(pos), _f32(latents_1d), _f32(latents_2d),
                                 weights, _f32(norm_w), _f32(norm_b),
                                 int(depth), int(heads), bool(use_self_attn), float(eps), compute)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def perceiver_attention(latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv,
                        w_out, heads=1, eps=1e-5):
    # fp32 compute for every input dtype, as the spatial perceiver: converted on the way in and out.
    out = _ops.perceiver_attention(_f32(latents), _f32(x), _f32(pos), _f32(ln_latents_w),
                                   _f32(ln_latents_b), _f32(ln_x_w), _f32(ln_x_b), _f32(w_q),
                                   _f32(w_kv), _f32(w_out), int(heads), float(eps))
    return out if latents.dtype == torch.float32 else out.to(latents.dtype)


def _f32(t):
    # No detach: the op runs below autograd (the public op differentiates through the
    # reference), and the raw kernel only reads the data.
    if t is None:
        return None
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t if t.is_contiguous() else t.contiguous()


def supports(op: str, args: tuple) -> Optional[str]:
    # The ops' argument checks have made every tensor share the first one's dtype (q's, x's).
    dtype = args[0].dtype
    if dtype not in _COMPUTE:
        return f"{dtype} inputs are not supported (float32, bfloat16, float16)"
    if op == "rope_attention":
        cd = args[9]
        if cd is not None and cd not in _COMPUTE:
            return f"compute_dtype {cd} is not supported (float32, bfloat16, float16)"
    return None


def _detail() -> str:
    cur = isa()
    how = "forced" if cur != best_isa() else "best here"
    native = {"avx512_bf16": "bf16 dot: vdpbf16ps", "avx512_amx": "bf16 compute: AMX tdpbf16ps",
              "neon_bf16": "bf16 dot: bfdot",
              "neon_fp16": "fp16 arithmetic"}.get(cur, "reduced precision emulated in fp32")
    return f"{cur} ({how}; {native}); threads: torch.get_num_threads()={torch.get_num_threads()}"


BACKEND = Backend(
    name="cpu",
    device_types=("cpu",),
    kernels=({"rope_attention": rope_attention, "perceiver_attention": perceiver_attention,
              "spatial_perceiver": spatial_perceiver} if _ops is not None else {}),
    unavailable=lambda: _ERROR,
    supports=supports,
    detail=_detail,
)
