"""Host side of the Metal kernels: buffers, argument lists, threads and group sizes per op.

Every function takes `lib`, an object whose attributes are kernels called as
`lib.<name>(*tensors_and_scalars, threads=[...], group_size=[...])`: on a Mac that is the library
torch.mps.compile_shader returns; in the Linux tests it is the C++ emulator's stand-in
(tests/metal_emu/emu.py), so this file is exercised unchanged by both. Arguments bind the way
compile_shader binds them: tensor -> device buffer, int -> constant long&, float -> constant
float&, list of ints -> constant long*.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import reference

TYPE_NAMES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat"}
# compute_dtype emulation modes (kernels/common.h).
ROUND_NONE, ROUND_HALF, ROUND_BF16 = 0, 1, 2
MAX_HEAD_DIM = 256  # ATT_MAXD / ATT_MAXDV / WIN_MAXDH in the kernels

# Tests set this to fill every buffer the launchers allocate with NaN, so that an element a kernel
# forgot to write cannot pass.
POISON = False

ATT_BQ, ATT_THREADS = 8, 128
LN_ROWS = 4
LIN_TILE = 16
WIN_NSG = 4


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _empty(shape, like: torch.Tensor) -> torch.Tensor:
    t = torch.empty(shape, dtype=like.dtype, device=like.device)
    if POISON:
        t.fill_(float("nan"))
    return t


def _buf(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Contiguous, starting at its storage's first element: kernels index from the bound
    pointer with the strides we pass, never trusting a view's offset or layout."""
    t = t.to(dtype)
    if not t.is_contiguous():
        t = t.contiguous()
    if t.storage_offset() != 0:
        t = t.clone()
    return t


def _round_mode(dtype: torch.dtype, compute_dtype: Optional[torch.dtype]) -> int:
    if compute_dtype is None or compute_dtype == dtype or compute_dtype == torch.float32:
        return ROUND_NONE  # no rounding, or an exact widening: fp32 compute is then faithful
    return {torch.float16: ROUND_HALF, torch.bfloat16: ROUND_BF16}[compute_dtype]


class Kernels:
    """The four kernels of one dtype, with their launch geometry."""

    def __init__(self, lib, dtype: torch.dtype):
        self.lib, self.suffix = lib, TYPE_NAMES[dtype]

    def _k(self, name: str):
        return getattr(self.lib, f"{name}_{self.suffix}")

    def layer_norm(self, x, w, b, y, rows, c, inner, x_strides, y_off, y_strides, eps):
        """Rows r = (r // inner, r % inner); x strides (outer, inner, channel), y (outer, inner)."""
        g = [rows, c, inner, *x_strides, y_off, *y_strides]
        self._k("layer_norm")(x, w, b, y, g, float(eps),
                              threads=[_cdiv(rows, LN_ROWS) * LN_ROWS * 32], group_size=[LN_ROWS * 32])

    def linear(self, x, w, y, m, n, k, x_off=0, x_rs=None, w_off=0, bias=None, res=None, act=0):
        """y (m, n) = act(x (m, k) @ w[w_off:](n, k)^T + bias) + res; x rows x_rs apart."""
        g = [m, n, k, x_off, k if x_rs is None else x_rs, w_off, n,
             int(bias is not None), int(res is not None), act]
        self._k("linear")(x, w, w if bias is None else bias, y if res is None else res, y, g,
                          threads=[_cdiv(n, LIN_TILE) * LIN_TILE, _cdiv(m, LIN_TILE) * LIN_TILE],
                          group_size=[LIN_TILE, LIN_TILE])

    def attention(self, q, k, v, out, *, batch, heads, n_q, n_k, d, dv, q_str, k_str, v_str,
                  o_str, pos=None, p_str=(0, 0, 0, 0), freqs, rope=(0, 1, 0, 1, 0),
                  round_mode=ROUND_NONE, scale, key_mask=None, mask_bstride=0):
        """Strides are (batch, head, token, offset) in elements; p_str (batch, head, token,
        channel). rope = (q grid width or 0, k grid width, rotated tokens per frame, frame
        length, number of frame tokens). key_mask: 0 / 1 in q's dtype, row b at
        b * mask_bstride (0: one row for the batch), or None."""
        g = [n_q, n_k, d, dv, *q_str, *k_str, *v_str, *o_str, *p_str, int(pos is not None),
             *rope, round_mode, int(key_mask is not None), mask_bstride]
        assert len(g) == 33
        self._k("rope_attention")(q, k, v, q if pos is None else pos, freqs, out, g, float(scale),
                                  q if key_mask is None else key_mask,
                                  threads=[_cdiv(n_q, ATT_BQ) * ATT_THREADS, heads, batch],
                                  group_size=[ATT_THREADS, 1, 1])

    def window_attention(self, q, kv, out, *, rows, lat, nw, ws, width, hw, inner, heads):
        dh = inner // heads
        g = [rows, lat, nw, ws, width, hw, inner, dh]
        self._k("window_attention")(q, kv, out, g, 1.0 / math.sqrt(dh),
                                    threads=[_cdiv(rows, WIN_NSG) * WIN_NSG * 32, heads],
                                    group_size=[WIN_NSG * 32, 1])


# ---------------------------------------------------------------------------------------------
# Which calls the kernels take (the rest goes to the reference when backend="auto")
# ---------------------------------------------------------------------------------------------


def supports(op: str, args: tuple, has_bfloat: bool) -> Optional[str]:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    dtype = tensors[0].dtype
    if dtype == torch.float64:
        return "float64 is not supported on Apple GPUs"
    if dtype == torch.bfloat16 and not has_bfloat:
        return "bfloat16 kernels need Metal 3.1 (macOS 14) on this GPU"
    if op == "rope_attention":
        q, k, v = args[:3]
        compute_dtype = args[9]
        if compute_dtype == torch.float64:
            return "compute_dtype float64 is not supported on Apple GPUs"
        if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
            return f"head dims above {MAX_HEAD_DIM} are not supported"
    elif op == "perceiver_attention":
        w_q, heads = args[7], args[10]
        if w_q.shape[0] // heads > MAX_HEAD_DIM:
            return f"head dims above {MAX_HEAD_DIM} are not supported"
    elif op == "spatial_perceiver":
        x, pos, weights, depth, heads, use_self_attn = args[0], args[1], args[4], args[7], args[8], args[9]
        n = reference.params_per_layer(use_self_attn)
        for layer in range(depth):
            p = weights[layer * n : (layer + 1) * n]
            inner = p[4].shape[0]
            if inner // heads > MAX_HEAD_DIM or (use_self_attn and p[13].shape[0] // heads > MAX_HEAD_DIM):
                return f"head dims above {MAX_HEAD_DIM} are not supported"
            if pos is not None and inner != x.shape[1]:
                return f"pos ({x.shape[1]} channels) cannot be added to keys of width {inner}"
    return None


# ---------------------------------------------------------------------------------------------
# The ops (same signatures as edgetam_kernels.reference, after `lib`)
# ---------------------------------------------------------------------------------------------


