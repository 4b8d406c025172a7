"""What rope_attention's key_mask costs or saves: EdgeTAM's memory cross-attention (64 x 64
queries, 7 frames of 512 memory tokens + 64 object-pointer tokens, d 256 -> here the patched
model's folded 1-head form) with no mask, an all-True mask (the price of the mask itself) and
masks leaving 1, 3 and 5 of the 7 frames empty (a fixed-capacity bank early in a video: the
skipped key tiles). Calls interleaved, best of --rounds.

    python bench/key_mask_cost.py [--backend cpu] [--grid 64] [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import edgetam_kernels as ek  # noqa: E402
from edgetam_kernels import testing  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    frames, ptr = 7, 64
    (q, k, v), kw = testing.edgetam_cross_attention_inputs(grid=a.grid, frames=frames,
                                                            obj_ptr_tokens=ptr, device=a.device)
    n_k = k.shape[2]
    masks = {"no mask": None, "all True": torch.ones(1, n_k, dtype=torch.bool)}
    for empty in (1, 3, 5):
        m = torch.ones(1, n_k, dtype=torch.bool)
        m[0, (frames - empty) * 512:frames * 512] = False
        masks[f"{empty} of {frames} frames empty"] = m
    rows = []
    for cdt in (None, torch.bfloat16):
        calls = {name: (lambda m=m: ek.rope_attention(
            q, k, v, **kw, key_mask=None if m is None else m.to(a.device), compute_dtype=cdt,
            backend=a.backend)) for name, m in masks.items()}
        best = {name: float("inf") for name in calls}
        for f in calls.values():
            f()  # warm-up
        for _ in range(a.rounds):
            for name, f in calls.items():
                if a.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                f()
                if a.device == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - t0)
        base = best["no mask"]
        for name, t in best.items():
            rows.append(f"| {cdt or 'input dtype'} | {name} | {t * 1e3:.1f} | {base / t:.2f}x |")
    print(f"rope_attention {a.grid}x{a.grid} queries x {n_k} keys x 256, backend {a.backend}, "
          f"{a.threads} threads")
    print("| compute | mask | ms | speed vs no mask |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
