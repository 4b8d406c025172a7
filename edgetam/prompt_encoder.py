"""SAM prompt encoder: points / box corners -> sparse tokens, mask -> dense embedding."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .common import LayerNorm2d, RandomPositionEncoding

# point labels: 0 negative, 1 positive, 2 box top-left, 3 box bottom-right, -1 padding
PAD_LABEL = -1


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int = 256, image_size: int = 1024, stride: int = 16,
                 mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = (image_size, image_size)
        side = image_size // stride
        self.image_embedding_size = (side, side)
        self.mask_input_size = (4 * side, 4 * side)
        self.pe_layer = RandomPositionEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """(1, C, h, w) encoding of the image-embedding grid."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        coords = coords + 0.5  # pixel centres
        if pad:
            b = coords.shape[0]
            coords = torch.cat([coords, coords.new_zeros(b, 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), PAD_LABEL)], dim=1)
        emb = self.pe_layer.points(coords, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == PAD_LABEL, torch.zeros_like(emb), emb)
        emb = emb + (lab == PAD_LABEL) * self.not_a_point_embed.weight
        for i, table in enumerate(self.point_embeddings):
            emb = emb + (lab == i) * table.weight
        return emb

    def forward(self, points: Optional[Tuple[Tensor, Tensor]], masks: Optional[Tensor],
                batch: int = 1) -> Tuple[Tensor, Tensor]:
        """points: (coords (B, N, 2) in model pixels, labels (B, N)); boxes come as points with
        labels 2 and 3. Returns sparse (B, N+1, C) (a padding point is appended) and dense
        (B, C, h, w) embeddings."""
        if points is not None:
            sparse = self.embed_points(points[0], points[1], pad=True)
            batch = sparse.shape[0]
        else:
            sparse = torch.empty((batch, 0, self.embed_dim),
                                 device=self.no_mask_embed.weight.device)
        if masks is not None:
            dense = self.mask_downscaling(masks.to(self.no_mask_embed.weight.dtype))
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense
