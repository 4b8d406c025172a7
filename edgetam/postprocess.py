"""Mask post-processing: filling small background holes (Meta's `fill_hole_area`).

Meta fills, in each object's low-res mask logits, every connected region of background
(logit <= 0, 8-connectivity) of at most `max_area` pixels with the logit 0.1; it needs its CUDA
extension or OpenCV for the connected components. Here it is a few tensor ops on any device:

- `max_area` steps of max-label propagation through background pixels: a component of at most
  `max_area` pixels has a geodesic diameter below `max_area`, so all its pixels end up with one
  label, the same for the whole component;
- a label region is a small component exactly when it has at most `max_area` pixels and no
  background neighbour with another label (a region that is only part of a larger component
  always borders a differently labelled part of it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _max3x3(x: Tensor, fill: float) -> Tensor:
    """3x3 max filter (stride 1, borders padded with `fill`), as two separable passes."""
    p = F.pad(x, (1, 1, 1, 1), value=fill)
    row = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(row[..., :-2, :], row[..., 1:-1, :]), row[..., 2:, :])


def small_components(fg: Tensor, max_area: int) -> Tensor:
    """fg (N, 1, H, W) bool -> bool mask of the fg pixels whose 8-connected component has at
    most `max_area` pixels."""
    n, _, h, w = fg.shape
    hw = h * w
    idx = torch.arange(1, hw + 1, device=fg.device, dtype=torch.float32).view(1, 1, h, w)
    lab = torch.where(fg, idx, torch.zeros((), device=fg.device))
    for _ in range(max_area):
        lab = torch.where(fg, _max3x3(lab, 0.0), lab)
    # a pixel borders another label if a fg neighbour has a larger or a smaller label
    big = torch.full((), float(hw + 1), device=fg.device)
    nb_max = _max3x3(lab, 0.0)
    nb_min = -_max3x3(-torch.where(fg, lab, big), -float(hw + 1))
    border = fg & ((nb_max > lab) | (nb_min < lab))
    # per-label pixel counts and border counts (label 0 = not fg)
    offset = (torch.arange(n, device=fg.device) * (hw + 1)).view(n, 1, 1, 1)
    key = (lab.long() + offset).flatten()
    counts = torch.zeros(n * (hw + 1), device=fg.device).index_add_(
        0, key, fg.flatten().float())
    borders = torch.zeros(n * (hw + 1), device=fg.device).index_add_(
        0, key, border.flatten().float())
    small = (counts[key] <= max_area) & (borders[key] == 0)
    return fg & small.view(n, 1, h, w)


def fill_holes(mask_logits: Tensor, max_area: int) -> Tensor:
    """Set background regions (logit <= 0) of at most `max_area` pixels to 0.1."""
    if max_area <= 0:
        return mask_logits
    holes = small_components(mask_logits <= 0, int(max_area))
    return torch.where(holes, torch.full_like(mask_logits, 0.1), mask_logits)
