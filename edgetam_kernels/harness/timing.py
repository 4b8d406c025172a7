"""Timing rounds, ceilings and the machine's description.

On a shared machine load changes while a benchmark runs: `race` runs every candidate once per
round, in an order rotated round by round, so a slow spell hits all candidates alike, and
`stats` reports the minimum (the robust statistic there) beside the median.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import torch


def sync(device="cpu") -> None:
    """Wait for the device's queued work (GPU timings must not measure the enqueue only)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()


def race(candidates: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1,
         device="cpu", before: Optional[Callable[[str], None]] = None,
         self_timed: bool = False) -> Dict[str, List[float]]:
    """Seconds per call of every candidate, `rounds` samples each, interleaved.

    Round r runs the candidates starting at the (r mod n)-th, so none always runs first (or
    right after the same neighbour). Each candidate is called `warmup` times first.
    before(name), when given, runs untimed before each of that candidate's calls (e.g. patching
    a shared model for a variant). self_timed: a candidate returns its own seconds (a tracker
    that times its propagation only, its prompt set-up aside); otherwise the call is timed,
    the device synchronised inside.
    """
    names = list(candidates)
    if not names:
        return {}

    def one(name):
        if before is not None:
            before(name)
        sync(device)
        t0 = time.perf_counter()
        out = candidates[name]()
        sync(device)
        return float(out) if self_timed else time.perf_counter() - t0

    for name in names:
        for _ in range(warmup):
            one(name)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(one(name))
    return samples


def stats(samples: List[float]) -> Dict[str, object]:
    """pytest-benchmark's names: min, median, rounds, data (seconds)."""
    return {"min": min(samples), "median": statistics.median(samples), "rounds": len(samples),
            "data": list(samples)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _matmul_size(device, dtype, n: int, seconds: float) -> int:
    """n, or a smaller multiple of 256 whose product takes about `seconds`: where a dtype has
    no fast GEMM here (bf16 without AVX512_BF16 / AMX runs at ~1 GFLOP/s), 4096^3 would take
    minutes per call."""
    m = 256
    a, b = torch.randn(m, m, device=device).to(dtype), torch.randn(m, m, device=device).to(dtype)
    t = min(race({"probe": lambda: torch.mm(a, b)}, 3, warmup=1, device=device)["probe"])
    fit = int((seconds * 2 * m**3 / t / 2) ** (1 / 3)) // 256 * 256
    return max(256, min(n, fit))


def ceilings(device="cpu", dtypes: Iterable[torch.dtype] = (torch.float32,), n: int = 2048,
             rounds: int = 5, copy_mib: int = 64, max_seconds: float = 0.5) -> Dict[str, float]:
    """Measured here, now: torch.mm of two square matrices per dtype (GFLOP/s) and a copy of
    copy_mib MiB (GB/s, read + write), interleaved as `race` does.

    Matrices are n x n, or smaller for a dtype whose product would take over max_seconds here.
    Keys: "matmul_gflops_<dtype>" and "matmul_n_<dtype>" per dtype, "matmul_gflops" (the first
    dtype's) and "copy_gbps".
    """
    dtypes = list(dtypes)
    out: Dict[str, float] = {}
    cands = {}
    for d in dtypes:
        m = _matmul_size(device, d, n, max_seconds)
        a = torch.randn(m, m, device=device).to(d)
        b = torch.randn(m, m, device=device).to(d)
        cands[_dtype_name(d)] = lambda a=a, b=b: torch.mm(a, b)
        out[f"matmul_n_{_dtype_name(d)}"] = m
    src = torch.randn(copy_mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    cands["copy"] = lambda: dst.copy_(src)
    t = {k: min(v) for k, v in race(cands, rounds, warmup=2, device=device).items()}
    for d in dtypes:
        name = _dtype_name(d)
        out[f"matmul_gflops_{name}"] = 2 * out[f"matmul_n_{name}"] ** 3 / t[name] / 1e9
    out["matmul_gflops"] = out[f"matmul_gflops_{_dtype_name(dtypes[0])}"]
    out["copy_gbps"] = 2 * src.numel() * 4 / t["copy"] / 1e9
    return out


def _cpuinfo() -> Dict[str, str]:
    """model name and flags of the first CPU in /proc/cpuinfo (Linux), else {}."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features") and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break
    except OSError:
        pass
    return info


# the CPU flags that decide which kernels and precisions are fast here (docs/cpu.md)
_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile",
          "amx_bf16", "asimd", "asimdhp", "asimdfhm", "bf16", "i8mm", "sve")


def machine() -> Dict[str, object]:
    """What a result needs to be read later: CPU model and the flags that matter, torch, Python,
    threads, the C++ backend's ISA path, the GPU if any, the load average."""
    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
            "cpu_flags": [f for f in _FLAGS if f in flags], "machine": platform.machine(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    from .. import _registry

    backend = _registry.backends()["cpu"]
    info["cpu_backend"] = backend["detail"] if backend["available"] else backend["reason"]
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info
