"""Image encoder: RepViT-M1 trunk + FPN neck (checkpoint names `image_encoder.trunk/neck`)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgetam_kernels.derived import DerivedCache, table

from .common import sine_position_encoding
from .repvit import Trunk


class FpnNeck(nn.Module):
    """1x1 lateral convs to d_model; top-down (nearest 2x upsampling, sum) only on the levels in
    `top_down_levels`; a sine position encoding per level. `convs[j]` serves the j-th deepest
    backbone level (checkpoint layout `neck.convs.{j}.conv`)."""

    def __init__(self, d_model: int = 256, channels: Sequence[int] = (384, 192, 96, 48),
                 top_down_levels: Sequence[int] = (2, 3)) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(channels)
        self.convs = nn.ModuleList()
        for c in channels:
            m = nn.Sequential()
            m.add_module("conv", nn.Conv2d(c, d_model, 1))
            self.convs.append(m)
        self.top_down_levels = tuple(top_down_levels)

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        n = len(self.convs) - 1
        out: List[Tensor] = [xs[0]] * len(xs)
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                up = F.interpolate(prev.to(torch.float32), scale_factor=2.0, mode="nearest")
                # back to the weights' dtype (nearest is exact): a bf16 model stays bf16, an
                # fp32 one under autocast keeps Meta's fp32 sum
                prev = lateral + up.to(self.convs[n - i].conv.weight.dtype)
            else:
                prev = lateral
            out[i] = prev
        return out


class ImageEncoder(nn.Module):
    """(B, 3, S, S) normalized image -> FPN features at strides 4, 8, 16 (the stride-32 level
    only feeds the top-down path and is dropped, "scalp" 1) and their sine encodings."""

    def __init__(self, d_model: int = 256) -> None:
        super().__init__()
        self.trunk = Trunk()
        self.neck = FpnNeck(d_model, self.trunk.channel_list)
        self.scalp = 1

    def forward(self, image: Tensor) -> Dict[str, List[Tensor]]:
        feats = self.features(image)
        return {"backbone_fpn": feats, "vision_pos_enc": [self.position(f) for f in feats]}

    def features(self, image: Tensor) -> List[Tensor]:
        """The FPN levels alone (strides 4, 8, 16), without their position encodings."""
        return self.neck(self.trunk(image))[: -self.scalp]

    def position(self, f: Tensor) -> Tensor:
        """Level `f`'s sine encoding, (B, d_model, H, W) (an expanded view of one table)."""
        return self._position(f)[None].expand(f.shape[0], -1, -1, -1)

    def _position(self, f: Tensor) -> Tensor:
        """A level's (d_model, H, W) sine encoding. It depends on the shape alone, so each shape's
        table is built once (at 1024 the stride-4 one is 64 MB) and reused while nobody has
        edited it in place. Always d_model channels: after `fold_heads_` the two
        high-resolution maps themselves are narrower."""
        c, h, w = self.neck.d_model, f.shape[2], f.shape[3]
        if torch.compiler.is_compiling():
            return sine_position_encoding(c, h, w, f.device).to(f.dtype)
        # not module state: a copy or a pickle of the model starts with an empty cache
        tables = self.__dict__.setdefault("_pos_tables", DerivedCache())
        return table(tables, (c, h, w, f.device, f.dtype),
                     lambda: sine_position_encoding(c, h, w, f.device).to(f.dtype))

    def fold_heads_(self, conv_s0: nn.Conv2d, conv_s1: nn.Conv2d) -> None:
        """Fold the mask decoder's 1x1 convs on levels 0 and 1 into the neck's lateral 1x1
        convs, in place: two 1x1 convs in a row are one (W = W_s W_lat, b = W_s b_lat + b_s),
        and those levels get no top-down term, so the 256-channel maps (64 MB at 1024 for
        level 0) are never made. The neck then returns levels 0 and 1 already projected."""
        from edgetam_kernels.reparam import compose_linear

        if {0, 1} & set(self.neck.top_down_levels):
            raise ValueError("fold_heads_: levels 0 and 1 must not get a top-down term, got "
                             f"top_down_levels={self.neck.top_down_levels}")
        n = len(self.neck.convs) - 1
        for level, head in ((0, conv_s0), (1, conv_s1)):
            lateral = self.neck.convs[n - level].conv
            w, b = compose_linear(lateral.weight.flatten(1), lateral.bias, head.weight.flatten(1),
                                  head.bias, lateral.weight.dtype)
            conv = nn.Conv2d(lateral.in_channels, head.out_channels, 1).to(lateral.weight.device)
            with torch.no_grad():
                conv.weight.copy_(w[:, :, None, None])
                conv.bias.copy_(b)
            self.neck.convs[n - level].conv = conv
