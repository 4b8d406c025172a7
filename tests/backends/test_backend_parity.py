"""Every backend x case x dtype against the float64 reference, from the one case table.

The cases are edgetam_kernels.testing.cases' PARITY_* selections (small, odd shapes that every
backend must handle); each backend's own file adds its special cases (ISA paths, tile configs,
threads). A backend that cannot run a combination here is skipped with the registry's reason
(the `BackendUnavailable` message of an explicit backend request: not built, no such device,
dtype not supported), never silently passed.
"""

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import reference
from edgetam_kernels.testing import PERCEIVER_BF16_COMPUTE, TOLERANCE, assert_close, to64
from edgetam_kernels.testing.cases import (
    PARITY_PERCEIVER_ATTENTION, PARITY_ROPE, PARITY_SPATIAL_PERCEIVER, PERCEIVER_ATTENTION_CASES,
    ROPE_CASES, SPATIAL_PERCEIVER_CASES, perceiver_attention_inputs, rope_attention_inputs,
    spatial_perceiver_inputs,
)

BACKENDS = ("cpu", "triton", "metal")
# the device each backend's tensors live on (Triton runs in its interpreter without a GPU)
DEVICE = {"cpu": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu",
          "metal": "mps"}
# input dtype, compute dtype
DTYPES = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "fp32_compute_bf16": (torch.float32, torch.bfloat16),
}


def _run(backend, call):
    try:
        return call()
    except ek.BackendUnavailable as e:
        pytest.skip(str(e))


def _device(backend):
    device = DEVICE[backend]
    if device == "mps" and not torch.backends.mps.is_available():
        reason = ek.backends()[backend]["reason"] or "no MPS device"
        pytest.skip(f"backend {backend!r}: {reason}")
    return device


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("case", PARITY_ROPE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_attention(backend, case, dt):
    dtype, compute = DTYPES[dt]
    q, k, v, kw = rope_attention_inputs(ROPE_CASES[case], dtype, _device(backend))
    out = _run(backend, lambda: ek.rope_attention(q, k, v, **kw, compute_dtype=compute,
                                                  backend=backend))
    ref = reference.rope_attention(*to64((q, k, v)), **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, compute or dtype, f"{backend} {case} {dt}")


@pytest.mark.parametrize("dt", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", PARITY_PERCEIVER_ATTENTION)
@pytest.mark.parametrize("backend", BACKENDS)
def test_perceiver_attention(backend, case, dt):
    dtype, _ = DTYPES[dt]
    args, heads = perceiver_attention_inputs(PERCEIVER_ATTENTION_CASES[case], dtype,
                                             _device(backend))
    out = _run(backend, lambda: ek.perceiver_attention(*args, heads=heads, backend=backend))
    ref = reference.perceiver_attention(*to64(args), heads=heads)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype, f"{backend} {case} {dt}")


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("case", PARITY_SPATIAL_PERCEIVER)
@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_perceiver(backend, case, dt):
    dtype, compute = DTYPES[dt]
    args, kw = spatial_perceiver_inputs(SPATIAL_PERCEIVER_CASES[case], dtype, _device(backend))
    out = _run(backend, lambda: ek.spatial_perceiver(*args, **kw, compute_dtype=compute,
                                                     backend=backend))
    ref = reference.spatial_perceiver(*to64(args), kw["depth"], kw["heads"], kw["use_self_attn"],
                                      1e-5)
    assert out.dtype == dtype and out.shape == ref.shape
    # bf16 compute on fp32 inputs reaches only the global latents' cross-attention products
    tol = PERCEIVER_BF16_COMPUTE if compute is not None else TOLERANCE[dtype]
    assert_close(out, ref, dtype, f"{backend} {case} {dt}", tol)
