"""Adapters for Meta's `sam2` package (EdgeTAM via edgetam-dimos, SAM 2 / SAM 2.1).

Each factory returns a forward computing exactly what the original module computes, through
edgetam_kernels' ops and the shared fused forwards of `edgetam_kernels.layers`. Configurations the
ops do not cover (dropout while training, concatenated key/value latents, calls that Meta's own
code would reject) call the original forward, so behaviour and error messages stay Meta's.

Patched here:
- PerceiverResampler (the whole 2D spatial perceiver: one `spatial_perceiver` op),
  PerceiverEncoderLayer and PerceiverAttention (for single-module use).
- MemoryAttentionLayer: LayerNorms, fused projections, the `rope_attention` op for self- and
  cross-attention (no complex-number RoPE, no forced SDPA math path), MLP. Meta's
  MemoryAttention is left as is: it picks the RoPE arguments per layer with `isinstance` on the
  (unchanged) attention classes, and the patched layers honour exactly those arguments.
- RoPEAttention (SAM 2's rule) and RoPEAttentionv2 (EdgeTAM's rule), for single-module use.
- Attention (mask decoder): the same math without `sdp_kernel_context`, which on a machine
  without CUDA forces SDPA's slow math kernel.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .. import ops
from ..layers import (
    MLP, Norm, Projections, Rope, attend, common_eps, latent_rope, lookup,
    memory_attention_layer,
)
from ..layers import perceiver_layer as _perceiver_layer
from ..derived import cached
from ._core import class_key, register_adapter
from ..reference import PERCEIVER_LAYER_PARAMS, params_per_layer

_SAM2 = "sam2.modeling"
_ROPE_V1 = f"{_SAM2}.sam.transformer.RoPEAttention"
_ROPE_V2 = f"{_SAM2}.sam.transformer.RoPEAttentionv2"


def _dropping(module, p: float) -> bool:
    return module.training and p > 0.0


# ---------------------------------------------------------------------------------------------
# Perceiver
# ---------------------------------------------------------------------------------------------


_LAYER_PARAMS = tuple(tuple(name.split(".")) for name in PERCEIVER_LAYER_PARAMS)
# The LayerNorms the op computes, per layer (the first three in layers without self-attention).
_LAYER_NORMS = (("attn", "norm_latents"), ("attn", "norm_x"), ("ff", "0"), ("self_attn", "norm"),
                ("self_ff", "0"))


def _layer_weights(layer) -> list:
    return [lookup(layer, path) for path in _LAYER_PARAMS[: params_per_layer(layer.use_self_attn)]]


def perceiver_weights(resampler) -> list:
    """Flat weight list of Meta's PerceiverResampler in reference.PERCEIVER_LAYER_PARAMS order."""
    return [w for layer in resampler.layers for w in _layer_weights(layer)]


def _layer_norms(layer) -> list:
    return [lookup(layer, path) for path in _LAYER_NORMS[: 5 if layer.use_self_attn else 3]]


def _layer_unsupported(layer) -> bool:
    attn = lookup(layer, ("attn",))
    return (_dropping(layer, max(attn.dropout_p, lookup(layer, ("dropout",)).p))
            or attn.concat_kv_latents)


@register_adapter(f"{_SAM2}.perceiver.PerceiverResampler")
def _perceiver_resampler(module, state, original):
    def forward(self, x, pos=None):
        layers = list(self.layers)
        layer0 = layers[0]
        eps = common_eps([n for layer in layers for n in _layer_norms(layer)] + [self.norm])
        if any(_layer_unsupported(layer) for layer in layers) or math.isnan(eps):
            return original(x, pos)
        opts = state["options"]
        lat1 = self.latents if self.num_latents > 0 else None
        lat2 = self.latents_2d if self.num_latents_2d > 0 else None
        latents = ops.spatial_perceiver(
            x, pos, lat1, lat2, perceiver_weights(self), self.norm.weight, self.norm.bias,
            depth=len(self.layers), heads=layer0.attn.heads, use_self_attn=layer0.use_self_attn,
            eps=eps, compute_dtype=opts["compute_dtype"], backend=opts["backend"],
        )
        if pos is None:
            return latents, None
        b, c = x.shape[:2]
        n1 = lat1.shape[0] if lat1 is not None else 0
        nw = math.isqrt(lat2.shape[0]) if lat2 is not None else 0

        def latent_pos():  # zeros for the global latents, the window grid's sine encoding
            out_pos = [latents.new_zeros(b, n1, c)]
            if nw:
                grid = latents.new_empty(b, c, nw, nw)  # the sine encoding reads only its shape
                out_pos.append(self.position_encoding(grid).permute(0, 2, 3, 1).flatten(1, 2))
            return torch.cat(out_pos, dim=1)

        # The same for every call of a shape (a sine encoding's repeat and a cat: ~0.1 ms);
        # a copy, as the original returns a fresh tensor.
        key = (b, c, n1, nw, latents.dtype, latents.device, id(self.position_encoding))
        return latents, cached(state, "latent_pos", (), latent_pos, key).clone()

    return forward


