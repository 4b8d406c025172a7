"""EdgeTAM's perceiver in Triton: three launches per layer for both latent groups together.

Per layer (reference.perceiver_layer), the memory x never changes and both latent groups use the
same weights, so:
1. _ln_kv:  kv = Wkv LN_x(x) for every memory token, read straight from x's (B, C, H, W) strides
            (token n = y * W + x), computed once for both groups: stored as is for the patch
            group and with pos added for the global group (pos is added once, not per program).
2. _cross:  one program = a block of latents of one group. LN + Wq, attention (global latents:
            flash loop over all tokens, + pos; patch latents: an online softmax over the
            ws x ws tokens of their own window, found by index arithmetic, no window copy),
            Wout, residual, the whole feed-forward, residual, and, with latent self-attention,
            LN + [q | k | v] of the result into a small buffer. Without self-attention on the
            last layer, the final LayerNorm too.
3. _self:   global latents attend to the global latents of their batch; a patch latent's
            self-attention has one key, so its output is its own v (softmax of one score is 1).
            Wout, residual, feed-forward, residual, and on the last layer the final LayerNorm.
EdgeTAM (depth 2) thus runs in 6 launches instead of Meta's ~150 small ops (8 when the global
latents' keys are split over programs to fill the GPU, see _cross / _cross_merge).

Latents between launches are fp32; matmul operands are cast to the input dtype (bf16/fp16
tensor cores, fp32 accumulation) or, for fp32 inputs, use the fp32 precision setting
(default exact IEEE). Heads: each head's scores use only its columns of q (masked), so any
head count works; EdgeTAM has one.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import reference
from ._common import TL_DTYPE, cast, cdiv, dot, fp32_precision, interpreting, num_sms, pow2

LOG2E = 1.4426950408889634


# ---------------------------------------------------------------------------------------------
# Building blocks (inlined into the kernels)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _layernorm(x, w_ptr, b_ptr, cols, C, eps):
    """Row LayerNorm of a fp32 (rows, BLOCK_C) tile whose columns >= C are zero."""
    c_ok = cols < C
    mean = tl.sum(x, 1) / C
    xc = tl.where(c_ok[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(xc * xc, 1) / C + eps)
    w = tl.load(w_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
    return xc * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _proj(x, W, row0, K, O, DT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
          PREC: tl.constexpr, INTERP: tl.constexpr):
    """x (rows, BLOCK_K) @ W[row0 : row0 + O, :K]^T for a row-major W of row length K: fp32."""
    kk = tl.arange(0, BLOCK_K)
    oo = tl.arange(0, BLOCK_O)
    w = tl.load(W + (row0 + oo)[None, :] * K + kk[:, None],
                mask=(kk < K)[:, None] & (oo < O)[None, :], other=0.0)
    acc = tl.zeros([x.shape[0], BLOCK_O], tl.float32)
    return dot(cast(x, DT, INTERP), cast(w, DT, INTERP), acc, PREC, INTERP)


@triton.jit
def _feed_forward(x, ln_w, ln_b, W1, W2, C, HD, eps, DT: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_HC: tl.constexpr,
                  PREC: tl.constexpr, INTERP: tl.constexpr):
    """W2 gelu(W1 LN(x)) (exact erf GELU), hidden dim in chunks of BLOCK_HC."""
    cols = tl.arange(0, BLOCK_C)
    hc = tl.arange(0, BLOCK_HC)
    xn = cast(_layernorm(x, ln_w, ln_b, cols, C, eps), DT, INTERP)
    acc = tl.zeros([x.shape[0], BLOCK_C], tl.float32)
    for h0 in range(0, HD, BLOCK_HC):
        hid = _proj(xn, W1, h0, C, HD - h0, DT, BLOCK_C, BLOCK_HC, PREC, INTERP)
        hid = 0.5 * hid * (1.0 + tl.erf(hid * 0.7071067811865476))
        w2 = tl.load(W2 + cols[None, :] * HD + (h0 + hc)[:, None],
                     mask=(cols < C)[None, :] & ((h0 + hc) < HD)[:, None], other=0.0)
        acc = dot(cast(hid, DT, INTERP), cast(w2, DT, INTERP), acc, PREC, INTERP)
    return acc


@triton.jit
def _flash(q, KV, kv_row_stride, k_off, v_off, lo, hi, I, HEADS, qk_scale, DT: tl.constexpr,
           BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, PREC: tl.constexpr,
           INTERP: tl.constexpr):
    """softmax(q k^T) v over rows [lo, hi) of KV (k at column k_off, v at v_off), per head.
    Also returns each row's log2-sum-exp of the scores, broadcast over its head's columns
    (what merging key splits needs; heads then need no separate bookkeeping)."""
    ci = tl.arange(0, BLOCK_I)
    dh = I // HEADS
    out = tl.zeros([q.shape[0], BLOCK_I], tl.float32)
    lse = tl.zeros([q.shape[0], BLOCK_I], tl.float32)
    for hd in range(HEADS):
        hm = (ci >= hd * dh) & (ci < hd * dh + dh)
        qh = cast(tl.where(hm[None, :], q, 0.0), DT, INTERP)
        m_i = tl.full([q.shape[0]], float("-inf"), tl.float32)
        l_i = tl.zeros([q.shape[0]], tl.float32)
        acc = tl.zeros([q.shape[0], BLOCK_I], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            nn = n0 + tl.arange(0, BLOCK_N)
            n_ok = nn < hi
            kt_mask = (ci < I)[:, None] & n_ok[None, :]
            kt = tl.load(KV + nn[None, :].to(tl.int64) * kv_row_stride + k_off + ci[:, None],
                         mask=kt_mask, other=0.0).to(tl.float32)
            vv = tl.load(KV + nn[:, None].to(tl.int64) * kv_row_stride + v_off + ci[None, :],
                         mask=n_ok[:, None] & (ci < I)[None, :], other=0.0).to(tl.float32)
            s = dot(qh, cast(kt, DT, INTERP), tl.zeros([q.shape[0], BLOCK_N], tl.float32), PREC,
                    INTERP)
            s = tl.where(n_ok[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = dot(cast(p, DT, INTERP), cast(vv, DT, INTERP), acc * alpha[:, None], PREC,
                      INTERP)
            m_i = m_new
        out += tl.where(hm[None, :], acc / l_i[:, None], 0.0)
        lse += tl.where(hm[None, :], (m_i + tl.log2(l_i))[:, None], 0.0)
    return out, lse


@triton.jit
def _window_attn(q, KV, kv_row_stride, I, rows, nw, ws, W, HEADS, qk_scale,
                 BLOCK_I: tl.constexpr):
    """Each latent row r attends to the ws x ws tokens of window (r // nw, r % nw), row-major;
    an online softmax over the window's tokens, one token per step (elementwise, no tl.dot)."""
    ci = tl.arange(0, BLOCK_I)
    dh = I // HEADS
    y0 = (rows // nw) * ws
    x0 = (rows % nw) * ws
    out = tl.zeros([q.shape[0], BLOCK_I], tl.float32)
    for hd in range(HEADS):
        hm = (ci >= hd * dh) & (ci < hd * dh + dh)
        m_i = tl.full([q.shape[0]], float("-inf"), tl.float32)
        l_i = tl.zeros([q.shape[0]], tl.float32)
        acc = tl.zeros([q.shape[0], BLOCK_I], tl.float32)
        for t in range(0, ws * ws):
            n = (y0 + t // ws) * W + x0 + t % ws
            ptr = KV + n[:, None].to(tl.int64) * kv_row_stride + ci[None, :]
            msk = hm[None, :] & (ci < I)[None, :] & (rows >= 0)[:, None]
            k = tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
            v = tl.load(ptr + I, mask=msk, other=0.0).to(tl.float32)
            s = tl.sum(q * k, 1) * qk_scale
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)
            l_i = l_i * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * v
            m_i = m_new
        out += tl.where(hm[None, :], acc / l_i[:, None], 0.0)
    return out


@triton.jit
def _epilogue(o, x_in, b, out_rows, row_ok, cols, C, I, eps,
              W_out, FF_ln_w, FF_ln_b, FF_w1, FF_w2, HD,
              S_ln_w, S_ln_b, S_wq, S_wkv, IS, QKV, sqkv_b, sqkv_l,
              N_w, N_b, OUT, sob, sol, soc,
              RESIDUAL: tl.constexpr, DO_FF: tl.constexpr, DO_QKV: tl.constexpr,
              FINAL_LN: tl.constexpr, DT: tl.constexpr, BLOCK_C: tl.constexpr,
              BLOCK_I: tl.constexpr, BLOCK_HC: tl.constexpr, BLOCK_IS: tl.constexpr,
              PREC: tl.constexpr, INTERP: tl.constexpr):
    """Wout o (+ residual), + FF (residual), optional [q|k|v] of the next self-attention,
    optional final LayerNorm, store."""
    lat = _proj(o, W_out, 0, I, C, DT, BLOCK_I, BLOCK_C, PREC, INTERP)
    if RESIDUAL:
        lat += x_in
    if DO_FF:
        lat += _feed_forward(lat, FF_ln_w, FF_ln_b, FF_w1, FF_w2, C, HD, eps, DT, BLOCK_C,
                             BLOCK_HC, PREC, INTERP)
    c_ok = cols < C
    lat = tl.where(c_ok[None, :], lat, 0.0)
    if DO_QKV:
        xs = cast(_layernorm(lat, S_ln_w, S_ln_b, cols, C, eps), DT, INTERP)
        js = tl.arange(0, BLOCK_IS)
        base = QKV + b.to(tl.int64) * sqkv_b + out_rows[:, None].to(tl.int64) * sqkv_l
        m = row_ok[:, None] & (js < IS)[None, :]
        tl.store(base + js[None, :], _proj(xs, S_wq, 0, C, IS, DT, BLOCK_C, BLOCK_IS, PREC,
                                           INTERP), mask=m)
        tl.store(base + IS + js[None, :], _proj(xs, S_wkv, 0, C, IS, DT, BLOCK_C, BLOCK_IS,
                                                PREC, INTERP), mask=m)
        tl.store(base + 2 * IS + js[None, :], _proj(xs, S_wkv, IS, C, IS, DT, BLOCK_C,
                                                    BLOCK_IS, PREC, INTERP), mask=m)
    if FINAL_LN:
        lat = _layernorm(lat, N_w, N_b, cols, C, eps)
    optr = OUT + b.to(tl.int64) * sob + out_rows[:, None].to(tl.int64) * sol + cols[None, :] * soc
    tl.store(optr, cast(lat, OUT.dtype.element_ty, INTERP), mask=row_ok[:, None] & c_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _ln_kv(X, sxb, sxc, sxh, sxw, xw, N, C, ln_w, ln_b, W_kv, KV, KVG,
           POS, spb, spc, sph, spw, pw, I, eps,
           STORE_KV: tl.constexpr, HAS_POS: tl.constexpr, DT: tl.constexpr,
           BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr,
           PREC: tl.constexpr, INTERP: tl.constexpr):
    """[k | v] = Wkv LN(x[b, :, n]) for a block of tokens into KV (B, N, 2I) (patch latents),
    and [k + pos | v + pos] into KVG (global latents): pos is added once here instead of in
    every global program's key loop. Both buffers hold the storage dtype (fp32 or the input's
    half type), halving what the attention loops read for fp16/bf16."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    nn = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_C)
    n_ok = nn < N
    ptr = X + b.to(tl.int64) * sxb + cols[None, :] * sxc
    ptr += (nn // xw)[:, None].to(tl.int64) * sxh + (nn % xw)[:, None] * sxw
    x = tl.load(ptr, mask=n_ok[:, None] & (cols < C)[None, :], other=0.0).to(tl.float32)
    xn = cast(_layernorm(x, ln_w, ln_b, cols, C, eps), DT, INTERP)
    k = _proj(xn, W_kv, 0, C, I, DT, BLOCK_C, BLOCK_I, PREC, INTERP)
    v = _proj(xn, W_kv, I, C, I, DT, BLOCK_C, BLOCK_I, PREC, INTERP)
    ii = tl.arange(0, BLOCK_I)
    row = (b.to(tl.int64) * N + nn[:, None]) * (2 * I) + ii[None, :]
    m = n_ok[:, None] & (ii < I)[None, :]
    SDT = KV.dtype.element_ty
    if STORE_KV:
        tl.store(KV + row, cast(k, SDT, INTERP), mask=m)
        tl.store(KV + row + I, cast(v, SDT, INTERP), mask=m)
    if HAS_POS:
        pp = POS + b.to(tl.int64) * spb + ii[None, :] * spc
        pp += (nn // pw)[:, None].to(tl.int64) * sph + (nn % pw)[:, None] * spw
        p = tl.load(pp, mask=m, other=0.0).to(tl.float32)
        tl.store(KVG + row, cast(k + p, SDT, INTERP), mask=m)
        tl.store(KVG + row + I, cast(v + p, SDT, INTERP), mask=m)


@triton.jit
def _cross(
    LG, slgb, slgl, slgc, L1, LP, slpb, slpl, slpc, L2, NGB,
    KV, KVG, N, nw, ws, W, n_splits, keys_per_split, PO,
    C, I, HEADS, qk_scale, eps,
    LN_w, LN_b, W_q, W_out, FF_ln_w, FF_ln_b, FF_w1, FF_w2, HD,
    S_ln_w, S_ln_b, S_wq, S_wkv, IS, QKV, sqkv_b, sqkv_l,
    N_w, N_b, OUT, sob, sol, soc,
    RESIDUAL: tl.constexpr, DO_FF: tl.constexpr, DO_QKV: tl.constexpr,
    FINAL_LN: tl.constexpr, DT: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_HC: tl.constexpr,
    BLOCK_IS: tl.constexpr, SPLIT_G: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr,
):
    """Programs [0, NGB * n_splits) take global latents (rows of LG), the rest patch latents
    (rows of LP); output rows: global at [0, L1), patch at [L1, L1 + L2).

    SPLIT_G: the global latents' keys are split over n_splits programs per latent block (few
    latent blocks would leave most SMs idle at batch 1); they write partial outputs + lse to
    PO (2, n_splits, B, L1, I) and _cross_merge finishes them."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    c_ok = cols < C
    is_global = pid < NGB * n_splits
    split = pid % n_splits
    local = tl.where(is_global, pid // n_splits, pid - NGB * n_splits)
    rows = local * BLOCK_L + tl.arange(0, BLOCK_L)
    if is_global:
        row_ok = rows < L1
        x_ptr = LG + b.to(tl.int64) * slgb + rows[:, None] * slgl + cols[None, :] * slgc
        out_rows = rows
    else:
        row_ok = rows < L2
        x_ptr = LP + b.to(tl.int64) * slpb + rows[:, None] * slpl + cols[None, :] * slpc
        out_rows = rows + L1
    x_in = tl.load(x_ptr, mask=row_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    xn = _layernorm(x_in, LN_w, LN_b, cols, C, eps)
    q = _proj(xn, W_q, 0, C, I, DT, BLOCK_C, BLOCK_I, PREC, INTERP)
    kv_b = KV + b.to(tl.int64) * N * (2 * I)
    if is_global:
        lo = split * keys_per_split
        hi = tl.minimum(lo + keys_per_split, N)
        o, lse = _flash(q, KVG + b.to(tl.int64) * N * (2 * I), 2 * I, 0, I, lo, hi, I, HEADS,
                        qk_scale, DT, BLOCK_N, BLOCK_I, PREC, INTERP)
        if SPLIT_G:
            ii = tl.arange(0, BLOCK_I)
            part = ((split * tl.num_programs(1) + b).to(tl.int64) * L1 + rows[:, None]) * I
            m = row_ok[:, None] & (ii < I)[None, :]
            tl.store(PO + part + ii[None, :], o, mask=m)
            tl.store(PO + n_splits * tl.num_programs(1) * L1 * I + part + ii[None, :], lse,
                     mask=m)
    else:
        # Match the reference's rounding of q to the input dtype before the attention.
        o = _window_attn(cast(q, DT, INTERP).to(tl.float32), kv_b, 2 * I, I,
                         tl.where(row_ok, rows, 0), nw, ws, W, HEADS, qk_scale, BLOCK_I)
    if SPLIT_G:
        if not is_global:
            _epilogue(o, x_in, b, out_rows, row_ok, cols, C, I, eps, W_out, FF_ln_w, FF_ln_b,
                      FF_w1, FF_w2, HD, S_ln_w, S_ln_b, S_wq, S_wkv, IS, QKV, sqkv_b, sqkv_l,
                      N_w, N_b, OUT, sob, sol, soc, RESIDUAL, DO_FF, DO_QKV, FINAL_LN, DT,
                      BLOCK_C, BLOCK_I, BLOCK_HC, BLOCK_IS, PREC, INTERP)
    else:
        _epilogue(o, x_in, b, out_rows, row_ok, cols, C, I, eps, W_out, FF_ln_w, FF_ln_b, FF_w1,
                  FF_w2, HD, S_ln_w, S_ln_b, S_wq, S_wkv, IS, QKV, sqkv_b, sqkv_l, N_w, N_b,
                  OUT, sob, sol, soc, RESIDUAL, DO_FF, DO_QKV, FINAL_LN, DT, BLOCK_C, BLOCK_I,
                  BLOCK_HC, BLOCK_IS, PREC, INTERP)


@triton.jit
def _cross_merge(
    LG, slgb, slgl, slgc, L1, n_splits, PO,
    C, I, eps,
    W_out, FF_ln_w, FF_ln_b, FF_w1, FF_w2, HD,
    S_ln_w, S_ln_b, S_wq, S_wkv, IS, QKV, sqkv_b, sqkv_l,
    N_w, N_b, OUT, sob, sol, soc,
    RESIDUAL: tl.constexpr, DO_FF: tl.constexpr, DO_QKV: tl.constexpr,
    FINAL_LN: tl.constexpr, DT: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_HC: tl.constexpr,
    BLOCK_IS: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr,
):
    """Global latents after a key split: o = sum_s 2^(lse_s - lse) o_s per column, then the
    same epilogue as _cross."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    nb = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_C)
    ii = tl.arange(0, BLOCK_I)
    rows = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    row_ok = rows < L1
    m = row_ok[:, None] & (ii < I)[None, :]
    x_in = tl.load(LG + b.to(tl.int64) * slgb + rows[:, None] * slgl + cols[None, :] * slgc,
                   mask=row_ok[:, None] & (cols < C)[None, :], other=0.0).to(tl.float32)
    lse_off = n_splits * nb * L1 * I
    mx = tl.full([BLOCK_L, BLOCK_I], float("-inf"), tl.float32)
    for s in range(n_splits):
        part = ((s * nb + b).to(tl.int64) * L1 + rows[:, None]) * I + ii[None, :]
        mx = tl.maximum(mx, tl.load(PO + lse_off + part, mask=m, other=0.0))
    tot = tl.zeros([BLOCK_L, BLOCK_I], tl.float32)
    o = tl.zeros([BLOCK_L, BLOCK_I], tl.float32)
    for s in range(n_splits):
        part = ((s * nb + b).to(tl.int64) * L1 + rows[:, None]) * I + ii[None, :]
        w = tl.exp2(tl.load(PO + lse_off + part, mask=m, other=0.0) - mx)
        tot += w
        o += w * tl.load(PO + part, mask=m, other=0.0)
    o = o / tot
    _epilogue(o, x_in, b, rows, row_ok, cols, C, I, eps, W_out, FF_ln_w, FF_ln_b, FF_w1,
              FF_w2, HD, S_ln_w, S_ln_b, S_wq, S_wkv, IS, QKV, sqkv_b, sqkv_l, N_w, N_b,
              OUT, sob, sol, soc, RESIDUAL, DO_FF, DO_QKV, FINAL_LN, DT, BLOCK_C, BLOCK_I,
              BLOCK_HC, BLOCK_IS, PREC, INTERP)


@triton.jit
def _self(
    LAT, slb, sll, L1, L2, NGB, QKV, sqkv_b, sqkv_l,
    C, IS, HEADS, qk_scale, eps,
    W_out, FF_ln_w, FF_ln_b, FF_w1, FF_w2, HD,
    N_w, N_b, OUT, sob, sol, soc,
    FINAL_LN: tl.constexpr, DT: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_IS: tl.constexpr, BLOCK_HC: tl.constexpr,
    PREC: tl.constexpr, INTERP: tl.constexpr,
):
    """Latent self-attention + FF; LAT and QKV are (B, L1 + L2, .) fp32 buffers."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    js = tl.arange(0, BLOCK_IS)
    is_global = pid < NGB
    local = tl.where(is_global, pid, pid - NGB)
    rows = local * BLOCK_L + tl.arange(0, BLOCK_L)
    if is_global:
        row_ok = rows < L1
        out_rows = rows
    else:
        row_ok = rows < L2
        out_rows = rows + L1
    x_in = tl.load(LAT + b.to(tl.int64) * slb + out_rows[:, None] * sll + cols[None, :],
                   mask=row_ok[:, None] & (cols < C)[None, :], other=0.0)
    qkv_b = QKV + b.to(tl.int64) * sqkv_b
    if is_global:
        q = tl.load(qkv_b + out_rows[:, None] * sqkv_l + js[None, :],
                    mask=row_ok[:, None] & (js < IS)[None, :], other=0.0)
        o, lse = _flash(q, qkv_b, sqkv_l, IS, 2 * IS, 0, L1, IS, HEADS, qk_scale, DT, BLOCK_N,
                        BLOCK_IS, PREC, INTERP)
    else:
        # One key: softmax weight exactly 1, the output is the latent's own v.
        o = tl.load(qkv_b + out_rows[:, None] * sqkv_l + 2 * IS + js[None, :],
                    mask=row_ok[:, None] & (js < IS)[None, :], other=0.0)
        o = cast(o, DT, INTERP).to(tl.float32)
    _epilogue(o, x_in, b, out_rows, row_ok, cols, C, IS, eps, W_out, FF_ln_w, FF_ln_b, FF_w1,
              FF_w2, HD, W_out, W_out, W_out, W_out, IS, QKV, sqkv_b, sqkv_l, N_w, N_b,
              OUT, sob, sol, soc, True, True, False, FINAL_LN, DT, BLOCK_C, BLOCK_IS,
              BLOCK_HC, BLOCK_IS, PREC, INTERP)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _tiles(device):
    """Tile sizes; SPLITS_G = key splits for the global latents' cross-attention (None: enough
    programs for about one wave over the SMs at this batch). The interpreter uses 2 so that
    the tests exercise the split + merge path (tests also force 1 and 3)."""
    if device.type != "cuda" or interpreting():
        return dict(BLOCK_L=16, BLOCK_N=32, BLOCK_T=32, num_warps=4, SPLITS_G=2)
    return dict(BLOCK_L=16, BLOCK_N=64, BLOCK_T=64, num_warps=4, SPLITS_G=None)


def _global_splits(tiles, b, ngb, npb, n, device):
    """Key splits for the global cross-attention: whole key blocks, none empty."""
    bn = tiles["BLOCK_N"]
    k_blocks = cdiv(n, bn)
    s = tiles.get("SPLITS_G")
    if s is None:
        s = cdiv(num_sms(device), max(1, b * (ngb + npb)))
    s = max(1, min(int(s), 8, k_blocks)) if ngb else 1
    per = cdiv(k_blocks, s) * bn
    return cdiv(n, per), per


def _dot_dtype(dtype):
    return TL_DTYPE[dtype]


def supports(op, args):
    """Shape limits of these kernels (dtype / device are checked by the backend)."""
    if op == "perceiver_attention":
        latents, w_q = args[0], args[7]
        c, inner = latents.shape[-1], w_q.shape[0]
    else:
        x, pos, weights, use_self_attn = args[0], args[1], args[4], args[9]
        c, inner = x.shape[1], weights[4].shape[0]
        if pos is not None and args[2] is not None and inner != c:
            return f"pos (C = {c} channels) added to keys of inner dim {inner}"
        if use_self_attn and weights[13].shape[0] > 256:
            return "self-attention inner dim above 256"
    if c > 256 or inner > 256:
        return f"channels {c} / inner dim {inner} above 256 (one tile per row)"
    return None


def _c(t):
    return t if t is None else t.contiguous()


def _launch_kv(x_args, n, c, ln_w, ln_b, w_kv, inner, b, eps, dtype, tiles, pos_args,
               need_plain):
    """Returns (kv, kv + pos): the second is the first when there is no pos. Storage dtype:
    fp32 for fp32 inputs, else the input dtype (the reference rounds k and v to it too)."""
    x, sxb, sxc, sxh, sxw, xw = x_args
    store = torch.float32 if dtype == torch.float32 else dtype
    has_pos = pos_args is not None
    need_plain = need_plain or not has_pos
    kv = torch.empty((b, n, 2 * inner), device=x.device, dtype=store) if need_plain else None
    kvg = torch.empty((b, n, 2 * inner), device=x.device, dtype=store) if has_pos else kv
    pos, spb, spc, sph, spw, pw = pos_args if has_pos else (x, 0, 0, 0, 0, 1)
    bt = tiles["BLOCK_T"]
    _ln_kv[(cdiv(n, bt), b)](
        x, sxb, sxc, sxh, sxw, xw, n, c, ln_w, ln_b, w_kv,
        kv if kv is not None else kvg, kvg, pos, spb, spc, sph, spw, pw, inner, eps,
        STORE_KV=need_plain, HAS_POS=has_pos, DT=_dot_dtype(dtype), BLOCK_T=bt,
        BLOCK_C=pow2(c), BLOCK_I=pow2(inner), PREC=fp32_precision(), INTERP=interpreting(),
        num_warps=tiles["num_warps"],
    )
    return (kv if kv is not None else kvg), kvg


def _launch_cross(b, lg, l1, lp, l2, kvs, n, win, c, p, heads, eps, s_p, qkv, norm,
                  out, residual, do_ff, final_ln, dtype, tiles):
    """p: the layer's cross weights (7 attention + 4 FF); s_p: self-attention weights (5) or
    None; lg / lp: (tensor, sb, sl, sc) or None."""
    inner = p[4].shape[0]
    hidden = p[9].shape[0] if do_ff else 16
    bl = tiles["BLOCK_L"]
    ngb = cdiv(l1, bl)
    npb = cdiv(l2, bl)
    dummy = p[0]
    lg = lg if lg is not None else (dummy, 0, 0, 0)
    lp = lp if lp is not None else (dummy, 0, 0, 0)
    nw, ws, w = win
    if s_p is not None:
        s_ln_w, s_ln_b, s_wq, s_wkv = s_p[0], s_p[1], s_p[2], s_p[3]
        inner_s = s_wq.shape[0]
        sqb, sql = qkv.stride(0), qkv.stride(1)
    else:
        s_ln_w = s_ln_b = s_wq = s_wkv = qkv = dummy
        inner_s, sqb, sql = 16, 0, 0
    n_w, n_b = norm if norm is not None else (dummy, dummy)
    ff = p[7:11] if do_ff else (dummy, dummy, dummy, dummy)
    splits, per_split = _global_splits(tiles, b, ngb, npb, n, kvs[1].device)
    po = torch.empty((2, splits, b, l1, inner), device=out.device, dtype=torch.float32) \
        if splits > 1 else dummy
    epilogue = (c, inner, eps, p[6], ff[0], ff[1], ff[2], ff[3], hidden,
                s_ln_w, s_ln_b, s_wq, s_wkv, inner_s, qkv, sqb, sql,
                n_w, n_b, out, out.stride(0), out.stride(1), out.stride(2))
    flags = dict(RESIDUAL=residual, DO_FF=do_ff, DO_QKV=s_p is not None, FINAL_LN=final_ln,
                 DT=_dot_dtype(dtype), BLOCK_L=bl, BLOCK_C=pow2(c), BLOCK_I=pow2(inner),
                 BLOCK_HC=min(64, pow2(hidden)), BLOCK_IS=pow2(inner_s),
                 PREC=fp32_precision(), INTERP=interpreting(), num_warps=tiles["num_warps"])
    _cross[(ngb * splits + npb, b)](
        lg[0], lg[1], lg[2], lg[3], l1, lp[0], lp[1], lp[2], lp[3], l2, ngb,
        kvs[0], kvs[1], n, nw, ws, w, splits, per_split, po,
        c, inner, heads, LOG2E / math.sqrt(inner // heads), eps,
        p[0], p[1], p[4], *epilogue[3:],
        BLOCK_N=tiles["BLOCK_N"], SPLIT_G=splits > 1, **flags,
    )
    if splits > 1:
        _cross_merge[(ngb, b)](lg[0], lg[1], lg[2], lg[3], l1, splits, po, *epilogue, **flags)


def perceiver_attention(latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv,
                        w_out, heads=1, eps=1e-5):
    """Same signature and result as reference.perceiver_attention (no residual)."""
    b, l, c = latents.shape
    n = x.shape[1]
    inner = w_q.shape[0]
    tiles = _tiles(x.device)
    ln_latents_w, ln_latents_b, ln_x_w, ln_x_b = map(_c, (ln_latents_w, ln_latents_b, ln_x_w,
                                                         ln_x_b))
    w_q, w_kv, w_out = map(_c, (w_q, w_kv, w_out))
    pos_args = None
    if pos is not None:
        pos_args = (pos, pos.stride(0) if pos.shape[0] > 1 else 0, pos.stride(2), 0,
                    pos.stride(1), n)
    # x (B, N, C) as a one-row image: token n -> (0, n)
    kvs = _launch_kv((x, x.stride(0), x.stride(2), 0, x.stride(1), n), n, c, ln_x_w, ln_x_b,
                     w_kv, inner, b, eps, latents.dtype, tiles, pos_args, need_plain=False)
    out = torch.empty_like(latents, memory_format=torch.contiguous_format)
    p = [ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out]
    _launch_cross(b, (latents, latents.stride(0), latents.stride(1), latents.stride(2)), l,
                  None, 0, kvs, n, (1, 1, 1), c, p, heads, eps, None, None, None, out,
                  residual=False, do_ff=False, final_ln=False, dtype=latents.dtype, tiles=tiles)
    return out


def spatial_perceiver(x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth, heads=1,
                      use_self_attn=True, eps=1e-5, compute_dtype=None):
    """Same signature and result as reference.spatial_perceiver. compute_dtype is accepted and
    not used: every product's operands are in the input dtype (bf16 / fp16 tensor cores for
    those inputs; fp32 inputs follow the fp32 precision setting, IEEE by default), with fp32
    accumulation, whatever compute_dtype permits."""
    b, c, h, w = x.shape
    n = h * w
    dtype = x.dtype
    tiles = _tiles(x.device)
    per = reference.params_per_layer(use_self_attn)
    weights = [_c(t) for t in weights]
    norm_w, norm_b = _c(norm_w), _c(norm_b)
    l1 = latents_1d.shape[0] if latents_1d is not None else 0
    l2 = latents_2d.shape[0] if latents_2d is not None else 0
    nw = math.isqrt(l2) if l2 else 1
    ws = h // nw if l2 else 1
    x_args = (x, x.stride(0), x.stride(1), x.stride(2), x.stride(3), w)
    pos_args = None
    if pos is not None and l1:
        pos_args = (pos, pos.stride(0) if pos.shape[0] > 1 else 0, pos.stride(1), pos.stride(2),
                    pos.stride(3), w)
    lat = torch.empty((b, l1 + l2, c), device=x.device, dtype=torch.float32)
    out = torch.empty((b, l1 + l2, c), device=x.device, dtype=dtype)
    qkv = None
    if use_self_attn:
        inner_s = max(weights[i * per + 13].shape[0] for i in range(depth))
        qkv = torch.empty((b, l1 + l2, 3 * inner_s), device=x.device, dtype=torch.float32)
    bl = tiles["BLOCK_L"]
    for layer in range(depth):
        p = weights[layer * per : (layer + 1) * per]
        last = layer == depth - 1
        inner = p[4].shape[0]
        kvs = _launch_kv(x_args, n, c, p[2], p[3], p[5], inner, b, eps, dtype, tiles, pos_args,
                         need_plain=l2 > 0)
        if layer == 0:  # the latent parameters, broadcast over the batch
            lg = (latents_1d, 0, latents_1d.stride(0), latents_1d.stride(1)) if l1 else None
            lp = (latents_2d, 0, latents_2d.stride(0), latents_2d.stride(1)) if l2 else None
        else:
            lg = (lat, lat.stride(0), lat.stride(1), lat.stride(2))
            lp = (lat[:, l1:], lat.stride(0), lat.stride(1), lat.stride(2))
        cross_out = out if (last and not use_self_attn) else lat
        _launch_cross(b, lg, l1, lp, l2, kvs, n, (nw, ws, w), c, p, heads, eps,
                      p[11:16] if use_self_attn else None, qkv, (norm_w, norm_b), cross_out,
                      residual=True, do_ff=True, final_ln=last and not use_self_attn,
                      dtype=dtype, tiles=tiles)
        if use_self_attn:
            dst = out if last else lat
            inner_s = p[13].shape[0]
            hidden_s = p[18].shape[0]
            ngb = cdiv(l1, bl)
            _self[(ngb + cdiv(l2, bl), b)](
                lat, lat.stride(0), lat.stride(1), l1, l2, ngb, qkv, qkv.stride(0),
                qkv.stride(1), c, inner_s, heads, LOG2E / math.sqrt(inner_s // heads), eps,
                p[15], p[16], p[17], p[18], p[19], hidden_s,
                norm_w, norm_b, dst, dst.stride(0), dst.stride(1), dst.stride(2),
                FINAL_LN=last, DT=_dot_dtype(dtype), BLOCK_L=bl, BLOCK_N=tiles["BLOCK_N"],
                BLOCK_C=pow2(c), BLOCK_IS=pow2(inner_s), BLOCK_HC=min(64, pow2(hidden_s)),
                PREC=fp32_precision(), INTERP=interpreting(), num_warps=tiles["num_warps"],
            )
    return out
