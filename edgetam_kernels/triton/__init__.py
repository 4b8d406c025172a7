"""Triton backend: kernels for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)."""

from __future__ import annotations

from .._registry import Backend


def _unavailable():
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return "no Triton kernels are registered yet"


BACKEND = Backend(name="triton", device_types=("cuda",), kernels={}, unavailable=_unavailable)
