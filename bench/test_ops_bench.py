"""One benchmark per (op, provider) on EdgeTAM's shapes, every provider of an op side by side.

Providers: the reference, each built backend, SDPA without RoPE, Meta's and HF's module code,
torch.compile of the reference. extra_info carries FLOPs, GFLOP/s, the fraction of the measured
matmul ceiling and the machine, so the saved JSON is self-describing.
"""

import functools
import os

import pytest
import torch

from edgetam_kernels import benchmarks as B
from edgetam_kernels.harness import ceilings, machine, sync

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = getattr(torch, os.environ.get("EDGETAM_BENCH_DTYPE", "float32"))
GRID = int(os.environ.get("EDGETAM_BENCH_GRID", "64"))


@functools.lru_cache(maxsize=None)
def cases():
    return {c.op + ":" + c.name.split()[1] if c.op == "rope_attention" else c.op: c
            for c in B.all_cases(DEVICE, DTYPE, quick=GRID == 32)}


@functools.lru_cache(maxsize=None)
def ceiling():
    return ceilings(DEVICE, [DTYPE])


PARAMS = [(key, provider) for key, case in cases().items() for provider in case.providers]


@pytest.mark.parametrize("key,provider", PARAMS, ids=[f"{k}-{p}" for k, p in PARAMS])
def test_bench(benchmark, key, provider):
    case = cases()[key]
    fn = case.providers[provider]
    benchmark.group = case.name

    def run():
        with torch.no_grad():
            fn()
        sync(DEVICE)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    best = benchmark.stats.stats.min
    benchmark.extra_info.update(
        flops=case.flops, bytes=case.bytes, gflops=case.flops / best / 1e9,
        ceiling_gflops=ceiling()["matmul_gflops"],
        ceiling_frac=case.flops / best / 1e9 / ceiling()["matmul_gflops"],
        machine=machine(), dtype=str(DTYPE), device=DEVICE)
