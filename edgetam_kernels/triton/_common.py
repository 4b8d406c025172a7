"""Shared pieces of the Triton backend: interpreter detection, fp32 dot precision, dtype maps."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._tuning import bucket

# Environment variable choosing how tl.dot treats fp32 operands on a GPU:
#   "ieee"   exact fp32 products (default: results match the fp32 reference to ~1e-6)
#   "tf32"   tensor-core TF32 (10-bit mantissa inputs, ~1e-3 relative error, several x faster)
#   "tf32x3" three TF32 products, close to fp32 accuracy at about a third of TF32's speed
# fp16 / bf16 operands always use tensor cores with fp32 accumulation; this setting is ignored.
FP32_PRECISION_ENV = "EDGETAM_TRITON_FP32_PRECISION"
_PRECISIONS = ("ieee", "tf32", "tf32x3")
_fp32_precision = None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fp32_precision() -> str:
    if _fp32_precision is not None:
        return _fp32_precision
    env = os.environ.get(FP32_PRECISION_ENV, "ieee").strip().lower() or "ieee"
    if env not in _PRECISIONS:
        raise ValueError(f"{FP32_PRECISION_ENV}={env!r} is not one of {_PRECISIONS}")
    return env


def set_fp32_precision(mode) -> None:
    """Override EDGETAM_TRITON_FP32_PRECISION for this process ("ieee", "tf32", "tf32x3", or
    None to go back to the environment variable)."""
    global _fp32_precision
    if mode is not None and mode not in _PRECISIONS:
        raise ValueError(f"fp32 precision must be one of {_PRECISIONS} or None, got {mode!r}")
    _fp32_precision = mode


TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# Host-side integer helpers in plain Python: triton.cdiv / triton.next_power_of_2 are
# constexpr functions whose Python calls cost microseconds each, and a perceiver call made 34.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2(n: int, lo: int = 16) -> int:
    """Next power of two >= n, at least `lo` (tl.dot needs every dim >= 16)."""
    return max(lo, bucket(n))


def num_sms(device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def dot(a, b, acc, PREC: tl.constexpr, INTERP: tl.constexpr):
    """acc + a @ b with fp32 accumulation.

    In the interpreter every operand is widened to fp32 first: it multiplies bf16 bit patterns
    as integers (triton-lang/triton#11584) and fp32 products of fp16/bf16 values are exact, so
    this is what the tensor cores compute too. fp32 operands honour PREC (ieee / tf32 / tf32x3).
    """
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=PREC)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def cast(x, DT: tl.constexpr, INTERP: tl.constexpr):
    """x.to(DT) with round-to-nearest-even, also in the interpreter: its fp32 -> bf16
    conversion truncates, which biases every rounding toward zero (a GPU rounds to nearest)."""
    if INTERP and DT == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
    else:
        return x.to(DT)
