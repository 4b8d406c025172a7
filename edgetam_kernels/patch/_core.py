"""The patch machinery: the adapter registry, patch() / unpatch() over a module tree.

Live instances are patched by giving the module an instance-level `forward` (the class is left
alone, so `isinstance` checks in the host model keep working); `unpatch` deletes it again, which
restores the original behaviour exactly. Patching twice only updates the options. A few adapters
replace another method of a whole model instead of `forward` (Meta's `forward_image`, HF's
`get_image_features`: the image features' FPN fold, `fpn.py`), the same way.

This module sits at the bottom of the package and imports none of the adapters. The per-model
knowledge (which classes, where their weights live, their calling conventions) sits in one module
per host family beside it, each registering its adapters here with `register_adapter`: `sam2.py`
(Meta's `sam2` package / edgetam-dimos), `hf.py` (Hugging Face transformers), `repvit.py` (the
RepViT image encoder), `fpn.py` (the FPN neck), `memory_encoder.py`. The computation those
adapters share (fused projections, RoPE attention, LayerNorm, MLP, perceiver layers) is
`edgetam_kernels.layers`. Other models register their own classes the same way (edgetam/ does,
in edgetam/kernel_adapters.py).
"""

from __future__ import annotations

import types
from typing import Callable, Dict, Optional

import torch
from torch import nn

_STATE = "_edgetam_kernels_patch"


class _Missing:
    """"No instance forward before patching"; one object even through copy.deepcopy and
    pickling, so a copy of a patched model can be unpatched too."""

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __reduce__(self):  # unpickles as the module's one instance
        return "_MISSING"

    def __repr__(self):
        return "<no instance forward>"


_MISSING = _Missing()

# "module.path.ClassName" -> factory(module, state, original) -> forward function (unbound),
# or None where the factory declines this instance (nothing it can speed up there)
ADAPTERS: Dict[str, Callable] = {}
# "module.path.ClassName" -> name of the boolean patch() option that switches the adapter on
GATES: Dict[str, str] = {}
# "module.path.ClassName" -> the method the adapter replaces, where it is not `forward`
METHODS: Dict[str, str] = {}


def register_adapter(qualified_class_name: str, option: Optional[str] = None,
                     method: str = "forward"):
    def deco(factory):
        ADAPTERS[qualified_class_name] = factory
        if option is not None:
            GATES[qualified_class_name] = option
        if method != "forward":
            METHODS[qualified_class_name] = method
        return factory

    return deco


def class_key(m: nn.Module) -> str:
    """"module.path.ClassName" of `m`'s class: the key adapters are registered under."""
    cls = type(m)
    return f"{cls.__module__}.{cls.__qualname__}"


def register_like(qualified_class_name: str, like: str) -> None:
    """Patch `qualified_class_name` with the adapter (and option gate, and method) registered
    for `like`: for a model whose class has the same attributes and forward as a known one."""
    if like not in ADAPTERS:
        raise KeyError(f"register_like: no adapter is registered for {like}")
    register_adapter(qualified_class_name, GATES.get(like), METHODS.get(like, "forward"))(
        ADAPTERS[like])


def is_patched(m: nn.Module) -> bool:
    return _STATE in m.__dict__


def has_own_forward(m: nn.Module) -> bool:
    """Whether `m` carries an instance `forward` that is not this library's patch of its class
    forward (a user's wrapper, a hook-like replacement): then its computation may differ from its
    class's, and an adapter bypassing `m` must not skip it."""
    inst = m.__dict__.get("forward")
    if inst is None:
        return False
    state = m.__dict__.get(_STATE)
    return not (isinstance(inst, _PatchedForward) and state is not None
                and state["forward"] is _MISSING)


