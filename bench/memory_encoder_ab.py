"""A/B of the memory encoder: unpatched vs `patch()` (fuse_memory_encoder), one process.

Module: Meta's MemoryEncoder and HF's EdgeTamVideoMemoryEncoder as EdgeTAM configures them,
random weights, at an image size's shapes (1024: features 1 x 256 x 64 x 64, mask 1 x 1 x 1024 x
1024; the features, as the trackers pass them, a view of (HW, B, C) tokens). The two variants
are deep copies with the same weights; calls alternate A, B, A, B ... under
torch.inference_mode (as the trackers call it); min and median per call.

--track: tracked frames of the whole Meta predictor / HF model (bench/e2e_side_by_side.py's
tracker: 1 object, a point prompt on frame 0, `--frames` frames propagated per round), patched
with the defaults and `fuse_memory_encoder` off / on (plus unpatched with --unpatched), the
variants' order rotated round by round.

    python3 bench/memory_encoder_ab.py --threads 2 --rounds 15
    python3 bench/memory_encoder_ab.py --track --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "bench")]

from edgetam_kernels._compat import shim_torchvision  # noqa: E402

shim_torchvision()

import edgetam_kernels as ek  # noqa: E402

import _models as M  # noqa: E402


def build(kind: str, size: int):
    if kind == "meta":
        from hydra.utils import instantiate

        module = instantiate(M.meta_config(size).model.memory_encoder, _recursive_=True)
    else:
        from transformers.models.edgetam_video.modeling_edgetam_video import (
            EdgeTamVideoMemoryEncoder,
        )

        module = EdgeTamVideoMemoryEncoder(M.hf_config(size))
    return M.randomize_(module, seed=0).eval()


def track(args):
    import e2e_side_by_side as E

    best = E.best_backend()
    variants = (["unpatched"] if args.unpatched else []) + ["memory encoder off", "patched"]
    print(f"tracked frames at {args.size}, {args.frames} per round, backend {best}")
    print("| model | variant | min / median per frame (ms) | vs memory encoder off (min) | "
          "`_encode_new_memory` min / median per call (ms) |")
    print("|---|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        model = M.meta_video_predictor(args.size) if kind == "meta" else M.hf_model(args.size)
        fn = E.tracker(kind, model, args.size, args.frames)
        # the trackers' memory encoding step (mask -> sigmoid -> memory encoder), timed in place
        # by an instance attribute (a hook would make the patched forward step aside)
        inner, spent = model._encode_new_memory, []

        def timed(*a, **k):
            start = time.perf_counter()
            out = inner(*a, **k)
            spent.append(1e3 * (time.perf_counter() - start))
            return out

        model._encode_new_memory = timed
        enc_times = {v: [] for v in variants}

        def apply(v):
            ek.unpatch(model)
            if v != "unpatched":
                ek.patch(model, backend=best, fuse_memory_encoder=v == "patched")

        times = {v: [] for v in variants}
        with torch.inference_mode():
            for v in variants:
                apply(v)
                fn()
            for r in range(args.rounds):
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    apply(v)
                    spent.clear()
                    times[v].append(1e3 * fn())
                    enc_times[v] += spent
        ek.unpatch(model)
        base = min(times["memory encoder off"])
        for v in variants:
            ts, es = times[v], enc_times[v]
            print(f"| {kind} | {v} | {min(ts):.0f} / {statistics.median(ts):.0f} | "
                  f"{base / min(ts):.3f}x | {min(es):.1f} / {statistics.median(es):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--kinds", default="meta,hf")
    ap.add_argument("--track", action="store_true", help="tracked frames, whole models")
    ap.add_argument("--frames", type=int, default=5, help="--track: frames per round")
    ap.add_argument("--unpatched", action="store_true", help="--track: also unpatched")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.track:
        return track(args)
    g = args.size // 16
    gen = torch.Generator().manual_seed(0)
    # the features as the trackers pass them: a (B, C, H, W) view of (HW, B, C) tokens
    pix = torch.randn(g * g, 1, 256, generator=gen).permute(1, 2, 0).view(1, 256, g, g)
    mask = 4 * torch.randn(1, 1, args.size, args.size, generator=gen)
    print(f"torch {torch.__version__}, {args.threads} threads, size {args.size}, "
          f"{args.rounds} rounds")
    print("| model | unpatched min / median (ms) | patched min / median (ms) | speed-up (min) |")
    print("|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        plain = build(kind, args.size)
        fused = ek.patch(copy.deepcopy(plain), fuse_encoder=False)
        probs = torch.sigmoid(mask)
        call = ((lambda m: m(pix, mask)) if kind == "meta" else (lambda m: m(pix, probs)))
        times = {"plain": [], "fused": []}
        with torch.inference_mode():
            for m in (plain, fused, plain, fused):  # warm up (and fold)
                call(m)
            for _ in range(args.rounds):
                for name, m in (("plain", plain), ("fused", fused)):
                    start = time.perf_counter()
                    call(m)
                    times[name].append(1e3 * (time.perf_counter() - start))
        a, b = times["plain"], times["fused"]
        print(f"| {kind} | {min(a):.1f} / {statistics.median(a):.1f} | "
              f"{min(b):.1f} / {statistics.median(b):.1f} | {min(a) / min(b):.2f}x |")


if __name__ == "__main__":
    main()
