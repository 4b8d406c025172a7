"""Adapters for Hugging Face transformers' EdgeTAM (`EdgeTamVideoModel`, module
`transformers.models.edgetam_video.modeling_edgetam_video`).

Registering an attention function with HF's AttentionInterface only swaps the softmax core:
it sees q, k, v after projection and RoPE. These adapters replace the modules' forwards, so
the LayerNorms, the projections (stacked into one GEMM where inputs coincide) and the RoPE run
through edgetam_kernels' ops, via the fused forwards shared with Meta's adapters.

HF's calling conventions are kept: attention modules take 4-D (batch, point_batch, tokens,
channels) inputs and `position_embeddings` / `position_embeddings_k` (cos, sin) tables and return
(output, attention_weights=None); memory attention returns (1, batch, tokens, channels).
The RoPE tables HF passes are the axial tables of the model's config grids
(`memory_attention_rope_feat_sizes`, `memory_attention_rope_k_sizes`); the ops compute the same
tables from those grids. A call that does not match them (other token counts, dropout while
training, extra attention kwargs) runs HF's original forward.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import ops
from ..layers import (
    MLP, Norm, Projections, Rope, attend, common_eps, latent_rope, lookup,
    memory_attention_layer, perceiver_layer,
)
from ..derived import cached
from ._core import register_adapter

_HF = "transformers.models.edgetam_video.modeling_edgetam_video"


def _dropping(module, *ps) -> bool:
    return module.training and max(ps) > 0.0


# ---------------------------------------------------------------------------------------------
# Perceiver
# ---------------------------------------------------------------------------------------------


def _layer_weights(layer, cache: Optional[dict] = None) -> list:
    """One EdgeTamVideoPerceiverEncoderLayer's weights in reference.PERCEIVER_LAYER_PARAMS order
    (HF keeps k and v projections apart; the op takes them stacked, k first, kept in `cache`
    until either changes)."""
    ca, sa, mlp, smlp = (lookup(layer, (name,)) for name in
                         ("cross_attention", "self_attention", "mlp", "self_mlp"))

    def w(module, *path):
        return lookup(module, path + ("weight",))

    def b(module, *path):
        return lookup(module, path + ("bias",))

    def kv(attn):
        k, v = w(attn, "k_proj"), w(attn, "v_proj")
        return cached(cache, ("perceiver kv", id(attn)), (k, v), lambda: torch.cat([k, v]))

    return [
        w(layer, "layer_norm_latents"), b(layer, "layer_norm_latents"),
        w(layer, "layer_norm_input"), b(layer, "layer_norm_input"),
        w(ca, "q_proj"), kv(ca), w(ca, "o_proj"),
        w(mlp, "layer_norm"), b(mlp, "layer_norm"), w(mlp, "up_proj"), w(mlp, "down_proj"),
        w(layer, "layer_norm_self"), b(layer, "layer_norm_self"),
        w(sa, "q_proj"), kv(sa), w(sa, "o_proj"),
        w(smlp, "layer_norm"), b(smlp, "layer_norm"), w(smlp, "up_proj"), w(smlp, "down_proj"),
    ]


def perceiver_weights(resampler, cache: Optional[dict] = None) -> list:
    return [w for layer in resampler.layers for w in _layer_weights(layer, cache)]


# The LayerNorms the op computes, per layer.
_LAYER_NORMS = (("layer_norm_latents",), ("layer_norm_input",), ("mlp", "layer_norm"),
                ("layer_norm_self",), ("self_mlp", "layer_norm"))


def _layer_norms(layer) -> list:
    return [lookup(layer, path) for path in _LAYER_NORMS]


def _layer_unsupported(layer) -> bool:
    return _dropping(layer, layer.dropout.p, layer.cross_attention.attention_dropout,
                     layer.self_attention.attention_dropout)


@register_adapter(f"{_HF}.EdgeTamVideoPerceiverResampler")
def _perceiver_resampler(module, state, original):
    def forward(self, hidden_states, positional_encoding=None):
        b, c, h, w = hidden_states.shape
        nw = math.isqrt(self.num_latents_2d) if self.num_latents_2d > 0 else 1
        layers = list(self.layers)
        eps = common_eps([n for layer in layers for n in _layer_norms(layer)]
                          + [self.layer_norm])
        if (
            any(_layer_unsupported(layer) for layer in layers)
            or math.isnan(eps)
            or (self.num_latents_2d > 0 and (h != w or h % nw != 0))  # HF pads; the op does not
        ):
            return original(hidden_states, positional_encoding)
        layer0 = self.layers[0].cross_attention
        lat1 = self.latents_1d if self.num_latents_1d > 0 else None
        lat2 = self.latents_2d if self.num_latents_2d > 0 else None
        opts = state["options"]
        latents = ops.spatial_perceiver(
            hidden_states, positional_encoding, lat1, lat2, perceiver_weights(self, state),
            self.layer_norm.weight, self.layer_norm.bias, depth=len(layers),
            heads=layer0.num_attention_heads, use_self_attn=True, eps=eps,
            compute_dtype=opts["compute_dtype"], backend=opts["backend"],
        )
        if positional_encoding is None:
            return latents, None
        n1 = lat1.shape[0] if lat1 is not None else 0

        def latent_pos():  # zeros for the global latents, the window grid's sine encoding
            out_pos = [torch.zeros_like(latents[:, :n1])]
            if lat2 is not None:
                pe = self.positional_encoding((b, c, nw, nw), latents.device, latents.dtype)
                out_pos.append(pe.to(dtype=hidden_states.dtype).permute(0, 2, 3, 1).flatten(1, 2))
            return torch.cat(out_pos, dim=1)

        # The same for every call of a shape; a copy, as the original returns a fresh tensor.
        key = (b, c, n1, nw if lat2 is not None else 0, latents.dtype, hidden_states.dtype,
               latents.device, id(self.positional_encoding))
        return latents, cached(state, "latent_pos", (), latent_pos, key).clone()

    return forward


@register_adapter(f"{_HF}.EdgeTamVideoPerceiverEncoderLayer")
def _perceiver_encoder_layer(module, state, original):
    def forward(self, latents, input_features, positional_encoding=None):
        eps = common_eps(_layer_norms(self))
        if _layer_unsupported(self) or math.isnan(eps):
            return original(latents, input_features, positional_encoding)
        heads = self.cross_attention.num_attention_heads
        return perceiver_layer(latents, input_features, positional_encoding,
                               _layer_weights(self, state), heads, True, eps, state["options"])

    return forward


# ---------------------------------------------------------------------------------------------
# Memory attention
# ---------------------------------------------------------------------------------------------


def _grids(config):
    """(rows, cols) of the query and key RoPE grids. HF's position ids are (w, h) = (col, row)
    over feat_sizes = [width, height]: token n sits at row n // width, column n % width."""
    fw, fh = config.memory_attention_rope_feat_sizes
    kw, kh = config.memory_attention_rope_k_sizes
    return (int(fh), int(fw)), (int(kh), int(kw))