def _patch_module(m: nn.Module, options: dict) -> bool:
    key = class_key(m)
    factory = ADAPTERS.get(key)
    if factory is None:
        return False
    if key in GATES and not options[GATES[key]]:
        _unpatch_module(m)  # switched off by this call's options (or never on)
        return False
    if is_patched(m):
        m.__dict__[_STATE]["options"] = dict(options)
        return True
    method = METHODS.get(key, "forward")
    state = {"options": dict(options), "method": method,
             "forward": m.__dict__.get(method, _MISSING)}  # what the instance had before
    if _build(m, state) is None:
        return False
    object.__setattr__(m, _STATE, state)
    object.__setattr__(m, method, _PatchedForward(m))
    return True


def _original(m: nn.Module, state: dict):
    """The method (usually `forward`) in effect before patching, bound to `m`."""
    saved = state["forward"]
    if saved is not _MISSING:
        return saved
    return types.MethodType(getattr(type(m), state.get("method", "forward")), m)


class _Built:
    """The adapter's forward for one module. Its closures hold the state and original forward
    of the module it was built for, so copies and pickles of a patched module carry an empty
    holder and build their own on first call (instead of running, or falling back to, the
    original module's)."""

    __slots__ = ("impl",)

    def __init__(self, impl=None):
        self.impl = impl

    def __deepcopy__(self, memo):
        return _Built()

    def __reduce__(self):
        return (_Built, ())


def _build(m: nn.Module, state: dict):
    """Runs the adapter's factory for `m`; None where it declines (nothing to speed up). A
    module unpickled in a fresh process finds the adapters registered: unpickling imported this
    package (whose __init__ imports every host module) and the module's own (edgetam/'s
    registrations come with importing that package)."""
    impl = ADAPTERS[class_key(m)](m, state, _original(m, state))
    state["built"] = _Built(impl)
    return impl


