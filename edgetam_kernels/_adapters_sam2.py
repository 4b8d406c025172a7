"""Adapters for Meta's `sam2` package (EdgeTAM via edgetam-dimos, SAM 2 / SAM 2.1).

Each factory returns a forward computing exactly what the original module computes, through
edgetam_kernels' ops. Configurations the ops do not cover (dropout while training,
concatenated key/value latents) call the original forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .patch import register_adapter

_SAM2 = "sam2.modeling"


def _dropping(module, p: float) -> bool:
    return module.training and p > 0.0


# ---------------------------------------------------------------------------------------------
# Perceiver
# ---------------------------------------------------------------------------------------------


def perceiver_weights(resampler) -> list:
    """Flat weight list of Meta's PerceiverResampler in reference.PERCEIVER_LAYER_PARAMS order."""
    from .reference import PERCEIVER_LAYER_PARAMS, params_per_layer

    n = params_per_layer(resampler.layers[0].use_self_attn)
    names = PERCEIVER_LAYER_PARAMS[:n]
    return [layer.get_parameter(name) for layer in resampler.layers for name in names]


def _perceiver_eps(resampler) -> float:
    eps = {m.eps for m in resampler.modules() if isinstance(m, torch.nn.LayerNorm)}
    return eps.pop() if len(eps) == 1 else float("nan")


@register_adapter(f"{_SAM2}.perceiver.PerceiverResampler")
def _perceiver_resampler(module, state, original):
    def forward(self, x, pos=None):
        layer0 = self.layers[0]
        eps = _perceiver_eps(self)
        if (
            _dropping(self, max(layer0.attn.dropout_p, layer0.dropout.p))
            or layer0.attn.concat_kv_latents
            or math.isnan(eps)
        ):
            return original(x, pos)
        opts = state["options"]
        lat1 = self.latents if self.num_latents > 0 else None
        lat2 = self.latents_2d if self.num_latents_2d > 0 else None
        latents = ops.spatial_perceiver(
            x, pos, lat1, lat2, perceiver_weights(self), self.norm.weight, self.norm.bias,
            depth=len(self.layers), heads=layer0.attn.heads, use_self_attn=layer0.use_self_attn,
            eps=eps, backend=opts["backend"],
        )
        if pos is None:
            return latents, None
        b, c = x.shape[:2]
        out_pos = []
        if lat1 is not None:
            out_pos.append(latents.new_zeros(b, lat1.shape[0], c))
        if lat2 is not None:
            nw = math.isqrt(lat2.shape[0])
            grid = latents.new_empty(b, c, nw, nw)  # the sine encoding reads only its shape
            out_pos.append(self.position_encoding(grid).permute(0, 2, 3, 1).flatten(1, 2))
        return latents, torch.cat(out_pos, dim=1)

    return forward


@register_adapter(f"{_SAM2}.perceiver.PerceiverAttention")
def _perceiver_attention(module, state, original):
    def forward(self, latents, x, pos=None):
        if _dropping(self, self.dropout_p) or self.concat_kv_latents:
            return original(latents, x, pos)
        return ops.perceiver_attention(
            latents, x, pos, self.norm_latents.weight, self.norm_latents.bias, self.norm_x.weight,
            self.norm_x.bias, self.to_q.weight, self.to_kv.weight, self.to_out.weight,
            heads=self.heads, eps=self.norm_x.eps, backend=state["options"]["backend"],
        )

    return forward


# ---------------------------------------------------------------------------------------------
# RoPE attention (memory attention's self- and cross-attention)
# ---------------------------------------------------------------------------------------------


def _project(self, q, k, v):
    def heads(t):
        b, n, c = t.shape
        return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    return heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v))


def _finish(self, out):
    b, h, n, c = out.shape
    return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


def grid_from_cis(freqs_cis: torch.Tensor, head_dim: int, theta: float):
    """Recover the (rows, cols) grid a Meta `compute_axial_cis` table was built for.

    The slowest frequency theta^(-(D-4)/D) never wraps past 2*pi on real grids, so its angle
    divided by the frequency is the integer column (first half) or row (second half) index.
    """
    n = freqs_cis.shape[0]
    f = theta ** (-(head_dim - 4) / head_dim)
    cols = torch.round(torch.angle(freqs_cis[:, head_dim // 4 - 1]) / f)
    rows = torch.round(torch.angle(freqs_cis[:, head_dim // 2 - 1]) / f)
    w, h = int(cols.max()) + 1, int(rows.max()) + 1
    if h * w != n:
        side = math.isqrt(n)
        return (side, side)
    return (h, w)


def _theta(self) -> float:
    return float(self.compute_cis.keywords.get("theta", 10000.0))


@register_adapter(f"{_SAM2}.sam.transformer.RoPEAttention")
def _rope_attention_v1(module, state, original):
    """SAM 2's rule: q on a square grid of its length; keys rotated with the same grid,
    repeated over the memory frames when `rope_k_repeat`, the last num_k_exclude_rope kept."""

    def forward(self, q, k, v, num_k_exclude_rope: int = 0):
        if _dropping(self, self.dropout_p):
            return original(q, k, v, num_k_exclude_rope)
        qh, kh, vh = _project(self, q, k, v)
        n_q, n_k = qh.shape[-2], kh.shape[-2]
        side = math.isqrt(n_q)
        if n_q != n_k and not self.rope_k_repeat:
            raise ValueError(
                f"RoPEAttention got {n_q} queries and {n_k} keys but rope_k_repeat is False"
            )
        n_rope = n_k - num_k_exclude_rope
        k_repeat = n_rope // n_q if n_q else 0
        opts = state["options"]
        out = ops.rope_attention(
            qh, kh, vh, q_grid=(side, side), k_grid=(side, side), k_repeat=k_repeat,
            num_k_exclude_rope=num_k_exclude_rope, theta=_theta(self),
            compute_dtype=opts["compute_dtype"], backend=opts["backend"],
        )
        return _finish(self, out)

    return forward


@register_adapter(f"{_SAM2}.sam.transformer.RoPEAttentionv2")
def _rope_attention_v2(module, state, original):
    """EdgeTAM's rule: q on its own grid, keys on a (16 x 16) latent grid repeated per memory
    frame, each frame's global latents and the object pointers not rotated."""

    def forward(self, q, k, v, num_k_exclude_rope: int = 0, rope_k_repeat: int = -1):
        if _dropping(self, self.dropout_p):
            return original(q, k, v, num_k_exclude_rope, rope_k_repeat)
        qh, kh, vh = _project(self, q, k, v)
        theta = _theta(self)
        d = qh.shape[-1]
        q_grid = grid_from_cis(self.freqs_cis_q, d, theta)
        k_grid = grid_from_cis(self.freqs_cis_k, d, theta)
        opts = state["options"]
        out = ops.rope_attention(
            qh, kh, vh, q_grid=q_grid, k_grid=k_grid,
            k_repeat=None if rope_k_repeat < 0 else rope_k_repeat,
            num_k_exclude_rope=num_k_exclude_rope, theta=theta,
            compute_dtype=opts["compute_dtype"], backend=opts["backend"],
        )
        return _finish(self, out)

    return forward
