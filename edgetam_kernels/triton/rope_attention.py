"""Flash attention with SAM 2 / EdgeTAM axial RoPE applied while q and k tiles are loaded.

Math (reference.rope_attention): out = softmax(rope(q) rope(k)^T * scale) v.

Layout of the work:
- q and k are loaded as their even and odd halves (elements 2i and 2i+1) so that the rotation
  of pair i is plain elementwise fp32 math, and q.k = q_even.k_even + q_odd.k_odd is two tl.dot
  calls with K = D/2. Nothing is re-interleaved and no rotated copy of q is ever written (k:
  rotated on load, or once by a pre-pass, see below).
- cos/sin come from one tiny table T[p, j] = cos/sin(p * freq(j mod D/4)), p < max grid side,
  built by torch with the reference's own fp32 ops (so angles are bit-identical to the reference,
  and no in-kernel cos/sin of angles up to ~60 rad is needed, which on a GPU would use
  approximate instructions). Pair j < D/4 of a token reads row `col`, pair j >= D/4 row `row`.
  For 64x64 grids and D = 256 the table is 64 x 128 x 2 fp32 = 64 KB: cache resident.
- Key rules are index arithmetic per key: the first `n_rope` keys form frames of `frame` tokens;
  the first `n_front` tokens of each frame are not rotated, the rest sit on the k grid; keys past
  `n_rope` (object pointers) are not rotated. Unrotated keys use cos = 1, sin = 0.
- The rotation is done in fp32 and rounded to the input dtype (as the reference does), then to
  the compute dtype; softmax statistics and accumulators are fp32 (exp2 with log2(e) folded
  into the scale).
- Keys: with several query tiles per head (EdgeTAM: 64), a pre-pass (_rope_keys) rotates k
  once into a [even | odd] copy in the compute dtype and the main loop loads it contiguously;
  with few query tiles the main loop rotates k tiles on load (no extra launch or buffer).
- key_mask (optional, (B or 1, NK) bool read as bytes): a masked key's score is -inf before the
  softmax, so its probability is exactly 0. A row whose keys are all masked keeps max -inf and
  sum 0 (the max is replaced by 0 where it is -inf, so no -inf - -inf NaN), and writes zeros;
  the split merge gives such splits weight 0. HAS_MASK is a constexpr: unmasked calls compile
  the same kernel as before.
- Flash-decoding split: at batch 1 with one head, 4096 queries give 32-64 query tiles, too few
  for 132 SMs. The key range is cut into `splits` contiguous chunks of whole key blocks; each
  program writes its normalised partial output and log2-sum-exp, and a second small kernel
  merges them. One split writes the output directly (no workspace, one launch). The split
  count is a run-time argument, so autotuning over it costs no extra compilation.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Optional

import torch
import triton
import triton.language as tl

from .. import reference
from ._common import TL_DTYPE, cast, cdiv, dot, fp32_precision, interpreting, num_sms, pow2
from ._tuning import TunedStore, bucket, default_path

LOG2E = 1.4426950408889634
AUTOTUNE_ENV = "EDGETAM_TRITON_AUTOTUNE"


@triton.jit
def _rope_tile(x0, x1, tab_ptr, tab_stride, sin_off, pos_col, pos_row, rot, j, D4, DH):
    """Rotate the pairs (x0, x1) of a tile elementwise. pos_col / pos_row / rot broadcast along
    the token axis and j along the pair axis (either order); rot False: cos 1, sin 0."""
    p = tl.where(j < D4, pos_col, pos_row)
    m = rot & (j < DH)
    c = tl.load(tab_ptr + p * tab_stride + j, mask=m, other=1.0)
    s = tl.load(tab_ptr + sin_off + p * tab_stride + j, mask=m, other=0.0)
    return x0 * c - x1 * s, x0 * s + x1 * c


@triton.jit
def _key_positions(offs_n, frame, n_front, n_rope, k_w):
    """Key rules: keys < n_rope form frames of `frame` tokens whose first n_front are not
    rotated and the rest lie row-major on a grid k_w wide; later keys are never rotated."""
    w = offs_n % frame
    rot = (offs_n < n_rope) & (w >= n_front)
    t = tl.where(rot, w - n_front, 0)
    return t % k_w, t // k_w, rot


@triton.jit
def _rope_keys(
    K, KR, TAB, skb, skh, skn, skd, H, NK, D, k_w, frame, n_front, n_rope, tab_stride, sin_off,
    CDT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DH: tl.constexpr, INTERP: tl.constexpr,
):
    """KR[bh, n] = [even | odd] halves of rope(k[b, h, n]) in the compute dtype, (B*H, NK, D)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    DH = D // 2
    IN_DT = K.dtype.element_ty
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    jh = tl.arange(0, BLOCK_DH)
    mask = (offs_n < NK)[:, None] & (jh < DH)[None, :]
    ptr = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    ptr += offs_n[:, None].to(tl.int64) * skn + (2 * jh)[None, :] * skd
    k0 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    k1 = tl.load(ptr + skd, mask=mask, other=0.0).to(tl.float32)
    col, row, rot = _key_positions(offs_n, frame, n_front, n_rope, k_w)
    k0, k1 = _rope_tile(k0, k1, TAB, tab_stride, sin_off, col[:, None], row[:, None],
                        rot[:, None], jh[None, :], D // 4, DH)
    out = KR + (pid_bh.to(tl.int64) * NK + offs_n[:, None]) * D + jh[None, :]
    tl.store(out, cast(cast(k0, IN_DT, INTERP).to(tl.float32), CDT, INTERP), mask=mask)
    tl.store(out + DH, cast(cast(k1, IN_DT, INTERP).to(tl.float32), CDT, INTERP), mask=mask)


@triton.jit
def _rope_attn_fwd(
    Q, K, V, O, TAB, PO, PLSE, KM, skm,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, son, sod,
    H, NQ, NK, D, DV,
    q_w, k_w, frame, n_front, n_rope,
    tab_stride, sin_off,
    keys_per_split, qk_scale,
    CDT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DH: tl.constexpr,
    BLOCK_DV: tl.constexpr, SPLIT: tl.constexpr, PRE_ROT: tl.constexpr, PREC: tl.constexpr,
    INTERP: tl.constexpr, HAS_MASK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    IN_DT = Q.dtype.element_ty
    DH = D // 2
    D4 = D // 4

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    jh = tl.arange(0, BLOCK_DH)
    jv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < NQ

    # q tile, rotated on the q grid; (BLOCK_M, BLOCK_DH) halves.
    q_ptr = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    q_ptr += offs_m[:, None].to(tl.int64) * sqn + (2 * jh)[None, :] * sqd
    q_mask = m_ok[:, None] & (jh < DH)[None, :]
    q0 = tl.load(q_ptr, mask=q_mask, other=0.0).to(tl.float32)
    q1 = tl.load(q_ptr + sqd, mask=q_mask, other=0.0).to(tl.float32)
    q0, q1 = _rope_tile(q0, q1, TAB, tab_stride, sin_off, (offs_m % q_w)[:, None],
                        (offs_m // q_w)[:, None], m_ok[:, None], jh[None, :], D4, DH)
    q0 = cast(cast(q0, IN_DT, INTERP).to(tl.float32), CDT, INTERP)
    q1 = cast(cast(q1, IN_DT, INTERP).to(tl.float32), CDT, INTERP)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, NK)
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        k_mask = n_ok[None, :] & (jh < DH)[:, None]
        # k tile loaded transposed, (BLOCK_DH, BLOCK_N), so tl.dot needs no transpose.
        if PRE_ROT:
            # K is the pre-rotated copy from _rope_keys: [even | odd] halves, compute dtype.
            k_ptr = k_base + offs_n[None, :].to(tl.int64) * skn + jh[:, None]
            k0 = tl.load(k_ptr, mask=k_mask, other=0.0)
            k1 = tl.load(k_ptr + DH, mask=k_mask, other=0.0)
        else:
            k_ptr = k_base + offs_n[None, :].to(tl.int64) * skn + (2 * jh)[:, None] * skd
            k0 = tl.load(k_ptr, mask=k_mask, other=0.0).to(tl.float32)
            k1 = tl.load(k_ptr + skd, mask=k_mask, other=0.0).to(tl.float32)
            col, row, rot = _key_positions(offs_n, frame, n_front, n_rope, k_w)
            # Same rotation as for q, on the transposed tile (pairs on dim 0, tokens on dim 1).
            k0, k1 = _rope_tile(k0, k1, TAB, tab_stride, sin_off, col[None, :], row[None, :],
                                rot[None, :], jh[:, None], D4, DH)
            k0 = cast(cast(k0, IN_DT, INTERP).to(tl.float32), CDT, INTERP)
            k1 = cast(cast(k1, IN_DT, INTERP).to(tl.float32), CDT, INTERP)

        qk = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        qk = dot(q0, k0, qk, PREC, INTERP)
        qk = dot(q1, k1, qk, PREC, INTERP)
        if HAS_MASK:  # key_mask row of batch b (skm 0: one mask for the batch)
            km = tl.load(KM + b.to(tl.int64) * skm + offs_n, mask=n_ok, other=0)
            n_ok = n_ok & (km != 0)
        qk = tl.where(n_ok[None, :], qk * qk_scale, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if HAS_MASK:  # rows with no valid key yet: max -inf, exponents against 0 instead
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_ref = m_new
        alpha = tl.exp2(m_i - m_ref)
        pr = tl.exp2(qk - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        v_ptr = v_base + offs_n[:, None].to(tl.int64) * svn + jv[None, :] * svd
        v = tl.load(v_ptr, mask=n_ok[:, None] & (jv < DV)[None, :], other=0.0)
        v = cast(v.to(tl.float32), CDT, INTERP)
        acc = dot(cast(pr, CDT, INTERP), v, acc * alpha[:, None], PREC, INTERP)
        m_i = m_new

    if HAS_MASK:  # every key masked: zeros, not 0 / 0
        out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
    else:
        out = acc / l_i[:, None]
    if not SPLIT:
        o_ptr = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh
        o_ptr += offs_m[:, None].to(tl.int64) * son + jv[None, :] * sod
        tl.store(o_ptr, cast(out, O.dtype.element_ty, INTERP),
                 mask=m_ok[:, None] & (jv < DV)[None, :])
    else:
        # Partials: PO (splits, B*H, NQ, DV) and PLSE (splits, B*H, NQ), fp32, contiguous.
        row = (split * tl.num_programs(1) + pid_bh).to(tl.int64) * NQ + offs_m
        tl.store(PO + row[:, None] * DV + jv[None, :], out,
                 mask=m_ok[:, None] & (jv < DV)[None, :])
        if HAS_MASK:  # no valid key in this split: lse -inf (weight 0 in the merge)
            lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        else:
            lse = m_i + tl.log2(l_i)
        tl.store(PLSE + row, lse, mask=m_ok)


@triton.jit
def _merge_splits(
    O, PO, PLSE, H, NQ, DV, sob, soh, son, sod, n_splits,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, INTERP: tl.constexpr, HAS_MASK: tl.constexpr,
):
    """out = sum_s 2^(lse_s - lse) * out_s over the key splits, lse = log2 sum_s 2^lse_s."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    nbh = tl.num_programs(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    jv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < NQ
    mask = m_ok[:, None] & (jv < DV)[None, :]
    lse_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(n_splits):
        row = (s * nbh + pid_bh).to(tl.int64) * NQ + offs_m
        lse_max = tl.maximum(lse_max, tl.load(PLSE + row, mask=m_ok, other=0.0))
    if HAS_MASK:  # splits whose keys are all masked have lse -inf: weight 0, never NaN
        lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for s in range(n_splits):
        row = (s * nbh + pid_bh).to(tl.int64) * NQ + offs_m
        w = tl.exp2(tl.load(PLSE + row, mask=m_ok, other=0.0) - lse_max)
        total += w
        acc += w[:, None] * tl.load(PO + row[:, None] * DV + jv[None, :], mask=mask, other=0.0)
    b = pid_bh // H
    h = pid_bh % H
    o_ptr = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh
    o_ptr += offs_m[:, None].to(tl.int64) * son + jv[None, :] * sod
    if HAS_MASK:  # every key masked: zeros
        res = tl.where(total[:, None] > 0, acc / tl.where(total > 0, total, 1.0)[:, None], 0.0)
    else:
        res = acc / total[:, None]
    tl.store(o_ptr, cast(res, O.dtype.element_ty, INTERP), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

_TABLES: Dict[tuple, torch.Tensor] = {}


def rope_table(side: int, head_dim: int, theta: float, device) -> torch.Tensor:
    """(2, side, D/2) fp32: cos and sin of p * freq(j mod D/4) for positions p < side.

    Built with the reference's functions so the angles are bit-identical to it. Cached per
    (side, D, theta, device): a CUDA graph or a compiled model then reuses one tensor."""
    key = (side, head_dim, float(theta), str(device))
    tab = _TABLES.get(key)
    if tab is None:
        # Built inside a CUDA graph capture, the table lives in the graph's private pool:
        # recompute it in the graph rather than cache memory the graph may release.
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        freqs = reference.rope_frequencies(head_dim, theta, device)
        ang = torch.outer(torch.arange(side, device=device, dtype=torch.float32), freqs)
        ang = torch.cat([ang, ang], dim=-1)
        tab = torch.stack([torch.cos(ang), torch.sin(ang)]).contiguous()
        if capturing:
            return tab
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = tab
    return tab


def _blocks(d: int, dv: int):
    return pow2(d // 2), pow2(dv)


def default_config(bh: int, n_q: int, n_k: int, d: int, dv: int, device,
                   esize: int = 2) -> dict:
    """Heuristic tile choice (esize: bytes per compute-dtype element). In the interpreter:
    small tiles and 2 key splits whenever there are 2+ key blocks, so the split + merge path is
    what the tests exercise."""
    if device.type != "cuda" or interpreting():
        bn = 32
        return dict(BLOCK_M=32, BLOCK_N=bn, SPLITS=min(2, cdiv(n_k, bn)),
                    PRE_ROT=n_q >= 64, num_warps=4, num_stages=1)
    if sdpa_candidate(d, dv, esize, default=True):
        return dict(SDPA=True)
    bm, bn, warps, stages = candidate_tiles(d, dv, esize)[0]
    tiles = cdiv(n_q, bm) * bh
    k_blocks = cdiv(n_k, bn)
    # At most one wave: these tiles need ~150+ registers per thread (a 64 x 256 fp32
    # accumulator), so expect one CTA per SM; a partial second wave would idle most SMs.
    splits = max(1, min(k_blocks, 8, num_sms(device) // tiles))
    return dict(BLOCK_M=bm, BLOCK_N=bn, SPLITS=splits, PRE_ROT=_pre_rotate(n_q, bm),
                num_warps=warps, num_stages=stages)


def _pre_rotate(n_q: int, block_m: int) -> bool:
    """Rotate keys once in a pre-pass when several query tiles would each rotate them again
    (EdgeTAM: 64 tiles share every key). The pre-pass costs one launch and a read + write of
    k; rotating on load costs strided loads and two cos/sin gathers per key per query tile."""
    return cdiv(n_q, block_m) >= 4


def candidate_tiles(d: int, dv: int, esize: int = 2):
    """(BLOCK_M, BLOCK_N, warps, stages), first = default. Sized so that shared memory fits an
    H100 (227 KB) and an A100 (163 KB): for head dim 256 in bf16 the 64 x 64 tile with two
    stages takes 128 KB (checked by bench/triton_aot_check.py); fp32 needs half the tile."""
    bdh, bdv = _blocks(d, dv)
    big = max(2 * bdh, bdv) >= 256
    if big and esize == 4:
        return [(64, 32, 8, 1), (32, 32, 4, 1), (64, 16, 4, 2), (32, 64, 4, 1)]
    if big:
        return [(64, 64, 8, 2), (64, 32, 4, 2), (128, 32, 8, 2), (128, 64, 8, 1)]
    if esize == 4:
        return [(64, 64, 4, 2), (128, 32, 4, 2), (64, 32, 4, 3), (32, 64, 4, 2)]
    return [(128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 2)]


def sdpa_candidate(d: int, dv: int, esize: int, default: bool = False) -> bool:
    """Rotate-then-SDPA for 16-bit compute and head dims up to 256 (H200, 4096 x 4096 x 256
    bf16, bench/results/triton_h200.md: SDPA flash 0.070 ms against 0.166 ms for the fused
    kernel; the two rotation passes move ~8 MB). The heuristic default only where torch has a
    flash kernel (d == dv); with narrower values (patch's folded cross-attention: 256 / 64)
    SDPA runs its memory-efficient or cuDNN kernel, so it is only a tuning candidate."""
    if esize != 2 or d % 8 or dv % 8 or d > 256 or dv > 256:
        return False
    return d == dv or not default


def candidate_configs(bh, n_q, n_k, d, dv, device, esize: int = 2):
    """The small autotune set: tiles that suit head dims 64 and 256 (EdgeTAM's perceiver and
    memory attention) crossed with 1-4 key splits (splits need no recompilation)."""
    out = [dict(SDPA=True)] if sdpa_candidate(d, dv, esize) else []
    tiles = candidate_tiles(d, dv, esize)
    for i, (bm, bn, warps, stages) in enumerate(tiles):
        k_blocks = cdiv(n_k, bn)
        pre = _pre_rotate(n_q, bm)
        # the default tile is also tried the other way (keys rotated on load / pre-rotated)
        for pre_rot in ((pre, not pre) if i == 0 else (pre,)):
            for splits in (1, 2, 3, 4):
                if splits <= k_blocks:
                    out.append(dict(BLOCK_M=bm, BLOCK_N=bn, SPLITS=splits, PRE_ROT=pre_rot,
                                    num_warps=warps, num_stages=stages))
    return out


# this process's choices (None: every candidate failed), backed by the per-machine store
_TUNED: Dict[str, Optional[dict]] = {}
_STORE: Optional[TunedStore] = None


def _store() -> TunedStore:
    global _STORE
    if _STORE is None:
        _STORE = TunedStore(default_path())
    return _STORE


def tuning_key(device, bh, n_q, n_k, d, dv, in_dtype, cdt, masked: bool = False) -> str:
    """The autotuner's key: the GPU model and software versions, power-of-two buckets of the
    sizes that vary while tracking (objects, queries, memory length), exact head dims and
    dtypes (see _tuning.py); masked calls (another kernel variant) are tuned apart."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return "|".join([
        "rope_attention", name, f"triton {triton.__version__}", f"torch {torch.__version__}",
        f"bh {bucket(bh)}", f"n_q {bucket(n_q)}", f"n_k {bucket(n_k)}", f"d {d}", f"dv {dv}",
        str(in_dtype), str(cdt), fp32_precision(),
    ] + (["key_mask"] if masked else []))


def _autotune_enabled(device) -> bool:
    if device.type != "cuda" or interpreting():
        return False
    return os.environ.get(AUTOTUNE_ENV, "1") != "0"


def _rotate(x, tab, n, w, frame, n_front, n_rope, cdt):
    """[even | odd] halves of rope(x) in the compute dtype, (B*H, N, D): one _rope_keys launch.
    Queries use it with frame = n_rope = N and no front tokens (every token on the q grid)."""
    b, h, _, d = x.shape
    xr = torch.empty((b * h, n, d), device=x.device, dtype=cdt)
    bdh = _blocks(d, d)[0]
    # A streaming kernel that holds its tile in registers: 1024 pairs per tile keep it at
    # 56-72 registers per thread on sm_90 (64 x 128 pairs, the old tile at head dim 256, used
    # all 255 and spilled ~1 KB; ptxas -v, aot_check), so many CTAs per SM hide the latency.
    bn = max(8, 1024 // bdh)
    _rope_keys[(cdiv(n, bn), b * h)](
        x, xr, tab, *x.stride(), h, n, d, w, frame, n_front, n_rope, tab.stride(1),
        tab.stride(0), CDT=TL_DTYPE[cdt], BLOCK_N=bn, BLOCK_DH=bdh,
        INTERP=interpreting(), num_warps=4,
    )
    return xr


def _launch_sdpa(q, k, v, out, tab, geo, scale, cdt):
    """Rotate q and k once (two memory-bound launches), then torch's SDPA (flash attention on
    the GPU for fp16 / bf16). q and k both come out with their head dims permuted to
    [even | odd]; a dot product does not see a permutation applied to both sides, so SDPA's
    result is the rotated attention itself. Returns SDPA's result, written into `out` only
    when one is given (no extra copy)."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    qr = _rotate(q, tab, n_q, geo["q_w"], n_q, 0, n_q, cdt).view(b, h, n_q, d)
    kr = _rotate(k, tab, n_k, geo["k_w"], geo["frame"], geo["n_front"], geo["n_rope"],
                 cdt).view(b, h, n_k, d)
    mask = geo["key_mask"]
    res = reference.attention(qr, kr, v.to(cdt), scale, None,
                              None if mask is None else mask.bool())
    if out is None:
        return res.to(q.dtype)
    return out.copy_(res)


def _launch(q, k, v, out, tab, geo, scale, cdt, cfg):
    """Runs one strategy and returns the output; the fused kernel allocates `out` if None."""
    if cfg.get("SDPA", False):
        return _launch_sdpa(q, k, v, out, tab, geo, scale, cdt)
    qk_scale = float(scale) * LOG2E  # exp2 in the kernel
    b, h, n_q, d = q.shape
    n_k, dv = k.shape[2], v.shape[3]
    if out is None:
        out = torch.empty((b, h, n_q, dv), device=q.device, dtype=q.dtype)
    bdh, bdv = _blocks(d, dv)
    splits = cfg["SPLITS"]
    k_blocks = cdiv(n_k, cfg["BLOCK_N"])
    per_split = cdiv(k_blocks, splits) * cfg["BLOCK_N"]
    splits = cdiv(n_k, per_split)  # no empty split
    if splits > 1:
        po = torch.empty((splits, b * h, n_q, dv), device=q.device, dtype=torch.float32)
        plse = torch.empty((splits, b * h, n_q), device=q.device, dtype=torch.float32)
    else:
        po = plse = out  # unused
    key_mask = geo["key_mask"]
    pre_rot = cfg.get("PRE_ROT", False)
    k_in = k
    if pre_rot:  # rotate each key once instead of once per query tile
        k_in = _rotate(k, tab, n_k, geo["k_w"], geo["frame"], geo["n_front"], geo["n_rope"], cdt)
        k_strides = (h * n_k * d, n_k * d, d, 1)
    else:
        k_strides = k.stride()
    grid = (cdiv(n_q, cfg["BLOCK_M"]), b * h, splits)
    _rope_attn_fwd[grid](
        q, k_in, v, out, tab, po, plse,
        q if key_mask is None else key_mask, 0 if key_mask is None else key_mask.stride(0),
        *q.stride(), *k_strides, *v.stride(), *out.stride(),
        h, n_q, n_k, d, dv,
        geo["q_w"], geo["k_w"], geo["frame"], geo["n_front"], geo["n_rope"],
        tab.stride(1), tab.stride(0),
        per_split, qk_scale,
        CDT=TL_DTYPE[cdt], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_DH=bdh,
        BLOCK_DV=bdv, SPLIT=splits > 1, PRE_ROT=pre_rot, PREC=fp32_precision(),
        INTERP=interpreting(), HAS_MASK=key_mask is not None, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    if splits > 1:
        bm = 64 if bdv <= 128 else 32
        _merge_splits[(cdiv(n_q, bm), b * h)](
            out, po, plse, h, n_q, dv, *out.stride(), splits,
            BLOCK_M=bm, BLOCK_DV=bdv, INTERP=interpreting(), HAS_MASK=key_mask is not None,
            num_warps=4,
        )
    return out


def _tune(run, configs) -> Optional[dict]:
    """The fastest config that runs; None if none does."""
    from triton.testing import do_bench

    best, best_t = None, math.inf
    for cfg in configs:
        try:
            t = do_bench(lambda: run(cfg), warmup=3, rep=10)
        except Exception:  # noqa: BLE001 - a config that does not compile (e.g. out of smem)
            continue
        if t < best_t:
            best, best_t = cfg, t
    return best


def rope_attention(q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope=0, theta=10000.0,
                   scale=None, compute_dtype=None, key_mask=None, *,
                   config: Optional[dict] = None, out: Optional[torch.Tensor] = None):
    """Same signature and result as reference.rope_attention. Keyword-only extras for tests
    and benchmarks: `config` (tiles / splits, else tuned or heuristic), `out` (preallocated)."""
    b, h, n_q, d = q.shape
    n_k, dv = k.shape[2], v.shape[3]
    cdt = compute_dtype if compute_dtype is not None else q.dtype
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    n_rope = n_k - num_k_exclude_rope
    if n_rope > 0:
        frame = n_rope // k_repeat
        n_front = frame - k_grid[0] * k_grid[1]
        side = max(q_grid[0], q_grid[1], k_grid[0], k_grid[1], 1)
    else:
        frame, n_front = 1, 0
        side = max(q_grid[0], q_grid[1], 1)
    if key_mask is not None:  # bytes (bool storage), one row per batch row or a shared one
        key_mask = key_mask.contiguous().view(torch.uint8)
        if key_mask.shape[0] == 1:
            key_mask = key_mask.expand(b, -1)  # stride 0: the kernel reads row b * 0
    geo = dict(q_w=max(q_grid[1], 1), k_w=max(k_grid[1], 1), frame=frame, n_front=n_front,
               n_rope=n_rope, key_mask=key_mask)
    tab = rope_table(side, d, theta, q.device)

    def run(cfg):
        return _launch(q, k, v, out, tab, geo, float(scale), cdt, cfg)

    if config is None:
        esize = torch.finfo(cdt).bits // 8
        if _autotune_enabled(q.device):
            config = _tuned(tuning_key(q.device, b * h, n_q, n_k, d, dv, q.dtype, cdt,
                                       key_mask is not None), run,
                            lambda: candidate_configs(b * h, n_q, n_k, d, dv, q.device, esize),
                            q.device)
        if config is None:
            config = default_config(b * h, n_q, n_k, d, dv, q.device, esize)
    return run(config)


def _tuned(key: str, run, candidates, device) -> Optional[dict]:
    """The tuned config for `key`: from this process, else the machine's store, else tuned now
    (not during CUDA-graph capture, where timing runs are not allowed); None: use the
    heuristic."""
    if key in _TUNED:
        return _TUNED[key]
    config = _store().get(key)
    if config is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        config = _tune(run, candidates())
        if config is not None:
            _store().put(key, config)
    _TUNED[key] = config
    return config
