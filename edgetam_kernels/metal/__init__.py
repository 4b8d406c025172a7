"""Metal backend: MSL kernels dispatched on MPS tensors through torch.mps.compile_shader."""

from __future__ import annotations

from .._registry import Backend


def _unavailable():
    import torch

    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return "no MPS device (Metal runs on Apple GPUs only)"
    return "no Metal kernels are registered yet"


BACKEND = Backend(name="metal", device_types=("mps",), kernels={}, unavailable=_unavailable)