def _theta(config) -> float:
    return float(config.rope_parameters["rope_theta"])


def _projections(attn) -> Projections:
    return Projections.of(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                          attn.num_attention_heads)


def _self_rope(config, n_q: int, cos=None):
    q_grid, _ = _grids(config)
    if q_grid[0] * q_grid[1] != n_q or (cos is not None and cos.shape[-2] != n_q):
        return None
    return Rope(q_grid, q_grid, 1, 0, _theta(config))


def _cross_rope(config, n_q: int, n_k: int, num_k_exclude_rope: int, rope_k_repeat: int,
                cos=None, cos_k=None):
    q_grid, k_grid = _grids(config)
    if cos is not None and cos.shape[-2] != n_q:
        return None
    if cos_k is not None and cos_k.shape[-2] != k_grid[0] * k_grid[1]:
        return None
    return latent_rope(q_grid, k_grid, _theta(config), n_q, n_k, num_k_exclude_rope,
                       rope_k_repeat)


def _flat(*tensors):
    """(B, P, N, C) -> (B * P, N, C), keeping identical inputs identical (so the fused forward
    can stack their projections)."""
    out, seen = [], {}
    for t in tensors:
        if id(t) not in seen:
            seen[id(t)] = t.reshape(-1, *t.shape[-2:])
        out.append(seen[id(t)])
    return out


@register_adapter(f"{_HF}.EdgeTamVideoRoPESelfAttention")
def _rope_self_attention(module, state, original):
    def forward(self, query, key, value, position_embeddings, **kwargs):
        rope = _self_rope(self.config, query.shape[-2], position_embeddings[0])
        if (rope is None or kwargs or query.dim() != 4 or key.shape[-2] != query.shape[-2]
                or _dropping(self, self.dropout_p)):
            return original(query, key, value, position_embeddings, **kwargs)
        q, k, v = _flat(query, key, value)
        out = attend(q, k, v, _projections(self), rope, state["options"], state)
        return out.view(*query.shape[:-1], out.shape[-1]), None

    return forward


