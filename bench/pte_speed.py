"""Per tracked frame: the tracking step as an ExecuTorch program (.pte: XNNPACK + our kernels)
vs the eager edgetam.Tracker with our kernels vs the eager Tracker without them, side by side.

    python bench/pte_speed.py [--sizes 512,1024] [--frames 12] [--rounds 3] \
        [--json bench/results/pte_speed.json]

edgetam.EdgeTAM with random weights (object score forced positive so masks flow into memory),
fp32, 1 object, a synthetic clip; frame 0 is prompted (untimed), then every round tracks
--frames frames with each variant in turn (order rotated per round, so load changes on a shared
machine hit all alike) and keeps the per-frame mean; min and median over rounds are reported.
  pte          edgetam.pte.PteTracker: ExecuTorch's Python runtime, XNNPACK for the standard
               ops, edgetam::*.out on our C++ kernels (ExecuTorch's thread pool: all cores)
  eager+ours   edgetam.Tracker, backend "auto" (our C++ kernels) and edgetam_kernels.patch
  pte C++ runner  the same .pte through csrc/executorch/runner.cpp (ExecuTorch's C++ runtime
               with its optimized CPU kernels, as an app links it); first step left out
  eager        edgetam.Tracker, backend "reference" (plain PyTorch), unpatched
torch runs with as many threads as there are cores, like ExecuTorch's pool. Exporting takes
minutes per size: the .pte is cached in ~/.cache/edgetam_kernels/pte (EDGETAM_KERNELS_CACHE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import edgetam_kernels  # noqa: E402
from edgetam import _meta, pte, video_io  # noqa: E402
from edgetam.tracker import Tracker  # noqa: E402
from edgetam.tracker_state import DEFAULT_MAX_COND_FRAMES  # noqa: E402
from edgetam_kernels import executorch as ket  # noqa: E402


def build_model(size: int, backend: str, seed: int = 0):
    """The same weights in every process (the cached .pte was exported from them)."""
    return _meta.random_edgetam(size, seed).set_backend(backend).fuse_()


def cached_pte(size: int) -> str:
    folder = ket.cache_dir().parent / "pte"
    folder.mkdir(parents=True, exist_ok=True)
    cond = DEFAULT_MAX_COND_FRAMES  # the state layout is part of the program
    path = folder / (f"edgetam_step_{size}_fp32_1obj_c{cond}_seed0_"
                     f"et{ket.executorch_version()}.pte")
    if not path.exists():
        print(f"exporting {path.name} (minutes)...", file=sys.stderr, flush=True)
        pte.export_step(build_model(size, "auto"), path, num_objects=1)
    return str(path)


def per_frame_ms(tracker, frames) -> float:
    t0 = time.perf_counter()
    for f in frames:
        tracker.track(f)
    return (time.perf_counter() - t0) * 1e3 / len(frames)


def runner_ms(path: str, model, clip, centre) -> float:
    """Mean ms per tracked frame of csrc/executorch/runner.cpp (ExecuTorch's C++ runtime with
    its optimized kernels, as an app links it) over the clip, its first step left out."""
    tr = Tracker(model, graph=False)
    tr.add(clip[0], 1, points=[list(centre)], labels=[1])
    with tempfile.TemporaryDirectory() as work:
        steps = pte.write_runner_clip(tr, clip[1:], os.path.join(work, "in"))
        os.makedirs(os.path.join(work, "out"))
        r = subprocess.run([str(ket.runner_path()), path, os.path.join(work, "in"),
                            os.path.join(work, "out"), "--steps", str(steps), "--feedback", "2"],
                           capture_output=True, text=True, check=True)
    ms = [float(x) for x in re.findall(r"^step \d+: ([0-9.]+) ms", r.stdout, re.M)]
    return statistics.mean(ms[1:])


def bench_size(size: int, n_frames: int, rounds: int) -> dict:
    clip, centre = video_io.synthetic_clip(n_frames + 1)
    path = cached_pte(size)
    ours = build_model(size, "auto")
    edgetam_kernels.patch(ours, backend="auto")
    trackers = {
        "pte": pte.PteTracker(build_model(size, "auto"), path, num_objects=1),
        "eager+ours": Tracker(ours, graph=False),
        "eager": Tracker(build_model(size, "reference"), graph=False),
    }
    times = {k: [] for k in [*trackers, "pte C++ runner"]}
    names = list(times)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            if k == "pte C++ runner":
                times[k].append(runner_ms(path, ours, clip, centre))
                print(f"{size} round {r} {k}: {times[k][-1]:.1f} ms/frame", file=sys.stderr)
                continue
            tr = trackers[k]
            tr.reset()
            tr.add(clip[0], 1, points=[list(centre)], labels=[1])
            times[k].append(per_frame_ms(tr, clip[1:]))
            print(f"{size} round {r} {k}: {times[k][-1]:.1f} ms/frame", file=sys.stderr)
    return {"size": size, "pte_bytes": os.path.getsize(path),
            "ms_per_frame": {k: {"min": min(v), "median": statistics.median(v), "rounds": v}
                             for k, v in times.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "pte_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ket.load_kernels()
    results = {"machine": {"cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "kernels_isa": ket.kernels_isa(), "torch": torch.__version__,
                           "executorch": ket.executorch_version()},
               "sizes": [bench_size(int(s), args.frames, args.rounds)
                         for s in args.sizes.split(",")]}
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print("| size | .pte MB | pte (Python runtime) | pte (C++ runner) | eager+ours | eager | "
          "C++ runner vs eager+ours |")
    print("|---|---|---|---|---|---|---|")
    for r in results["sizes"]:
        t = {k: v["min"] for k, v in r["ms_per_frame"].items()}
        print(f"| {r['size']} | {r['pte_bytes'] / 1e6:.1f} | {t['pte']:.0f} | "
              f"{t['pte C++ runner']:.0f} | {t['eager+ours']:.0f} | {t['eager']:.0f} | "
              f"{t['eager+ours'] / t['pte C++ runner']:.2f}x |")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
