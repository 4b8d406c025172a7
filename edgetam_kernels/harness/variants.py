"""Benchmark variants: one grammar and one meaning for every bench script, the e2e benchmark
tests and the plots.

    unpatched                         the host model as its authors wrote it
    patched:<backend>[:<option>...]   patch(model, backend=<backend>, ...) with patch's defaults
                                      changed by the options:
        no-fuse            neither encoder fused: fuse_encoder=False, fuse_memory_encoder=False
                           (the perceiver and memory attention only)
        no-image-encoder   fuse_encoder=False
        no-memory-encoder  fuse_memory_encoder=False
        fp32 | bf16 | fp16 compute_dtype=torch.float32 / bfloat16 / float16
        auto               compute_dtype="auto" (the precision policy picks per machine)
      no precision option: compute_dtype=None (the model's own dtype).

Options may come in any order; each at most once, and one precision at most. The canonical
text (`str(variant)`) lists them in the order above, so equal variants print alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch

PRECISIONS: Dict[str, Union[torch.dtype, str]] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}
_FUSION = ("no-fuse", "no-image-encoder", "no-memory-encoder")


@dataclass(frozen=True)
class Variant:
    backend: Optional[str] = None  # None: unpatched
    precision: Optional[str] = None  # a key of PRECISIONS, or None: the model's dtype
    fuse_encoder: bool = True
    fuse_memory_encoder: bool = True

    @classmethod
    def parse(cls, text: str) -> "Variant":
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"variant: expected 'unpatched' or 'patched:<backend>[:<option>...]',"
                             f" got {text!r}")
        parts = text.strip().split(":")
        if parts == ["unpatched"]:
            return cls()
        if parts[0] != "patched" or len(parts) < 2 or not parts[1]:
            raise ValueError(f"variant {text!r}: expected 'unpatched' or "
                             f"'patched:<backend>[:<option>...]'")
        backend, options = parts[1], parts[2:]
        from .._registry import NAMES

        if backend not in ("auto",) + tuple(NAMES):
            raise ValueError(f"variant {text!r}: unknown backend {backend!r} (one of auto, "
                             f"{', '.join(NAMES)})")
        seen = set()
        precision, fuse_encoder, fuse_memory_encoder = None, True, True
        for opt in options:
            if opt in seen:
                raise ValueError(f"variant {text!r}: option {opt!r} given twice")
            seen.add(opt)
            if opt in PRECISIONS:
                if precision is not None:
                    raise ValueError(f"variant {text!r}: two precisions, {precision!r} and "
                                     f"{opt!r}")
                precision = opt
            elif opt in ("no-fuse", "no-image-encoder"):
                fuse_encoder = False
                fuse_memory_encoder = fuse_memory_encoder and opt != "no-fuse"
            elif opt == "no-memory-encoder":
                fuse_memory_encoder = False
            else:
                raise ValueError(f"variant {text!r}: unknown option {opt!r} (one of "
                                 f"{', '.join(_FUSION + tuple(PRECISIONS))})")
        return cls(backend, precision, fuse_encoder, fuse_memory_encoder)

    @property
    def patched(self) -> bool:
        return self.backend is not None

    @property
    def compute_dtype(self) -> Union[torch.dtype, str, None]:
        return PRECISIONS[self.precision] if self.precision else None

    def patch_kwargs(self) -> Dict[str, object]:
        """The keyword arguments of edgetam_kernels.patch for this variant (patched only)."""
        if not self.patched:
            raise ValueError("the unpatched variant has no patch() arguments")
        return {"backend": self.backend, "compute_dtype": self.compute_dtype,
                "fuse_encoder": self.fuse_encoder,
                "fuse_memory_encoder": self.fuse_memory_encoder}

    def apply(self, model):
        """Unpatch `model`, then patch it as this variant says; returns it. One model serves
        every variant in turn (the same weights for all)."""
        from .. import patch, unpatch  # the functions (the package binds them over the module)

        unpatch(model)
        if self.precision == "auto" and not auto_supported():
            raise ValueError(f"variant {self}: compute_dtype='auto' needs the precision policy "
                             f"(edgetam_kernels.precision), which this build does not have")
        if self.patched:
            patch(model, **self.patch_kwargs())
        return model

    def resolved_dtype_name(self, device="cpu") -> Optional[str]:
        """The compute dtype the precision policy (edgetam_kernels.precision, where it exists)
        makes of this variant's request on `device`, e.g. "float32" for "auto" or for bf16 on
        a CPU without fast bf16; None when unpatched, or without a policy to ask."""
        if not self.patched:
            return None
        try:
            from .. import precision
        except ImportError:
            return None
        dtype = precision.resolve(self.compute_dtype, device)
        return None if dtype is None else str(dtype).replace("torch.", "")

    def without_encoders(self) -> "Variant":
        """The same variant with the encoder options at their defaults: what it means for a
        module that has no image or memory encoder (memory attention alone)."""
        return Variant(self.backend, self.precision)

    def __str__(self) -> str:
        if not self.patched:
            return "unpatched"
        opts = []
        if not self.fuse_encoder and not self.fuse_memory_encoder:
            opts.append("no-fuse")
        elif not self.fuse_encoder:
            opts.append("no-image-encoder")
        elif not self.fuse_memory_encoder:
            opts.append("no-memory-encoder")
        if self.precision:
            opts.append(self.precision)
        return ":".join(["patched", self.backend] + opts)

    def describe(self) -> str:
        """What runs, in words (the legend of tables and plots)."""
        if not self.patched:
            return "the host model as written"
        kw = self.patch_kwargs()
        args = ", ".join(f"{k}={v!r}" if not isinstance(v, torch.dtype) else f"{k}={v}"
                         for k, v in kw.items())
        return f"patch(model, {args})"


def auto_supported() -> bool:
    """Whether patch() takes compute_dtype="auto" here (the precision policy's module)."""
    import importlib.util

    return importlib.util.find_spec("edgetam_kernels.precision") is not None


def parse_variants(text: str) -> List[Variant]:
    """A comma-separated list, e.g. "unpatched,patched:cpu,patched:cpu:bf16"; duplicates
    (after canonicalisation) are an error."""
    variants = [Variant.parse(t) for t in text.split(",") if t.strip()]
    names = [str(v) for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variants: {', '.join(dup)} given more than once")
    if not variants:
        raise ValueError("variants: empty list")
    return variants
