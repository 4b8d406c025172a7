"""A/B of the memory encoder: unpatched vs `patch()` (fuse_memory_encoder), one process.

Module: Meta's MemoryEncoder and HF's EdgeTamVideoMemoryEncoder as EdgeTAM configures them,
random weights, at an image size's shapes (1024: features 1 x 256 x 64 x 64, mask 1 x 1 x 1024 x
1024; the features, as the trackers pass them, a view of (HW, B, C) tokens). The two variants
are deep copies with the same weights; calls alternate A, B, A, B ... under
torch.inference_mode (as the trackers call it); min and median per call.

--track: tracked frames of the whole Meta predictor / HF model (edgetam_kernels.harness.e2e's
tracker: 1 object, a point prompt on frame 0, `--frames` frames propagated per round), variants
patched:<best>:no-memory-encoder and patched:<best> (plus unpatched with --unpatched), the
variants' order rotated round by round (edgetam_kernels.harness.race).

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch  # noqa: E402

import edgetam_kernels as ek  # noqa: E402
from edgetam_kernels.harness import e2e, parse_variants, race  # noqa: E402
from edgetam_kernels.testing import hosts as M  # noqa: E402


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
    best = e2e.best_backend()
    variants = parse_variants(("unpatched," if args.unpatched else "")
                              + f"patched:{best}:no-memory-encoder,patched:{best}")
    base_name = f"patched:{best}:no-memory-encoder"
    print(f"tracked frames at {args.size}, {args.frames} per round, backend {best}")
    print("| model | variant | min / median per frame (ms) | vs memory encoder off (min) | "
          "`_encode_new_memory` min / median per call (ms) |")
    print("|---|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        model = e2e.build_model(kind, args.size)
        fn = e2e.tracker(kind, model, args.size, args.frames)
        # the trackers' memory encoding step (mask -> sigmoid -> memory encoder), timed in place
        # by an instance attribute (a hook would make the patched forward step aside)
        inner, spent = model._encode_new_memory, []

        def timed(*a, **k):
            start = time.perf_counter()
            out = inner(*a, **k)
            spent.append(1e3 * (time.perf_counter() - start))
            return out

        model._encode_new_memory = timed
        by_name = {str(v): v for v in variants}
        enc_times = {name: [] for name in by_name}
        calls = {name: 0 for name in by_name}
        current = []

        def flush():  # the last call's memory-encoder times, its warm-up call's aside
            if current and calls[current[0]] > 1:
                enc_times[current[0]] += spent
            spent.clear()

        def apply(name):
            flush()
            by_name[name].apply(model)
            calls[name] += 1
            current[:] = [name]

        with torch.inference_mode():
            times = race({name: fn for name in by_name}, args.rounds, before=apply,
                         self_timed=True)
        flush()
        ek.unpatch(model)
        base = min(times[base_name])
        for name in by_name:
            ts, es = [1e3 * t for t in times[name]], enc_times[name]
            print(f"| {kind} | {name} | {min(ts):.0f} / {statistics.median(ts):.0f} | "
                  f"{1e3 * base / min(ts):.3f}x | {min(es):.1f} / {statistics.median(es):.1f} |")


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
        with torch.inference_mode():
            for m in (plain, fused):  # fold (the race's warm-up calls each once more)
                call(m)
            times = {k: [1e3 * t for t in v] for k, v in race(
                {"plain": lambda: call(plain), "fused": lambda: call(fused)}, args.rounds).items()}
        a, b = times["plain"], times["fused"]
        print(f"| {kind} | {min(a):.1f} / {statistics.median(a):.1f} | "
              f"{min(b):.1f} / {statistics.median(b):.1f} | {min(a) / min(b):.2f}x |")


if __name__ == "__main__":
    main()
