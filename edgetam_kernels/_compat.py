"""Importing Meta's and Hugging Face's EdgeTAM beside a CPU-only torch."""

from __future__ import annotations

import torch

_fragment = None


def shim_torchvision() -> None:
    """PyPI's torchvision is a CUDA build whose C ops do not load beside a CPU torch, and its
    import then fails ("operator torchvision::nms does not exist"). timm and Meta's sam2 only
    need its Python parts, which import once these two schemas exist. Call before importing
    torchvision; a no-op where the real ops are registered."""
    global _fragment
    if _fragment is not None or torch.cuda.is_available():
        return
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in ("nms", "qnms"):
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _fragment = lib
    except RuntimeError:
        pass  # already defined: the real torchvision ops (or another shim) are loaded
