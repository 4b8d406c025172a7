"""patch() on our own edgetam/ model: it selects the backend and compute dtype of its ops."""

import warnings

import pytest
import torch

import edgetam
import edgetam_kernels as ek
from edgetam_kernels.patch import patched_modules
from edgetam_kernels.testing import PERCEIVER_BF16_COMPUTE, rel_l2


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return edgetam.load(image_size=512)


def _cross_attention_call(model):
    attn = model.memory_attention.layers[0].cross_attn_image
    q = torch.randn(1, 1024, 256)
    mem = torch.randn(1, 2 * 512 + 8, 64)
    kw = dict(q_grid=(32, 32), k_grid=(16, 16), k_repeat=2, num_k_exclude_rope=8)
    return attn, (q, mem, mem), kw


def test_patch_sets_backend_and_unpatch_restores(model, monkeypatch):
    attn, args, kw = _cross_attention_call(model)
    with torch.no_grad():
        base = attn(*args, **kw)
        ek.patch(model, backend="reference")
        assert "memory_attention.layers.0.cross_attn_image" in patched_modules(model)
        assert "spatial_perceiver" in patched_modules(model)
        ref = attn(*args, **kw)
        assert rel_l2(ref, base) < 1e-5
        ek.patch(model, backend="metal")  # patching again only updates the options
        with pytest.raises(ek.BackendUnavailable, match="metal"):
            attn(*args, **kw)
        ek.patch(model, backend="auto", compute_dtype=torch.bfloat16)
        low = attn(*args, **kw)
        assert 1e-5 < rel_l2(low, base) < 2e-2  # bf16 compute: close, but really lower precision
        ek.unpatch(model)
        assert patched_modules(model) == []
        assert attn.backend == "auto"
        assert torch.equal(attn(*args, **kw), base)


def test_patch_sets_perceiver_compute_dtype(model):
    """compute_dtype reaches the spatial perceiver: its global latents (the first 256) only."""
    perceiver = model.spatial_perceiver
    g = torch.Generator().manual_seed(0)
    x, pos = (torch.randn(1, 64, 32, 32, generator=g) for _ in range(2))
    with torch.no_grad():
        ek.patch(model, backend="reference")
        fp32 = perceiver(x, pos)[0]
        ek.patch(model, backend="reference", compute_dtype=torch.bfloat16)
        low = perceiver(x, pos)[0]
        ek.unpatch(model)
        assert perceiver.__dict__.get("compute_dtype") is None
    assert torch.equal(low[:, 256:], fp32[:, 256:])
    assert 1e-5 < rel_l2(low, fp32) < PERCEIVER_BF16_COMPUTE
