"""RepViT-M1 (arXiv 2307.09283), the image trunk of EdgeTAM, written from the paper's design.

Module names reproduce the layout of Meta's EdgeTAM checkpoint (a timm `features_only` RepViT
under `image_encoder.trunk.body`): `stem.conv1.c`, `stages_0.blocks.0.token_mixer.conv.bn`, ...
Every conv is followed by a BatchNorm ("ConvNorm": children `c` and `bn`), used in eval mode.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgetam_kernels.reparam import fold_batchnorm, merge_dw_branches, work_dtype

# RepViT-M1: channels and blocks per stage, MLP expansion 2, 3x3 depth-wise token mixers.
M1_WIDTHS = (48, 96, 192, 384)
M1_DEPTHS = (2, 2, 14, 2)


class ConvNorm(nn.Sequential):
    """Conv2d without bias, then BatchNorm2d."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class DwMixer(nn.Module):
    """Re-parameterisable token mixer: 3x3 depth-wise + 1x1 depth-wise + identity."""

    def __init__(self, dim: int, k: int = 3) -> None:
        super().__init__()
        self.conv = ConvNorm(dim, dim, k, 1, (k - 1) // 2, groups=dim)
        self.conv1 = ConvNorm(dim, dim, 1, 1, 0, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.conv1(x) + x


class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(mean_hw(x))))) with 1x1 convs."""

    def __init__(self, dim: int, ratio: float = 0.25, divisor: int = 8) -> None:
        super().__init__()
        hidden = max(divisor, int(dim * ratio + divisor / 2) // divisor * divisor)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(F.relu(self.fc1(s)))
        return x * torch.sigmoid(s)


class ConvMlp(nn.Module):
    """Channel mixer: 1x1 ConvNorm, GELU, 1x1 ConvNorm."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(dim, hidden)
        self.conv2 = ConvNorm(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.gelu(self.conv1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int, use_se: bool) -> None:
        super().__init__()
        self.token_mixer = DwMixer(dim)
        self.se = SqueezeExcite(dim) if use_se else nn.Identity()
        self.channel_mixer = ConvMlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class Downsample(nn.Module):
    """Block, stride-2 depth-wise conv, 1x1 channel expansion, residual MLP."""

    def __init__(self, cin: int, cout: int, mlp_ratio: int) -> None:
        super().__init__()
        self.pre_block = Block(cin, mlp_ratio, use_se=False)
        self.spatial_downsample = ConvNorm(cin, cin, 3, 2, 1, groups=cin)
        self.channel_downsample = ConvNorm(cin, cout, 1)
        self.ffn = ConvMlp(cout, cout * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = self.channel_downsample(self.spatial_downsample(self.pre_block(x)))
        return x + self.ffn(x)


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, mlp_ratio: int, downsample: bool) -> None:
        super().__init__()
        if downsample:
            self.downsample = Downsample(cin, cout, mlp_ratio)
        # squeeze-excite on every other block, starting with the first
        self.blocks = nn.Sequential(*[Block(cout, mlp_ratio, use_se=(i % 2 == 0))
                                      for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        return self.blocks(x)


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cout // 2, 3, 2, 1)
        self.conv2 = ConvNorm(cout // 2, cout, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.gelu(self.conv1(x)))


class RepViT(nn.Module):
    """Returns the four stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self, widths: Sequence[int] = M1_WIDTHS, depths: Sequence[int] = M1_DEPTHS,
                 mlp_ratio: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = Stem(in_chans, widths[0])
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            self.add_module(f"stages_{i}", Stage(cin, w, d, mlp_ratio, downsample=i > 0))
            cin = w
        self.num_stages = len(widths)
        self.widths = tuple(widths)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.stem(x)
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"stages_{i}")(x)
            outs.append(x)
        return outs


class Trunk(nn.Module):
    """Holds the RepViT as `body` (checkpoint layout); channel_list is deepest first."""

    def __init__(self) -> None:
        super().__init__()
        self.body = RepViT()
        self.channel_list = list(self.body.widths[::-1])

    def forward(self, x: Tensor) -> List[Tensor]:
        return self.body(x)


# ---------------------------------------------------------------------------------------------
# Inference-time re-parameterisation
# ---------------------------------------------------------------------------------------------


def _conv(c: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                     groups=c.groups, bias=True).to(weight.device, weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def _fold(cn: ConvNorm) -> nn.Conv2d:
    """Conv + eval BatchNorm -> one conv with bias."""
    return _conv(cn.c, *fold_batchnorm(cn.c.weight, cn.c.bias, cn.bn))


def _fold_mixer(m: DwMixer) -> nn.Conv2d:
    """3x3 dw + 1x1 dw + identity -> one 3x3 depth-wise conv."""
    wide = work_dtype(m.conv.c.weight)  # round once, at the end
    w3, b3 = fold_batchnorm(m.conv.c.weight, m.conv.c.bias, m.conv.bn, out_dtype=wide)
    w1, b1 = fold_batchnorm(m.conv1.c.weight, m.conv1.c.bias, m.conv1.bn, out_dtype=wide)
    w, b = merge_dw_branches(w3, b3, w1, b1, identity=True)
    return _conv(m.conv.c, w.to(m.conv.c.weight.dtype), b.to(m.conv.c.weight.dtype))


def fuse_(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm into its conv and each token mixer into a single depth-wise conv,
    in place (eval-mode inference only; the state dict then no longer has Meta's layout).
    Same function, ~1e-6 relative rounding differences, fewer and cheaper ops."""
    for name, child in list(module.named_children()):
        if isinstance(child, DwMixer):
            setattr(module, name, _fold_mixer(child))
        elif isinstance(child, ConvNorm):
            setattr(module, name, _fold(child))
        else:
            fuse_(child)
    return module