@register_adapter(f"{_HF}.EdgeTamVideoRoPECrossAttention")
def _rope_cross_attention(module, state, original):
    def forward(self, query, key, value, position_embeddings, position_embeddings_k,
                num_k_exclude_rope: int = 0, rope_k_repeat: int = 0, **kwargs):
        rope = _cross_rope(self.config, query.shape[-2], key.shape[-2], num_k_exclude_rope,
                           rope_k_repeat, position_embeddings[0], position_embeddings_k[0])
        if rope is None or kwargs or query.dim() != 4 or _dropping(self, self.dropout_p):
            return original(query, key, value, position_embeddings, position_embeddings_k,
                            num_k_exclude_rope, rope_k_repeat, **kwargs)
        q, k, v = _flat(query, key, value)
        out = attend(q, k, v, _projections(self), rope, state["options"], state)
        return out.view(*query.shape[:-1], out.shape[-1]), None

    return forward


def _layer_parts(layer):
    mlp = layer.mlp
    return dict(
        norms=(Norm.of(layer.layer_norm1), Norm.of(layer.layer_norm2), Norm.of(layer.layer_norm3)),
        mlp=MLP(mlp.up_proj.weight, mlp.up_proj.bias, mlp.down_proj.weight, mlp.down_proj.bias,
                mlp.act_fn),
    )


def _layer_training(layer) -> bool:
    return _dropping(layer, layer.dropout1.p, layer.mlp.dropout.p, layer.self_attn.dropout_p,
                     layer.cross_attn_image.dropout_p)


def _fused_layer(layer, x, memory, memory_pos, sa_rope, ca_rope, state):
    return memory_attention_layer(
        x, memory, memory_pos, self_attn=(_projections(layer.self_attn), sa_rope),
        cross_attn=(_projections(layer.cross_attn_image), ca_rope), options=state["options"],
        cache=state, **_layer_parts(layer),
    )


@register_adapter(f"{_HF}.EdgeTamVideoMemoryAttentionLayer")
def _memory_attention_layer(module, state, original):
    def forward(self, queries, keys, key_point_embedding, rope_position_embeddings,
                rope_position_embeddings_k=None, num_k_exclude_rope: int = 0,
                rope_k_repeat: int = 0):
        args = (queries, keys, key_point_embedding, rope_position_embeddings,
                rope_position_embeddings_k, num_k_exclude_rope, rope_k_repeat)
        if queries.dim() != 4 or rope_position_embeddings_k is None or _layer_training(self):
            return original(*args)
        config = self.self_attn.config
        n_q, n_k = queries.shape[-2], keys.shape[-2]
        sa_rope = _self_rope(config, n_q, rope_position_embeddings[0])
        ca_rope = _cross_rope(config, n_q, n_k, num_k_exclude_rope, rope_k_repeat,
                              rope_position_embeddings[0], rope_position_embeddings_k[0])
        if sa_rope is None or ca_rope is None:
            return original(*args)
        x, mem, pos = _flat(queries, keys, key_point_embedding)
        out = _fused_layer(self, x, mem, pos, sa_rope, ca_rope, state)
        return out.view(queries.shape)

    return forward


@register_adapter(f"{_HF}.EdgeTamVideoMemoryAttention")
def _memory_attention(module, state, original):
    """The whole memory attention: seq-first (N, B, C) in, (1, B, N, C) out like HF's; the RoPE
    tables HF would build per call are not needed."""

    def forward(self, current_vision_features, memory, current_vision_position_embeddings=None,
                memory_posision_embeddings=None, num_object_pointer_tokens: int = 0,
                num_spatial_memory_tokens: int = -1):
        args = (current_vision_features, memory, current_vision_position_embeddings,
                memory_posision_embeddings, num_object_pointer_tokens, num_spatial_memory_tokens)
        config = self.config
        n_q, n_k = current_vision_features.shape[0], memory.shape[0]
        sa_rope = _self_rope(config, n_q)
        ca_rope = _cross_rope(config, n_q, n_k, num_object_pointer_tokens,
                              num_spatial_memory_tokens)
        if (sa_rope is None or ca_rope is None or memory_posision_embeddings is None
                or current_vision_features.dim() != 3
                or any(_layer_training(layer) for layer in self.layers)):
            return original(*args)
        x = current_vision_features
        if current_vision_position_embeddings is not None:
            x = x + 0.1 * current_vision_position_embeddings
        x = x.transpose(0, 1)
        mem = memory.transpose(0, 1)
        pos = memory_posision_embeddings.transpose(0, 1)
        for layer in self.layers:
            x = _fused_layer(layer, x, mem, pos, sa_rope, ca_rope, state)
        return self.layer_norm(x).unsqueeze(0)

    return forward
