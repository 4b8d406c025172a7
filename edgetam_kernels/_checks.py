"""Argument validation shared by the ops' real and fake implementations.

Every check raises a ValueError / TypeError that names the offending argument, so that bad input
never reaches a kernel (where it could crash or silently compute garbage).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def tensor(name: str, t, ndim: Optional[int] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), "
            f"got {t.dtype}"
        )


def same(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """All given tensors share dtype and device with the first one."""
    first_name, first = names[0], tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(
                f"{name} is on device {t.device} but {first_name} is on {first.device}"
            )


def shape(name: str, t: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


# What the spatial perceiver's compute_dtype may be (None: the inputs' dtype).
PERCEIVER_COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compute_dtype_in(value, allowed: Sequence[torch.dtype], error: type = ValueError) -> None:
    """`compute_dtype` is None or one of `allowed` (compared as dtypes: a string such as
    "bf16" is refused too, not converted)."""
    if value is not None and not (isinstance(value, torch.dtype) and value in allowed):
        names = ", ".join(str(d) for d in allowed)
        raise error(f"compute_dtype must be None or one of {names}, got {value!r}")


def grid(name: str, g: Sequence[int]) -> None:
    if len(g) != 2 or any((not isinstance(v, int)) or v < 0 for v in g):
        raise ValueError(f"{name} must be two non-negative ints (rows, cols), got {g!r}")


def key_mask(mask, q: torch.Tensor, n_k: int) -> None:
    """rope_attention's optional key-validity mask: bool (B or 1, Nk) on q's device."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"key_mask must be None or a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_mask must be a bool tensor (True = key may be attended), got {mask.dtype}")
    if mask.dim() != 2:
        raise ValueError(f"key_mask must have 2 dimensions (B or 1, Nk), got shape {tuple(mask.shape)}")
    b = q.shape[0]
    if mask.shape[0] not in (1, b) or mask.shape[1] != n_k:
        raise ValueError(f"key_mask must have shape ({b} or 1, {n_k}), got {tuple(mask.shape)}")
    if mask.device != q.device:
        raise ValueError(f"key_mask is on device {mask.device} but q is on {q.device}")


