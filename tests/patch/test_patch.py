"""patch() / unpatch() mechanics on Meta's and HF's EdgeTAM modules and whole models.

Numerical parity is in test_parity_*.py (modules) and test_e2e.py (tracking); here: unpatch
restores bit-identical behaviour, patching twice is harmless, options update, whole models and
single modules, clear errors, and torch.compile(fullgraph=True) through the patched forwards.
"""

import copy
import io

import pytest
import torch
from torch import nn

import edgetam_kernels as ek
from edgetam_kernels.patch import is_patched, patched_modules
from edgetam_kernels.testing import EDGETAM, PERCEIVER_BF16_COMPUTE, TOLERANCE, rel_l2

from edgetam_kernels.testing import hosts as M

pytest.importorskip("sam2")
pytest.importorskip("transformers.models.edgetam_video")

GRID = 32


def _memattn_call(kind):
    inputs = M.memory_attention_inputs(GRID, frames=2, ptrs=3, batch=1, seed=1)
    if kind == "meta":
        return M.meta_memory_attention(GRID, seed=2), inputs
    hf = M.hf_memory_attention_like(M.meta_memory_attention(GRID, seed=2), GRID)
    return hf, M.hf_memory_attention_kwargs(inputs)


def _perceiver_call(kind):
    x, pos = M.perceiver_inputs(GRID, 1, seed=1)
    meta = M.meta_perceiver(seed=1)
    return (meta if kind == "meta" else M.hf_perceiver_like(meta)), dict(x=x, pos=pos)


def _run(module, kwargs):
    with torch.no_grad():
        if "x" in kwargs:
            return module(kwargs["x"], kwargs["pos"])[0]
        return module(**kwargs)


def _no_trace_of_patch(module):
    for name, m in module.named_modules():
        assert not is_patched(m), name
        for method in ("forward", "forward_image", "get_image_features"):
            assert method not in m.__dict__, f"{name} kept an instance {method}"


BUILDERS = {"memory_attention": _memattn_call, "perceiver": _perceiver_call}


