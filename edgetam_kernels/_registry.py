"""Backends and the choice between them.

A backend is a set of kernels, one per op, with the same Python signature as the op's reference
function (`edgetam_kernels.reference`), plus two predicates in the style of ggml:
`unavailable()` (why it cannot run here at all, or None) and `supports(op, args)` (why it cannot
run these particular inputs, or None; it sees arguments that passed the op's checks, so one
dtype and one device). Backend modules are imported lazily, so a missing
compiler, Triton or Metal never breaks `import edgetam_kernels`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from . import reference

ENV_VAR = "EDGETAM_KERNELS_BACKEND"
NAMES = ("reference", "cpu", "triton", "metal")
# Preferred backend per device type when backend="auto"; the reference is always the last resort.
# Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) is a correctness tool far slower than the
# reference, so "auto" never picks it; backend="triton" runs it explicitly.
AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("triton",), "mps": ("metal",)}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run the given call."""


@dataclass
class Backend:
    name: str
    device_types: tuple
    kernels: Dict[str, Callable] = field(default_factory=dict)
    unavailable: Callable[[], Optional[str]] = lambda: None
    supports: Callable[[str, tuple], Optional[str]] = lambda op, args: None
    detail: Callable[[], str] = lambda: ""


REFERENCE = Backend(
    name="reference",
    device_types=("any",),
    kernels={
        "rope_attention": reference.rope_attention,
        "perceiver_attention": reference.perceiver_attention,
        "spatial_perceiver": reference.spatial_perceiver,
    },
    detail=lambda: "pure PyTorch, any device",
)

_MODULES = {"cpu": ".cpu", "triton": ".triton", "metal": ".metal"}
_loaded: Dict[str, Backend] = {"reference": REFERENCE}
_load_errors: Dict[str, str] = {}


def get(name: str) -> Optional[Backend]:
    """The Backend object for `name`, importing its module on first use (None if that fails)."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + NAMES}")
    if name not in _loaded and name not in _load_errors:
        try:
            mod = importlib.import_module(_MODULES[name], __package__)
            _loaded[name] = mod.BACKEND
        except Exception as e:  # noqa: BLE001 - any import failure means "not usable", with why
            _load_errors[name] = f"{type(e).__name__}: {e}"
    return _loaded.get(name)


def why_unavailable(name: str) -> Optional[str]:
    b = get(name)
    if b is None:
        return f"failed to load ({_load_errors[name]})"
    return b.unavailable()


def backends() -> Dict[str, dict]:
    """Every backend with whether it is usable here, and why not or what it runs."""
    out = {}
    for name in NAMES:
        reason = why_unavailable(name)
        b = _loaded.get(name)
        out[name] = {
            "available": reason is None,
            "reason": reason,
            "detail": b.detail() if (b is not None and reason is None) else "",
            "ops": sorted(b.kernels) if b is not None else [],
        }
    return out


def requested(backend: str) -> str:
    """Apply EDGETAM_KERNELS_BACKEND to an "auto" request."""
    if backend == "auto":
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced and forced != "auto":
            if forced not in NAMES:
                raise ValueError(f"{ENV_VAR}={forced!r} is not one of {('auto',) + NAMES}")
            return forced
    elif backend not in NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {('auto',) + NAMES}")
    return backend


def _can_run(name: str, op: str, device_type: str, args: tuple) -> Optional[str]:
    reason = why_unavailable(name)
    if reason is not None:
        return reason
    b = _loaded[name]
    if op not in b.kernels:
        return f"no {op} kernel"
    if "any" not in b.device_types and device_type not in b.device_types:
        return f"runs on {'/'.join(b.device_types)} tensors, got {device_type}"
    return b.supports(op, args)


def resolve(op: str, backend: str, device_type: str, args: tuple) -> Callable:
    """The kernel that runs `op` on `args` for a (possibly "auto") backend request."""
    backend = requested(backend)
    if backend == "reference":
        return REFERENCE.kernels[op]
    if backend == "auto":
        for name in AUTO_ORDER.get(device_type, ()):
            if _can_run(name, op, device_type, args) is None:
                return _loaded[name].kernels[op]
        return REFERENCE.kernels[op]
    reason = _can_run(backend, op, device_type, args)
    if reason is not None:
        raise BackendUnavailable(f"backend {backend!r} cannot run {op} here: {reason}")
    return _loaded[backend].kernels[op]
