"""The Metal backend on a real Apple GPU: the emulator's cases (tests/metal_emu/cases.py) through
the public ops with backend="metal" on MPS tensors, against the float64 CPU reference.
Skipped, with the reason, wherever the backend cannot run (every machine without MPS)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import _registry, reference, testing
from edgetam_kernels.metal import _launch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metal_emu import cases  # noqa: E402

_REASON = _registry.why_unavailable("metal")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"metal backend: {_REASON}")


def _has_bfloat():
    from edgetam_kernels import metal

    return metal._has_bfloat()


def _mps(args):
    if isinstance(args, torch.Tensor):
        return args.to("mps")
    if isinstance(args, (list, tuple)):
        return type(args)(_mps(a) for a in args)
    return args


@pytest.fixture
def poison(monkeypatch):
    monkeypatch.setattr(_launch, "POISON", True)


def _dtype_or_skip(dtype):
    if dtype == torch.bfloat16 and not _has_bfloat():
        pytest.skip("this GPU / macOS has no Metal bfloat (needs MSL 3.1)")


def _check(out, args, fn, dtype, what=""):
    assert out.device.type == "mps"
    assert not torch.isnan(out.cpu()).any(), f"{what}: NaN in the output"
    ref = fn(*testing.to64(args))
    return testing.assert_close(out.cpu(), ref, dtype, what)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,kw", cases.ROPE, ids=[c[0] for c in cases.ROPE])
def test_metal_mps_rope_attention(poison, name, kw, dtype):
    _dtype_or_skip(dtype)
    args = cases.rope_case(**kw, dtype=dtype)
    out = torch.ops.edgetam.rope_attention(*_mps(args), None, "metal")
    _check(out, args, reference.rope_attention, dtype, name)


def test_metal_mps_rope_attention_compute_dtype(poison):
    args = cases.rope_case(**cases.ROPE[1][1], compute_dtype=torch.float16)
    out = torch.ops.edgetam.rope_attention(*_mps(args), None, "metal")
    exact = reference.rope_attention(*testing.to64(args[:9]), None)
    err = testing.assert_close(out.cpu(), exact, torch.float16, "compute_dtype=fp16")
    assert err > 1e-5, "compute_dtype was ignored"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("pos", ["shared", "batched", None])
def test_metal_mps_perceiver_attention(poison, pos, dtype):
    _dtype_or_skip(dtype)
    args = cases.perceiver_case(pos=pos, dtype=dtype)
    out = torch.ops.edgetam.perceiver_attention(*_mps(args), "metal")
    _check(out, args, reference.perceiver_attention, dtype, f"pos={pos}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,kw", cases.SPATIAL, ids=[c[0] for c in cases.SPATIAL])
def test_metal_mps_spatial_perceiver(poison, name, kw, dtype):
    _dtype_or_skip(dtype)
    args = cases.spatial_case(**kw, dtype=dtype)
    out = torch.ops.edgetam.spatial_perceiver(*_mps(args), None, "metal")
    _check(out, args, reference.spatial_perceiver, dtype, name)


def test_metal_mps_auto_picks_metal():
    from edgetam_kernels import metal

    args = _mps(cases.rope_case(**cases.ROPE[0][1]))
    assert _registry.resolve("rope_attention", "auto", "mps", args) is \
        metal.BACKEND.kernels["rope_attention"]


@pytest.mark.slow
def test_metal_mps_edgetam_cross_attention_full_size():
    """EdgeTAM's real memory cross-attention: 4096 queries x (7 * 512 + 64) keys, head dim 256."""
    (q, k, v), kw = testing.edgetam_cross_attention_inputs()
    out = ek.rope_attention(*_mps((q, k, v)), backend="metal", **kw)
    ref = ek.rope_attention(*testing.to64((q, k, v)), backend="reference", **kw)
    testing.assert_close(out.cpu(), ref, torch.float32, "EdgeTAM cross-attention")
