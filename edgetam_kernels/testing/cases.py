"""One case table and one input builder per op, for the tests of every backend and for bench/.

A case is a small frozen record of shapes; `*_inputs(case, dtype, device, seed)` draws the op's
arguments for it. Every backend's tests, the backend-parity test (tests/backends/) and the
benchmarks take their inputs from here, so a shape rule (how keys are laid out in frames, the
order of the perceiver's weights) is written once. Each backend picks the cases it runs by
name from the one table (e.g. the Metal emulator's `METAL_ROPE`).

Values: standard normal activations; LayerNorm weights 1 + 0.1 N, biases 0.1 N; projection
matrices N / sqrt(fan_in), so activations stay O(1) through the layers. Drawn in float32 on the
CPU from `seed` (None: torch's global generator), then cast and moved, so a case has the same
values on every device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..reference import PERCEIVER_LAYER_PARAMS, params_per_layer


class _Draw:
    """Normal samples from a seeded generator (or torch's global one for seed=None)."""

    def __init__(self, seed: Optional[int]):
        self.g = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, *shape) -> Tensor:
        return torch.randn(*shape, generator=self.g)


def _cast(t, dtype, device):
    if isinstance(t, list):
        return [_cast(x, dtype, device) for x in t]
    return None if t is None else t.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# rope_attention
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeCase:
    """Queries on q_grid; keys: `frames` frames of `lead` unrotated tokens then k_grid rotated
    ones (EdgeTAM's memory frames: global latents, then the 16 x 16 patch latents), then `pointers`
    object-pointer tokens, never rotated."""

    batch: int = 1
    heads: int = 1
    q_grid: Tuple[int, int] = (8, 8)
    head_dim: int = 64
    frames: int = 1
    k_grid: Tuple[int, int] = (8, 8)
    lead: int = 0
    pointers: int = 0
    value_dim: Optional[int] = None

    @property
    def n_q(self) -> int:
        return self.q_grid[0] * self.q_grid[1]

    @property
    def n_k(self) -> int:
        return self.frames * (self.lead + self.k_grid[0] * self.k_grid[1]) + self.pointers

    def rope_kwargs(self) -> dict:
        return dict(q_grid=list(self.q_grid), k_grid=list(self.k_grid), k_repeat=self.frames,
                    num_k_exclude_rope=self.pointers)


def rope_attention_inputs(case: RopeCase, dtype=torch.float32, device="cpu",
                          seed: Optional[int] = 0):
    """(q, k, v, kwargs): q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv) and the op's RoPE
    keyword arguments (q_grid, k_grid, k_repeat, num_k_exclude_rope)."""
    r = _Draw(seed)
    b, h, d = case.batch, case.heads, case.head_dim
    q, k, v = r(b, h, case.n_q, d), r(b, h, case.n_k, d), r(b, h, case.n_k, case.value_dim or d)
    q, k, v = _cast([q, k, v], dtype, device)
    return q, k, v, case.rope_kwargs()


