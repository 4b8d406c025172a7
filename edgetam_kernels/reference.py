"""Pure-PyTorch specification of every op.

These functions are the oracle every backend is tested against and the fallback that makes the
ops work on any device. They are written for clarity, not speed, and they are differentiable.
They assume arguments that `edgetam_kernels._checks` has already validated.

The math is EdgeTAM's (arXiv 2501.07256) as implemented by Meta's `sam2` package; see
`../shared/DESIGN.md` or the README for the exact definitions.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Axial RoPE
# ---------------------------------------------------------------------------------------------


def rope_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """The D/4 axial frequencies theta^(-4j/D), j < D/4, in fp32 (as Meta computes them)."""
    exponent = torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim
    return 1.0 / (theta**exponent)


def rope_cos_sin(grid_h: int, grid_w: int, head_dim: int, theta: float, device=None):
    """cos/sin tables of shape (grid_h * grid_w, head_dim // 2), fp32.

    Token n sits at column n % grid_w and row n // grid_w. Pairs j < D/4 rotate by the column
    index, pairs D/4 <= j < D/2 by the row index.
    """
    freqs = rope_frequencies(head_dim, theta, device)
    n = torch.arange(grid_h * grid_w, device=device, dtype=torch.float32)
    col = n % grid_w
    row = torch.div(n, grid_w, rounding_mode="floor")
    angles = torch.cat([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of the last dim; computed in fp32 (float64 stays
    float64, so the float64 reference is exact and differentiable), cast back."""
    work = torch.promote_types(x.dtype, torch.float32)
    cos, sin = cos.to(work), sin.to(work)
    xf = x.to(work).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def rotate_keys(
    k: torch.Tensor,
    k_grid: Sequence[int],
    k_repeat: int,
    num_k_exclude_rope: int,
    theta: float,
) -> torch.Tensor:
    """Apply the key RoPE rule shared by SAM 2 and EdgeTAM.

    k: (B, H, Nk, D). The last `num_k_exclude_rope` tokens (object pointers) are never rotated.
    The rest is `k_repeat` frames of equal length; in each frame the last k_h * k_w tokens are
    rotated on the k grid and any tokens before them (EdgeTAM's global latents) are not.
    """
    n_k = k.shape[-2]
    n_rope = n_k - num_k_exclude_rope
    if n_rope == 0:
        return k
    k_h, k_w = k_grid
    frame = n_rope // k_repeat
    n_rot = k_h * k_w
    cos, sin = rope_cos_sin(k_h, k_w, k.shape[-1], theta, k.device)
    rope_part = k[..., :n_rope, :].unflatten(-2, (k_repeat, frame))
    kept = rope_part[..., : frame - n_rot, :]
    rotated = apply_rope(rope_part[..., frame - n_rot :, :], cos, sin)
    rope_part = torch.cat([kept, rotated], dim=-2).flatten(-3, -2)
    return torch.cat([rope_part, k[..., n_rope:, :]], dim=-2)


def attention(q, k, v, scale: Optional[float] = None,
              compute_dtype: Optional[torch.dtype] = None,
              key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T * scale) v (SDPA; scale defaults to 1/sqrt(D)). With `compute_dtype`, q, k
    and v are cast to it for the attention and the result is cast back to q's dtype.

    key_mask: optional bool (B or 1, Nk), True = the key takes part. Masked keys get weight 0;
    a batch row with no valid key gives zeros (not the NaN of softmax over nothing)."""
    out_dtype = q.dtype
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale).to(out_dtype)
    # A row with no valid key attends to all keys (finite, no NaN in forward or backward) and
    # is then zeroed, so SDPA's numerics stay those of the unmasked path.
    empty = ~key_mask.any(dim=-1, keepdim=True)  # (B or 1, 1)
    attn_mask = (key_mask | empty)[:, None, None, :]  # (B or 1, 1, 1, Nk): heads and queries
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    out = torch.where(empty[:, :, None, None], torch.zeros((), dtype=out.dtype,
                                                           device=out.device), out)
    return out.to(out_dtype)


def rope_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_grid: Sequence[int],
    k_grid: Sequence[int],
    k_repeat: int,
    num_k_exclude_rope: int = 0,
    theta: float = 10000.0,
    scale: Optional[float] = None,
    compute_dtype: Optional[torch.dtype] = None,
    key_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """softmax(rope(q) rope(k)^T * scale) v, over (B, H, N, D) tensors.

    q is rotated on the q grid (q_h * q_w == Nq). Keys follow `rotate_keys`. The rotation is
    computed in fp32 and cast back to the input dtype, as Meta's code does; `compute_dtype`
    optionally casts q, k, v to a (lower) precision for the attention itself, the output is
    returned in q's dtype.

    key_mask: optional bool (B or 1, Nk), shared by all heads and queries; True = the key may
    be attended. The result equals attention over the valid keys alone, each keeping the RoPE
    position of its index in the full layout (masking shifts nothing); a batch row whose keys
    are all masked gives zeros.
    """
    q_h, q_w = q_grid
    cos, sin = rope_cos_sin(q_h, q_w, q.shape[-1], theta, q.device)
    q = apply_rope(q, cos, sin)
    k = rotate_keys(k, k_grid, k_repeat, num_k_exclude_rope, theta)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return attention(q, k, v, scale, compute_dtype, key_mask)


# ---------------------------------------------------------------------------------------------
# Perceiver
# ---------------------------------------------------------------------------------------------


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


def perceiver_attention(
    latents: torch.Tensor,
    x: torch.Tensor,
    pos: Optional[torch.Tensor],
    ln_latents_w: torch.Tensor,
    ln_latents_b: torch.Tensor,
    ln_x_w: torch.Tensor,
    ln_x_b: torch.Tensor,
    w_q: torch.Tensor,
    w_kv: torch.Tensor,
    w_out: torch.Tensor,
    heads: int = 1,
    eps: float = 1e-5,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Perceiver cross-attention block (no residual): latents (B, L, C) attend to x (B, N, C).

    q = Wq LN(latents); [k, v] = Wkv LN(x) (k first); k += pos; v += pos;
    out = Wout softmax(q k^T / sqrt(dh)) v. No biases. `compute_dtype` (not part of the
    perceiver_attention op; spatial_perceiver's global latents use it) casts q, k + pos and
    v + pos to it for the attention alone; the result is cast back to the input dtype.
    """
    c = latents.shape[-1]
    lat = F.layer_norm(latents, (c,), ln_latents_w, ln_latents_b, eps)
    xn = F.layer_norm(x, (c,), ln_x_w, ln_x_b, eps)
    q = F.linear(lat, w_q)
    k, v = F.linear(xn, w_kv).chunk(2, dim=-1)
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    if pos is not None:
        p = _heads(pos, heads)
        k, v = k + p, v + p
    out = attention(q, k, v, compute_dtype=compute_dtype)
    return F.linear(_merge_heads(out), w_out)


def _self_attention(x, ln_w, ln_b, w_q, w_kv, w_out, heads, eps):
    c = x.shape[-1]
    xn = F.layer_norm(x, (c,), ln_w, ln_b, eps)
    q = F.linear(xn, w_q)
    k, v = F.linear(xn, w_kv).chunk(2, dim=-1)
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    return F.linear(_merge_heads(out), w_out)


def _feed_forward(x, ln_w, ln_b, w1, w2, eps):
    c = x.shape[-1]
    h = F.gelu(F.linear(F.layer_norm(x, (c,), ln_w, ln_b, eps), w1))
    return F.linear(h, w2)


# Order of the per-layer weights in the flat list that `spatial_perceiver` takes. A layer
# without latent self-attention uses only the first CROSS_PARAMS entries.
PERCEIVER_LAYER_PARAMS = (
    "attn.norm_latents.weight",
    "attn.norm_latents.bias",
    "attn.norm_x.weight",
    "attn.norm_x.bias",
    "attn.to_q.weight",
    "attn.to_kv.weight",
    "attn.to_out.weight",
    "ff.0.weight",
    "ff.0.bias",
    "ff.1.weight",
    "ff.3.weight",
    "self_attn.norm.weight",
    "self_attn.norm.bias",
    "self_attn.to_q.weight",
    "self_attn.to_kv.weight",
    "self_attn.to_out.weight",
    "self_ff.0.weight",
    "self_ff.0.bias",
    "self_ff.1.weight",
    "self_ff.3.weight",
)
CROSS_PARAMS = 11


def params_per_layer(use_self_attn: bool) -> int:
    return len(PERCEIVER_LAYER_PARAMS) if use_self_attn else CROSS_PARAMS


def perceiver_layer(latents, x, pos, p: Sequence[torch.Tensor], heads, use_self_attn, eps,
                    compute_dtype: Optional[torch.dtype] = None):
    """One PerceiverEncoderLayer: cross-attn + FF (+ latent self-attn + FF), all residual.
    `compute_dtype`: the cross-attention's q k^T and p v only (see perceiver_attention)."""
    latents = latents + perceiver_attention(latents, x, pos, *p[0:7], heads=heads, eps=eps,
                                            compute_dtype=compute_dtype)
    latents = latents + _feed_forward(latents, *p[7:11], eps)
    if use_self_attn:
        latents = latents + _self_attention(latents, *p[11:16], heads, eps)
        latents = latents + _feed_forward(latents, *p[16:20], eps)
    return latents


def window_tokens(x: torch.Tensor, num_windows: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * nw * nw, ws * ws, C): window (i, j) row-major, tokens row-major."""
    b, c, h, w = x.shape
    ws = h // num_windows
    x = x.reshape(b, c, num_windows, ws, num_windows, ws)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b * num_windows * num_windows, ws * ws, c)


def spatial_perceiver(
    x: torch.Tensor,
    pos: Optional[torch.Tensor],
    latents_1d: Optional[torch.Tensor],
    latents_2d: Optional[torch.Tensor],
    weights: Sequence[torch.Tensor],
    norm_w: torch.Tensor,
    norm_b: torch.Tensor,
    depth: int,
    heads: int = 1,
    use_self_attn: bool = True,
    eps: float = 1e-5,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """EdgeTAM's 2D Spatial Perceiver: (B, C, H, W) memory -> (B, L1 + L2, C) latents.

    Global latents (L1, C) attend to all H*W tokens (row-major) with `pos` added to keys and
    values; patch latents (L2, C) attend only to their own window of the sqrt(L2) x sqrt(L2)
    window grid, without pos. The same `depth` layers serve both groups; one final LayerNorm.

    compute_dtype: precision of the global latents' cross-attention products (q k^T and p v):
    their q, k + pos and v + pos are cast to it and the result back. Everything else (the
    patch latents' window attention, the latent self-attention, LayerNorms, projections,
    feed-forwards) stays in the input dtype. None: no cast (the input dtype).
    """
    b, c, h, w = x.shape
    n = params_per_layer(use_self_attn)
    layers = [weights[i * n : (i + 1) * n] for i in range(depth)]
    outs = []
    if latents_1d is not None:
        tokens = x.flatten(2).transpose(1, 2)
        p = pos.flatten(2).transpose(1, 2) if pos is not None else None
        lat = latents_1d.unsqueeze(0).expand(b, -1, -1)
        for lp in layers:
            lat = perceiver_layer(lat, tokens, p, lp, heads, use_self_attn, eps, compute_dtype)
        outs.append(lat)
    if latents_2d is not None:
        nw = math.isqrt(latents_2d.shape[0])
        windows = window_tokens(x, nw)
        lat = latents_2d.unsqueeze(0).expand(b, -1, -1).reshape(-1, 1, c)
        for lp in layers:
            lat = perceiver_layer(lat, windows, None, lp, heads, use_self_attn, eps)
        outs.append(lat.reshape(b, -1, c))
    out = torch.cat(outs, dim=1)
    return F.layer_norm(out, (c,), norm_w, norm_b, eps)
