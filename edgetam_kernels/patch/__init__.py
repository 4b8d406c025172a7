"""patch() / unpatch(): run existing EdgeTAM models on edgetam_kernels' ops.

    import edgetam_kernels as ek
    ek.patch(model)                 # Meta's sam2 EdgeTAM, HF's EdgeTamVideoModel, or a module
    ek.patch.patched_modules(model) # what was patched
    ek.unpatch(model)

`_core.py` holds the registry and the patching itself; one module per host family registers
its adapters there when this package is imported: `sam2.py` (Meta), `hf.py` (Hugging Face),
`repvit.py` (the RepViT image encoder), `fpn.py` (the FPN neck), `memory_encoder.py`. Another
model registers its own classes with `register_adapter` / `register_like` (edgetam/ does).
Options and accuracy: `patch`'s docstring and docs/patch.md.
"""

from __future__ import annotations

from torch import nn

from ._core import (
    ADAPTERS,
    GATES,
    METHODS,
    class_key,
    has_own_forward,
    is_patched,
    patch,
    patched_modules,
    register_adapter,
    register_like,
    unpatch,
)
from . import fpn, hf, memory_encoder, repvit, sam2  # noqa: F401,E402  (register their adapters)
from .repvit import trunk_layout_kept  # noqa: E402


def perceiver_weights(module: nn.Module) -> list:
    """The flat weight list `edgetam_kernels.spatial_perceiver` takes (reference.
    PERCEIVER_LAYER_PARAMS order, k/v projections stacked) from Meta's PerceiverResampler or
    HF's EdgeTamVideoPerceiverResampler."""
    key = class_key(module)
    if key.startswith("sam2."):
        return sam2.perceiver_weights(module)
    if key.startswith("transformers."):
        return hf.perceiver_weights(module)
    raise TypeError(f"perceiver_weights() does not know {key}")


__all__ = [
    "ADAPTERS",
    "GATES",
    "METHODS",
    "class_key",
    "has_own_forward",
    "is_patched",
    "patch",
    "patched_modules",
    "perceiver_weights",
    "register_adapter",
    "register_like",
    "trunk_layout_kept",
    "unpatch",
]
