"""Tracking speed on a GPU: frames per second, one object, unpatched vs patch(backend="triton").

    python bench/gpu_e2e.py [--size 1024] [--frames 24] [--models meta,hf,ours] [--out DIR]
    python bench/gpu_e2e.py --cpu-dry-run   # tiny, reference backend on the CPU: tests the script

Models (random weights, object score forced positive so masks flow into memory; see
edgetam_kernels.testing.hosts): Meta's SAM2VideoPredictor for EdgeTAM (package sam2 / edgetam-dimos),
Hugging Face's EdgeTamVideoModel, and our edgetam/ (its "unpatched" is backend="reference").
Precisions: fp32 (TF32 off, as torch's default) and bf16 autocast (what Meta's demos use).
One timed pass = propagate through the clip after frame 0 was prompted; the first pass warms up
(Triton compiles and autotunes then). Frames/s = tracked frames / wall time of a pass, with the
device synchronised at both ends; best of --passes passes. Writes gpu_e2e_<stamp>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--frames", type=int, default=24, help="tracked frames per pass")
ap.add_argument("--passes", type=int, default=3, help="timed passes (best is reported)")
ap.add_argument("--models", default="meta,ours,hf")
ap.add_argument("--compile", action="store_true", help="also torch.compile the image encoder")
ap.add_argument("--budget", type=float, default=240.0, help="seconds before skipping")
ap.add_argument("--cpu-dry-run", action="store_true")
ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
ARGS = ap.parse_args()
if ARGS.cpu_dry_run:
    ARGS.size, ARGS.frames, ARGS.passes = 256, 2, 1

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgetam_kernels._compat import shim_torchvision  # noqa: E402

shim_torchvision()
import edgetam_kernels as ek  # noqa: E402

DEV = "cpu" if ARGS.cpu_dry_run else "cuda"
PATCHED = "reference" if ARGS.cpu_dry_run else "triton"
T0 = time.time()
STAMP = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
# --out is the run machine's folder: not part of the record
REPORT = {"args": {k: v for k, v in vars(ARGS).items() if k != "out"}, "rows": [], "errors": [],
          "skipped": []}


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def autocast(precision):
    if precision == "bf16":
        return torch.autocast(DEV, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# One tracker per model family: build(), then prompt(state) and track(state) per pass
# ---------------------------------------------------------------------------------------------


class Meta:
    name = "meta"

    def build(self):
        from edgetam._meta import build_meta_video_predictor

        from edgetam_kernels.testing import hosts as M

        self.M = M
        self.model = build_meta_video_predictor(ARGS.size, device=DEV)
        M.set_object_score_bias_(self.model.sam_mask_decoder.pred_obj_score_head)
        self.clip = M.random_clip(ARGS.frames + 1, ARGS.size, seed=1).to(DEV)

    def new_state(self):
        state = self.M.meta_init_state(self.model, self.clip)
        self.model.add_new_points_or_box(
            state, frame_idx=0, obj_id=1, points=np.array([[ARGS.size * 0.4, ARGS.size * 0.5]],
                                                          np.float32),
            labels=np.array([1], np.int32))
        return state

    def track(self, state):
        n = 0
        for _ in self.model.propagate_in_video(state):
            n += 1
        return n - 1  # frame 0 is the prompted frame

    def encoder(self):
        return self.model, "image_encoder"


class HF:
    name = "hf"

    def build(self):
        from edgetam_kernels.testing import hosts as M

        self.M = M
        self.model = M.hf_model(ARGS.size).to(DEV)
        self.clip = M.random_clip(ARGS.frames + 1, ARGS.size, seed=1).to(DEV)

    def new_state(self):
        from transformers.models.edgetam_video import EdgeTamVideoInferenceSession

        s = ARGS.size
        session = EdgeTamVideoInferenceSession(
            video=self.clip, video_height=s, video_width=s, inference_device=DEV,
            inference_state_device=DEV, video_storage_device=DEV, dtype=torch.float32)
        self.M.hf_add_prompt(session, 0, 1, points=[[s * 0.4, s * 0.5]], labels=[1])
        self.model(inference_session=session, frame_idx=0)
        return session

    def track(self, session):
        n = 0
        for _ in self.model.propagate_in_video_iterator(session, start_frame_idx=0):
            n += 1
        return n - 1

    def encoder(self):
        return self.model, "vision_encoder"


class Ours:
    name = "ours"

    def build(self):
        import warnings

        import edgetam
        from edgetam._meta import randomize_

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = edgetam.load(None, image_size=ARGS.size, backend="reference")
        randomize_(model, seed=0)
        self.model = model.to(DEV).fuse_()
        self.predictor = edgetam.VideoPredictor(self.model)
        g = torch.Generator().manual_seed(1)
        self.frames = torch.randint(0, 256, (ARGS.frames + 1, ARGS.size, ARGS.size, 3),
                                    generator=g, dtype=torch.uint8)

    def new_state(self):
        state = self.predictor.init_state(self.frames)
        self.predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                             points=[[ARGS.size * 0.4, ARGS.size * 0.5]],
                                             labels=[1])
        return state

    def track(self, state):
        n = 0
        for _ in self.predictor.propagate_in_video(state):
            n += 1
        return n - 1

    def encoder(self):
        return self.model, "image_encoder"


def apply_variant(tracker, variant):
    if tracker.name == "ours":
        tracker.model.set_backend(PATCHED if variant == "patched" else "reference")
        return
    ek.unpatch(tracker.model)
    if variant == "patched":
        ek.patch(tracker.model, backend=PATCHED)


def measure(tracker, variant, precision, compiled):
    apply_variant(tracker, variant)
    times = []
    with torch.inference_mode(), autocast(precision):
        for i in range(ARGS.passes + 1):  # pass 0 warms up
            state = tracker.new_state()
            sync()
            t = time.perf_counter()
            n = tracker.track(state)
            sync()
            if i > 0:
                times.append((time.perf_counter() - t) / n)
            del state
    best = min(times)
    row = dict(model=tracker.name, variant=variant, precision=precision,
               image_encoder="torch.compile" if compiled else "eager",
               ms_per_frame=round(best * 1e3, 3), fps=round(1.0 / best, 1),
               all_ms=[round(t * 1e3, 3) for t in times], frames=ARGS.frames)
    REPORT["rows"].append(row)
    print("   ", row, flush=True)


def run_model(cls):
    tracker = cls()
    t = time.time()
    tracker.build()
    print(f"[run ] {tracker.name}: built in {time.time() - t:.1f}s", flush=True)
    for compiled in ((False, True) if ARGS.compile else (False,)):
        if compiled:
            owner, attr = tracker.encoder()
            setattr(owner, attr, torch.compile(getattr(owner, attr)))
        for precision in ("fp32", "bf16"):
            for variant in ("unpatched", "patched"):
                if time.time() - T0 > ARGS.budget:
                    REPORT["skipped"].append(f"{tracker.name} {variant} {precision}")
                    continue
                try:
                    measure(tracker, variant, precision, compiled)
                except Exception as e:  # noqa: BLE001 - record, go on with the next variant
                    REPORT["errors"].append(dict(what=f"{tracker.name} {variant} {precision}",
                                                 error=f"{type(e).__name__}: {e}"[:500],
                                                 trace=traceback.format_exc()[-1500:]))
                    print(f"[FAIL] {tracker.name} {variant} {precision}: {e}", flush=True)
                write_report()
    if tracker.name != "ours":
        ek.unpatch(tracker.model)
    del tracker
    if DEV == "cuda":
        torch.cuda.empty_cache()


def write_report():
    os.makedirs(ARGS.out, exist_ok=True)
    base = os.path.join(ARGS.out, f"gpu_e2e_{'dryrun_' if ARGS.cpu_dry_run else ''}{STAMP}")
    with open(base + ".json", "w") as f:
        json.dump(REPORT, f, indent=1, default=str)
    env = REPORT["env"]
    md = [f"# Tracking speed on {env['gpu']}, one object, {ARGS.size}x{ARGS.size}", "",
          f"torch {env['torch']}, triton {env['triton']}, {env['utc']}; random weights; best of "
          f"{ARGS.passes} passes of {ARGS.frames} tracked frames after a warm-up pass.", "",
          "| model | image encoder | precision | unpatched ms | patched ms | unpatched FPS | "
          "patched FPS | speed-up |", "|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in REPORT["rows"]:
        by.setdefault((r["model"], r["image_encoder"], r["precision"]), {})[r["variant"]] = r
    for (model, enc, prec), v in by.items():
        u, p = v.get("unpatched"), v.get("patched")
        sp = f"{u['ms_per_frame'] / p['ms_per_frame']:.2f}x" if u and p else "-"
        md.append(f"| {model} | {enc} | {prec} | {u['ms_per_frame'] if u else '-'} | "
                  f"{p['ms_per_frame'] if p else '-'} | {u['fps'] if u else '-'} | "
                  f"{p['fps'] if p else '-'} | {sp} |")
    md += ["", f"errors: {[e['what'] + ': ' + e['error'][:200] for e in REPORT['errors']]}; "
           f"skipped: {REPORT['skipped']}", ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md))
    return base


def main():
    import triton

    env = dict(torch=torch.__version__, triton=triton.__version__,
               utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               gpu=torch.cuda.get_device_name() if DEV == "cuda" else "CPU (dry run)",
               tf32=torch.backends.cuda.matmul.allow_tf32)
    REPORT["env"] = env
    print(json.dumps(env), flush=True)
    classes = {"meta": Meta, "hf": HF, "ours": Ours}
    for name in ARGS.models.split(","):
        try:
            run_model(classes[name])
        except Exception as e:  # noqa: BLE001
            REPORT["errors"].append(dict(what=name, error=f"{type(e).__name__}: {e}"[:500],
                                         trace=traceback.format_exc()[-1500:]))
            print(f"[FAIL] {name}: {e}", flush=True)
    base = write_report()
    print(open(base + ".md").read(), flush=True)
    return 1 if REPORT["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
