"""Patched models inside torch.autocast, as Meta's and HF's GPU demos run them.

Before the ops had an autocast rule, a patched perceiver or memory attention inside an autocast
region failed ("norm_w has dtype torch.float32 but x has torch.bfloat16"): autocast leaves bf16
activations beside fp32 weights. Here the patched module under autocast must run and agree with
the unpatched module under the same autocast within bf16 accuracy, for every CPU backend.
"""

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels.testing import rel_l2

from edgetam_kernels.testing import hosts as M

pytest.importorskip("sam2")
pytest.importorskip("transformers.models.edgetam_video")

GRID = 16
BACKENDS = [b for b in ("reference", "cpu") if ek.backends()[b]["available"]]
# Both sides compute in bf16 (different op orders): their distance is a few bf16 roundings,
# against ~1.0 for unrelated outputs.
BOUND = 1.5e-2  # measured 2.8e-3 (memory attention) and 5.6e-3 (perceiver)


def _cases():
    inputs = M.memory_attention_inputs(GRID, frames=2, ptrs=3, batch=1, seed=1)
    meta_ma = M.meta_memory_attention(GRID, seed=2)
    yield "meta-memory-attention", meta_ma, inputs
    hf_ma = M.hf_memory_attention_like(M.meta_memory_attention(GRID, seed=2), GRID)
    yield "hf-memory-attention", hf_ma, M.hf_memory_attention_kwargs(inputs)
    x, pos = M.perceiver_inputs(GRID, 1, seed=1)
    meta_p = M.meta_perceiver(seed=1)
    yield "meta-perceiver", meta_p, dict(x=x, pos=pos)
    yield "hf-perceiver", M.hf_perceiver_like(M.meta_perceiver(seed=1)), dict(x=x, pos=pos)


CASES = list(_cases())


def _run(module, kwargs):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if "x" in kwargs:
            out = module(kwargs["x"], kwargs["pos"])
        else:
            out = module(**kwargs)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_patched_module_runs_under_autocast(case, backend):
    name, module, kwargs = case
    ek.unpatch(module)
    expected = _run(module, kwargs).float()
    ek.patch(module, backend=backend)
    try:
        got = _run(module, kwargs).float()
    finally:
        ek.unpatch(module)
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    err = rel_l2(got, expected)
    assert err <= BOUND, f"{name} {backend}: {err:.2e}"
