"""Host (Python) overhead per steady-state tracked frame of each tracker, on the CPU at a tiny
input (also run as `python bench/host_overhead.py --frame ...`).

Counts the aten ops dispatched per frame (a TorchDispatchMode counter: every op that reaches
the Python dispatcher once autograd and composite ops have been resolved; our custom ops count
as one) and splits a frame's time, for Meta's predictor, HF's EdgeTamVideoModel,
edgetam.VideoPredictor before the Tracker (read from git), this checkout's VideoPredictor,
Tracker.track and the pure Tracker.step (bench/frame_runners.py). Steady state: --warm frames
first (past the 7-frame memory and the 16-pointer windows), then --frames timed. Columns: wall
ms per frame (median of the timed frames, no counter attached); in-op ms (time inside the
dispatched ops) and host ms (the rest: Python and dispatch outside the ops, which on a GPU is
what issues the launches) from a second, counted pass over as many frames, whose own per-op
cost is measured on a trivial op and taken off.

    python bench/host_frame.py [--size 256] [--objects 1] [--out bench/results/host_overhead_frame.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's packages, whichever is installed

import torch  # noqa: E402


class _OpCounter:
    """TorchDispatchMode that counts the ops dispatched and the time spent inside them."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                t = time.perf_counter()
                out = func(*args, **(kwargs or {}))
                counter.in_op_s += time.perf_counter() - t
                counter.ops += 1
                counter.by_op[func] = counter.by_op.get(func, 0) + 1
                return out

        self.mode = Mode()
        self.ops, self.in_op_s, self.by_op = 0, 0.0, {}


def _frame_row(name, a):
    import frame_runners as R

    runner = R.RUNNERS[name](size=a.size, device="cpu", **(
        {"before_ref": a.before} if name == "predictor_before" and a.before else {}))
    runner.start(num_objects=a.objects)
    for _ in range(a.warm):
        runner.next()
    walls = []
    for _ in range(a.frames):
        t = time.perf_counter()
        runner.next()
        walls.append(time.perf_counter() - t)
    counter = _OpCounter()
    t = time.perf_counter()
    with counter.mode:
        for _ in range(a.frames):
            runner.next()
    counted = time.perf_counter() - t
    # host time from the counted pass itself: its wall time less the time inside the ops and
    # less what the counter adds per op (measured on a trivial op)
    host = counted - counter.in_op_s - counter.ops * _counter_cost_per_op()
    top = sorted(counter.by_op.items(), key=lambda kv: -kv[1])[:3]
    return {"ops": counter.ops / a.frames, "wall_ms": statistics.median(walls) * 1e3,
            "in_op_ms": counter.in_op_s / a.frames * 1e3, "host_ms": host / a.frames * 1e3,
            "top": ", ".join(f"{str(f).replace('aten.', '')} {n / a.frames:.0f}" for f, n in top)}


def _counter_cost_per_op(calls: int = 2000) -> float:
    """Seconds the counting mode adds to one dispatched op (outside the op's own time)."""
    x = torch.zeros(4)

    def loop():
        t = time.perf_counter()
        for _ in range(calls):
            torch.add(x, 1)
        return time.perf_counter() - t

    plain = min(loop() for _ in range(3))
    counter = _OpCounter()
    with counter.mode:
        counted = min(loop() for _ in range(3))
    return max(counted - plain, 0.0) / calls


FRAME_LABELS = {
    "meta": "Meta SAM2VideoPredictor (edgetam-dimos)",
    "hf": "HF EdgeTamVideoModel (streaming session)",
    "predictor_before": "edgetam.VideoPredictor before the Tracker",
    "predictor": "edgetam.VideoPredictor (this checkout)",
    "tracker": "edgetam.Tracker.track",
    "step": "Tracker.step alone (the graph / export unit)",
}


def frame_table(a):
    import frame_runners as R

    before = a.before or R.before_tracker_ref()
    sha = subprocess.run(["git", "rev-parse", "--short", before], capture_output=True,
                         text=True, cwd=R.ROOT).stdout.strip()
    lines = [f"# Host overhead per steady-state tracked frame (CPU, {a.size}x{a.size}, "
             f"{a.objects} object(s))", "",
             f"{platform.processor() or platform.machine()}, Python "
             f"{platform.python_version()}, torch {torch.__version__}, 1 thread; random "
             f"weights, fp32; {a.warm} frames of warm-up, then {a.frames} frames; 'before' = "
             f"edgetam at {sha} ({before}).", "",
             "| tracker | aten ops / frame | wall ms / frame | in-op ms | host ms "
             "| most frequent ops / frame |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with torch.inference_mode():
        for name in a.runners.split(","):
            try:
                r = _frame_row(name, a)
                row = (f"| {FRAME_LABELS.get(name, name)} | {r['ops']:.0f} | {r['wall_ms']:.1f} "
                       f"| {r['in_op_ms']:.1f} | {r['host_ms']:.1f} | {r['top']} |")
            except Exception as e:  # noqa: BLE001 - one failing tracker must not hide the rest
                row = f"| {FRAME_LABELS.get(name, name)} | error: {type(e).__name__}: {e} | | | | |"
            lines.append(row)
            print(row, flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"wrote {a.out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="host overhead per tracked frame")
    ap.add_argument("--frame", action="store_true", help="(accepted: host_overhead.py's switch)")
    ap.add_argument("--size", type=int, default=256, help="input size (256 is the smallest)")
    ap.add_argument("--objects", type=int, default=1, help="tracked objects")
    ap.add_argument("--warm", type=int, default=18, help="untimed frames first")
    ap.add_argument("--frames", type=int, default=5, help="timed and counted frames")
    ap.add_argument("--runners", default="meta,hf,predictor_before,predictor,tracker,step",
                    help="which trackers (bench/frame_runners.py)")
    ap.add_argument("--before", default=None,
                    help="git ref of 'before' (default: the commit before edgetam/tracker.py "
                         "was added)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    frame_table(a)


if __name__ == "__main__":
    main()
