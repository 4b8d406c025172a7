"""SAM 2 mask decoder: a two-way transformer between prompt tokens and the image embedding,
hypernetwork mask heads, IoU head and EdgeTAM's object-score head."""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP, LayerNorm2d


class Attention(nn.Module):
    """Multi-head attention with an optional internal downsampling of the width."""

    def __init__(self, dim: int, heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        self.num_heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, skip_first_layer_pe=(i == 0))
                                    for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> Tuple[Tensor, Tensor]:
        keys = image.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MaskDecoder(nn.Module):
    """Outputs (masks (B, M, 4h, 4w), iou (B, M), sam tokens (B, M', C), object score (B, 1)).

    Token order: object-score token, IoU token, 4 mask tokens, then the prompt tokens.
    `dynamic_multimask_via_stability`: when a single mask is asked for and its stability score
    (IoU of the masks thresholded at +-0.05) is below 0.98, the best multimask output is used
    instead (Meta's predictors turn this on).
    """

    def __init__(self, dim: int = 256, num_multimask_outputs: int = 3,
                 dynamic_multimask_via_stability: bool = True,
                 stability_delta: float = 0.05, stability_thresh: float = 0.98) -> None:
        super().__init__()
        self.transformer_dim = dim
        self.transformer = TwoWayTransformer(2, dim, 8, 2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                multimask_output: bool, high_res_features: List[Tensor],
                repeat_image: bool = False):
        masks, iou, mask_tokens_out, obj_score = self.predict_masks(
            image_embeddings, image_pe, sparse, dense, high_res_features, repeat_image)
        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
            sam_tokens = mask_tokens_out[:, 1:]
        else:
            if self.dynamic_multimask_via_stability:
                masks, iou = self._stable_single_mask(masks, iou)
            else:
                masks, iou = masks[:, 0:1], iou[:, 0:1]
            sam_tokens = mask_tokens_out[:, 0:1]
        return masks, iou, sam_tokens, obj_score

    def predict_masks(self, image_embeddings, image_pe, sparse, dense, high_res_features,
                      repeat_image=False):
        out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight,
                                self.mask_tokens.weight], dim=0)
        b = sparse.shape[0]
        tokens = torch.cat((out_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
        src = image_embeddings
        feat_s0, feat_s1 = high_res_features
        if repeat_image:
            src = torch.repeat_interleave(src, b, dim=0)
            feat_s0 = torch.repeat_interleave(feat_s0, b, dim=0)
            feat_s1 = torch.repeat_interleave(feat_s1, b, dim=0)
        src = src + dense
        pos = torch.repeat_interleave(image_pe, b, dim=0)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2: 2 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)
        hyper = torch.stack([mlp(mask_tokens_out[:, i, :])
                             for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        _, c2, h2, w2 = up.shape
        masks = (hyper @ up.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        iou = self.iou_prediction_head(iou_token_out)
        obj_score = self.pred_obj_score_head(hs[:, 0, :])
        return masks, iou, mask_tokens_out, obj_score

    def _stable_single_mask(self, masks: Tensor, iou: Tensor):
        multi, multi_iou = masks[:, 1:], iou[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi.shape[0], device=masks.device)
        best_mask = multi[rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        single, single_iou = masks[:, 0:1], iou[:, 0:1]
        flat = single.flatten(-2)
        inter = (flat > self.stability_delta).sum(-1).float()
        union = (flat > -self.stability_delta).sum(-1).float()
        stability = torch.where(union > 0, inter / union, torch.ones_like(inter))
        stable = stability >= self.stability_thresh
        out_mask = torch.where(stable[..., None, None].expand_as(single), single, best_mask)
        out_iou = torch.where(stable.expand_as(single_iou), single_iou, best_iou)
        return out_mask, out_iou