def rope_attention(lib, q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope=0, theta=10000.0,
                   scale=None, compute_dtype=None, key_mask=None):
    dtype = q.dtype
    q, k, v = _buf(q, dtype), _buf(k, dtype), _buf(v, dtype)
    b, h, n_q, d = q.shape
    n_k, dv = k.shape[2], v.shape[3]
    out = _empty((b, h, n_q, dv), q)
    if out.numel() == 0:
        return out
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    freqs = reference.rope_frequencies(d, theta, device=q.device).contiguous()
    n_rope = n_k - num_k_exclude_rope
    if n_rope > 0:
        rope = (q_grid[1], k_grid[1], k_grid[0] * k_grid[1], n_rope // k_repeat, n_rope)
    else:
        rope = (q_grid[1], 1, 0, 1, 0)
    Kernels(lib, dtype).attention(
        q, k, v, out, batch=b, heads=h, n_q=n_q, n_k=n_k, d=d, dv=dv,
        q_str=(h * n_q * d, n_q * d, d, 0), k_str=(h * n_k * d, n_k * d, d, 0),
        v_str=(h * n_k * dv, n_k * dv, dv, 0), o_str=(h * n_q * dv, n_q * dv, dv, 0),
        freqs=freqs, rope=rope, round_mode=_round_mode(dtype, compute_dtype), scale=scale,
        key_mask=None if key_mask is None else _buf(key_mask, dtype),
        mask_bstride=0 if key_mask is None or key_mask.shape[0] == 1 else n_k)
    return out


def _ln_rows(kern, x, w, b, rows, c, eps, like):
    y = _empty((rows, c), like)
    kern.layer_norm(x, w, b, y, rows, c, rows, (0, c, 1), 0, (0, c), eps)
    return y


def _project(kern, x, w, rows, like, **kw):
    """rows x w.shape[0] (or kw['n']) = x @ w^T."""
    n = kw.pop("n", w.shape[0])
    y = _empty((rows, n), like)
    kern.linear(x, w, y, rows, n, w.shape[1], **kw)
    return y


def _dense_attention(kern, q, kv, *, batch, n_q, n_k, inner, heads, pos=None, p_str=(0, 0, 0, 0),
                     freqs, like):
    """Rows of q (batch * n_q, inner) attend to rows of kv (batch * n_k, 2 * inner) per head."""
    dh = inner // heads
    out = _empty((batch * n_q, inner), like)
    q_str = (n_q * inner, dh, inner, 0)
    kern.attention(q, kv, kv, out, batch=batch, heads=heads, n_q=n_q, n_k=n_k, d=dh, dv=dh,
                   q_str=q_str, k_str=(n_k * 2 * inner, dh, 2 * inner, 0),
                   v_str=(n_k * 2 * inner, dh, 2 * inner, inner), o_str=q_str,
                   pos=pos, p_str=p_str, freqs=freqs, scale=1.0 / math.sqrt(dh))
    return out


def perceiver_attention(lib, latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q,
                        w_kv, w_out, heads=1, eps=1e-5):
    dtype = latents.dtype
    kern = Kernels(lib, dtype)
    lat, x = _buf(latents, dtype), _buf(x, dtype)
    ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out = (
        _buf(t, dtype) for t in (ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out))
    b, n_lat, c = lat.shape
    n = x.shape[1]
    inner = w_q.shape[0]
    dh = inner // heads
    freqs = torch.ones(1, dtype=torch.float32, device=lat.device)  # unused: no RoPE here
    kv = _project(kern, _ln_rows(kern, x, ln_x_w, ln_x_b, b * n, c, eps, lat), w_kv, b * n, lat)
    q = _project(kern, _ln_rows(kern, lat, ln_latents_w, ln_latents_b, b * n_lat, c, eps, lat),
                 w_q, b * n_lat, lat)
    p_str = (0, 0, 0, 0)
    if pos is not None:
        pos = _buf(pos, dtype)
        p_str = (n * inner if pos.shape[0] > 1 else 0, dh, inner, 1)
    a = _dense_attention(kern, q, kv, batch=b, n_q=n_lat, n_k=n, inner=inner, heads=heads,
                         pos=pos, p_str=p_str, freqs=freqs, like=lat)
    out = _empty((b, n_lat, c), lat)
    kern.linear(a, w_out, out, b * n_lat, c, inner)
    return out


def _feed_forward(kern, lat, rows, c, ln_w, ln_b, w1, w2, eps):
    hid = _project(kern, _ln_rows(kern, lat, ln_w, ln_b, rows, c, eps, lat), w1, rows, lat, act=1)
    kern.linear(hid, w2, lat, rows, c, w1.shape[0], res=lat)  # lat += W2 gelu(W1 LN(lat))


def spatial_perceiver(lib, x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth,
                      heads=1, use_self_attn=True, eps=1e-5, compute_dtype=None):
    # compute_dtype is accepted and not used: the kernels read the input dtype and compute in
    # fp32 (no rounding to compute_dtype, no faster reduced-precision path here).
    dtype = x.dtype
    kern = Kernels(lib, dtype)
    x = _buf(x, dtype)
    b, c, hgt, wid = x.shape
    hw = hgt * wid
    n_per = reference.params_per_layer(use_self_attn)
    weights = [_buf(t, dtype) for t in weights]
    layers = [weights[i * n_per : (i + 1) * n_per] for i in range(depth)]
    freqs = torch.ones(1, dtype=torch.float32, device=x.device)  # unused: no RoPE here
    if pos is not None:
        pos = _buf(pos, dtype)

    lat_g = lat_p = None
    if latents_1d is not None:
        l1 = latents_1d.shape[0]
        lat_g = _buf(latents_1d, dtype).unsqueeze(0).expand(b, l1, c).clone(
            memory_format=torch.contiguous_format)
    if latents_2d is not None:
        l2 = latents_2d.shape[0]
        nw = math.isqrt(l2)
        ws = hgt // nw
        lat_p = _buf(latents_2d, dtype).unsqueeze(0).expand(b, l2, c).clone(
            memory_format=torch.contiguous_format)

    for p in layers:
        inner = p[4].shape[0]
        dh = inner // heads
        # LN_x(x) and Wkv once per layer, shared by both groups; x read from (B, C, H, W).
        xn = _empty((b * hw, c), x)
        kern.layer_norm(x, p[2], p[3], xn, b * hw, c, hw, (c * hw, 1, hw), 0, (hw * c, c), eps)
        kv = _project(kern, xn, p[5], b * hw, x)

        groups = []
        if lat_g is not None:
            groups.append(("global", lat_g, l1))
        if lat_p is not None:
            groups.append(("patch", lat_p, l2))
        for kind, lat, n_lat in groups:
            rows = b * n_lat
            q = _project(kern, _ln_rows(kern, lat, p[0], p[1], rows, c, eps, x), p[4], rows, x)
            if kind == "global":
                p_str = (0, 0, 0, 0)
                if pos is not None:
                    p_str = (c * hw if pos.shape[0] > 1 else 0, dh * hw, 1, hw)
                a = _dense_attention(kern, q, kv, batch=b, n_q=n_lat, n_k=hw, inner=inner,
                                     heads=heads, pos=pos, p_str=p_str, freqs=freqs, like=x)
            else:
                a = _empty((rows, inner), x)
                kern.window_attention(q, kv, a, rows=rows, lat=n_lat, nw=nw, ws=ws, width=wid,
                                      hw=hw, inner=inner, heads=heads)
            kern.linear(a, p[6], lat, rows, c, inner, res=lat)
            _feed_forward(kern, lat, rows, c, p[7], p[8], p[9], p[10], eps)
            if use_self_attn:
                inner_s = p[13].shape[0]
                ln = _ln_rows(kern, lat, p[11], p[12], rows, c, eps, x)
                if kind == "global":
                    q_s = _project(kern, ln, p[13], rows, x)
                    kv_s = _project(kern, ln, p[14], rows, x)
                    a = _dense_attention(kern, q_s, kv_s, batch=b, n_q=n_lat, n_k=n_lat,
                                         inner=inner_s, heads=heads, freqs=freqs, like=x)
                else:
                    # A patch latent attends to itself alone: softmax over one key is 1, so
                    # the attention is exactly its value Wv LN(lat) (rows inner_s.. of Wkv).
                    a = _project(kern, ln, p[14], rows, x, n=inner_s, w_off=inner_s * c)
                kern.linear(a, p[15], lat, rows, c, inner_s, res=lat)
                _feed_forward(kern, lat, rows, c, p[16], p[17], p[18], p[19], eps)

    n_out = (l1 if lat_g is not None else 0) + (l2 if lat_p is not None else 0)
    out = _empty((b, n_out, c), x)
    off = 0
    for lat in (lat_g, lat_p):
        if lat is None:
            continue
        n_lat = lat.shape[1]
        kern.layer_norm(lat, _buf(norm_w, dtype), _buf(norm_b, dtype), out, b * n_lat, c, n_lat,
                        (n_lat * c, c, 1), off * c, (n_out * c, c), eps)
        off += n_lat
    return out
