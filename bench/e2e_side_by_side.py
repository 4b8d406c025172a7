"""Per tracked frame and per module call, patched vs unpatched, interleaved round by round.

    python bench/e2e_side_by_side.py \
        --json bench/results/e2e_cpu.json [--sizes 1024,512] [--rounds 3] [--frames 7]
    python bench/plot_e2e.py bench/results/e2e_cpu.json --machine "..."

Meta's EdgeTAM video predictor and HF's EdgeTamVideoModel, random weights, fp32, 1 object,
object score forced positive (bench/test_e2e.py's setup). Variants (one model per kind and size,
re-patched between runs):
  unpatched
  patched:<best>:no-fuse   patch(..., fuse_encoder=False, fuse_memory_encoder=False):
                           perceiver + attention only
  patched:<best>           patch(...) defaults: also the re-parameterised, channels-last image
                           encoder and the channels-last memory encoder
Each round runs every variant once, in an order rotated per round, so a load change on a
shared machine hits all variants alike; the JSON keeps every round (pytest-benchmark's layout,
so plot_e2e.py reads it) and min / median over rounds. Tracking: one round = propagate through a
clip after a prompted frame 0 (untimed), time / tracked frames. Encoder: Meta's
`forward_image`, HF's `get_image_features` (what their trackers call per frame: RepViT
trunk, FPN neck, the mask decoder's conv_s0 / conv_s1 on the two high-resolution levels), one
1-image call. Memory attention: the module alone on EdgeTAM's shapes (grid = size / 16, 7 memory frames, 16 object
pointers), unpatched vs patched only (fuse_encoder does not concern it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from edgetam_kernels._compat import shim_torchvision  # noqa: E402

shim_torchvision()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import edgetam_kernels as ek  # noqa: E402
import _models as M  # noqa: E402


def best_backend() -> str:
    usable = [n for n, b in ek.backends().items() if b["available"] and n != "triton"]
    return usable[-1]


def apply(model, variant: str):
    ek.unpatch(model)
    if variant != "unpatched":
        parts = variant.split(":")
        fuse = "no-fuse" not in parts
        ek.patch(model, backend=parts[1], fuse_encoder=fuse, fuse_memory_encoder=fuse,
                 compute_dtype=torch.bfloat16 if "bf16" in parts else None)
    return model


def tracker(kind: str, model, size: int, frames: int):
    """() -> seconds per tracked frame of one propagation (prompting frame 0 untimed)."""
    clip = M.random_clip(frames + 1, size, seed=1)

    def meta():
        state = M.meta_init_state(model, clip)
        model.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                    points=np.array([[size * 0.4, size * 0.5]], np.float32),
                                    labels=np.array([1], np.int32))
        t = time.perf_counter()
        for _ in model.propagate_in_video(state):
            pass
        return (time.perf_counter() - t) / frames

    def hf():
        session = M.hf_session(clip)
        M.hf_add_prompt(session, 0, 1, points=[[size * 0.4, size * 0.5]], labels=[1])
        model(inference_session=session, frame_idx=0)
        t = time.perf_counter()
        for _ in model.propagate_in_video_iterator(session, start_frame_idx=0):
            pass
        return (time.perf_counter() - t) / frames

    return meta if kind == "meta" else hf


def encoder(kind: str, model, size: int):
    x = M.random_clip(1, size, seed=2)
    # looked up per call: the variants patch and unpatch these methods on the model
    features = ((lambda image: model.forward_image(image)) if kind == "meta"
                else lambda image: model.get_image_features(image, return_dict=True))

    def run():
        t = time.perf_counter()
        features(x)
        return time.perf_counter() - t

    return run


def memory_attention(kind: str, size: int):
    grid = size // 16
    meta = M.meta_memory_attention(grid, seed=0)
    module = meta if kind == "meta" else M.hf_memory_attention_like(meta, grid)
    inputs = M.memory_attention_inputs(grid, 7, 16, 1, seed=0)
    if kind == "hf":
        inputs = M.hf_memory_attention_kwargs(inputs)

    def run():
        t = time.perf_counter()
        module(**inputs)
        return time.perf_counter() - t

    return module, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--kinds", default="meta,hf")
    ap.add_argument("--sizes", default="1024,512")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=7, help="tracked frames per round")
    ap.add_argument("--variants", default="", help="comma list (default: see docstring)")
    ap.add_argument("--cases", default="track,image_encoder,memory_attention")
    args = ap.parse_args(argv)

    best = best_backend()
    variants = args.variants.split(",") if args.variants else [
        "unpatched", f"patched:{best}:no-fuse", f"patched:{best}"]
    results = []  # pytest-benchmark-like entries
    started = time.time()
    for size in map(int, args.sizes.split(",")):
        for kind in args.kinds.split(","):
            model = M.meta_video_predictor(size) if kind == "meta" else M.hf_model(size)
            mem_module, mem_run = memory_attention(kind, size)
            cases = [(f"{kind}: tracked frames at {size}", "track", model, variants,
                      tracker(kind, model, size, args.frames)),
                     (f"{kind}: image features at {size}", "image_encoder", model, variants,
                      encoder(kind, model, size)),
                     (f"{kind}: memory attention module at {size}", "memory_attention",
                      mem_module, [v for v in variants if "no-fuse" not in v], mem_run)]
            for group, what, target, group_variants, fn in cases:
                if what not in args.cases.split(","):
                    continue
                times = {v: [] for v in group_variants}
                with torch.inference_mode():
                    for v in group_variants:  # warm-up: first-call allocations, weight folding
                        apply(target, v)
                        fn()
                    for r in range(args.rounds):
                        k = r % len(group_variants)
                        for v in group_variants[k:] + group_variants[:k]:
                            apply(target, v)
                            if what != "track":  # patching anew: weights fold on first call
                                fn()  # (tracking: on the untimed prompted frame)
                            times[v].append(fn())
                ek.unpatch(target)
                base = min(times["unpatched"]) if "unpatched" in times else None
                for v in group_variants:
                    ts = times[v]
                    results.append(dict(
                        group=group, name=f"{group} [{v}]",
                        stats=dict(min=min(ts), median=statistics.median(ts), data=ts,
                                   rounds=len(ts)),
                        extra_info=dict(model=kind, variant=v, size=size, what=what,
                                        frames=1, per="tracked frame" if what == "track"
                                        else "call", threads=torch.get_num_threads()),
                    ))
                    speed = f"{base / min(ts):.2f}x" if base else ""
                    print(f"{group:34s} {v:24s} min {min(ts) * 1e3:7.0f} ms  median "
                          f"{statistics.median(ts) * 1e3:7.0f} ms  {speed}", flush=True)
            del model, mem_module
    out = dict(
        machine_info=dict(machine=platform.machine(), processor=platform.processor(),
                          threads=torch.get_num_threads(), torch=torch.__version__,
                          load_average_at_end=os.getloadavg()),
        # the output path is this machine's; the command is recorded with its file name only
        command=" ".join([os.path.basename(sys.executable)] + [
            os.path.basename(a) if a == args.json else a for a in sys.argv]),
        seconds=round(time.time() - started), benchmarks=results,
    )
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.json} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
