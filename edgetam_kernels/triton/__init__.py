"""Triton backend: kernels for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1).

Kernels (each a launcher with exactly the reference function's signature):
- rope_attention:       rope_attention.py (flash attention, RoPE on load, key splits)
- perceiver_attention,
  spatial_perceiver:    perceiver.py (fused LN + projections + attention + FF)

fp32 matmuls default to exact IEEE products; EDGETAM_TRITON_FP32_PRECISION=tf32 (or
`edgetam_kernels.triton.set_fp32_precision("tf32")`) trades accuracy for tensor-core speed.
"""

from __future__ import annotations

import os

import torch

from .._registry import Backend

try:
    import triton  # noqa: F401

    _IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised only where triton is absent
    _IMPORT_ERROR = "triton is not installed"

KERNELS = {}
if _IMPORT_ERROR is None:
    from ._common import FP32_PRECISION_ENV, fp32_precision, interpreting, set_fp32_precision
    from .rope_attention import rope_attention as _rope_attention

    KERNELS["rope_attention"] = _rope_attention
    try:
        from .perceiver import perceiver_attention as _perceiver_attention
        from .perceiver import spatial_perceiver as _spatial_perceiver

        KERNELS["perceiver_attention"] = _perceiver_attention
        KERNELS["spatial_perceiver"] = _spatial_perceiver
    except ImportError:
        pass
else:
    def interpreting() -> bool:
        return os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256  # register/shared-memory budget of one tile on a GPU


def _unavailable():
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device and TRITON_INTERPRET is not 1"
    return None


def _device_types():
    return ("cuda", "cpu") if interpreting() else ("cuda",)


def _dtype_reason(name, t):
    if t is not None and t.dtype not in SUPPORTED_DTYPES:
        return f"{name} is {t.dtype}; Triton kernels take float32, float16 or bfloat16"
    return None


def _device_reason(tensors):
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cpu" and not interpreting():
            return "CPU tensors need TRITON_INTERPRET=1"
        if t.device.type not in ("cpu", "cuda"):
            return f"tensors on {t.device.type}"
    return None


def _supports(op, args):
    if op == "rope_attention":
        q, k, v = args[0], args[1], args[2]
        compute_dtype = args[9]
        reason = _dtype_reason("q", q) or _device_reason((q, k, v))
        if reason:
            return reason
        if compute_dtype is not None and compute_dtype not in SUPPORTED_DTYPES:
            return f"compute_dtype {compute_dtype} is not float32, float16 or bfloat16"
        if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
            return f"head dims above {MAX_HEAD_DIM} (q {q.shape[-1]}, v {v.shape[-1]})"
        if q.shape[0] * q.shape[1] > 65535:
            return "batch x heads above 65535 (one grid axis)"
        return None
    if op in ("perceiver_attention", "spatial_perceiver"):
        from .perceiver import supports as perceiver_supports

        first = args[0]  # the op's checks gave every tensor its dtype and device
        reason = _dtype_reason(op + " inputs", first) or _device_reason((first,))
        if reason is None and first.shape[0] > 65535:
            reason = "batch above 65535 (one grid axis)"
        return reason or perceiver_supports(op, args)
    return f"no {op} kernel"


def _detail():
    if interpreting():
        return f"Triton {triton.__version__} interpreter (TRITON_INTERPRET=1), CPU tensors"
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"Triton {triton.__version__} on {name}; fp32 dot precision {fp32_precision()}"


class _TritonBackend(Backend):
    """device_types follows TRITON_INTERPRET at call time (tests set it before importing)."""

    @property
    def device_types(self):  # type: ignore[override]
        return _device_types()

    @device_types.setter
    def device_types(self, value):
        pass


BACKEND = _TritonBackend(
    name="triton",
    device_types=("cuda",),
    kernels=KERNELS,
    unavailable=_unavailable,
    supports=_supports,
    detail=_detail,
)

__all__ = ["BACKEND", "KERNELS", "set_fp32_precision", "fp32_precision", "FP32_PRECISION_ENV"]
