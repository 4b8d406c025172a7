"""EdgeTAM's memory path: memory encoder, 2D spatial perceiver and memory attention.

The perceiver and the attention cores of memory attention run on `edgetam_kernels` ops
(`spatial_perceiver`, `rope_attention`), so whichever backend is fastest on the device runs them.
Parameter names follow Meta's checkpoint (`memory_encoder.*`, `spatial_perceiver.*`,
`memory_attention.*`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edgetam_kernels as ek
from edgetam_kernels.layers import Projections, Rope, attend
from edgetam_kernels.reference import PERCEIVER_LAYER_PARAMS, params_per_layer

from .common import LayerNorm2d, sine_position_encoding

# ---------------------------------------------------------------------------------------------
# Memory encoder
# ---------------------------------------------------------------------------------------------


class MaskDownSampler(nn.Module):
    """Mask (B, 1, S, S) -> (B, 256, S/16, S/16): four stride-2 3x3 convs (channels x4 each,
    LayerNorm2d, GELU), then a 1x1 conv. Checkpoint layout `encoder.{0..12}`."""

    def __init__(self, embed_dim: int = 256, num_layers: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        cin = 1
        for _ in range(num_layers):
            cout = cin * 4
            self.encoder.append(nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(cout))
            self.encoder.append(nn.GELU())
            cin = cout
        self.encoder.append(nn.Conv2d(cin, embed_dim, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: 7x7 depth-wise conv, LayerNorm2d, MLP x4 with GELU, layer scale."""

    def __init__(self, dim: int = 256, kernel_size: int = 7) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Image features (B, 256, H, W) + mask (already sigmoid-scaled, B, 1, S, S) ->
    memory features (B, 64, H, W) and their sine position encoding."""

    def __init__(self, in_dim: int = 256, out_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, pix_feat: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
        # the mask logits come in fp32 (the heads' output dtype); the convs take the weights'
        masks = masks.to(self.pix_feat_proj.weight.dtype)
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(masks)
        x = self.out_proj(self.fuser(x))
        b, c, h, w = x.shape
        pos = sine_position_encoding(c, h, w, x.device).to(x.dtype)[None].expand(b, -1, -1, -1)
        return x, pos


# ---------------------------------------------------------------------------------------------
# Spatial perceiver
# ---------------------------------------------------------------------------------------------


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)


class PerceiverLayer(nn.Module):
    """Parameters only: the computation is `edgetam_kernels.spatial_perceiver`."""

    def __init__(self, dim: int, inner: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.attn = _CrossAttention(dim, inner)
        self.ff = _feed_forward(dim, ff_mult)
        self.self_attn = _SelfAttention(dim, inner)
        self.self_ff = _feed_forward(dim, ff_mult)


class SpatialPerceiver(nn.Module):
    """EdgeTAM's 2D Spatial Perceiver: memory (B, 64, H, W) -> 256 global + 256 patch latents
    (B, 512, 64), with position encodings zeros (global) and a 16x16 sine grid (patch)."""

    def __init__(self, dim: int = 64, depth: int = 2, dim_head: int = 64, heads: int = 1,
                 num_latents: int = 256, num_latents_2d: int = 256) -> None:
        super().__init__()
        self.heads = heads
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.latents_2d = nn.Parameter(torch.randn(num_latents_2d, dim))
        self.layers = nn.ModuleList(PerceiverLayer(dim, dim_head * heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.backend = "auto"

    def weights(self) -> List[Tensor]:
        names = PERCEIVER_LAYER_PARAMS[: params_per_layer(True)]
        return [layer.get_parameter(n) for layer in self.layers for n in names]

    def forward(self, x: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor]:
        latents = ek.spatial_perceiver(
            x, pos, self.latents, self.latents_2d, self.weights(), self.norm.weight,
            self.norm.bias, depth=len(self.layers), heads=self.heads, use_self_attn=True,
            eps=self.norm.eps, compute_dtype=getattr(self, "compute_dtype", None),
            backend=self.backend)
        b, c = x.shape[:2]
        side = math.isqrt(self.latents_2d.shape[0])
        pos_2d = sine_position_encoding(c, side, side, x.device).to(latents.dtype)
        pos_2d = pos_2d.flatten(1).transpose(0, 1)[None].expand(b, -1, -1)
        pos_1d = latents.new_zeros(b, self.latents.shape[0], c)
        return latents, torch.cat([pos_1d, pos_2d], dim=1)


# ---------------------------------------------------------------------------------------------
# Memory attention
# ---------------------------------------------------------------------------------------------


class RoPEAttention(nn.Module):
    """Projections around `edgetam_kernels.rope_attention` (1 head, axial RoPE)."""

    def __init__(self, dim: int = 256, kv_in_dim: Optional[int] = None, heads: int = 1,
                 theta: float = 10000.0) -> None:
        super().__init__()
        kv_in_dim = kv_in_dim or dim
        self.num_heads = heads
        self.theta = theta
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_in_dim, dim)
        self.v_proj = nn.Linear(kv_in_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.backend = "auto"
        self._derived: dict = {}  # weights derived from ours (folded value projection), cached

    def forward(self, q: Tensor, k: Tensor, v: Tensor, q_grid, k_grid=None, k_repeat=None,
                num_k_exclude_rope: int = 0, key_mask: Optional[Tensor] = None) -> Tensor:
        """The library's `attend` (shared with patched Meta / HF models): projections, the
        rope_attention op, output projection; the cross-attention's 64-dim values are folded
        into the output projection (`folds_value`). compute_dtype (set by patch()) runs the
        projections and the attention in that dtype."""
        k_grid = tuple(q_grid if k_grid is None else k_grid)
        if k_repeat is None:  # as rope_attention's default: every rotated key on one k grid
            k_repeat = (k.shape[1] - num_k_exclude_rope) // (k_grid[0] * k_grid[1])
        rope = Rope(tuple(q_grid), k_grid, k_repeat, num_k_exclude_rope, self.theta)
        p = Projections.of(self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.num_heads)
        options = dict(backend=self.backend, compute_dtype=getattr(self, "compute_dtype", None))
        return attend(q, k, v, p, rope, options, self._derived, key_mask=key_mask)


class MemoryAttentionLayer(nn.Module):
    def __init__(self, d_model: int = 256, kv_dim: int = 64, ff_dim: int = 2048) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model)
        self.cross_attn_image = RoPEAttention(d_model, kv_in_dim=kv_dim)
        self.linear1 = nn.Linear(d_model, ff_dim)
        self.linear2 = nn.Linear(ff_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, memory: Tensor, memory_pos: Tensor, grid, num_spatial_mem: int,
                num_obj_ptr_tokens: int, k_grid, key_mask: Optional[Tensor] = None) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, q_grid=grid)
        h = self.norm2(x)
        x = x + self.cross_attn_image(h, memory + memory_pos, memory, q_grid=grid, k_grid=k_grid,
                                      k_repeat=num_spatial_mem,
                                      num_k_exclude_rope=num_obj_ptr_tokens,
                                      key_mask=key_mask)
        h = self.norm3(x)
        return x + self.linear2(F.relu(self.linear1(h)))


class MemoryAttention(nn.Module):
    """Conditions the current frame's features (B, HW, 256) on memory (B, Nm, 64).

    Memory = `num_spatial_mem` frames of perceiver latents (256 global, unrotated, then 256
    patch latents rotated on a 16x16 grid) followed by `num_obj_ptr_tokens` object-pointer
    tokens (never rotated). Queries are rotated on the (H, W) feature grid. key_mask (B, Nm)
    bool, optional: memory tokens that take part (a fixed-capacity bank's empty slots are False
    and change nothing).
    """

    def __init__(self, d_model: int = 256, kv_dim: int = 64, num_layers: int = 2,
                 k_grid: Tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model, kv_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.k_grid = tuple(k_grid)

    def forward(self, curr: Tensor, curr_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                grid: Tuple[int, int], num_spatial_mem: int, num_obj_ptr_tokens: int,
                key_mask: Optional[Tensor] = None) -> Tensor:
        x = curr + 0.1 * curr_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, grid, num_spatial_mem, num_obj_ptr_tokens,
                      self.k_grid, key_mask)
        return self.norm(x)

    def set_backend(self, backend: str) -> None:
        for layer in self.layers:
            layer.self_attn.backend = backend
            layer.cross_attn_image.backend = backend