ROPE_CASES: Dict[str, RopeCase] = {
    # the op-layer tests' default (schemas, compile, autograd, bad input): everything small
    "small": RopeCase(2, 1, (4, 6), 16, 2, (2, 3), lead=1, pointers=3),
    "sam2_self_8x8": RopeCase(1, 1, (8, 8), 64, 1, (8, 8)),
    "odd_5x7_heads_batch": RopeCase(2, 3, (5, 7), 36, 3, (2, 3), lead=4, pointers=16, value_dim=20),
    "edgetam_cross_small": RopeCase(1, 1, (8, 8), 256, 7, (4, 4), lead=16, pointers=16),
    "one_frame_no_ptr": RopeCase(2, 1, (4, 6), 64, 1, (3, 3), lead=5),
    "all_pointers": RopeCase(1, 2, (3, 3), 16, 0, (1, 1), pointers=13, value_dim=8),
    "keys_not_tile_multiple": RopeCase(1, 1, (8, 8), 128, 5, (4, 5), lead=3, pointers=7),  # 122
    "self_32x32": RopeCase(1, 1, (32, 32), 64, 1, (32, 32)),
    "self_8x8_batch2": RopeCase(2, 1, (8, 8), 64, 1, (8, 8)),
    # several query blocks (keys and fp32 values prepared once per head), dv 23: a short last
    # channel panel on every path, a short last query strip, 43 keys
    "blocks_odd_dv": RopeCase(1, 2, (12, 20), 32, 2, (4, 4), lead=3, pointers=5, value_dim=23),
    # SAM 2 self-attention on a non-square grid; batch 2
    "self_4x5": RopeCase(2, 1, (4, 5), 64, 1, (4, 5)),
    # EdgeTAM's cross rules at odd sizes, dv != d
    "edgetam_cross_3x5": RopeCase(1, 2, (3, 5), 64, 2, (3, 3), lead=6, pointers=5, value_dim=32),
    "edgetam_cross_5x7": RopeCase(2, 2, (5, 7), 32, 3, (2, 2), lead=2, pointers=5),
    # head dim 256 (EdgeTAM's) over a few frames
    "head256": RopeCase(1, 1, (3, 3), 256, 1, (5, 7), lead=4, pointers=2),
    # head dim not a multiple of 64 and no rotated key at all
    "d40_no_rope_keys": RopeCase(1, 3, (2, 7), 40, 0, (1, 1), pointers=45),
    # one frame, no pointers, head dim 16
    "one_frame_d16": RopeCase(1, 2, (4, 4), 16, 1, (2, 2), lead=4),
    # SAM 2's cross rule (no lead tokens) with dv != d
    "sam2_cross_dv40": RopeCase(1, 1, (4, 4), 64, 2, (3, 2), pointers=4, value_dim=40),
    # head dim 48 and 20: padded head dims, D/4 = 5 column pairs
    "d48_odd": RopeCase(2, 2, (5, 7), 48, 3, (2, 3), lead=1, pointers=1),
    "d20_dv12": RopeCase(1, 1, (4, 4), 20, 2, (2, 2), lead=2, pointers=3, value_dim=12),
}

# The cases each backend's own tests run (the parity test runs every case on every backend)
CPU_ROPE = ("sam2_self_8x8", "odd_5x7_heads_batch", "edgetam_cross_small", "one_frame_no_ptr",
            "all_pointers", "keys_not_tile_multiple", "self_32x32", "blocks_odd_dv")
METAL_ROPE = ("self_4x5", "edgetam_cross_3x5", "head256", "d40_no_rope_keys")
PARITY_ROPE = ("small", "odd_5x7_heads_batch", "one_frame_no_ptr", "all_pointers",
               "blocks_odd_dv", "self_4x5", "edgetam_cross_3x5", "d40_no_rope_keys", "d48_odd",
               "d20_dv12")
TRITON_ROPE = ("edgetam_cross_5x7", "one_frame_d16", "self_8x8_batch2", "sam2_cross_dv40",
               "d48_odd", "d20_dv12")


# ---------------------------------------------------------------------------------------------
# Perceiver weights (reference.PERCEIVER_LAYER_PARAMS order, written once)
# ---------------------------------------------------------------------------------------------


def _param_shape(name: str, dim: int, inner: int, hidden: int) -> tuple:
    module = name.rsplit(".", 1)[0]
    rows_cols = {"to_q": (inner, dim), "to_kv": (2 * inner, dim), "to_out": (dim, inner),
                 "1": (hidden, dim), "3": (dim, hidden)}
    return rows_cols.get(module.rsplit(".", 1)[-1], (dim,))  # else a LayerNorm vector


def _draw_params(names, dim, inner, hidden, r: _Draw, inner_self=None, hidden_self=None):
    out = []
    for name in names:
        self_part = name.startswith("self_")
        shape = _param_shape(name, dim, (inner_self or inner) if self_part else inner,
                             (hidden_self or hidden) if self_part else hidden)
        if len(shape) == 2:
            out.append(r(*shape) / shape[1] ** 0.5)
        elif name.endswith(".weight"):
            out.append(1 + 0.1 * r(*shape))
        else:
            out.append(0.1 * r(*shape))
    return out