@pytest.mark.parametrize("kind", ["meta", "hf"])
@pytest.mark.parametrize("what", sorted(BUILDERS))
def test_unpatch_restores_bit_identical(kind, what):
    module, kwargs = BUILDERS[what](kind)
    before = _run(module, kwargs)
    assert ek.patch(module, backend="reference") is module
    assert patched_modules(module)
    patched = _run(module, kwargs)
    assert ek.unpatch(module) is module
    _no_trace_of_patch(module)
    after = _run(module, kwargs)
    assert torch.equal(before, after)
    assert torch.allclose(patched, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_patch_twice_is_harmless(kind):
    module, kwargs = _memattn_call(kind)
    ek.patch(module, backend="reference")
    names = patched_modules(module)
    forwards = {n: m.__dict__["forward"] for n, m in module.named_modules() if is_patched(m)}
    once = _run(module, kwargs)
    ek.patch(module, backend="reference")
    assert patched_modules(module) == names
    assert all(m.__dict__["forward"] is forwards[n]
               for n, m in module.named_modules() if is_patched(m))
    assert torch.equal(_run(module, kwargs), once)
    ek.unpatch(module)
    _no_trace_of_patch(module)
    ek.unpatch(module)  # unpatching an unpatched module is a no-op


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_patch_again_updates_options(kind):
    module, kwargs = _memattn_call(kind)
    fp32 = _run(ek.patch(module, backend="reference"), kwargs)
    bf16 = _run(ek.patch(module, backend="reference", compute_dtype=torch.bfloat16), kwargs)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    # the documented bf16 bound (docs/patch.md): measured 3.4e-3 relative L2 on this grid
    assert rel_l2(bf16, fp32) < 1e-2
    assert torch.equal(_run(ek.patch(module, backend="reference"), kwargs), fp32)


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_perceiver_compute_dtype(kind):
    """patch()'s compute_dtype reaches the spatial_perceiver op: bf16 for the global latents'
    cross-attention products only, within the bf16-compute budget of the unpatched module;
    None (the default) keeps the fp32 patched perceiver, bit for bit."""
    module, kwargs = _perceiver_call(kind)
    unpatched = _run(module, kwargs)
    fp32 = _run(ek.patch(module, backend="reference"), kwargs)
    assert rel_l2(fp32, unpatched) < TOLERANCE[torch.float32]
    assert torch.equal(_run(ek.patch(module, backend="reference", compute_dtype=None), kwargs),
                       fp32)
    bf16 = _run(ek.patch(module, backend="reference", compute_dtype=torch.bfloat16), kwargs)
    n_global = EDGETAM["latents"]
    assert bf16.dtype == torch.float32
    assert torch.equal(bf16[:, n_global:], fp32[:, n_global:])  # patch latents: not covered
    assert 1e-5 < rel_l2(bf16, unpatched) < PERCEIVER_BF16_COMPUTE
    auto = _run(ek.patch(module, backend="auto", compute_dtype=torch.bfloat16), kwargs)
    assert rel_l2(auto, unpatched) < PERCEIVER_BF16_COMPUTE
    assert torch.equal(_run(ek.patch(module, backend="reference"), kwargs), fp32)
    _no_trace_of_patch(ek.unpatch(module))


@pytest.mark.parametrize("kind", ["meta", "hf"])
@pytest.mark.parametrize("what", sorted(BUILDERS))
def test_deep_copy_is_independent(kind, what):
    """A deep copy of a patched module runs on its own weights and its own options (the
    replacement forwards close over the module they were built for; a copy rebuilds them)."""
    module, kwargs = BUILDERS[what](kind)
    ek.patch(module, backend="reference")
    before = _run(module, kwargs)
    copy_ = copy.deepcopy(module)
    assert patched_modules(copy_) == patched_modules(module)
    assert torch.equal(_run(copy_, kwargs), before)
    with torch.no_grad():
        for p in copy_.parameters():
            p.mul_(0.5)
    scaled = _run(copy_, kwargs)
    assert torch.equal(_run(module, kwargs), before)
    assert rel_l2(scaled, _run(ek.unpatch(copy.deepcopy(copy_)), kwargs)) < 1e-5
    assert rel_l2(scaled, before) > 1e-2
    if what == "memory_attention":  # options given to the copy apply to the copy only
        bf16 = _run(ek.patch(copy_, backend="reference", compute_dtype=torch.bfloat16), kwargs)
        assert not torch.equal(bf16, scaled) and rel_l2(bf16, scaled) < 1e-2
        assert torch.equal(_run(module, kwargs), before)
    _no_trace_of_patch(ek.unpatch(copy_))


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_pickled_patched_module(kind):
    """torch.save / torch.load of a whole patched module: it loads patched (same result) and
    can be unpatched to the original behaviour."""
    module, kwargs = _memattn_call(kind)
    unpatched = _run(module, kwargs)
    patched = _run(ek.patch(module, backend="reference"), kwargs)
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert patched_modules(loaded) == patched_modules(module)
    assert torch.equal(_run(loaded, kwargs), patched)
    _no_trace_of_patch(ek.unpatch(loaded))
    assert torch.equal(_run(loaded, kwargs), unpatched)


def test_unpatch_restores_a_previous_instance_forward():
    """A module that already had an instance-level forward (here the test workaround for
    Meta's batch > 1 perceiver bug) gets exactly that forward back."""
    holder = nn.Module()
    holder.spatial_perceiver = M.meta_perceiver(seed=1)
    M.fix_meta_perceiver_batch_(holder)
    workaround = holder.spatial_perceiver.__dict__["forward"]
    ek.patch(holder, backend="reference")
    assert holder.spatial_perceiver.__dict__["forward"] is not workaround
    ek.unpatch(holder)
    assert holder.spatial_perceiver.__dict__["forward"] is workaround


def test_single_modules():
    meta = M.meta_memory_attention(GRID, seed=2)
    ek.patch(meta.layers[1].cross_attn_image, backend="reference")
    assert patched_modules(meta) == ["layers.1.cross_attn_image"]
    hf = M.hf_memory_attention(GRID)
    ek.patch(hf.layers[0], backend="reference")
    assert patched_modules(hf) == ["layers.0", "layers.0.self_attn", "layers.0.cross_attn_image"]


def test_whole_meta_predictor():
    predictor = M.meta_video_predictor(512)
    ek.patch(predictor, backend="reference")
    names = set(patched_modules(predictor))
    expected = {"spatial_perceiver", "memory_attention.layers.0", "memory_attention.layers.1",
                "memory_attention.layers.0.self_attn", "memory_attention.layers.1.cross_attn_image",
                "spatial_perceiver.layers.0", "spatial_perceiver.layers.0.attn"}
    assert expected <= names
    # the mask decoder's plain attentions lose the forced SDPA math path
    assert any(n.startswith("sam_mask_decoder.transformer") for n in names)
    # the RepViT trunk (fuse_encoder=True, the default; tests/patch/test_patch_encoder.py); of the FPN
    # neck only its position encoding, and the model's forward_image (tests/patch/test_patch_fpn.py)
    assert "image_encoder.trunk.body.stages_1.blocks.0.token_mixer" in names
    assert {n for n in names if n.startswith("image_encoder.neck")} == {
        "image_encoder.neck.position_encoding"}
    assert "" in names and "forward_image" in predictor.__dict__
    ek.unpatch(predictor)
    _no_trace_of_patch(predictor)


def test_whole_hf_model():
    model = M.hf_model(512)
    ek.patch(model, backend="reference")
    names = set(patched_modules(model))
    assert {"memory_attention", "memory_attention.layers.0", "memory_attention.layers.1.self_attn",
            "memory_attention.layers.1.cross_attn_image", "spatial_perceiver",
            "spatial_perceiver.layers.1"} <= names
    assert "vision_encoder.backbone.timm_model.stem.conv1" in names
    ek.unpatch(model)
    _no_trace_of_patch(model)


def test_unsupported_model_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(TypeError, match="found nothing to patch in Sequential.*Linear"):
        ek.patch(model)
    _no_trace_of_patch(model)
    with pytest.raises(TypeError, match="nn.Module"):
        ek.patch("EdgeTAM")
    with pytest.raises(TypeError, match="nn.Module"):
        ek.unpatch(42)
    with pytest.raises(ValueError, match="unknown backend"):
        ek.patch(M.meta_perceiver(seed=1), backend="cuda")


@pytest.mark.parametrize("kind", ["meta", "hf"])
@pytest.mark.parametrize("what", sorted(BUILDERS))
def test_compile_fullgraph(kind, what):
    """torch.compile(fullgraph=True) traces the patched forwards with the ops as single nodes
    (backend="eager": checks graph capture without needing a C++ compiler)."""
    module, kwargs = BUILDERS[what](kind)
    ek.patch(module, backend="reference")
    eager = _run(module, kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    out = _run(compiled, kwargs)
    assert torch.equal(out, eager)


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_perceiver_with_mixed_layer_norm_eps_runs_the_original(kind):
    """The op takes one eps: a perceiver whose LayerNorms disagree runs its own forward (whole
    resampler and the layer itself), and an in-place weight change after a cached call shows."""
    module, kwargs = _perceiver_call(kind)
    layer = module.layers[1]
    ln = layer.attn.norm_x if kind == "meta" else layer.mlp.layer_norm
    ek.patch(module, backend="reference")
    patched = _run(module, kwargs)
    eps, ln.eps = ln.eps, 1e-2
    reference = _run(ek.unpatch(copy.deepcopy(module)), kwargs)
    assert torch.equal(_run(module, kwargs), reference)
    assert rel_l2(reference, patched) > 1e-6  # the eps change is visible at all
    ln.eps = eps
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(0.75)
    scaled = _run(module, kwargs)
    assert rel_l2(scaled, _run(ek.unpatch(copy.deepcopy(module)), kwargs)) < 1e-5
    assert rel_l2(scaled, patched) > 1e-3


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_perceiver_position_output_matches_and_is_a_fresh_tensor(kind):
    """The latents' positional output (zeros, then the window grid's sine encoding) is kept per
    shape in the patch state: equal to the original's for every batch size, and a caller that
    edits one in place does not change the next."""
    module, _ = _perceiver_call(kind)
    patched = ek.patch(copy.deepcopy(module), backend="cpu")
    with torch.no_grad():
        for batch in (1, 2, 1):  # upstream needs batch 1 (see M.perceiver_per_sample)
            x, pos = M.perceiver_inputs(GRID, batch, seed=batch)
            want = M.perceiver_per_sample(module, x, pos)[1]
            got = patched(x, pos)[1]
            assert torch.equal(got, want), batch
            got.add_(1.0)
            assert torch.equal(patched(x, pos)[1], want), batch