def rope_attention(q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope, theta, scale,
                   compute_dtype, key_mask_=None) -> None:
    tensor("q", q, 4)
    tensor("k", k, 4)
    tensor("v", v, 4)
    same(("q", "k", "v"), (q, k, v))
    b, h, n_q, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"batch sizes differ: q {b}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != h or v.shape[1] != h:
        raise ValueError(f"head counts differ: q {h}, k {k.shape[1]}, v {v.shape[1]}")
    if k.shape[3] != d:
        raise ValueError(f"k head dim {k.shape[3]} differs from q head dim {d}")
    n_k = k.shape[2]
    if v.shape[2] != n_k:
        raise ValueError(f"v has {v.shape[2]} tokens but k has {n_k}")
    if n_k == 0:
        raise ValueError("k and v have no tokens: attention over an empty memory is undefined")
    if d == 0 or d % 4 != 0:
        raise ValueError(f"head dim of q/k must be a positive multiple of 4 for axial RoPE, got {d}")
    grid("q_grid", q_grid)
    grid("k_grid", k_grid)
    if q_grid[0] * q_grid[1] != n_q:
        raise ValueError(f"q_grid {tuple(q_grid)} holds {q_grid[0] * q_grid[1]} tokens but q has {n_q}")
    if not 0 <= num_k_exclude_rope <= n_k:
        raise ValueError(f"num_k_exclude_rope must be in [0, {n_k}] (k's length), got {num_k_exclude_rope}")
    n_rope = n_k - num_k_exclude_rope
    if n_rope > 0:
        if k_repeat < 1:
            raise ValueError(f"k_repeat must be >= 1 when {n_rope} key tokens are rotated, got {k_repeat}")
        if n_rope % k_repeat != 0:
            raise ValueError(
                f"the {n_rope} rotated key tokens do not split into k_repeat={k_repeat} equal frames"
            )
        n_grid = k_grid[0] * k_grid[1]
        if n_grid == 0 or n_grid > n_rope // k_repeat:
            raise ValueError(
                f"k_grid {tuple(k_grid)} holds {n_grid} tokens; each of the {k_repeat} key frames "
                f"has {n_rope // k_repeat}"
            )
    elif k_repeat < 0:
        raise ValueError(f"k_repeat must be >= 0, got {k_repeat}")
    if not (theta > 0 and math.isfinite(theta)):
        raise ValueError(f"theta must be positive and finite, got {theta}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    compute_dtype_in(compute_dtype, FLOAT_DTYPES, TypeError)
    key_mask(key_mask_, q, n_k)


def heads(name: str, dim: int, n_heads: int) -> None:
    if n_heads < 1 or dim % n_heads != 0:
        raise ValueError(f"heads={n_heads} must be >= 1 and divide {name}={dim}")


def perceiver_attention(latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv,
                        w_out, heads_, eps) -> None:
    tensor("latents", latents, 3)
    tensor("x", x, 3)
    names = ["latents", "x", "ln_latents_w", "ln_latents_b", "ln_x_w", "ln_x_b", "w_q", "w_kv", "w_out"]
    ts = [latents, x, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out]
    for n, t in zip(names[2:], ts[2:]):
        tensor(n, t)
    if pos is not None:
        tensor("pos", pos, 3)
        names.append("pos")
        ts.append(pos)
    same(names, ts)
    b, _, c = latents.shape
    if x.shape[0] != b:
        raise ValueError(f"x has batch {x.shape[0]} but latents has {b}")
    if x.shape[2] != c:
        raise ValueError(f"x has {x.shape[2]} channels but latents has {c}")
    if x.shape[1] == 0:
        raise ValueError("x has no tokens: attention over an empty input is undefined")
    for n in ("ln_latents_w", "ln_latents_b", "ln_x_w", "ln_x_b"):
        shape(n, dict(zip(names, ts))[n], (c,))
    inner = w_q.shape[0] if w_q.dim() == 2 else -1
    shape("w_q", w_q, (inner, c))
    shape("w_kv", w_kv, (2 * inner, c))
    shape("w_out", w_out, (c, inner))
    heads("inner dim", inner, heads_)
    if pos is not None and (pos.shape[0] not in (1, b) or tuple(pos.shape[1:]) != (x.shape[1], inner)):
        raise ValueError(
            f"pos must have shape ({b} or 1, {x.shape[1]}, {inner}), got {tuple(pos.shape)}"
        )
    if not (eps > 0):
        raise ValueError(f"eps must be positive, got {eps}")


def spatial_perceiver(x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth, heads_,
                      use_self_attn, eps, compute_dtype, n_per_layer) -> None:
    tensor("x", x, 4)
    compute_dtype_in(compute_dtype, PERCEIVER_COMPUTE_DTYPES)
    b, c, h, w = x.shape
    if h * w == 0:
        raise ValueError(f"x has an empty spatial grid {h}x{w}")
    names, ts = ["x", "norm_w", "norm_b"], [x, norm_w, norm_b]
    tensor("norm_w", norm_w)
    tensor("norm_b", norm_b)
    shape("norm_w", norm_w, (c,))
    shape("norm_b", norm_b, (c,))
    if latents_1d is None and latents_2d is None:
        raise ValueError("at least one of latents_1d and latents_2d must be given")
    if pos is not None:
        tensor("pos", pos, 4)
        if pos.shape[0] not in (1, b) or tuple(pos.shape[1:]) != (c, h, w):
            raise ValueError(f"pos must have shape ({b} or 1, {c}, {h}, {w}), got {tuple(pos.shape)}")
        names.append("pos")
        ts.append(pos)
    for n, lat in (("latents_1d", latents_1d), ("latents_2d", latents_2d)):
        if lat is not None:
            tensor(n, lat, 2)
            if lat.shape[1] != c:
                raise ValueError(f"{n} must have shape (L, {c}) to match x's channels, got {tuple(lat.shape)}")
            names.append(n)
            ts.append(lat)
    if latents_2d is not None:
        l2 = latents_2d.shape[0]
        nw = math.isqrt(l2)
        if nw * nw != l2 or nw == 0:
            raise ValueError(f"latents_2d must hold a square number of latents, got {l2}")
        if h % nw != 0 or w != (h // nw) * nw:
            raise ValueError(
                f"x's grid {h}x{w} does not split into {nw}x{nw} equal square windows "
                f"(one per patch latent)"
            )
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if len(weights) != depth * n_per_layer:
        raise ValueError(
            f"weights must hold {n_per_layer} tensors per layer x depth {depth} = "
            f"{depth * n_per_layer}, got {len(weights)}"
        )
    # 40-odd weights per call, in front of a kernel of a few ms (well under one on a GPU): one
    # pass over them, and the names are built only to report a failure. x's dtype is a float
    # one, so a weight of the same dtype is too.
    dt, dev = x.dtype, x.device
    for t in ts[1:]:
        if t.dtype is not dt or t.device != dev:
            same(names, ts)
    for i, t in enumerate(weights):
        if not isinstance(t, torch.Tensor) or t.dtype is not dt or t.device != dev:
            tensor(f"weights[{i}]", t)
            same([names[0], f"weights[{i}]"], [x, t])
    for layer in range(depth):
        base = layer * n_per_layer
        p = weights[base : base + n_per_layer]
        # Inner and hidden dims come from to_q / ff.1 (and the self-attention's): 2-D first.
        for j in (4, 9, 13, 18) if use_self_attn else (4, 9):
            if p[j].dim() != 2:
                raise ValueError(f"weights[{base + j}] must be a 2-D weight matrix, got shape "
                                 f"{tuple(p[j].shape)}")
        inner, hidden = p[4].shape[0], p[9].shape[0]
        expected = [(c,), (c,), (c,), (c,), (inner, c), (2 * inner, c), (c, inner), (c,), (c,),
                    (hidden, c), (c, hidden)]
        if use_self_attn:
            inner_s, hidden_s = p[13].shape[0], p[18].shape[0]
            expected += [(c,), (c,), (inner_s, c), (2 * inner_s, c), (c, inner_s), (c,), (c,),
                         (hidden_s, c), (c, hidden_s)]
        for j, e in enumerate(expected):
            if p[j].shape != e:
                shape(f"weights[{base + j}]", p[j], e)
        heads("inner dim", inner, heads_)
        if use_self_attn:
            heads("self-attention inner dim", inner_s, heads_)
    if not (eps > 0):
        raise ValueError(f"eps must be positive, got {eps}")
