"""A/B of the FPN fold's input layout: the patched trunk's channels-last outputs read as they are
(`edgetam_kernels.patch.trunk_layout_kept`, the default) vs contiguous copies (as before
2026-11-29), on one patched model in one process, calls interleaved.

    python bench/fpn_layout_ab.py meta 1024 [--rounds 12]
    python bench/fpn_layout_ab.py hf 1024

Times Meta's `forward_image` / HF's `get_image_features(return_dict=True)` (what the trackers
call per frame), fp32, random weights, 2 threads unless --threads.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch  # noqa: E402

from edgetam_kernels.harness import Variant, e2e, race  # noqa: E402
from edgetam_kernels.patch import fpn  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["meta", "hf"])
    ap.add_argument("size", type=int)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = Variant.parse("patched:cpu").apply(e2e.build_model(args.kind, args.size))
    run = e2e.image_features(args.kind, model, args.size)
    kept = fpn.trunk_layout_kept
    variants = {"contiguous trunk outputs (before)": contextlib.nullcontext,
                "channels-last into the neck (default)": kept}

    def use(v):
        fpn.trunk_layout_kept = variants[v]

    try:
        with torch.no_grad():
            times = race({v: run for v in variants}, args.rounds, before=use)
    finally:
        fpn.trunk_layout_kept = kept
    base = min(times["contiguous trunk outputs (before)"])
    for v, t in times.items():
        t = sorted(t)
        print(f"{args.kind} {args.size} image features, {v:40s} min {t[0] * 1e3:7.1f} ms  "
              f"median {t[len(t) // 2] * 1e3:7.1f} ms  speed-up (min) {base / t[0]:.3f}x")


if __name__ == "__main__":
    main()
