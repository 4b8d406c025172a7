"""The image features around the encoder's FPN neck (patch option `fuse_encoder`).

At 1024 input the RepViT trunk's first two levels are 256 x 256 and 128 x 128: everything the
neck makes there is big, and on a CPU most of it is memory traffic, not arithmetic. Two changes,
both exact in exact arithmetic:

- Sine position encodings (Meta's PositionEmbeddingSine, HF's EdgeTamSinePositionEmbedding and
  EdgeTamVideoPositionEmbeddingSine) depend on the feature map's shape only. Meta's caches its
  table but hands out a fresh transposing copy per call (64 MB at 256 x 256 x 256); HF's keeps
  one or two shapes and so rebuilds the table at most levels. Patched, each shape's table is
  built once by the original forward and handed out as it is (batch 1; a batch gets a copy, as
  before). The tables are normal tensors whose in-place version is checked on every call: an
  in-place edit of a handed-out table makes the next call build a fresh one.
- Meta's `forward_image` and HF's `get_image_features` put the mask decoder's conv_s0 / conv_s1
  (256 -> 32 / 64 channels) right after the neck's lateral 1 x 1 convs of levels 0 and 1
  (backbone channels -> 256), which get no top-down term. Two 1 x 1 convs in a row are one:
  W = W_s W_lat, b = W_s b_lat + b_s (`reparam.compose_linear`). Patched, those levels are one
  narrow conv straight from the trunk: at 1024 about 2.2 GFLOP and 110 MB of writes less per
  frame. The rest of the neck is computed as the original does.

Declined (the original runs) where the structure differs: other neck or position classes,
kernels other than 1 x 1, top-down fusion reaching level 0 or 1, fewer than three returned
levels, hooks or instance forwards on the modules the replacement bypasses, extra kwargs (HF).
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..derived import cached, table
from ._core import class_key, register_adapter
from .repvit import trunk_layout_kept
from ..reparam import compose_linear

_OPTION = "fuse_encoder"
_META_SINE = "sam2.modeling.position_encoding.PositionEmbeddingSine"
_META_NECK = "sam2.modeling.backbones.image_encoder.FpnNeck"
_HF_SINE = "transformers.models.edgetam.modeling_edgetam.EdgeTamSinePositionEmbedding"
_HF_VIDEO_SINE = ("transformers.models.edgetam_video.modeling_edgetam_video."
                  "EdgeTamVideoPositionEmbeddingSine")
_HF_NECK = "transformers.models.edgetam.modeling_edgetam.EdgeTamVisionNeck"


# ---------------------------------------------------------------------------------------------
# Sine position encodings
# ---------------------------------------------------------------------------------------------


@register_adapter(_META_SINE, _OPTION)
def _meta_sine(module, state, original):
    def forward(self, x):
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        if b == 0 or torch.compiler.is_compiling():
            return original(x)
        key = (h, w, x.device, self.num_pos_feats, self.temperature, self.normalize, self.scale)
        probe = lambda: torch.empty((1, 1, h, w), device=x.device)  # noqa: E731
        one = table(state, key, lambda: original(probe())[0].contiguous())
        return one[None] if b == 1 else one[None].expand(b, -1, -1, -1).contiguous()

    return forward


def _hf_sine(module, state, original):
    def forward(self, shape, device, dtype, mask=None):
        if mask is not None or torch.compiler.is_compiling():
            return original(shape, device, dtype, mask)
        key = (tuple(shape), torch.device(device), dtype, self.num_position_features,
               self.normalize, self.scale, self.temperature)
        return table(state, key, lambda: original(shape, device, dtype).clone())

    return forward


register_adapter(_HF_SINE, _OPTION)(_hf_sine)
register_adapter(_HF_VIDEO_SINE, _OPTION)(_hf_sine)


# ---------------------------------------------------------------------------------------------
# Lateral 1 x 1 conv + conv_s0 / conv_s1 -> one conv
# ---------------------------------------------------------------------------------------------


def _pointwise(c) -> bool:
    return (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.stride == (1, 1)
            and c.padding == (0, 0) and c.dilation == (1, 1) and c.groups == 1
            and c.padding_mode == "zeros")


def _untouched(*modules) -> bool:
    """No hooks and no instance forward on the modules whose __call__ the fold bypasses."""
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
            return False
    return True


def _folded(state: dict, level: int, lateral: nn.Conv2d, head: nn.Conv2d):
    sources = (lateral.weight, lateral.bias, head.weight, head.bias)

    def compose():
        w, b = compose_linear(lateral.weight.flatten(1), lateral.bias,
                              head.weight.flatten(1), head.bias, head.weight.dtype)
        return w[:, :, None, None], b

    return cached(state, ("fpn", level), sources, compose)


def _run_trunk(trunk, x):
    """The trunk's features: channels-last where the patched trunk computes them so (CPU), as
    the 1 x 1 convs below read that layout without reorders (the maps they make are handed
    back contiguous, as the hosts' are). Image features at 1024, 1.03-1.06x (Meta) and
    1.03-1.17x (HF) faster with it in two runs each of bench/fpn_layout_ab.py."""
    if torch.compiler.is_compiling():
        return trunk(x)
    with trunk_layout_kept():
        return trunk(x)


def _top_down(prev: torch.Tensor, lateral: torch.Tensor, mode: str,
              cast: bool) -> torch.Tensor:
    """lateral + 2x upsampled prev, upsampled in fp32 as both hosts do; HF casts the upsampled
    map back to the lateral's dtype (`cast`), Meta adds it as it is (type promotion)."""
    up = F.interpolate(prev.to(dtype=torch.float32), scale_factor=2.0, mode=mode,
                       align_corners=None if mode == "nearest" else False, antialias=False)
    return lateral + (up.to(lateral.dtype) if cast else up)


# -- Meta -------------------------------------------------------------------------------------


def _meta_plan(model) -> Optional[tuple]:
    """(lateral convs of levels 0 and 1, conv_s0, conv_s1) where the fold applies, else None."""
    enc = getattr(model, "image_encoder", None)
    neck = getattr(enc, "neck", None)
    dec = getattr(model, "sam_mask_decoder", None)
    if (neck is None or dec is None or not getattr(model, "use_high_res_features_in_sam", False)
            or class_key(neck) != _META_NECK
            or class_key(neck.position_encoding) != _META_SINE):
        return None
    n = len(neck.convs) - 1
    if n < 2 or n + 1 - enc.scalp < 3 or {0, 1} & set(neck.fpn_top_down_levels):
        return None
    laterals, wrappers = [], []
    for level in (0, 1):
        seq = neck.convs[n - level]
        conv = getattr(seq, "conv", None)
        if not (isinstance(seq, nn.Sequential) and len(seq) == 1 and _pointwise(conv)):
            return None
        laterals.append(conv)
        wrappers.append(seq)
    heads = (getattr(dec, "conv_s0", None), getattr(dec, "conv_s1", None))
    if not all(_pointwise(h) for h in heads):
        return None
    if not _untouched(enc, neck, *wrappers, *laterals, *heads):
        return None
    return laterals, heads


def _meta_forward_image(model, state, original):
    if _meta_plan(model) is None:
        return None

    def forward_image(self, img_batch):
        plan = _meta_plan(self)
        if plan is None:
            return original(img_batch)
        (lat0, lat1), (s0, s1) = plan
        enc = self.image_encoder
        neck = enc.neck
        xs = _run_trunk(enc.trunk, img_batch)
        n = len(neck.convs) - 1
        keep = n + 1 - enc.scalp  # levels 0 .. keep - 1 are returned
        out, pos = [None] * (n + 1), [None] * (n + 1)
        prev = None
        for i in range(n, -1, -1):
            if i <= 1:  # lateral conv + conv_s<i> as one conv
                w, b = _folded(state, i, (lat0, lat1)[i], (s0, s1)[i])
                x_out = F.conv2d(xs[i], w, b)
            else:  # as FpnNeck.forward
                lateral = neck.convs[n - i](xs[i])
                if i in neck.fpn_top_down_levels and prev is not None:
                    prev = _top_down(prev, lateral, neck.fpn_interp_model, cast=False)
                    if neck.fuse_type == "avg":
                        prev /= 2
                else:
                    prev = lateral
                x_out = prev
            out[i] = x_out
            if i < keep:
                pos[i] = neck.position_encoding(x_out).to(x_out.dtype)
        out, pos = [o.contiguous() for o in out[:keep]], pos[:keep]
        return {"vision_features": out[-1], "vision_pos_enc": pos, "backbone_fpn": out}

    return forward_image


for _name in ("sam2.modeling.sam2_base.SAM2Base", "sam2.sam2_video_predictor.SAM2VideoPredictor"):
    register_adapter(_name, _OPTION, method="forward_image")(_meta_forward_image)


# -- Hugging Face -----------------------------------------------------------------------------


def _hf_plan(model) -> Optional[tuple]:
    ve = getattr(model, "vision_encoder", None)
    neck = getattr(ve, "neck", None)
    dec = getattr(model, "mask_decoder", None)
    if (neck is None or dec is None or class_key(neck) != _HF_NECK
            or class_key(neck.position_encoding) != _HF_SINE
            or getattr(ve, "num_feature_levels", 0) < 3):
        return None
    n = len(neck.convs) - 1
    if n < 2 or ve.num_feature_levels > n + 1 or {0, 1} & set(neck.fpn_top_down_levels):
        return None
    laterals = (neck.convs[n], neck.convs[n - 1])  # levels 0 and 1
    heads = (getattr(dec, "conv_s0", None), getattr(dec, "conv_s1", None))
    if not all(_pointwise(c) for c in laterals + heads):
        return None
    output_cls = getattr(sys.modules.get(type(ve).__module__), "EdgeTamVisionEncoderOutput", None)
    if output_cls is None or not _untouched(ve, neck, *laterals, *heads):
        return None
    return laterals, heads, output_cls


def _hf_get_image_features(model, state, original):
    if _hf_plan(model) is None:
        return None

    def get_image_features(self, pixel_values, **kwargs):
        # the model calls it with return_dict=True (the output is a ModelOutput either way);
        # any other option (hidden states, attentions, ...) goes to the original
        plain = kwargs.get("return_dict", True) in (True, None) and set(kwargs) <= {"return_dict"}
        plan = _hf_plan(self) if plain else None
        if plan is None:
            return original(pixel_values, **kwargs)
        laterals, heads, output_cls = plan
        ve = self.vision_encoder
        neck = ve.neck
        backbone_output = _run_trunk(ve.backbone, pixel_values)
        xs = backbone_output.last_hidden_state  # (B, C, H, W) per level
        n = len(neck.convs) - 1
        keep = ve.num_feature_levels
        maps, pos = [], []  # as EdgeTamVisionNeck.forward, low resolution first
        prev = None
        for i in range(n, -1, -1):
            x = xs[i].to(neck.convs[i].weight.dtype)
            if i <= 1:
                w, b = _folded(state, i, laterals[i], heads[i])
                x_out = F.conv2d(x, w, b)
                shape = torch.Size((x_out.shape[0], laterals[i].out_channels) + x_out.shape[2:])
            else:
                lateral = neck.convs[n - i](x)
                if i not in neck.fpn_top_down_levels or i == n:
                    prev = lateral
                else:
                    prev = _top_down(prev, lateral, "nearest", cast=True)
                x_out, shape = prev, prev.shape
            maps.append(x_out.contiguous())
            pos.append(None if i >= keep else
                       neck.position_encoding(shape, x_out.device, x_out.dtype).to(x_out.dtype))
        maps, pos = maps[-keep:][::-1], pos[-keep:][::-1]
        return output_cls(
            last_hidden_state=xs[-1].permute(0, 2, 3, 1),
            fpn_hidden_states=[m.flatten(2).permute(2, 0, 1) for m in maps],
            fpn_position_encoding=[p.flatten(2).permute(2, 0, 1) for p in pos],
            hidden_states=backbone_output.hidden_states,
        )

    return get_image_features


register_adapter("transformers.models.edgetam_video.modeling_edgetam_video.EdgeTamVideoModel",
                 _OPTION, method="get_image_features")(_hf_get_image_features)
