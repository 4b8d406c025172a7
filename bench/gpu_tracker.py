"""Tracking speed on one GPU, every tracker in one run: frames per second at 1024 and 512, 1 and
3 objects, fp32 and bf16, for

  tracker:graph   edgetam.Tracker, graph="auto": the step captured as a CUDA graph and replayed
  tracker:eager   edgetam.Tracker, graph=False: the same step launched op by op
  meta            Meta's SAM2VideoPredictor (edgetam-dimos), eager
  hf              Hugging Face's EdgeTamVideoModel, streaming session
  meta+compile    Meta's with its own compile option (compile_image_encoder: torch.compile of
                  the image encoder, mode max-autotune, fullgraph). It compiles once per size
                  and precision, minutes each: by default only at the first size and precision
                  (1024, bf16: the headline comparison), --compile-all for every group

then GPU memory after 500 frames (1024, 1 object, bf16). Random weights, object score forced
positive (bench/frame_runners.py). bf16: our Tracker runs the model's weights in bfloat16
(Tracker(dtype=torch.bfloat16)); Meta's and HF's run under bf16 autocast, as their demos do.
FPS = timed frames / wall time, device synchronised at both ends, after warm-up frames (graph
capture, compilation). Cases run in priority order (the 1024 / bf16 / 1-object headline first)
and are skipped once --budget seconds are spent; results are rewritten after every case, so a
run cut short keeps them.

    python bench/gpu_tracker.py --out DIR [--budget 360]
    python bench/gpu_tracker.py --smoke --out out/gpu_smoke    # CPU, 256x256, a few frames: no crash
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import frame_runners as R  # noqa: E402

IMPLS = ("tracker:graph", "tracker:eager", "meta", "hf", "meta+compile")
TARGET_FPS = 300.0  # issue 18: 1024, bf16, 1 object, with the graph, on an H100


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--budget", type=float, default=360.0, help="seconds for the whole run")
    ap.add_argument("--sizes", default="1024,512")
    ap.add_argument("--objects", default="1,3")
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--impls", default=None, help=f"comma list of {', '.join(IMPLS)} (all)")
    ap.add_argument("--warm", type=int, default=5, help="untimed frames per case")
    ap.add_argument("--frames", type=int, default=200, help="timed frames per case (at most)")
    ap.add_argument("--case-seconds", type=float, default=3.0,
                    help="stop a case's timed frames after this long")
    ap.add_argument("--memory-frames", type=int, default=500)
    ap.add_argument("--compile-all", action="store_true",
                    help="meta+compile in every group, not only the first size and precision")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, 256x256, 1 and 2 objects, 2 timed frames, 12-frame memory run, "
                         "no Meta compile unless --impls names it: checks the script runs")
    a = ap.parse_args(argv)
    if a.smoke:
        a.sizes, a.objects, a.warm, a.frames, a.memory_frames = "256", "1,2", 1, 2, 12
        a.impls = a.impls or ",".join(i for i in IMPLS if i != "meta+compile")
    a.impls = a.impls or ",".join(IMPLS)
    return a


class Bench:
    def __init__(self, a):
        self.a = a
        self.device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
        self.t0 = time.time()
        self.runners = {}
        self.rows, self.memory, self.skipped, self.errors = [], [], [], []
        self.stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    # --- helpers ------------------------------------------------------------------------------

    def left(self) -> float:
        return self.a.budget - (time.time() - self.t0)

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def runner(self, impl, size, precision):
        key = (impl, size, precision)
        if key not in self.runners:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            name, _, variant = impl.partition(":")
            kw = {}
            if name == "tracker":
                kw["graph"] = "auto" if variant == "graph" else False
            if impl == "meta+compile":
                name, kw = "meta", {"compile": True}
            self.runners[key] = R.RUNNERS[name](size=size, device=self.device, dtype=dtype,
                                                **kw)
        return self.runners[key]

    # --- cases --------------------------------------------------------------------------------

    def fps_case(self, impl, size, precision, objects):
        r = self.runner(impl, size, precision)
        with torch.inference_mode():
            r.start(num_objects=objects)
            for _ in range(self.a.warm):
                r.next()
            self.sync()
            t = time.perf_counter()
            n = 0
            while n < self.a.frames:
                r.next()
                n += 1
                if time.perf_counter() - t > self.a.case_seconds:
                    break
            self.sync()
            wall = time.perf_counter() - t
        return {"impl": impl, "size": size, "precision": precision, "objects": objects,
                "frames": n, "fps": n / wall, "ms_per_frame": wall / n * 1e3}

    def memory_case(self, impl, size, precision):
        r = self.runner(impl, size, precision)
        cuda = self.device == "cuda"
        r.stop()
        with torch.inference_mode():
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            r.start(num_objects=1)
            at, n = {}, 0
            early = min(20, self.a.memory_frames)
            while n < self.a.memory_frames and self.left() > 5:
                r.next()
                n += 1
                if n == early or n == self.a.memory_frames:
                    self.sync()
                    at[n] = (torch.cuda.memory_allocated() - base) if cuda else 0
            peak = (torch.cuda.max_memory_allocated() - base) if cuda else 0
        mib = 2.0 ** 20
        first, last = at.get(early), at.get(n)
        growth = None if first is None or last is None or n <= early else \
            (last - first) / (n - early) / 1024
        return {"impl": impl, "size": size, "precision": precision, "frames": n,
                "mib_at_early": None if first is None else first / mib, "early": early,
                "mib_at_end": None if last is None else last / mib, "peak_mib": peak / mib,
                "kib_per_frame": growth}

    def run(self):
        a = self.a
        sizes = [int(s) for s in a.sizes.split(",")]
        objects = [int(n) for n in a.objects.split(",")]
        precisions = a.precisions.split(",")
        impls = a.impls.split(",")
        groups = [(s, p, n) for n in objects for s in sizes for p in precisions]
        memory_after = sum(1 for g in groups if g[2] == objects[0])  # after the 1-object groups
        for i, (size, precision, n) in enumerate(groups):
            for impl in impls:
                if impl == "meta+compile" and not a.compile_all and \
                        (size, precision) != (sizes[0], precisions[0]):
                    continue
                self.guarded(f"fps {impl} {size} {precision} {n}obj",
                             lambda: self.rows.append(self.fps_case(impl, size, precision, n)))
            if i + 1 == memory_after:
                for impl in ("tracker:graph", "meta", "hf"):
                    if impl in impls:
                        self.guarded(f"memory {impl}", lambda: self.memory.append(
                            self.memory_case(impl, sizes[0], precisions[0])))
        self.write()

    def guarded(self, what, fn):
        if self.left() < 10:
            self.skipped.append(what)
            print(f"[{time.time() - self.t0:6.0f}s] skip (budget) {what}", flush=True)
            return
        try:
            fn()
            print(f"[{time.time() - self.t0:6.0f}s] {what}: {self.last(what)}", flush=True)
        except Exception as e:  # noqa: BLE001 - one failing case must not end the run
            self.errors.append({"case": what, "error": f"{type(e).__name__}: {e}",
                                "trace": traceback.format_exc()[-2000:]})
            print(f"[{time.time() - self.t0:6.0f}s] ERROR {what}: {type(e).__name__}: {e}",
                  flush=True)
        self.write()

    def last(self, what):
        row = self.memory[-1] if what.startswith("memory") else self.rows[-1]
        if "fps" in row:
            return f"{row['fps']:.1f} FPS ({row['frames']} frames)"
        return f"{row['mib_at_end']} MiB after {row['frames']} frames"

    # --- report -------------------------------------------------------------------------------

    def write(self):
        os.makedirs(self.a.out, exist_ok=True)
        dev = torch.cuda.get_device_name() if self.device == "cuda" else platform.processor()
        info = {"device": dev, "torch": torch.__version__, "smoke": self.a.smoke,
                "seconds": round(time.time() - self.t0), "stamp": self.stamp}
        data = {"info": info, "fps": self.rows, "memory": self.memory, "skipped": self.skipped,
                "errors": self.errors}
        base = os.path.join(self.a.out, f"gpu_tracker_{self.stamp}")
        with open(base + ".json", "w") as fh:
            json.dump(data, fh, indent=1)
        with open(base + ".md", "w") as fh:
            fh.write(self.markdown(info))

    def markdown(self, info):
        lines = [f"# Tracking FPS, every tracker in one run: {info['device']}", "",
                 f"torch {info['torch']}, random weights, {info['seconds']} s"
                 + (" (SMOKE RUN: CPU, tiny, numbers meaningless)" if info["smoke"] else ""), "",
                 "| size | precision | objects | " + " | ".join(IMPLS) + " |",
                 "|---|---|---|" + "---|" * len(IMPLS)]
        groups = {}
        for r in self.rows:
            groups.setdefault((r["size"], r["precision"], r["objects"]), {})[r["impl"]] = r
        for (size, prec, n), by in groups.items():
            cells = [f"{by[i]['fps']:.1f}" if i in by else "-" for i in IMPLS]
            lines.append(f"| {size} | {prec} | {n} | " + " | ".join(cells) + " |")
        lines += ["", "FPS (frames per second, higher is better); '-': not run (budget, error "
                  "or not asked)."]
        head = groups.get((1024, "bf16", 1), {})
        if "tracker:graph" in head:
            fps = head["tracker:graph"]["fps"]
            lines.append(f"Target 1 (1024, bf16, 1 object, graph >= {TARGET_FPS:.0f} FPS): "
                         f"{fps:.1f} FPS, {'met' if fps >= TARGET_FPS else 'NOT met'}.")
            if "meta+compile" in head:
                ratio = fps / head["meta+compile"]["fps"]
                lines.append(f"Target 2 (>= 2x Meta's compiled predictor): {ratio:.2f}x, "
                             f"{'met' if ratio >= 2 else 'NOT met'}.")
        if self.memory:
            lines += ["", "| GPU memory (1 object) | frames | MiB after "
                      f"{self.memory[0]['early']} frames | MiB at the end | peak MiB | "
                      "KiB added per frame |", "|---|---|---|---|---|---|"]
            for m in self.memory:
                def f(x, fmt="{:.0f}"):
                    return "-" if x is None else fmt.format(x)

                lines.append(f"| {m['impl']} ({m['size']}, {m['precision']}) | {m['frames']} | "
                             f"{f(m['mib_at_early'])} | {f(m['mib_at_end'])} | "
                             f"{f(m['peak_mib'])} | {f(m['kib_per_frame'], '{:.1f}')} |")
        if self.skipped:
            lines += ["", "Skipped (budget): " + "; ".join(self.skipped)]
        if self.errors:
            lines += ["", "Errors:"] + [f"- {e['case']}: {e['error']}" for e in self.errors]
        return "\n".join(lines) + "\n"


def main(argv=None):
    a = parse(argv)
    if a.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    bench = Bench(a)
    print(f"gpu_tracker: device {bench.device}, budget {a.budget:.0f} s", flush=True)
    bench.run()
    print(f"wrote {os.path.join(a.out, 'gpu_tracker_' + bench.stamp)}.md / .json")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
