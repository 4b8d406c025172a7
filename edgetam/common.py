"""Small building blocks shared by the EdgeTAM modules (pure PyTorch)."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of a (B, C, H, W) tensor (SAM's formula, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (parameters `layers.{i}`)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int,
                 sigmoid_output: bool = False) -> None:
        super().__init__()
        dims_in = [in_dim] + [hidden] * (num_layers - 1)
        dims_out = [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


def sine_position_encoding(channels: int, height: int, width: int, device=None,
                           temperature: float = 10000.0) -> Tensor:
    """DETR-style normalized 2-D sine encoding, (channels, height, width), fp32.

    The first half of the channels encodes the row (y), the second the column (x); within a
    half, channel pairs hold (sin, cos) of position / temperature^(2i / half).
    """
    half = channels // 2
    scale = 2 * math.pi
    eps = 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(v: Tensor) -> Tensor:  # (n,) -> (n, half)
        p = v[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()


class RandomPositionEncoding(nn.Module):
    """SAM's Fourier features with a fixed random Gaussian matrix (the `pe_layer`)."""

    def __init__(self, num_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """coords in [0, 1], (..., 2) as (x, y) -> (..., 2 * num_feats) in the buffer's dtype.

        The phases are computed in fp32 whatever the model's dtype (bf16 keeps 8 bits: a phase
        of ~10 radians would be off by up to ~0.04 before the sine)."""
        gauss = self.positional_encoding_gaussian_matrix
        coords = (2 * coords.float() - 1) @ gauss.float()
        coords = 2 * math.pi * coords
        return torch.cat([coords.sin(), coords.cos()], dim=-1).to(gauss.dtype)

    def grid(self, size: Tuple[int, int]) -> Tensor:
        """Encoding of every cell centre of an (h, w) grid: (C, h, w)."""
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        ones = torch.ones((h, w), device=dev, dtype=torch.float32)
        ys = (ones.cumsum(dim=0) - 0.5) / h
        xs = (ones.cumsum(dim=1) - 0.5) / w
        return self.encode(torch.stack([xs, ys], dim=-1)).permute(2, 0, 1)

    def points(self, coords: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """Pixel coordinates (B, N, 2) as (x, y) in an image of (h, w) -> (B, N, C)."""
        h, w = image_size
        norm = torch.stack([coords[..., 0] / w, coords[..., 1] / h], dim=-1)
        return self.encode(norm.to(torch.float32))


def sine_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """1-D sine encoding [sin | cos] of (N,) positions -> (N, dim)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    p = positions.unsqueeze(-1) / dim_t
    return torch.cat([p.sin(), p.cos()], dim=-1)
