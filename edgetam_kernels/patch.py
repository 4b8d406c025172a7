"""patch() / unpatch(): run existing EdgeTAM models on edgetam_kernels' ops.

Live instances are patched by giving the module an instance-level `forward` (the class is left
alone, so `isinstance` checks in the host model keep working); `unpatch` deletes it again, which
restores the original behaviour exactly. Patching twice only updates the options.

The per-model knowledge (which classes, where their weights live, their calling conventions)
sits in small adapters: `_adapters_sam2.py` (Meta's `sam2` package / edgetam-dimos) and
`_adapters_hf.py` (Hugging Face transformers). Each adapter maps a class name to a function
building the replacement forward; the computation those forwards share (fused projections,
RoPE attention, LayerNorm, MLP, perceiver layers) is written once in `_adapters_common.py`.
"""

from __future__ import annotations

import types
from typing import Callable, Dict, Optional

import torch
from torch import nn

_STATE = "_edgetam_kernels_patch"
_MISSING = object()

# "module.path.ClassName" -> factory(module, options) -> forward function (unbound)
ADAPTERS: Dict[str, Callable] = {}


def register_adapter(qualified_class_name: str):
    def deco(factory):
        ADAPTERS[qualified_class_name] = factory
        return factory

    return deco


def _class_key(m: nn.Module) -> str:
    cls = type(m)
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_adapters() -> None:
    from . import _adapters_sam2  # noqa: F401
    from . import _adapters_hf  # noqa: F401
    from . import _adapters_edgetam  # noqa: F401


def is_patched(m: nn.Module) -> bool:
    return _STATE in m.__dict__


def _patch_module(m: nn.Module, options: dict) -> bool:
    factory = ADAPTERS.get(_class_key(m))
    if factory is None:
        return False
    if is_patched(m):
        m.__dict__[_STATE]["options"] = dict(options)
        return True
    state = {"options": dict(options), "forward": m.__dict__.get("forward", _MISSING)}
    original = m.forward  # the bound forward in effect now, used for unsupported configurations
    new_forward = factory(m, state, original)
    object.__setattr__(m, _STATE, state)
    object.__setattr__(m, "forward", types.MethodType(new_forward, m))
    return True


def patch(obj, backend: str = "auto", compute_dtype: Optional[torch.dtype] = None):
    """Make `obj` (a whole model, a predictor, or a single module) use the fused ops.

    Supported: Meta's `sam2` EdgeTAM / SAM 2 / SAM 2.1 models and predictors (their
    PerceiverResampler, PerceiverEncoderLayer, PerceiverAttention, MemoryAttentionLayer,
    RoPEAttention, RoPEAttentionv2 and mask-decoder Attention); Hugging Face's EdgeTamVideoModel
    (EdgeTamVideoPerceiverResampler, EdgeTamVideoPerceiverEncoderLayer,
    EdgeTamVideoMemoryAttention, EdgeTamVideoMemoryAttentionLayer, EdgeTamVideoRoPESelfAttention,
    EdgeTamVideoRoPECrossAttention). Any of those modules can also be patched alone.
    Returns `obj`. Patching again only updates the options; `unpatch` restores the original.

    backend: "auto" | "reference" | "cpu" | "triton" | "metal" for every patched op.
    compute_dtype: optional precision of memory attention's matmuls (projections, attention,
    MLP), e.g. torch.bfloat16 with an fp32 model: LayerNorms, the residual stream and the
    module's output stay fp32. None keeps the input dtype. Accuracy: docs/patch.md.
    """
    from ._registry import requested

    requested(backend)
    if not isinstance(obj, nn.Module):
        raise TypeError(
            f"patch() takes an nn.Module (a model, a predictor or one of their modules), "
            f"got {type(obj).__name__}"
        )
    _load_adapters()
    options = {"backend": backend, "compute_dtype": compute_dtype}
    count = sum(_patch_module(m, options) for m in obj.modules())
    if count == 0:
        found = sorted({_class_key(m) for m in obj.modules()})[:12]
        raise TypeError(
            f"patch() found nothing to patch in {type(obj).__name__}: none of its modules is an "
            f"EdgeTAM perceiver or RoPE attention this library knows. Modules found: {found}"
        )
    return obj


def unpatch(obj):
    """Undo `patch` on `obj` and all its submodules (a no-op for modules never patched)."""
    if not isinstance(obj, nn.Module):
        raise TypeError(f"unpatch() takes an nn.Module, got {type(obj).__name__}")
    for m in obj.modules():
        state = m.__dict__.pop(_STATE, None)
        if state is None:
            continue
        if state["forward"] is _MISSING:
            del m.__dict__["forward"]
        else:
            object.__setattr__(m, "forward", state["forward"])
    return obj


def perceiver_weights(module: nn.Module) -> list:
    """The flat weight list `edgetam_kernels.spatial_perceiver` takes (reference.
    PERCEIVER_LAYER_PARAMS order, k/v projections stacked) from Meta's PerceiverResampler or
    HF's EdgeTamVideoPerceiverResampler."""
    _load_adapters()
    from . import _adapters_hf, _adapters_sam2

    key = _class_key(module)
    if key.startswith("sam2."):
        return _adapters_sam2.perceiver_weights(module)
    if key.startswith("transformers."):
        return _adapters_hf.perceiver_weights(module)
    raise TypeError(f"perceiver_weights() does not know {key}")


def patched_modules(obj: nn.Module):
    """Names of the submodules of `obj` that are patched now."""
    return [name for name, m in obj.named_modules() if is_patched(m)]
