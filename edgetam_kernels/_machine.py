"""What this machine can compute fast: the inputs of the precision policy (`precision.py`).

Read from the machine, never from a list of CPU names:
- our C++ backend's ISA path (cpuid / getauxval at run time; EDGETAM_KERNELS_CPU_ISA forces one,
  and the policy follows the forced name even where the backend could not run it, so tests can
  play any CPU);
- the OS's CPU flags (/proc/cpuinfo) where the backend is not built, and for AVX512_FP16;
- torch's own CPU capability (informational);
- a one-time micro-probe of torch's reduced-precision GEMM against its fp32 GEMM: a 256 x 256
  -> 256 Linear, one thread, a few milliseconds, cached per process; run only where the CPU has
  the arithmetic (so never on an AVX2-only CPU). EDGETAM_KERNELS_GEMM_PROBE=
  fast|slow replaces the measurement.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Optional, Tuple

import torch
import torch.nn.functional as F

ENV_ISA = "EDGETAM_KERNELS_CPU_ISA"  # the CPU backend's own variable (cpu/__init__.py)
ENV_PROBE = "EDGETAM_KERNELS_GEMM_PROBE"

# A reduced dtype's GEMM counts as fast when it takes at most this fraction of fp32's time on
# the probe (AMX measured 0.2-0.5 here; emulated bf16 runs 1.2x to 120x fp32's time).
FAST_RATIO = 0.9


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU facts the policy decides from. `isa` is one of cpu.ISA_NAMES (or None: unknown);
    `flags` holds OS-reported flags the ISA name does not imply (x86: "avx512_fp16")."""

    arch: str
    isa: Optional[str]
    isa_source: str = ""
    flags: FrozenSet[str] = field(default_factory=frozenset)
    torch_capability: str = ""


def isa_from_flags(arch: str, flags) -> str:
    """The ISA path our detector would pick, from the OS's flag names (/proc/cpuinfo)."""
    f = set(flags)
    if arch in ("x86_64", "amd64", "i686"):
        avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= f
        base = {"avx2", "fma", "f16c"} <= f
        if base and avx512 and "avx512_bf16" in f and {"amx_tile", "amx_bf16"} <= f:
            return "avx512_amx"
        if base and avx512 and "avx512_bf16" in f:
            return "avx512_bf16"
        if base and avx512:
            return "avx512"
        return "avx2" if base else "scalar"
    if arch in ("aarch64", "arm64"):
        fp16 = {"fphp", "asimdhp", "asimdfhm"} <= f
        if fp16 and "bf16" in f:
            return "neon_bf16"
        return "neon_fp16" if fp16 else "neon"
    return "scalar"


@functools.lru_cache(maxsize=None)
def _os_flags() -> FrozenSet[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def cpu_features() -> CpuFeatures:
    """This machine's CpuFeatures, read now (the forced ISA may change between calls)."""
    arch, os_flags = _arch(), _os_flags()
    extra = frozenset(os_flags & {"avx512_fp16"})
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    forced = os.environ.get(ENV_ISA, "").strip()
    if forced and forced != "auto":
        from .cpu import ISA_NAMES

        if forced in ISA_NAMES:
            return CpuFeatures(arch, forced, f"forced by {ENV_ISA}", extra, capability)
        return CpuFeatures(arch, None, f"{ENV_ISA}={forced!r} is not an ISA name", extra,
                           capability)
    from . import cpu

    isa = cpu.isa()
    if isa is not None:
        how = "detected by the C++ backend" if isa == cpu.best_isa() else "forced (cpu.set_isa)"
        return CpuFeatures(arch, isa, how, extra, capability)
    if os_flags:
        return CpuFeatures(arch, isa_from_flags(arch, os_flags),
                           "from the OS's CPU flags (C++ backend not built)", extra, capability)
    return CpuFeatures(arch, None, "unknown (C++ backend not built, no CPU flags)", extra,
                       capability)


# dtype -> (fast, how it was decided)
_PROBED: Dict[torch.dtype, Tuple[bool, str]] = {}


def gemm_fast(dtype: torch.dtype) -> Tuple[bool, str]:
    """Whether torch's `dtype` GEMM (an nn.Linear's addmm) runs faster than its fp32 GEMM here,
    and how that was decided. Measured once per process and dtype unless forced."""
    forced = os.environ.get(ENV_PROBE, "").strip().lower()
    if forced:
        if forced not in ("fast", "slow"):
            raise ValueError(f"{ENV_PROBE} must be 'fast' or 'slow' (or unset), got {forced!r}")
        return forced == "fast", f"forced {forced} by {ENV_PROBE}"
    if dtype not in _PROBED:
        ratio = _probe_ratio(dtype)
        name = str(dtype).replace("torch.", "")
        _PROBED[dtype] = (ratio <= FAST_RATIO,
                          f"torch's {name} GEMM took {ratio:.2f}x fp32's time (probe; fast: "
                          f"at most {FAST_RATIO}x)")
    return _PROBED[dtype]


def _best_time(fn, reps: int, give_up_above: float = float("inf")) -> float:
    best = float("inf")
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and best > give_up_above:  # twice clearly slow: no need to wait for more
            break
    return best


def _probe_ratio(dtype: torch.dtype) -> float:
    """Time of a 256 x 256 -> 256 Linear in `dtype` over its time in fp32, one thread (the
    question is the kernel, not the threading; one thread is also the quietest measurement on
    a busy machine). Costs a few ms where the GEMM is fast (measured 0.3x fp32's time with AMX,
    where 64 rows gave a noisier 0.5-0.8x), about 0.1 s where it is emulated at 1 GFLOP/s. Plus
    torch's one-time setup of the dtype (kernels, oneDNN JIT: about 0.1 s here), which any use
    of the dtype pays once anyway."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g) for s in ((256, 256), (256, 256), (256,)))
    lx, lw, lb = x.to(dtype), w.to(dtype), b.to(dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            F.linear(x, w, b)  # first calls per shape set up (oneDNN primitives, packing)
            F.linear(lx, lw, lb)
            t32 = _best_time(lambda: F.linear(x, w, b), 5)
            low = _best_time(lambda: F.linear(lx, lw, lb), 5, give_up_above=4 * t32)
    finally:
        torch.set_num_threads(threads)
    return low / max(t32, 1e-9)


def mps_bf16_supported() -> bool:
    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps")
        return True
    except (RuntimeError, TypeError):
        return False
