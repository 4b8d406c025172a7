"""CPU backend: C++ kernels from csrc/ (scalar, AVX2, AVX-512, NEON; chosen at run time)."""

from __future__ import annotations

from .._registry import Backend

try:
    from .. import _C  # noqa: F401  (the compiled extension registers torch.ops.edgetam_cpu)
    _IMPORT_ERROR = None
except ImportError as e:  # built without a compiler, or not built yet
    _IMPORT_ERROR = f"extension not built ({e})"

BACKEND = Backend(
    name="cpu",
    device_types=("cpu",),
    kernels={},
    unavailable=lambda: _IMPORT_ERROR,
)
