"""Metal backend: MSL kernels dispatched on MPS tensors through torch.mps.compile_shader.

The kernels live in kernels/*.metal; _launch.py turns each op into dispatches. The same launch
code runs against a C++ emulation of Metal on Linux (tests/backends/metal_emu), see docs/metal.md.
"""

from __future__ import annotations

import functools
from typing import Optional

from .._registry import Backend
from . import _launch, _source

_library = None
_compile_error: Optional[str] = None
_bf16_error: Optional[str] = None  # why the bf16 kernels were left out, if they were


def _has_mps() -> bool:
    import torch

    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def library():
    """The compiled kernels (compiled once per process, on first use)."""
    global _library, _compile_error, _bf16_error
    if _library is None and _compile_error is None:
        import torch

        try:
            _library = torch.mps.compile_shader(_source.source())
        except Exception as e:  # noqa: BLE001 - reported through unavailable()
            _compile_error = f"{type(e).__name__}: {e}"
            try:  # without the bf16 kernels: fp32 and fp16 must not depend on bfloat support
                _library = torch.mps.compile_shader(_source.source(bfloat=False))
                _bf16_error = _compile_error
                _compile_error = None
            except Exception:  # noqa: BLE001 - the first error is the informative one
                pass
    if _library is None:
        raise RuntimeError(f"Metal kernels failed to compile: {_compile_error}")
    return _library


def _has_bfloat() -> bool:
    # bfloat kernels are compiled only where the Metal language version has bfloat (3.1+).
    return "rope_attention_bfloat" in dir(library())


def _unavailable() -> Optional[str]:
    if not _has_mps():
        return "no MPS device (Metal runs on Apple GPUs only)"
    try:
        library()
    except RuntimeError as e:
        return str(e)
    return None


def _supports(op: str, args: tuple) -> Optional[str]:
    return _launch.supports(op, args, has_bfloat=_has_bfloat())


def _detail() -> str:
    kinds = "fp32, fp16" + (", bf16" if _has_bfloat() else "")
    why = f"; bf16 left out: {_bf16_error}" if _bf16_error else ""
    return f"MSL via torch.mps.compile_shader ({kinds}{why})"


def _kernel(fn):
    @functools.wraps(fn)
    def run(*args):
        return fn(library(), *args)

    return run


BACKEND = Backend(
    name="metal",
    device_types=("mps",),
    kernels={
        "rope_attention": _kernel(_launch.rope_attention),
        "perceiver_attention": _kernel(_launch.perceiver_attention),
        "spatial_perceiver": _kernel(_launch.spatial_perceiver),
    },
    unavailable=_unavailable,
    supports=_supports,
    detail=_detail,
)
