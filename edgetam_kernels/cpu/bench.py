"""Side-by-side CPU timings of the C++ kernels: `python -m edgetam_kernels.cpu.bench [--reps N]`.

Every candidate runs once per round, rounds repeat, the minimum counts (shared machines are
noisy). Prints a markdown report: matmul ceilings measured in the same run, the 4096 x 4096 x 256
RoPE self-attention core against torch SDPA (flash) and Meta's module path (complex RoPE + the
math SDPA it forces on CPU), the spatial perceiver against Meta's PerceiverResampler, and one
perceiver cross-attention block (perceiver_attention) against the reference and SDPA eager.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
import torch.nn.functional as F

import edgetam_kernels as ek
from edgetam_kernels import cpu


def _race(cands: dict, reps: int) -> dict:
    best = {k: float("inf") for k in cands}
    for f in cands.values():
        f()  # warm up
    for _ in range(reps):
        for k, f in cands.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _meta_rope_path(q, k, v, grid):
    try:
        from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis
        from sam2.modeling.sam import transformer as T
    except Exception:  # noqa: BLE001 - Meta's package not installed
        return None
    cis = compute_axial_cis(dim=q.shape[-1], end_x=grid, end_y=grid, theta=10000.0)

    def run():
        qr, kr = apply_rotary_enc(q, k, freqs_cis=cis)
        with T.sdp_kernel_context(0.0):
            return F.scaled_dot_product_attention(qr, kr, v)
    return run


def attention_report(reps: int) -> list:
    n, d, g = 4096, 256, 64
    flop = 4 * n * n * d
    q, k, v = (torch.randn(1, 1, n, d) for _ in range(3))
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    ab, bb = a.bfloat16(), b.bfloat16()
    kw = dict(q_grid=(g, g), backend="cpu")
    cands = {
        "torch.mm fp32 4096^3": lambda: a @ b,
        "torch.mm bf16 4096^3": lambda: ab @ bb,
        "torch SDPA fp32 (no RoPE)": lambda: F.scaled_dot_product_attention(q, k, v),
        "ours fp32 (RoPE incl.)": lambda: ek.rope_attention(q, k, v, **kw),
        "ours bf16 compute (RoPE incl.)": lambda: ek.rope_attention(q, k, v, compute_dtype=torch.bfloat16, **kw),
    }
    meta = _meta_rope_path(q, k, v, g)
    if meta is not None:
        cands["Meta module path (complex RoPE + math SDPA)"] = meta
    t = _race(cands, reps)
    mm32 = 2 * 4096**3 / t["torch.mm fp32 4096^3"] / 1e9
    mm16 = 2 * 4096**3 / t["torch.mm bf16 4096^3"] / 1e9
    sdpa = t["torch SDPA fp32 (no RoPE)"]
    rows = ["| attention 4096 x 4096 x 256, 1 head | ms | GFLOP/s | of ceiling | SDPA / this |",
            "|---|---|---|---|---|"]
    for name, s in t.items():
        if name.startswith("torch.mm"):
            continue
        gf = flop / s / 1e9
        ceil = mm16 if "bf16" in name else mm32
        rows.append(f"| {name} | {s * 1e3:.1f} | {gf:.0f} | {gf / ceil:.0%} ({'bf16' if ceil is mm16 else 'fp32'}) | {sdpa / s:.2f}x |")
    if meta is not None:
        m = t["Meta module path (complex RoPE + math SDPA)"]
        rows.append(f"\nMeta path / ours fp32: **{m / t['ours fp32 (RoPE incl.)']:.2f}x**; "
                    f"Meta path / ours bf16: **{m / t['ours bf16 compute (RoPE incl.)']:.2f}x**")
    head = [f"matmul ceilings measured in this run: fp32 {mm32:.0f} GFLOP/s, bf16 {mm16:.0f} GFLOP/s", ""]
    return head + rows


def matmul_ceilings(reps: int) -> tuple:
    """GFLOP/s of torch.mm 4096^3 in fp32 and bf16 (the ceilings the attention section also
    measures)."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    ab, bb = a.bfloat16(), b.bfloat16()
    t = _race({"fp32": lambda: a @ b, "bf16": lambda: ab @ bb}, reps)
    return 2 * 4096**3 / t["fp32"] / 1e9, 2 * 4096**3 / t["bf16"] / 1e9