def perceiver_weights(dim: int = 64, inner: int = 64, hidden: int = 256, depth: int = 2,
                      self_attn: bool = True, inner_self: Optional[int] = None,
                      hidden_self: Optional[int] = None, dtype=torch.float32, device="cpu",
                      seed: Optional[int] = 0, draw: Optional[_Draw] = None) -> List[Tensor]:
    """The flat weight list spatial_perceiver takes: `depth` layers of PERCEIVER_LAYER_PARAMS
    (the first CROSS_PARAMS of them without latent self-attention)."""
    r = draw or _Draw(seed)
    names = PERCEIVER_LAYER_PARAMS[: params_per_layer(self_attn)]
    ws = []
    for _ in range(depth):
        ws += _draw_params(names, dim, inner, hidden, r, inner_self, hidden_self)
    return _cast(ws, dtype, device)


# ---------------------------------------------------------------------------------------------
# perceiver_attention
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerceiverAttentionCase:
    """`latents` queries over `tokens` keys of width `dim`; pos: "batch" (B, N, inner),
    "shared" (1, N, inner) or None."""

    batch: int = 1
    latents: int = 256
    tokens: int = 4096
    dim: int = 64
    heads: int = 1
    inner: Optional[int] = None
    pos: Optional[str] = "batch"


def perceiver_attention_inputs(case: PerceiverAttentionCase, dtype=torch.float32, device="cpu",
                               seed: Optional[int] = 0):
    """(args, heads): args = [latents, x, pos, 4 LayerNorm vectors, w_q, w_kv, w_out]."""
    r = _Draw(seed)
    b, c, n, inner = case.batch, case.dim, case.tokens, case.inner or case.dim
    pos = {"batch": lambda: r(b, n, inner), "shared": lambda: r(1, n, inner),
           None: lambda: None}[case.pos]
    args = [r(b, case.latents, c), r(b, n, c), pos()]
    args += _draw_params(PERCEIVER_LAYER_PARAMS[:7], c, inner, 0, r)
    return _cast(args, dtype, device), case.heads


PERCEIVER_ATTENTION_CASES: Dict[str, PerceiverAttentionCase] = {
    # EdgeTAM's global latents over a 64 x 64 memory frame: 8 key chunks of 512
    "edgetam_shape": PerceiverAttentionCase(),
    "one_latent_one_token": PerceiverAttentionCase(latents=1, tokens=1, pos="shared"),
    # 33 keys: one short chunk, one short key tile; 3 heads of 16
    "l7_n33_c48_heads3_batch3": PerceiverAttentionCase(3, 7, 33, 48, heads=3),
    # 1003 keys: 8 chunks of 128 (96 + 32 keys), the last 107 (96 + 11); 300 latents: five
    # latent column chunks and query blocks, the last 44 wide
    "l300_n1003_c96_heads2": PerceiverAttentionCase(1, 300, 1003, 96, heads=2, pos=None),
    # inner dim 48 != C 32 (pos has inner channels), shared pos
    "inner48_c32_heads2_batch2": PerceiverAttentionCase(2, 20, 200, 32, 2, 48, "shared"),
    # EdgeTAM's latent self-attention shape (the adapters call the op with x = latents)
    "self_attention_256": PerceiverAttentionCase(latents=256, tokens=256, pos=None),
    # small odd shapes for the GPU backends
    "l5_n37_c16_inner32_heads2": PerceiverAttentionCase(2, 5, 37, 16, 2, 32, "shared"),
    "l20_n37_c16_inner32": PerceiverAttentionCase(2, 20, 37, 16, 1, 32, "shared"),
}

CPU_PERCEIVER_ATTENTION = ("edgetam_shape", "one_latent_one_token", "l7_n33_c48_heads3_batch3",
                           "l300_n1003_c96_heads2", "inner48_c32_heads2_batch2",
                           "self_attention_256")
