"""Out variants of the edgetam:: ops: `edgetam::<op>.out(<the functional op's arguments>, *,
Tensor(a!) out) -> Tensor(a!)`.

ExecuTorch's to_executorch() replaces every functional op by its `.out` overload (memory
planning hands each op a preallocated output) and fails with "Missing out variants" when the
overload is missing or its arguments differ from the functional schema in any type. The
argument list is therefore copied from the functional op's own schema (torch.library.custom_op
writes `SymInt` for int and `SymInt[]` for List[int]), not written out by hand.

CompositeExplicitAutograd: compute through the functional op (so the backend the call names,
or "auto", runs it) and copy into `out`, resized to the result's shape as torch's out= ops do.
Meta: the functional op's shape rule, `out` resized. No autograd: out= ops are not
differentiable.
"""

from __future__ import annotations

import torch

OPS = ("rope_attention", "perceiver_attention", "spatial_perceiver")

_LIB = torch.library.Library("edgetam", "FRAGMENT")  # lives as long as the module


def functional_arguments(name: str) -> str:
    """The argument list of `edgetam::<name>` exactly as its schema prints it."""
    schema = str(getattr(torch.ops.edgetam, name).default._schema)
    return schema[schema.index("(") + 1 : schema.rindex(") -> ")]


def _check_out(name: str, out, result: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"edgetam::{name}.out: out must be a torch.Tensor, got "
                        f"{type(out).__name__}")
    if out.dtype != result.dtype:
        raise TypeError(f"edgetam::{name}.out: out has dtype {out.dtype} but the result has "
                        f"{result.dtype}")
    if out.device != result.device:
        raise ValueError(f"edgetam::{name}.out: out is on device {out.device} but the result "
                         f"is on {result.device}")


def _write(name: str, out: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    _check_out(name, out, result)
    if out.shape != result.shape:
        out.resize_(result.shape)
    return out.copy_(result)


def _compute_kernel(name: str):
    functional = getattr(torch.ops.edgetam, name).default

    def kernel(*args, out):
        return _write(name, out, functional(*args))

    return kernel


def _meta_kernel(name: str):
    functional = getattr(torch.ops.edgetam, name).default

    def kernel(*args, out):
        result = functional(*args)  # the op's fake rule on meta tensors: shape and dtype
        _check_out(name, out, result)
        if out.shape != result.shape:
            out.resize_(result.shape)
        return out

    return kernel


def _register() -> None:
    for name in OPS:
        _LIB.define(f"{name}.out({functional_arguments(name)}, *, Tensor(a!) out) -> Tensor(a!)")
        _LIB.impl(f"{name}.out", _compute_kernel(name), "CompositeExplicitAutograd")
        _LIB.impl(f"{name}.out", _meta_kernel(name), "Meta")


_register()
