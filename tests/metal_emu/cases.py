"""Small inputs for the Metal kernels, shared by the emulator tests (Linux) and the real-GPU
tests (macOS). Shapes are odd on purpose: grids that are not square, key counts that are not a
multiple of the 32-key tile, query counts that are not a multiple of the 8-query tile, batch > 1,
several heads, head dims below and at the kernels' 64-dim chunk and 256-dim maximum."""

from __future__ import annotations

import torch

from edgetam_kernels import reference


def _r(*shape, gen):
    return torch.randn(*shape, generator=gen)


# (id, kwargs for rope_case)
ROPE = [
    # SAM 2 self-attention: every key on the q grid.
    ("self_4x5", dict(b=2, h=1, q_grid=(4, 5), d=64, frames=1, latents=0, k_grid=(4, 5), ptr=0)),
    # EdgeTAM cross-attention: frames of unrotated global latents then a rotated grid, then
    # object pointers never rotated; dv != d.
    ("edgetam_cross", dict(b=1, h=2, q_grid=(3, 5), d=64, dv=32, frames=2, latents=6,
                           k_grid=(3, 3), ptr=5)),
    # Head dim 256 (EdgeTAM's), several chunks.
    ("head256", dict(b=1, h=1, q_grid=(3, 3), d=256, frames=1, latents=4, k_grid=(5, 7), ptr=2)),
    # Head dim not a multiple of the 64-dim chunk; no rotated keys at all.
    ("d40_no_rope_keys", dict(b=1, h=3, q_grid=(2, 7), d=40, frames=0, latents=0, k_grid=(1, 1),
                              ptr=45)),
]


def rope_case(b, h, q_grid, d, frames, latents, k_grid, ptr, dv=None, dtype=torch.float32,
              compute_dtype=None, seed=0, transpose=False):
    gen = torch.Generator().manual_seed(seed)
    n_q = q_grid[0] * q_grid[1]
    n_k = frames * (latents + k_grid[0] * k_grid[1]) + ptr
    dv = d if dv is None else dv
    q, k, v = _r(b, h, n_q, d, gen=gen), _r(b, h, n_k, d, gen=gen), _r(b, h, n_k, dv, gen=gen)
    if transpose:  # non-contiguous views with the same values
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
        v = v.transpose(2, 3).contiguous().transpose(2, 3)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return (q, k, v, list(q_grid), list(k_grid), frames, ptr, 10000.0, d ** -0.5, compute_dtype)


def perceiver_case(b=2, n_lat=5, n=37, c=16, inner=32, heads=2, pos="shared", dtype=torch.float32,
                   seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos_t = None
    if pos == "shared":
        pos_t = _r(1, n, inner, gen=gen)
    elif pos == "batched":
        pos_t = _r(b, n, inner, gen=gen)
    args = (_r(b, n_lat, c, gen=gen), _r(b, n, c, gen=gen), pos_t,
            1 + 0.1 * _r(c, gen=gen), 0.1 * _r(c, gen=gen), 1 + 0.1 * _r(c, gen=gen),
            0.1 * _r(c, gen=gen), _r(inner, c, gen=gen) / 4, _r(2 * inner, c, gen=gen) / 4,
            _r(c, inner, gen=gen) / 4)
    args = tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in args)
    return args + (heads, 1e-5)


def _layer(c, inner, hidden, use_self_attn, gen):
    ln = lambda: [1 + 0.1 * _r(c, gen=gen), 0.1 * _r(c, gen=gen)]  # noqa: E731
    p = ln() + ln() + [_r(inner, c, gen=gen) / 4, _r(2 * inner, c, gen=gen) / 4,
                       _r(c, inner, gen=gen) / 4] + ln() + [_r(hidden, c, gen=gen) / 4,
                                                            _r(c, hidden, gen=gen) / 6]
    if use_self_attn:
        p += ln() + [_r(inner, c, gen=gen) / 4, _r(2 * inner, c, gen=gen) / 4,
                     _r(c, inner, gen=gen) / 4] + ln() + [_r(hidden, c, gen=gen) / 4,
                                                          _r(c, hidden, gen=gen) / 6]
    assert len(p) == reference.params_per_layer(use_self_attn)
    return p


# (id, kwargs for spatial_case)
SPATIAL = [
    # Both groups, global pos shared over the batch, 2 layers with latent self-attention.
    ("both_groups", dict(b=2, grid=(8, 8), l1=6, nw=4, depth=2, heads=2, use_self_attn=True,
                         pos="shared")),
    # Patch latents only, 3x3 windows of a 9x9 grid (odd window size), no self-attention.
    ("patch_only", dict(b=1, grid=(9, 9), l1=0, nw=3, depth=1, heads=1, use_self_attn=False,
                        pos=None)),
    # Global latents only, per-batch pos, a non-square grid.
    ("global_only", dict(b=2, grid=(4, 6), l1=9, nw=0, depth=1, heads=1, use_self_attn=True,
                         pos="batched")),
]


def spatial_case(b, grid, l1, nw, depth, heads, use_self_attn, pos, c=16, inner=16, hidden=32,
                 dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    x = _r(b, c, h, w, gen=gen)
    pos_t = {None: None, "shared": lambda: _r(1, c, h, w, gen=gen),
             "batched": lambda: _r(b, c, h, w, gen=gen)}[pos]
    pos_t = pos_t() if pos_t is not None else None
    lat1 = _r(l1, c, gen=gen) if l1 else None
    lat2 = _r(nw * nw, c, gen=gen) if nw else None
    weights = sum((_layer(c, inner, hidden, use_self_attn, gen) for _ in range(depth)), [])
    norm_w, norm_b = 1 + 0.1 * _r(c, gen=gen), 0.1 * _r(c, gen=gen)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return (cast(x), cast(pos_t), cast(lat1), cast(lat2), [cast(t) for t in weights],
            cast(norm_w), cast(norm_b), depth, heads, use_self_attn, 1e-5)