METAL_PERCEIVER_ATTENTION = ("l5_n37_c16_inner32_heads2",)
PARITY_PERCEIVER_ATTENTION = ("one_latent_one_token", "l7_n33_c48_heads3_batch3",
                              "inner48_c32_heads2_batch2", "l5_n37_c16_inner32_heads2",
                              "l20_n37_c16_inner32")


# ---------------------------------------------------------------------------------------------
# spatial_perceiver
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpatialPerceiverCase:
    """x (B, dim, H, W); `global_latents` attend to every token, `patch_latents` (a square
    number, n x n) each to one of n x n windows; pos: "batch", "shared" or None."""

    batch: int = 1
    dim: int = 64
    grid: Tuple[int, int] = (64, 64)
    global_latents: int = 256
    patch_latents: int = 256
    depth: int = 2
    heads: int = 1
    self_attn: bool = True
    pos: Optional[str] = "batch"
    inner: Optional[int] = None
    hidden: Optional[int] = None
    inner_self: Optional[int] = None
    hidden_self: Optional[int] = None

    def with_(self, **changes) -> "SpatialPerceiverCase":
        return replace(self, **changes)


def spatial_perceiver_inputs(case: SpatialPerceiverCase, dtype=torch.float32, device="cpu",
                             seed: Optional[int] = 0):
    """(args, kwargs): args = [x, pos, global latents, patch latents, weights, norm weight,
    norm bias], kwargs = dict(depth, heads, use_self_attn)."""
    r = _Draw(seed)
    c, (h, w), b = case.dim, case.grid, case.batch
    inner, hidden = case.inner or c, case.hidden or 4 * c
    ws = perceiver_weights(c, inner, hidden, case.depth, case.self_attn, case.inner_self,
                           case.hidden_self, draw=r)
    x = r(b, c, h, w)
    pos = {"batch": lambda: r(b, c, h, w), "shared": lambda: r(1, c, h, w),
           None: lambda: None}[case.pos]()
    l1 = r(case.global_latents, c) if case.global_latents else None
    l2 = r(case.patch_latents, c) if case.patch_latents else None
    args = [x, pos, l1, l2, ws, 1 + 0.1 * r(c), 0.1 * r(c)]
    return _cast(args, dtype, device), dict(depth=case.depth, heads=case.heads,
                                            use_self_attn=case.self_attn)


_SP = SpatialPerceiverCase
SPATIAL_PERCEIVER_CASES: Dict[str, SpatialPerceiverCase] = {
    # the op-layer tests' default
    "small": _SP(2, 16, (8, 8), 5, 4, hidden=32),
    "odd_heads3_no_pos": _SP(2, 20, (12, 12), 7, 9, inner=24, hidden=40, pos=None, heads=3,
                             inner_self=18, hidden_self=33),
    "heads2_batch2": _SP(2, 36, (8, 8), 5, 16, inner=36, hidden=50, heads=2),
    "patch_only": _SP(1, 32, (16, 16), 0, 16, inner=32, hidden=64),
    "global_only_no_self_attn": _SP(1, 32, (10, 10), 9, 0, inner=32, hidden=48, self_attn=False,
                                    pos="shared", depth=3),
    "edgetam_32x32": _SP(grid=(32, 32)),
    # several token chunks (the global attention's partial results are merged), the last one
    # short, and 70 global latents (a partial query block)
    "global_only_two_chunks": _SP(2, 16, (20, 20), 70, 0, inner=16, hidden=24),
    # 2 x 10 token window rows (not a multiple of any vector width); 21 global latents, so a
    # vector of global columns reaches into the patch columns
    "windows_2x2_on_10x10": _SP(1, 24, (10, 10), 21, 25, inner=24, hidden=40, heads=2),
    # a 13 x 13 window grid on 52 x 52: 7 token work items of two window rows each (as at
    # EdgeTAM's shape), the last one a single row
    "window_row_chunks_13x13": _SP(1, 16, (52, 52), 20, 169, inner=16, hidden=24),
    # small shapes for the GPU backends: both groups with a shared pos, 2 heads
    "both_groups_shared_pos": _SP(2, 16, (8, 8), 6, 16, heads=2, pos="shared", hidden=32),
    # 3x3 windows of a 9x9 grid (odd window size), no self-attention, no pos
    "patch_only_9x9": _SP(1, 16, (9, 9), 0, 9, depth=1, self_attn=False, pos=None, hidden=32),
    # global latents only on a non-square grid
    "global_only_4x6": _SP(2, 16, (4, 6), 9, 0, depth=1, hidden=32),
    "small_2x2_windows": _SP(2, 16, (8, 8), 8, 4),
    "small_4x4_windows": _SP(2, 32, (12, 12), 16, 16),
    "small_cross_only": _SP(2, 16, (8, 8), 8, 16, self_attn=False),
    "small_patch_only": _SP(2, 16, (12, 12), 0, 16),
    "small_global_only": _SP(2, 32, (8, 8), 20, 0),
    "small_no_pos_depth1": _SP(2, 16, (8, 8), 8, 4, depth=1, pos=None),
    "small_odd_widths": _SP(2, 16, (8, 8), 8, 4, hidden=40, inner=24, pos=None),
}