def perceiver_report(reps: int, ceilings: tuple = ()) -> list:
    try:
        from sam2.modeling.perceiver import PerceiverResampler
        from sam2.modeling.position_encoding import PositionEmbeddingSine
    except Exception as e:  # noqa: BLE001
        return [f"(perceiver: Meta's sam2 not importable: {e})"]
    from edgetam_kernels.benchmarks import perceiver_flops
    from edgetam_kernels.patch import perceiver_weights

    m = PerceiverResampler(
        dim=64, depth=2, dim_head=64, heads=1, num_latents=256, num_latents_2d=256, ff_mult=4,
        hidden_dropout_p=0.0, attention_dropout_p=0.0, pos_enc_at_key_value=True,
        concat_kv_latents=False, use_self_attn=True,
        position_encoding=PositionEmbeddingSine(num_pos_feats=64, normalize=True, scale=None,
                                                temperature=10000)).eval()
    x, pos = torch.randn(1, 64, 64, 64), torch.randn(1, 64, 64, 64)
    w = perceiver_weights(m)
    args = (x, pos, m.latents, m.latents_2d, w, m.norm.weight, m.norm.bias)
    patched = ek.patch(copy.deepcopy(m), backend="cpu")
    patched_bf16 = ek.patch(copy.deepcopy(m), backend="cpu", compute_dtype=torch.bfloat16)
    with torch.no_grad():
        t = _race({
            "Meta PerceiverResampler (eval)": lambda: m(x, pos),
            "reference (PyTorch)": lambda: ek.spatial_perceiver(*args, depth=2, backend="reference"),
            "ours (C++)": lambda: ek.spatial_perceiver(*args, depth=2, backend="cpu"),
            "ours (C++), bf16 compute": lambda: ek.spatial_perceiver(
                *args, depth=2, compute_dtype=torch.bfloat16, backend="cpu"),
            "ours: Meta's module patched": lambda: patched(x, pos),
            "ours: Meta's module patched, bf16 compute": lambda: patched_bf16(x, pos),
        }, reps)
    flop = perceiver_flops(4096, 64, 256, 256, 16)  # every product, both layers (0.89 GFLOP)
    meta = t["Meta PerceiverResampler (eval)"]
    rows = ["| spatial perceiver, batch 1, 64x64x64 memory | ms | GFLOP/s | of ceiling "
            "| Meta / this |", "|---|---|---|---|---|"]
    for name, s in t.items():
        gf = flop / s / 1e9
        of = ""
        if ceilings and name.startswith("ours"):
            # bf16 compute: 61 % of the products on bf16 tiles, the rest fp32; both ceilings
            of = f"{gf / ceilings[0]:.0%} fp32" + (f", {gf / ceilings[1]:.0%} bf16"
                                                   if "bf16" in name else "")
        rows.append(f"| {name} | {s * 1e3:.2f} | {gf:.0f} | {of} | {meta / s:.2f}x |")
    rows.append(f"\nabout {flop / 1e9:.2f} GFLOP per call"
                + (f"; matmul ceilings in this run (torch.mm 4096^3): fp32 {ceilings[0]:.0f}, "
                   f"bf16 {ceilings[1]:.0f} GFLOP/s" if ceilings else ""))
    return rows


def perceiver_attention_report(reps: int, ceilings: tuple = ()) -> list:
    """One perceiver cross-attention block at EdgeTAM's shape: 256 latents over a 64 x 64 memory
    frame, dim 64, 1 head, pos on keys and values."""
    b, l, n, c, inner = 1, 256, 4096, 64, 64
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    lat, x, pos = r(b, l, c), r(b, n, c), r(b, n, inner)
    lw, lb, xw, xb = 1 + 0.1 * r(c), 0.1 * r(c), 1 + 0.1 * r(c), 0.1 * r(c)
    wq, wkv, wo = r(inner, c) / c**0.5, r(2 * inner, c) / c**0.5, r(c, inner) / inner**0.5
    args = (lat, x, pos, lw, lb, xw, xb, wq, wkv, wo)

    def sdpa_eager():  # what a module written with SDPA runs: LN, linear, SDPA, linear
        q = F.linear(F.layer_norm(lat, (c,), lw, lb, 1e-5), wq)
        k, v = F.linear(F.layer_norm(x, (c,), xw, xb, 1e-5), wkv).chunk(2, dim=-1)
        o = F.scaled_dot_product_attention(q[:, None], (k + pos)[:, None], (v + pos)[:, None])
        return F.linear(o[:, 0], wo)

    raw = torch.ops.edgetam_cpu.perceiver_attention
    with torch.no_grad():
        # each of ours follows a PyTorch row (whose temporaries evict x and pos), so both start
        # from the same cache state: the raw op right after ours ran 0.2-0.4 ms faster than the
        # op, far more than the op's Python path (about 0.05 ms), from x and pos still cached
        t = _race({
            "reference (PyTorch)": lambda: ek.perceiver_attention(*args, backend="reference"),
            "ours (C++)": lambda: ek.perceiver_attention(*args, backend="cpu"),
            "SDPA eager (LN + linear + SDPA + linear)": sdpa_eager,
            "ours, raw op (no Python checks)": lambda: raw(*args, 1, 1e-5),
        }, reps)
    # q k^T and p v, the K/V projection, q and the output projection
    flop = 4 * l * n * inner + 4 * n * c * inner + 4 * l * c * inner
    ref, sdpa = t["reference (PyTorch)"], t["SDPA eager (LN + linear + SDPA + linear)"]
    rows = [f"| perceiver_attention, batch {b}, {l} latents x {n} tokens, dim {c}, 1 head | ms "
            "| GFLOP/s | of fp32 ceiling | reference / this | SDPA eager / this |",
            "|---|---|---|---|---|---|"]
    for name, s in t.items():
        gf = flop / s / 1e9
        of = f"{gf / ceilings[0]:.0%}" if ceilings else ""
        rows.append(f"| {name} | {s * 1e3:.2f} | {gf:.0f} | {of} | {ref / s:.2f}x | {sdpa / s:.2f}x |")
    rows.append(f"\nabout {flop / 1e9:.3f} GFLOP per call"
                + (f"; fp32 matmul ceiling in this run (torch.mm 4096^3): {ceilings[0]:.0f} GFLOP/s"
                   if ceilings else ""))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=10,
                   help="interleaved rounds; the minimum counts (5 proved too few on a shared VM)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=("attention", "perceiver", "perceiver_attention"),
                   default=None, help="run one section (default: all)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"# CPU kernels: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{a.threads} threads, ISA {cpu.isa()}, min of {a.reps} interleaved rounds\n")
    if a.only in (None, "attention"):
        print("\n".join(attention_report(a.reps)))
        print()
    if a.only in (None, "perceiver"):
        print("\n".join(perceiver_report(a.reps * 3, matmul_ceilings(a.reps))))
        print()
    if a.only in (None, "perceiver_attention"):
        print("\n".join(perceiver_attention_report(a.reps * 3, matmul_ceilings(a.reps))))


if __name__ == "__main__":
    main()
