"""The benchmark harness every timing in this project goes through: `python -m edgetam_kernels
bench`, `pytest bench/ --benchmark-only`, the bench/ scripts and `python -m
edgetam_kernels.cpu.bench`.

    timing     sync, race (candidates interleaved round by round, order rotated, warm-up),
               stats (min / median), ceilings (a large matmul per dtype and a large copy),
               machine (CPU model and flags, torch, threads)
    variants   "unpatched" | "patched:<backend>[:<option>...]": one parser, one meaning
    report     results in pytest-benchmark's JSON layout and as markdown tables
    e2e        Meta's and HF's trackers, image encoders and memory-attention modules as timed
               workloads (the hosts of edgetam_kernels.testing.hosts)
"""

from .timing import ceilings, machine, race, stats, sync
from .variants import Variant, parse_variants

__all__ = ["Variant", "ceilings", "machine", "parse_variants", "race", "stats", "sync"]