@register_adapter(f"{_SAM2}.perceiver.PerceiverEncoderLayer")
def _perceiver_encoder_layer(module, state, original):
    def forward(self, latents, x, pos=None):
        eps = common_eps(_layer_norms(self))
        if _layer_unsupported(self) or math.isnan(eps):
            return original(latents, x, pos)
        return _perceiver_layer(latents, x, pos, _layer_weights(self), self.attn.heads,
                                self.use_self_attn, eps, state["options"])

    return forward


@register_adapter(f"{_SAM2}.perceiver.PerceiverAttention")
def _perceiver_attention(module, state, original):
    def forward(self, latents, x, pos=None):
        eps = common_eps((self.norm_latents, self.norm_x))  # the op takes one eps
        if _dropping(self, self.dropout_p) or self.concat_kv_latents or math.isnan(eps):
            return original(latents, x, pos)
        return ops.perceiver_attention(
            latents, x, pos, self.norm_latents.weight, self.norm_latents.bias, self.norm_x.weight,
            self.norm_x.bias, self.to_q.weight, self.to_kv.weight, self.to_out.weight,
            heads=self.heads, eps=eps, backend=state["options"]["backend"],
        )

    return forward


# ---------------------------------------------------------------------------------------------
# RoPE rules of Meta's two attention classes
# ---------------------------------------------------------------------------------------------


def grid_from_cis(freqs_cis: torch.Tensor, head_dim: int, theta: float):
    """Recover the (rows, cols) grid a Meta `compute_axial_cis` table was built for.

    The slowest frequency theta^(-(D-4)/D) never wraps past 2*pi on real grids, so its angle
    divided by the frequency is the integer column (first half) or row (second half) index.
    Runs once per module, at patch time.
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


def _theta(attn) -> float:
    return float(attn.compute_cis.keywords.get("theta", 10000.0))


def _head_dim(attn) -> int:
    return attn.internal_dim // attn.num_heads


def _v2_grids(attn):
    d, theta = _head_dim(attn), _theta(attn)
    return grid_from_cis(attn.freqs_cis_q, d, theta), grid_from_cis(attn.freqs_cis_k, d, theta)


def rope_v1(attn, n_q: int, n_k: int, num_k_exclude_rope: int = 0) -> Optional[Rope]:
    """SAM 2's RoPEAttention: q on a square grid of its length; keys rotated with the same grid,
    repeated over memory frames when `rope_k_repeat`; the last num_k_exclude_rope kept.
    None where Meta's code would reject the call (the original then raises its own error)."""
    side = math.isqrt(n_q)
    n_rope = n_k - num_k_exclude_rope
    if side * side != n_q or not 0 <= num_k_exclude_rope <= n_k:
        return None
    if n_q != n_k and not attn.rope_k_repeat:
        return None
    if n_rope == 0:
        k_repeat = 0
    elif n_rope % n_q != 0 or (n_rope != n_q and not attn.rope_k_repeat):
        return None
    else:
        k_repeat = n_rope // n_q
    return Rope((side, side), (side, side), k_repeat, num_k_exclude_rope, _theta(attn))


def rope_v2(attn, grids, n_q: int, n_k: int, num_k_exclude_rope: int = 0,
            rope_k_repeat: int = -1) -> Optional[Rope]:
    """EdgeTAM's RoPEAttentionv2: q on its configured grid, keys on the (16 x 16) latent grid
    repeated per memory frame (see `latent_rope`)."""
    return latent_rope(*grids, _theta(attn), n_q, n_k, num_k_exclude_rope, rope_k_repeat)


def _projections(attn) -> Projections:
    return Projections.of(attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, attn.num_heads)


