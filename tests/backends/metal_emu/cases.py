"""The Metal kernels' cases, shared by the emulator tests (Linux) and the real-GPU tests (macOS):
the names in edgetam_kernels.testing.cases' METAL_* selections, in the positional form the
Metal tests call the reference and the backend with. Shapes are odd on purpose: grids that are
not square, key counts that are not a multiple of the 32-key tile, query counts that are not a
multiple of the 8-query tile, batch > 1, several heads, head dims below and at the kernels'
64-dim chunk and 256-dim maximum."""

from __future__ import annotations

import torch

from edgetam_kernels.testing.cases import (
    METAL_ROPE, METAL_SPATIAL_PERCEIVER, PERCEIVER_ATTENTION_CASES, ROPE_CASES,
    SPATIAL_PERCEIVER_CASES, PerceiverAttentionCase, RopeCase, SpatialPerceiverCase,
    perceiver_attention_inputs, rope_attention_inputs, spatial_perceiver_inputs,
)


def _rope_kwargs(c: RopeCase) -> dict:
    return dict(b=c.batch, h=c.heads, q_grid=c.q_grid, d=c.head_dim, dv=c.value_dim,
                frames=c.frames, latents=c.lead, k_grid=c.k_grid, ptr=c.pointers)


# (id, kwargs for rope_case)
ROPE = [(name, _rope_kwargs(ROPE_CASES[name])) for name in METAL_ROPE]


def rope_case(b, h, q_grid, d, frames, latents, k_grid, ptr, dv=None, dtype=torch.float32,
              compute_dtype=None, seed=0, transpose=False):
    case = RopeCase(b, h, tuple(q_grid), d, frames, tuple(k_grid), latents, ptr, dv)
    q, k, v, kw = rope_attention_inputs(case, seed=seed)
    if transpose:  # non-contiguous views with the same values
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
        v = v.transpose(2, 3).contiguous().transpose(2, 3)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return (q, k, v, kw["q_grid"], kw["k_grid"], frames, ptr, 10000.0, d ** -0.5, compute_dtype)


_PA = PERCEIVER_ATTENTION_CASES["l5_n37_c16_inner32_heads2"]


def perceiver_case(b=_PA.batch, n_lat=_PA.latents, n=_PA.tokens, c=_PA.dim, inner=_PA.inner,
                   heads=_PA.heads, pos=_PA.pos, dtype=torch.float32, seed=0):
    """pos: "shared" (1, N, inner), "batched" (B, N, inner) or None."""
    case = PerceiverAttentionCase(b, n_lat, n, c, heads, inner,
                                  {"batched": "batch"}.get(pos, pos))
    args, heads = perceiver_attention_inputs(case, dtype, seed=seed)
    return tuple(args) + (heads, 1e-5)


def _spatial_kwargs(c: SpatialPerceiverCase) -> dict:
    nw = int(round(c.patch_latents ** 0.5))
    return dict(b=c.batch, grid=c.grid, l1=c.global_latents, nw=nw, depth=c.depth,
                heads=c.heads, use_self_attn=c.self_attn,
                pos={"batch": "batched"}.get(c.pos, c.pos), c=c.dim, inner=c.inner or c.dim,
                hidden=c.hidden or 4 * c.dim)


# (id, kwargs for spatial_case)
SPATIAL = [(name, _spatial_kwargs(SPATIAL_PERCEIVER_CASES[name]))
           for name in METAL_SPATIAL_PERCEIVER]


def spatial_case(b, grid, l1, nw, depth, heads, use_self_attn, pos, c=16, inner=16, hidden=32,
                 dtype=torch.float32, seed=0):
    case = SpatialPerceiverCase(b, c, tuple(grid), l1, nw * nw, depth, heads, use_self_attn,
                                {"batched": "batch"}.get(pos, pos), inner, hidden)
    args, kw = spatial_perceiver_inputs(case, dtype, seed=seed)
    return (*args, kw["depth"], kw["heads"], kw["use_self_attn"], 1e-5)