class _PatchedForward:
    """The instance `forward` (or other patched method) of a patched module. Unlike a bound
    method it survives copy.deepcopy and pickling as "patched forward of this module"."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module

    def __reduce__(self):
        return (_PatchedForward, (self.module,))

    def __call__(self, *args, **kwargs):
        m = self.module
        state = m.__dict__[_STATE]
        impl = state["built"].impl
        if impl is None:
            impl = _build(m, state)
            if impl is None:  # not for a faithful copy; stay correct regardless
                return _original(m, state)(*args, **kwargs)
        return impl(m, *args, **kwargs)


def _unpatch_module(m: nn.Module) -> None:
    state = m.__dict__.pop(_STATE, None)
    if state is None:
        return
    method = state.get("method", "forward")
    if state["forward"] is _MISSING:
        del m.__dict__[method]
    else:
        object.__setattr__(m, method, state["forward"])


def patch(obj, backend: str = "auto", compute_dtype=None,
          fuse_encoder: bool = True, fuse_memory_encoder: bool = True):
    """Make `obj` (a whole model, a predictor, or a single module) use the fused ops.

    Supported: Meta's `sam2` EdgeTAM / SAM 2 / SAM 2.1 models and predictors (their
    PerceiverResampler, PerceiverEncoderLayer, PerceiverAttention, MemoryAttentionLayer,
    RoPEAttention, RoPEAttentionv2 and mask-decoder Attention); Hugging Face's EdgeTamVideoModel
    (EdgeTamVideoPerceiverResampler, EdgeTamVideoPerceiverEncoderLayer,
    EdgeTamVideoMemoryAttention, EdgeTamVideoMemoryAttentionLayer, EdgeTamVideoRoPESelfAttention,
    EdgeTamVideoRoPECrossAttention). Any of those modules can also be patched alone.
    Returns `obj`. Patching again only updates the options; `unpatch` restores the original.
    `patched_modules(obj)` lists what was patched.

    backend: "auto" | "reference" | "cpu" | "triton" | "metal" for every patched op.
    compute_dtype: optional precision of memory attention's matmuls (projections, attention,
    MLP), e.g. torch.bfloat16 with an fp32 model: LayerNorms, the residual stream and the
    module's output stay fp32. None (default) | "auto" | torch.float32 | torch.bfloat16 |
    torch.float16 (or "fp32" / "bf16" / "fp16"), resolved once here by the precision policy
    (`edgetam_kernels.precision`, docs/patch.md) for the device of obj's parameters: "auto"
    picks the fastest dtype within the ops' accuracy budget (CPU: bf16 only with bf16
    arithmetic and a fast bf16 GEMM, else fp32); a reduced dtype this hardware cannot run fast
    becomes fp32, with one warning per process. Patch again after moving the model.
    Whole perceivers (Meta's PerceiverResampler, HF's EdgeTamVideoPerceiverResampler,
    edgetam's SpatialPerceiver) pass it to the spatial_perceiver op: there it covers only the
    global latents' cross-attention products (q k^T, p v), and a backend without a faster
    path for it may compute more precisely; perceiver layers or attentions patched alone
    ignore it. None keeps the input dtype.
    Accuracy: docs/patch.md.
    fuse_encoder: run the RepViT image encoder (timm's RepViT in Meta's and HF's models, and
    our own edgetam/ model when not fused already) re-parameterised: BatchNorms folded into
    their convs and each token mixer's 3x3 + 1x1 + identity branches merged into one conv,
    channels-last on CPU, where the MLPs' GELU and residual add also become oneDNN post-ops.
    Around the FPN neck: sine position encodings served from per-shape tables, and the mask
    decoder's conv_s0 / conv_s1 folded into the lateral 1x1 convs of the two high-resolution
    levels (Meta's `forward_image`, HF's `get_image_features`). The fused weights are copies kept beside the module's own (its
    parameters and state dict are untouched), recomputed when those change; training mode or
    gradients flowing into the weights run the original forward. False leaves the encoder
    (and switches off an earlier fuse_encoder=True).
    fuse_memory_encoder: run the memory encoder (Meta's MemoryEncoder, HF's
    EdgeTamVideoMemoryEncoder, ours; their mask downsampler, fuser and ConvNeXt blocks also when
    patched alone) channels-last on CPU: one-pass LayerNorms, 1x1 convs as row GEMMs, the
    blocks' LayerNorm affine and layer scale folded into their Linears (copies, recomputed when
    the weights change). CPU float32 without gradients, autocast or hooks only; elsewhere the
    original runs. False leaves it (and switches off an earlier True).
    """
    from .._registry import requested

    requested(backend)
    if not isinstance(obj, nn.Module):
        raise TypeError(
            f"patch() takes an nn.Module (a model, a predictor or one of their modules), "
            f"got {type(obj).__name__}"
        )
    from .. import precision

    compute_dtype = precision.resolve(compute_dtype, precision.device_of(obj))
    options = {"backend": backend, "compute_dtype": compute_dtype,
               "fuse_encoder": bool(fuse_encoder),
               "fuse_memory_encoder": bool(fuse_memory_encoder)}
    count = sum(_patch_module(m, options) for m in obj.modules())
    if count == 0:
        found = sorted({class_key(m) for m in obj.modules()})[:12]
        raise TypeError(
            f"patch() found nothing to patch in {type(obj).__name__}: none of its modules is an "
            f"EdgeTAM perceiver, RoPE attention, RepViT encoder or memory encoder this library "
            f"knows (or fuse_encoder=False left the encoder, fuse_memory_encoder=False the "
            f"memory encoder). Modules found: {found}"
        )
    return obj


def unpatch(obj):
    """Undo `patch` on `obj` and all its submodules (a no-op for modules never patched)."""
    if not isinstance(obj, nn.Module):
        raise TypeError(f"unpatch() takes an nn.Module, got {type(obj).__name__}")
    for m in obj.modules():
        _unpatch_module(m)
    return obj


def patched_modules(obj: nn.Module):
    """Names of the submodules of `obj` that are patched now."""
    return [name for name, m in obj.named_modules() if is_patched(m)]
