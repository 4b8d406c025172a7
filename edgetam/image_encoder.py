"""Image encoder: RepViT-M1 trunk + FPN neck (checkpoint names `image_encoder.trunk/neck`)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
                prev = lateral + up
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
        feats = self.neck(self.trunk(image))[: -self.scalp]
        pos = [sine_position_encoding(f.shape[1], f.shape[2], f.shape[3], f.device)
               .to(f.dtype)[None].expand(f.shape[0], -1, -1, -1) for f in feats]
        return {"backbone_fpn": feats, "vision_pos_enc": pos}
