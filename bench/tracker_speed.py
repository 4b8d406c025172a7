"""Per-frame time of a tracked frame: edgetam.Tracker (the pure step) vs edgetam.VideoPredictor
vs Meta's predictor, same random weights, same frames, 1 object.

    python bench/tracker_speed.py                       # 512 and 1024, 3 rounds
    python bench/tracker_speed.py --sizes 512 --frames 16 --rounds 5 --threads 2

Rounds are interleaved (Meta, VideoPredictor, Tracker, Meta, ...), so a noisy neighbour hits
all three alike; each round tracks a fresh 1-object clip and times the frames from
--warmup on (the memory windows fill over the first 7). Prints min and median ms per frame
over all timed frames of all rounds, and the ratios. Meta runs on any SDPA kernel (its CPU
default forces the slow math path) and with OpenCV hole filling if installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgetam  # noqa: E402
from edgetam import _meta, video_io  # noqa: E402


def _time_generator(gen, warmup):
    times, last = [], time.perf_counter()
    for i, _ in enumerate(gen):
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - last)
        last = now
    return times


def run_meta(meta, frames, size, click, warmup):
    import sam2.sam2_video_predictor as svp

    svp.tqdm = lambda it, **kw: it  # no progress bars between the timings
    state = _meta.init_state_on(meta, frames, size)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta.add_new_points_or_box(state, 0, 1, points=[click], labels=[1])
        return _time_generator(meta.propagate_in_video(state), warmup)


def run_video_predictor(model, frames, click, warmup):
    pred = edgetam.VideoPredictor(model)
    state = pred.init_state(frames)
    pred.add_new_points_or_box(state, 0, 1, points=[click], labels=[1])
    return _time_generator(pred.propagate_in_video(state), warmup)


def run_tracker(tr, frames, click, warmup):
    tr.reset()  # one Tracker per variant for every round: a compiled step compiles once
    tr.add(frames[0], 1, points=[click], labels=[1])
    times = []
    for t in range(1, len(frames)):
        t0 = time.perf_counter()
        tr.track(frames[t])
        if t >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true",
                    help="also time Tracker(compile=True): torch.compile(step, fullgraph=True); "
                         "compiles once per size, untimed (--warmup frames cover it)")
    ap.add_argument("--compile-options", type=json.loads, default=None, metavar="JSON",
                    help="torch.compile arguments for --compile, e.g. "
                         "'{\"options\": {\"freezing\": true}}'")
    ap.add_argument("--fast", action="store_true",
                    help="our model as the CLI runs it: BatchNorms folded (fuse_) and "
                         "edgetam_kernels.patch (Meta's stays as Meta ships it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frames, centre = video_io.synthetic_clip(args.frames)
    click = list(centre)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.frames} frames (timed from {args.warmup}), {args.rounds} rounds, 1 object, "
          f"ours {'fused + patched' if args.fast else 'as loaded'}")
    for size in args.sizes:
        meta = _meta.build_meta_video_predictor(size)
        _meta.randomize_(meta)
        ours = edgetam.load(meta.state_dict(), image_size=size)
        if args.fast:
            import edgetam_kernels

            edgetam_kernels.patch(ours.fuse_())
        runs = {"meta": lambda: run_meta(meta, frames, size, click, args.warmup),
                "VideoPredictor": lambda: run_video_predictor(ours, frames, click, args.warmup),
                "Tracker": lambda tr=edgetam.Tracker(ours): run_tracker(tr, frames, click,
                                                                         args.warmup)}
        if args.compile:
            compiled = edgetam.Tracker(ours, compile=args.compile_options or True)
            runs["Tracker+compile"] = lambda: run_tracker(compiled, frames, click, args.warmup)
        times = {k: [] for k in runs}
        with _meta.all_sdpa_kernels():
            if args.compile:
                run_tracker(compiled, frames[:3], click, 99)  # compiles (minutes), untimed
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    times[name] += fn()
        print(f"\n{size}x{size}: ms per tracked frame (min / median)")
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, v in times.items():
            print(f"  {name:16s} {1e3 * min(v):8.1f} / {1e3 * med[name]:8.1f}   "
                  f"Meta/this {med['meta'] / med[name]:5.2f}x   "
                  f"VideoPredictor/this {med['VideoPredictor'] / med[name]:5.2f}x")


if __name__ == "__main__":
    main()
