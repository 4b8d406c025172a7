"""Metal kernels vs PyTorch on the MPS device, on EdgeTAM's shapes (skipped without MPS).

Providers per case: "metal" (our kernels), "reference" (the pure-PyTorch op on MPS: RoPE in torch
ops, then SDPA on MPS) and "sdpa (no RoPE)" (MPS's own attention with RoPE left out: the bar a
fused kernel has to reach). Run: `pytest bench/test_metal_bench.py --benchmark-only`.
"""

import functools
import os

import pytest
import torch

from edgetam_kernels import _registry
from edgetam_kernels import benchmarks as B
from edgetam_kernels.harness import machine, sync

_REASON = _registry.why_unavailable("metal")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"metal backend: {_REASON}")

DTYPE = getattr(torch, os.environ.get("EDGETAM_BENCH_DTYPE", "float32"))
GRID = int(os.environ.get("EDGETAM_BENCH_GRID", "64"))
PROVIDERS = ["metal", "reference", "sdpa (no RoPE)"]
CASES = ["rope_attention:self", "rope_attention:cross", "spatial_perceiver"]


@functools.lru_cache(maxsize=None)
def case(key):
    if key.startswith("rope_attention"):
        return B.rope_attention_case(key.split(":")[1], device="mps", dtype=DTYPE, grid=GRID,
                                     compile_ref=False)
    return B.spatial_perceiver_case(device="mps", dtype=DTYPE, grid=GRID, compile_ref=False)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("key", CASES)
def test_metal_bench(benchmark, key, provider):
    c = case(key)
    if provider not in c.providers:
        pytest.skip(f"{provider} does not run {c.name}")
    fn = c.providers[provider]
    benchmark.group = c.name

    def run():
        with torch.no_grad():
            fn()
        sync("mps")  # MPS work is asynchronous: time the GPU, not the enqueue

    benchmark.pedantic(run, rounds=5, warmup_rounds=2, iterations=1)
    best = benchmark.stats.stats.min
    benchmark.extra_info.update(flops=c.flops, bytes=c.bytes, gflops=c.flops / best / 1e9,
                                machine=machine(), dtype=str(DTYPE), device="mps")
