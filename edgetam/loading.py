"""Build the model and load Meta's checkpoint layout (`edgetam.pt`: {"model": state_dict}), or
Hugging Face's EdgeTAM checkpoint renamed to it (hf_checkpoint.py)."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from typing import Mapping, Optional, Union

import torch

from .memory import RoPEAttention, SpatialPerceiver
from .model import EdgeTAM


class CheckpointError(RuntimeError):
    """The checkpoint is missing, unreadable, or not an EdgeTAM checkpoint."""


def _summarize(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_dict(checkpoint: Union[str, os.PathLike, Mapping]) -> Mapping[str, torch.Tensor]:
    """The model state dict in `checkpoint`, in Meta's names: Meta's `edgetam.pt` (a path, or an
    already loaded dict) or Hugging Face's EdgeTAM (a folder, a hub id, or its state dict;
    edgetam.hf_checkpoint)."""
    from . import hf_checkpoint

    if isinstance(checkpoint, Mapping):
        obj = checkpoint
        where = "the given checkpoint dict"
        if hf_checkpoint.looks_like_hf_state_dict(obj):
            obj = hf_checkpoint.hf_to_meta(obj)
    elif hf_checkpoint.is_hf_checkpoint(checkpoint):
        return hf_checkpoint.read_state_dict(checkpoint)
    else:
        path = os.fspath(checkpoint)
        where = path
        if not os.path.exists(path):
            raise CheckpointError(
                f"checkpoint not found: {path}. EdgeTAM's weights are published by Meta as "
                f"edgetam.pt (github.com/facebookresearch/EdgeTAM, checkpoints/) and by "
                f"Hugging Face as {hf_checkpoint.HUB_ID} (pass that id or its folder)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError,
                ValueError, OSError) as e:
            raise CheckpointError(
                f"cannot read checkpoint {path}: {type(e).__name__}: {str(e)[:200]} "
                f"(is the file complete? expected a torch.save'd dict with key 'model')") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{where} holds no state dict: expected {{'model': {{name: tensor}}}} "
            f"(Meta's edgetam.pt layout) or a plain state dict")
    return obj


def load_weights(model: EdgeTAM, checkpoint) -> EdgeTAM:
    """Load Meta's EdgeTAM weights into `model` strictly (every name and shape must match)."""
    sd = read_state_dict(checkpoint)
    own = model.state_dict()
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    if missing or unexpected:
        hint = ""
        if any(k.startswith("image_encoder.trunk.") and ".blocks." in k for k in unexpected) or \
                any("trunk.body" not in k for k in unexpected if k.startswith("image_encoder.trunk")):
            hint = " (a SAM 2 / Hiera checkpoint, or another backbone?)"
        if len(missing) > len(own) // 2:
            hint = hint or " (this does not look like an EdgeTAM checkpoint)"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_summarize(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_summarize(unexpected)}")
        raise CheckpointError("checkpoint does not match EdgeTAM" + hint + "; " + "; ".join(parts))
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
           if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(
            f"checkpoint shapes do not match EdgeTAM at image_size={model.image_size}: "
            f"{len(bad)} tensors, e.g. {'; '.join(bad[:3])}")
    model.load_state_dict(sd, strict=True)
    return model


def load(checkpoint: Optional[Union[str, os.PathLike, Mapping]] = None, image_size: int = 1024,
         device: Union[str, torch.device] = "cpu", backend: str = "auto",
         fuse: bool = False, compute_dtype=None) -> EdgeTAM:
    """Build EdgeTAM for `image_size` (1024 is the trained size; 512 is faster) in eval mode.

    checkpoint: path to Meta's `edgetam.pt` (or a state dict); None gives random weights, with
    a warning (useful for timings and tests only). backend: the edgetam_kernels backend for the
    perceiver and memory attention. fuse: fold BatchNorms into convs for faster inference
    (`EdgeTAM.fuse_`; the result no longer has Meta's state-dict layout).
    compute_dtype: precision of the perceiver's and memory attention's products: None (the
    model's fp32, default), "auto", "fp32", "bf16" or "fp16" (or torch dtypes), resolved for
    `device` by edgetam_kernels' precision policy ("auto": bf16 only where the hardware runs
    it fast; a reduced dtype it cannot run fast becomes fp32 with one warning). A later
    `edgetam_kernels.patch(model)` without a compute_dtype keeps it.
    """
    from edgetam_kernels import precision

    compute_dtype = precision.resolve(compute_dtype, device)
    model = EdgeTAM(image_size=image_size)
    if checkpoint is None:
        warnings.warn("edgetam.load(): no checkpoint given, the weights are RANDOM: masks are "
                      "meaningless (use it for timings and tests)", stacklevel=2)
    else:
        load_weights(model, checkpoint)
    model.set_backend(backend)
    for m in model.modules():  # the modules that run edgetam_kernels' ops read it per call
        if isinstance(m, (RoPEAttention, SpatialPerceiver)):
            m.compute_dtype = compute_dtype
    model = model.to(device).eval()
    return model.fuse_() if fuse else model
