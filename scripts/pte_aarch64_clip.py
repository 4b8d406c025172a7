"""Tracks a clip with the step .pte through the aarch64 runner under qemu and compares it with the
eager Tracker (x86) frame by frame: mask agreement and largest logit difference.

    python scripts/pte_aarch64_clip.py [--pte step256.pte] [--frames 24] [--objects 1]

Without --pte the step is exported at 256 (random weights, seed 0; minutes). The aarch64 runner
is cross-built with scripts/build_executorch.sh into build/executorch/aarch64. qemu (emulating a
Neoverse-N1) runs a 1-object step at 256 in about 14 s: correctness only, never speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from edgetam import _meta, pte, video_io  # noqa: E402
from edgetam.tracker import Tracker  # noqa: E402

S = 256
OTHERS = [(100.0, 70.0), (20.0, 80.0)]  # the blue square, background


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pte", help="a step .pte exported from this script's model (default: export)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--objects", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--qemu-cpu", default="neoverse-n1",
                    help="the CPU qemu emulates (default neoverse-n1: a phone's Cortex-A76 class "
                         "core, ARMv8.2 + fp16 + dotprod; 'max' adds SVE / SME, which qemu "
                         "emulates ~13x slower per step)")
    args = ap.parse_args()
    model = _meta.random_edgetam(S, seed=0)  # the same weights as a --pte from an earlier run
    work = tempfile.mkdtemp(prefix="pte_aarch64_")
    path = args.pte or os.path.join(work, "step.pte")
    if not args.pte:
        print(f"exporting the step at {S} ({args.objects} object(s); minutes)...", flush=True)
        pte.export_step(model, path, num_objects=args.objects)
    build = os.path.join(ROOT, "build", "executorch", "aarch64")
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "build_executorch.sh"), "aarch64", build],
                   check=True)

    frames, centre = video_io.synthetic_clip(args.frames + 1, 96, 128)
    n = args.objects
    tracker = Tracker(model, graph=False)
    points = [centre, *OTHERS][:n]
    tracker.add(frames[0], list(range(1, n + 1)), points=[[list(p)] for p in points],
                labels=[[1]] * n)
    state = tracker.state()
    steps = pte.write_runner_clip(tracker, frames[1:], os.path.join(work, "in"))
    os.makedirs(os.path.join(work, "out"))
    cmd = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu", os.path.join(build, "edgetam_runner"),
           path, os.path.join(work, "in"), os.path.join(work, "out"), "--steps", str(steps),
           "--feedback", "2"]
    subprocess.run(cmd, check=True, env=dict(os.environ, QEMU_CPU=args.qemu_cpu))
    got = np.fromfile(os.path.join(work, "out", "output_0.bin"), np.float32)
    got = torch.from_numpy(got).view(steps, n, 1, S // 4, S // 4)
    worst_diff, worst_agree = 0.0, 1.0
    with torch.no_grad():
        for t, frame in enumerate(frames[1:]):
            want, _, *state = tracker.step(tracker._image(frame)[0], *state)
            diff = (got[t] - want).abs().max().item()
            agree = ((got[t] > 0) == (want > 0)).float().mean().item()
            worst_diff, worst_agree = max(worst_diff, diff), min(worst_agree, agree)
            print(f"frame {t + 1}: max |logit diff| {diff:.2e}, masks agree {agree:.5f}")
    ok = worst_diff <= 1e-3 and worst_agree >= 0.999
    print(f"aarch64 .pte vs eager x86: worst logit diff {worst_diff:.2e}, worst mask agreement "
          f"{worst_agree:.5f}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