# ---------------------------------------------------------------------------------------------
# RoPE attention modules (single-module use) and the memory-attention layer
# ---------------------------------------------------------------------------------------------


@register_adapter(_ROPE_V1)
def _rope_attention_v1(module, state, original):
    def forward(self, q, k, v, num_k_exclude_rope: int = 0):
        rope = rope_v1(self, q.shape[1], k.shape[1], num_k_exclude_rope)
        if rope is None or _dropping(self, self.dropout_p):
            return original(q, k, v, num_k_exclude_rope)
        return attend(q, k, v, _projections(self), rope, state["options"], state)

    return forward


@register_adapter(_ROPE_V2)
def _rope_attention_v2(module, state, original):
    grids = _v2_grids(module)

    def forward(self, q, k, v, num_k_exclude_rope: int = 0, rope_k_repeat: int = -1):
        rope = rope_v2(self, grids, q.shape[1], k.shape[1], num_k_exclude_rope, rope_k_repeat)
        if rope is None or _dropping(self, self.dropout_p):
            return original(q, k, v, num_k_exclude_rope, rope_k_repeat)
        return attend(q, k, v, _projections(self), rope, state["options"], state)

    return forward


def _cross_rope(attn, kind: str, grids, n_q, n_k, num_k_exclude_rope, rope_k_repeat):
    """The RoPE rule of MemoryAttentionLayer._forward_ca for its arguments: it passes
    (num_k_exclude_rope, rope_k_repeat) to a RoPEAttentionv2 when rope_k_repeat >= 0, else
    num_k_exclude_rope to a RoPEAttention when it is > 0, else nothing."""
    if rope_k_repeat >= 0:
        return rope_v2(attn, grids, n_q, n_k, num_k_exclude_rope, rope_k_repeat) if kind == "v2" else None
    if num_k_exclude_rope > 0:
        return rope_v1(attn, n_q, n_k, num_k_exclude_rope) if kind == "v1" else None
    if kind == "v1":
        return rope_v1(attn, n_q, n_k, 0)
    return None  # a RoPEAttentionv2 called without rope_k_repeat: leave it to Meta's code


@register_adapter(f"{_SAM2}.memory_attention.MemoryAttentionLayer")
def _memory_attention_layer(module, state, original):
    kinds = {_ROPE_V1: "v1", _ROPE_V2: "v2"}
    sa_kind = kinds.get(class_key(module.self_attn))
    ca_kind = kinds.get(class_key(module.cross_attn_image))
    ca_grids = _v2_grids(module.cross_attn_image) if ca_kind == "v2" else None

    def forward(self, tgt, memory, pos=None, query_pos=None, num_k_exclude_rope: int = 0,
                rope_k_repeat: int = -1):
        args = (tgt, memory, pos, query_pos, num_k_exclude_rope, rope_k_repeat)
        if sa_kind != "v1" or ca_kind is None or (self.training and self.dropout_value > 0):
            return original(*args)
        n_q, n_k = tgt.shape[1], memory.shape[1]
        sa_rope = rope_v1(self.self_attn, n_q, n_q)
        ca_rope = _cross_rope(self.cross_attn_image, ca_kind, ca_grids, n_q, n_k,
                              num_k_exclude_rope, rope_k_repeat)
        if sa_rope is None or ca_rope is None:
            return original(*args)
        return memory_attention_layer(
            tgt, memory, pos if self.pos_enc_at_cross_attn_keys else None,
            (Norm.of(self.norm1), Norm.of(self.norm2), Norm.of(self.norm3)),
            (_projections(self.self_attn), sa_rope),
            (_projections(self.cross_attn_image), ca_rope),
            MLP(self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias,
                self.activation),
            state["options"], query_pos=query_pos, pos_at_self_attn=self.pos_enc_at_attn,
            pos_at_cross_queries=self.pos_enc_at_cross_attn_queries, cache=state,
        )

    return forward


# ---------------------------------------------------------------------------------------------
# Plain attention (SAM mask decoder): no forced math kernel
# ---------------------------------------------------------------------------------------------


@register_adapter(f"{_SAM2}.sam.transformer.Attention")
def _attention(module, state, original):
    def forward(self, q, k, v):
        if _dropping(self, self.dropout_p):
            return original(q, k, v)
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(self._recombine_heads(out))

    return forward
