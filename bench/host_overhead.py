"""Host (Python) overhead: per call of the perceiver's paths (kernels stubbed out), and with
--frame per steady-state tracked frame of each tracker.

--frame: aten ops dispatched per frame (a TorchDispatchMode counter: every op that reaches the
Python dispatcher once autograd and composite ops have been resolved; our custom ops count as
one) and where a frame's time goes, on the CPU at a tiny input, for Meta's predictor, HF's
EdgeTamVideoModel, edgetam.VideoPredictor before the Tracker (read from git), this checkout's
VideoPredictor, Tracker.track and the pure Tracker.step (bench/frame_runners.py). Steady state:
--warm frames first (past the 7-frame memory and the 16-pointer windows), then --frames timed.
Columns: wall ms per frame (median of the timed frames, no counter attached); in-op ms (time
inside the dispatched ops) and host ms (the rest: Python and dispatch outside the ops, which on
a GPU is what issues the launches) from a second, counted pass over as many frames, whose own
per-op cost is measured on a trivial op and taken off.

    python bench/host_overhead.py --frame [--size 256] [--objects 1] \
        [--out bench/results/host_overhead_frame.md]

On a GPU an eager call costs whatever the host spends issuing it whenever that exceeds the
kernels' time: EdgeTAM's perceiver on an H200 ran 0.628 ms eagerly against 0.103 ms in a CUDA
graph (bench/results/triton_h200.md). This measures that host time on any machine, no GPU:
the C++ kernel is replaced by a constant-time stub and the Triton launches by no-ops (CPU tensors
under TRITON_INTERPRET=1), so what is left is our own Python (argument checks, backend choice,
torch's custom-op dispatch, the Triton launcher's bookkeeping, the patched modules' weight
gathering). Not included: Triton's own launch path and CUDA allocations, which need a GPU.

    python bench/host_overhead.py [--rounds 15] [--calls 200]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # the triton backend accepts CPU tensors (launches stubbed)
# this checkout's packages, whichever one is installed
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import edgetam_kernels as ek  # noqa: E402
from edgetam_kernels._compat import shim_torchvision  # noqa: E402

shim_torchvision()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import _models as M  # noqa: E402


class _NoLaunch:
    """Stands in for a @triton.jit kernel: kernel[grid](...) does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _best(f, calls: int, rounds: int) -> float:
    for _ in range(20):
        f()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


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
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--frame", action="store_true",
                    help="per tracked frame of each tracker instead of the perceiver's calls")
    ap.add_argument("--size", type=int, default=256, help="--frame: input size")
    ap.add_argument("--objects", type=int, default=1, help="--frame: tracked objects")
    ap.add_argument("--warm", type=int, default=18, help="--frame: untimed frames first")
    ap.add_argument("--frames", type=int, default=5, help="--frame: timed and counted frames")
    ap.add_argument("--runners", default="meta,hf,predictor_before,predictor,tracker,step",
                    help="--frame: which trackers (bench/frame_runners.py)")
    ap.add_argument("--before", default=None,
                    help="--frame: git ref of 'before' (default: the commit before "
                         "edgetam/tracker.py was added)")
    ap.add_argument("--out", default=None, help="--frame: also write the table to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.frame:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        return frame_table(a)

    from edgetam_kernels import cpu
    from edgetam_kernels.patch import perceiver_weights
    from edgetam_kernels.triton import perceiver as tp

    x, pos = M.perceiver_inputs(64, 1, seed=1)
    meta = M.meta_perceiver(seed=1).eval()
    hf = M.hf_perceiver_like(meta).eval()
    out = torch.empty(1, 512, 64)
    stub = lambda *args: out.clone()  # noqa: E731 - a fresh output, as a kernel returns
    cpu.BACKEND.kernels["spatial_perceiver"] = stub
    for name in ("_ln_kv", "_cross", "_cross_merge", "_self"):
        setattr(tp, name, _NoLaunch())
    ws = [w.detach() for w in perceiver_weights(meta)]
    args = (x, pos, meta.latents.detach(), meta.latents_2d.detach(), ws,
            meta.norm.weight.detach(), meta.norm.bias.detach())
    patched_meta = ek.patch(copy.deepcopy(meta), backend="cpu")
    patched_hf = ek.patch(copy.deepcopy(hf), backend="cpu")
    rows = {
        "stub alone (a clone of the 512 x 64 output)": stub,
        "spatial_perceiver op, cpu backend": lambda: ek.spatial_perceiver(*args, depth=2,
                                                                          backend="cpu"),
        "Triton launcher alone (6 launches stubbed)": lambda: tp.spatial_perceiver(
            *args, 2, 1, True, 1e-5),
        "spatial_perceiver op, triton backend": lambda: ek.spatial_perceiver(*args, depth=2,
                                                                             backend="triton"),
        "patched Meta PerceiverResampler (cpu)": lambda: patched_meta(x, pos),
        "patched HF EdgeTamVideoPerceiverResampler (cpu)": lambda: patched_hf(x, pos),
    }
    print(f"# Host time per call, kernels stubbed: {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, torch {torch.__version__}, 1 thread, "
          f"min of {a.rounds} rounds x {a.calls} calls\n")
    print("| path (EdgeTAM perceiver, 64x64x64 memory, eval, no_grad) | us per call |")
    print("|---|---|")
    with torch.no_grad():
        for name, f in rows.items():
            print(f"| {name} | {_best(f, a.calls, a.rounds) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
