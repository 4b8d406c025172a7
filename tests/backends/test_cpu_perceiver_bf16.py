"""The C++ perceiver's bf16 compute: the global latents' cross-attention products on AMX tiles.

The kernel is held to a float64 emulation of exactly what it is meant to do (q * scale, k + pos,
v and the softmax's probabilities rounded to bf16; everything else exact): its error against
the float64 reference must be that emulation's own error, give or take a little. A kernel that
pairs, transposes or pads anything wrongly lands orders of magnitude away.
"""

import math
import os
from unittest import mock

import pytest
import torch

from edgetam_kernels import cpu, reference
from edgetam_kernels.testing import rel_l2, to64
from edgetam_kernels.testing.cases import (
    CPU_SPATIAL_PERCEIVER, SPATIAL_PERCEIVER_CASES, SpatialPerceiverCase, spatial_perceiver_inputs,
)

NO_EXT = os.environ.get("EDGETAM_KERNELS_NO_EXT", "") not in ("", "0")
pytestmark = pytest.mark.skipif(NO_EXT, reason="EDGETAM_KERNELS_NO_EXT=1: C++ extension not built")
ISAS = cpu.available_isas() or ("scalar",)
AMX = "avx512_amx" in ISAS
CASES = {name: SPATIAL_PERCEIVER_CASES[name] for name in CPU_SPATIAL_PERCEIVER}
GLOBAL_CASES = ({k: v for k, v in CASES.items() if v.global_latents}
                | {"edgetam_64x64": SpatialPerceiverCase()})


def ref64(args, kw):
    return reference.spatial_perceiver(*to64(args), kw["depth"], kw["heads"], kw["use_self_attn"], 1e-5)


def _bf16(t):
    return t.to(torch.bfloat16).to(t.dtype)


def _emulated_attention(q, k, v):
    # The kernel's arithmetic: base-2 softmax on bf16 q * scale * log2(e) and bf16 k, running
    # max, bf16 probabilities times bf16 v, divided by the sum of the unrounded probabilities.
    s = _bf16(q * (math.log2(math.e) / math.sqrt(q.shape[-1]))) @ _bf16(k).transpose(-1, -2)
    p = torch.exp2(s - s.amax(-1, keepdim=True))
    return (_bf16(p) @ _bf16(v)) / p.sum(-1, keepdim=True)


def _global_emulation(args, kw):
    """Global latents only (the patch group never sees bf16), float64 apart from the roundings."""
    x, pos, lat1, _, ws, nw, nb = to64(args)
    cross = reference.perceiver_attention

    def bf16_cross(*a, **k):
        with mock.patch.object(reference, "attention",
                               lambda q, k, v, scale=None, compute_dtype=None:
                               _emulated_attention(q, k, v)):
            return cross(*a, **k)

    with mock.patch.object(reference, "perceiver_attention", bf16_cross):
        return reference.spatial_perceiver(x, pos, lat1, None, ws, nw, nb, kw["depth"],
                                           kw["heads"], kw["use_self_attn"], 1e-5)


def _run(args, kw, compute_dtype):
    return cpu.spatial_perceiver(*args, kw["depth"], kw["heads"], kw["use_self_attn"], 1e-5,
                                 compute_dtype=compute_dtype)


@pytest.mark.skipif(not AMX, reason="no AMX here: bf16 compute runs in fp32 (tested below)")
@pytest.mark.parametrize("case", list(GLOBAL_CASES))
def test_amx_matches_bf16_emulation(case):
    args, kw = spatial_perceiver_inputs(GLOBAL_CASES[case])
    with cpu.force_isa("avx512_amx"):
        out = _run(args, kw, torch.bfloat16)
    ref = ref64(args, kw)
    l1 = args[2].shape[0]
    assert torch.isfinite(out).all()
    err = rel_l2(out[:, :l1], ref[:, :l1])
    emu = rel_l2(_global_emulation(args, kw), ref[:, :l1])
    # measured (kernel / emulation): 4.6e-4 / 4.6e-4 (EdgeTAM) .. 2.2e-3 / 2.2e-3 over these cases
    assert 1e-5 < emu < 5e-3, f"{case}: the emulation's own error {emu:.2e} is off"
    assert err <= 1.25 * emu + 1e-5, f"{case}: bf16 kernel error {err:.2e}, emulation {emu:.2e}"
    # the patch latents never touch bf16: fp32 accuracy
    if out.shape[1] > l1:
        assert rel_l2(out[:, l1:], ref[:, l1:]) <= 1e-5


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "avx512_amx"])
def test_without_amx_bf16_compute_is_fp32(isa):
    """bf16 compute is a permission: without AMX the kernel computes in fp32, bit for bit."""
    args, kw = spatial_perceiver_inputs(CASES["windows_2x2_on_10x10"])
    with cpu.force_isa(isa):
        assert torch.equal(_run(args, kw, torch.bfloat16), _run(args, kw, None))


@pytest.mark.skipif(not AMX, reason="no AMX here")
def test_amx_threads_do_not_change_results():
    args, kw = spatial_perceiver_inputs(
        SpatialPerceiverCase(1, 32, (16, 16), 70, 16, inner=32, hidden=48, heads=2))
    before = torch.get_num_threads()
    try:
        outs = []
        with cpu.force_isa("avx512_amx"):
            for n in (1, 2, 3, 2):
                torch.set_num_threads(n)
                outs.append(_run(args, kw, torch.bfloat16))
    finally:
        torch.set_num_threads(before)
    for o in outs[1:]:
        assert torch.equal(outs[0], o)


@pytest.mark.skipif(not AMX, reason="no AMX here")
def test_amx_nan_input_propagates_like_fp32():
    args, kw = spatial_perceiver_inputs(
        SpatialPerceiverCase(1, 32, (8, 8), 4, 16, inner=32, hidden=64))
    args[0][0, 3, 2, 5] = float("nan")
    with cpu.force_isa("avx512_amx"):
        out = _run(args, kw, torch.bfloat16)
    assert torch.equal(torch.isnan(out), torch.isnan(ref64(args, kw)))
