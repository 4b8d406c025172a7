"""bf16 requested vs fp32 on Meta's memory-attention module, on this machine's precision policy.

    python bench/precision_memory_attention.py [--grid 64] [--rounds 5] [--json out.json]

Meta's MemoryAttention (edgetam.yaml, random weights) at EdgeTAM's shapes: grid = image size / 16
(64 at 1024), 7 memory frames, 16 object pointers, batch 1. Variants, interleaved round by round
(order rotated per round, so a load change on a shared machine hits all alike):
  unpatched            Meta's module, fp32
  patched fp32         patch(m, compute_dtype=torch.float32)
  patched bf16 asked   patch(m, compute_dtype=torch.bfloat16): what the policy runs (bf16 where
                       this CPU runs it fast, else fp32 with one warning)
  patched auto         patch(m, compute_dtype="auto")
  patched bf16 forced  the same with EDGETAM_KERNELS_REDUCED_PRECISION=force: bf16 however slow
                       (what `bf16 asked` did before the policy)
Prints the CPU model, its relevant flags, the policy's decision and min / median ms per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's package, not another install

from edgetam_kernels._compat import shim_torchvision  # noqa: E402

shim_torchvision()

import torch  # noqa: E402

import edgetam_kernels as ek  # noqa: E402
from edgetam_kernels import precision  # noqa: E402
from edgetam_kernels.harness.timing import machine, race  # noqa: E402
from edgetam_kernels.testing import hosts as M  # noqa: E402

VARIANTS = {"unpatched": None, "patched fp32": torch.float32,
            "patched bf16 asked": torch.bfloat16, "patched auto": "auto",
            "patched bf16 forced": torch.bfloat16}


def apply(module, variant: str) -> None:
    ek.unpatch(module)
    if variant == "unpatched":
        return
    forced = variant.endswith("forced")
    before = os.environ.get(precision.ENV_MODE)
    os.environ[precision.ENV_MODE] = "force" if forced else "auto"
    try:
        ek.patch(module, backend="auto", compute_dtype=VARIANTS[variant])
    finally:
        if before is None:
            del os.environ[precision.ENV_MODE]
        else:
            os.environ[precision.ENV_MODE] = before


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=int, default=64, help="64 = 1024 input, 32 = 512")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--json", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    decision = precision.decide(torch.bfloat16)
    auto = precision.decide("auto")
    print("machine:", json.dumps(info))
    print(f"policy: bf16 -> {decision.dtype} ({decision.reason})")
    print(f"policy: auto -> {auto.dtype} ({auto.reason})")

    module = M.meta_memory_attention(args.grid, seed=0)
    inputs = M.memory_attention_inputs(args.grid, frames=7, ptrs=4, batch=1, seed=1)
    names = list(VARIANTS)
    warnings.simplefilter("ignore", precision.PrecisionFallbackWarning)
    with torch.no_grad():
        seconds = race({n: (lambda: module(**inputs)) for n in names}, rounds=args.rounds,
                       before=lambda n: apply(module, n))
    times = {n: [t * 1e3 for t in seconds[n]] for n in names}
    base = min(times["unpatched"])
    print(f"\nMeta MemoryAttention, grid {args.grid}, 7 frames + 16 pointers, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"{'variant':<22} {'min ms':>9} {'median ms':>10} {'speed-up':>9}")
    rows = []
    for n in names:
        lo, med = min(times[n]), statistics.median(times[n])
        rows.append({"variant": n, "min_ms": lo, "median_ms": med, "rounds": times[n]})
        print(f"{n:<22} {lo:9.1f} {med:10.1f} {base / lo:8.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "policy_bf16": decision.reason,
                       "policy_auto": auto.reason, "grid": args.grid, "rows": rows}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