CPU_SPATIAL_PERCEIVER = ("odd_heads3_no_pos", "heads2_batch2", "patch_only",
                         "global_only_no_self_attn", "edgetam_32x32", "global_only_two_chunks",
                         "windows_2x2_on_10x10", "window_row_chunks_13x13")
METAL_SPATIAL_PERCEIVER = ("both_groups_shared_pos", "patch_only_9x9", "global_only_4x6")
TRITON_SPATIAL_PERCEIVER = ("small_2x2_windows", "small_4x4_windows", "small_cross_only",
                            "small_patch_only", "small_global_only", "small_no_pos_depth1",
                            "small_odd_widths")
PARITY_SPATIAL_PERCEIVER = ("odd_heads3_no_pos", "heads2_batch2", "global_only_no_self_attn",
                            "windows_2x2_on_10x10", "both_groups_shared_pos", "patch_only_9x9",
                            "global_only_4x6")


# ---------------------------------------------------------------------------------------------
# Every op through its torch.ops schema (opcheck, autocast)
# ---------------------------------------------------------------------------------------------


def _schema_args(op, **values) -> tuple:
    """Positional arguments of `op` in its schema's order, by name (an optional argument not
    given is None), so the calls follow the schema when an op gains an argument."""
    return tuple(values.get(a.name) for a in op._schema.arguments)


def schema_calls(backend: str = "reference", seed: Optional[int] = None):
    """(name, torch.ops.edgetam.<op>.default, positional args) for each op at its "small" case,
    as the schemas take them (lists, not tuples; the backend name last)."""
    q, k, v, kw = rope_attention_inputs(ROPE_CASES["small"], seed=seed)
    rope = torch.ops.edgetam.rope_attention.default
    values = dict(q=q, k=k, v=v, theta=10000.0, scale=0.25, backend=backend, **kw)
    yield "rope_attention", rope, _schema_args(rope, **values)
    if "key_mask" in [a.name for a in rope._schema.arguments]:
        mask = _Draw(seed)(q.shape[0], k.shape[2]) < 0.5
        mask[0] = False  # a batch row with no valid key: zeros, finite gradients
        yield "rope_attention key_mask", rope, _schema_args(rope, key_mask=mask, **values)
    case = PerceiverAttentionCase(batch=2, latents=5, tokens=9, dim=16, pos="batch")
    args, heads = perceiver_attention_inputs(case, seed=seed)
    yield "perceiver_attention", torch.ops.edgetam.perceiver_attention.default, (
        *args, heads, 1e-5, backend)
    args, pkw = spatial_perceiver_inputs(SPATIAL_PERCEIVER_CASES["small"], seed=seed)
    for compute_dtype in (None, torch.bfloat16):
        yield f"spatial_perceiver compute_dtype={compute_dtype}", \
            torch.ops.edgetam.spatial_perceiver.default, \
            (*args, pkw["depth"], pkw["heads"], pkw["use_self_attn"], 1e-5, compute_dtype,
             backend)
