"""patch(..., fuse_encoder=True): the re-parameterised RepViT image encoder.

timm's RepViT (the trunk of Meta's and HF's EdgeTAM) and our edgetam/ RepViT, with random
BatchNorm statistics and affine parameters (with timm's initial values BatchNorm is nearly the
identity and a wrong fold could not show). Checked: fused output vs a float64 copy of the
unpatched network by relative L2; state dict, parameters and buffers untouched; unpatch
bit-identical; training mode and gradients into the weights run the original forward; fused
weights follow later changes of the weights (load_state_dict, in-place updates, dtype);
fuse_encoder=False and switching it off again; whole Meta and HF models; timm's classifier head.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

import edgetam_kernels as ek
from edgetam_kernels.patch import is_patched, patched_modules
from edgetam_kernels.testing import rel_l2

from edgetam_kernels.testing import hosts as M

timm = pytest.importorskip("timm")

FP32_REL_L2 = 1e-5  # the project's fp32 bound (README), vs a float64 reference
# patched modules in RepViT-M1: the network (channels-last), 106 ConvNorms, 23 token mixers,
# 26 MLPs and the stem (GELU on NHWC views), 23 blocks and 3 downsamples (residual MLPs)
_ENCODER_PATCHES = 1 + 106 + 23 + 26 + 1 + 23 + 3
# and in Meta's image_encoder / HF's vision_encoder the FPN neck's position encoding
# (per-shape tables, tests/patch/test_patch_fpn.py)
_NECK_PATCHES = 1


def _timm_trunk(seed: int = 0, name: str = "repvit_m1") -> nn.Module:
    """EdgeTAM's trunk as Meta and HF build it (features_only RepViT-M1), random statistics."""
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))
    return M.randomize_batchnorm_(m.eval(), seed)


def _ours(seed: int = 0) -> nn.Module:
    from edgetam.repvit import RepViT

    torch.manual_seed(seed)
    return M.randomize_batchnorm_(RepViT().eval(), seed)


def _image(size: int = 128, seed: int = 1) -> torch.Tensor:
    return M.random_clip(1, size, seed=seed)


def _run(module, x):
    with torch.no_grad():
        out = module(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _errors(module, x):
    """Relative L2 vs float64 of (the unpatched fp32 network, the patched one)."""
    ref = _run(copy.deepcopy(module).double(), x.double())
    plain = _run(module, x)
    ek.patch(module)
    fused = _run(module, x)
    ek.unpatch(module)
    return ([rel_l2(p, r) for p, r in zip(plain, ref)], [rel_l2(f, r) for f, r in zip(fused, ref)],
            fused)


def _snapshot(module):
    return ({k: (v.data_ptr(), v.clone()) for k, v in module.state_dict(keep_vars=True).items()},
            [n for n, _ in module.named_buffers()], [n for n, _ in module.named_parameters()])


def _assert_untouched(module, snap):
    sd, buffers, params = snap
    now = module.state_dict(keep_vars=True)
    assert list(now) == list(sd)
    for k, v in now.items():
        assert v.data_ptr() == sd[k][0] and torch.equal(v, sd[k][1]), k
    assert [n for n, _ in module.named_buffers()] == buffers
    assert [n for n, _ in module.named_parameters()] == params


@pytest.mark.parametrize("which", ["timm", "timm-nonlegacy", "ours"])
def test_fused_matches_float64(which):
    """Every ConvNorm folded, every token mixer merged (timm's legacy RepVggDw in EdgeTAM:
    3x3 and 1x1 ConvNorms + identity; non-legacy: plain 1x1 conv and a BatchNorm after the sum;
    ours: as legacy), channels-last on CPU: within fp32 rounding of the float64 network."""
    module = {"timm": lambda: _timm_trunk(), "ours": _ours,
              "timm-nonlegacy": lambda: _timm_trunk(name="repvit_m0_9")}[which]()
    x = _image()
    ek.patch(module)
    kinds = {type(m).__name__ for m in module.modules() if is_patched(m)}
    ek.unpatch(module)
    mixer = "DwMixer" if which == "ours" else "RepVggDw"
    assert {"ConvNorm", mixer} <= kinds
    plain, fused, out = _errors(module, x)
    print(f"\n{which}: unpatched fp32 {max(plain):.2e}, fused {max(fused):.2e}")
    assert max(fused) < FP32_REL_L2
    # the fold itself adds no more than fp32 rounding to what fp32 already costs
    assert max(fused) < 3 * max(plain) + 1e-7
    assert all(o.is_contiguous() for o in out)  # channels-last stays inside the network


def test_fused_fold_is_really_tested():
    """The random statistics matter: ignoring them (BatchNorm as identity) is far off."""
    module, x = _timm_trunk(), _image()
    base = _run(module, x)
    plain = copy.deepcopy(module)
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
    assert min(rel_l2(a, b) for a, b in zip(_run(plain, x), base)) > 0.1


def test_timm_classifier_head():
    """timm's full RepViT classifier: NormLinear heads (BatchNorm1d then Linear) fold too."""
    torch.manual_seed(0)
    model = M.randomize_batchnorm_(timm.create_model("repvit_m0_9", pretrained=False).eval())
    x = _image(64)
    ref = _run(copy.deepcopy(model).double(), x.double())[0]
    ek.patch(model)
    assert "head.head" in patched_modules(model) and "head.head_dist" in patched_modules(model)
    out = _run(model, x)[0]
    assert out.shape == (1, 1000) and rel_l2(out, ref) < FP32_REL_L2


def test_state_dict_untouched_and_unpatch_bit_identical():
    module, x = _timm_trunk(), _image()
    snap = _snapshot(module)
    before = _run(module, x)
    ek.patch(module)
    fused = _run(module, x)
    _assert_untouched(module, snap)
    assert not all(torch.equal(a, b) for a, b in zip(fused, before))  # really another path
    ek.unpatch(module)
    for name, m in module.named_modules():
        assert not is_patched(m) and "forward" not in m.__dict__, name
    _assert_untouched(module, snap)
    assert all(torch.equal(a, b) for a, b in zip(_run(module, x), before))


def test_training_mode_runs_the_original():
    """BatchNorm uses batch statistics (and updates its running ones) in training mode: the
    patched network must do exactly what the original does."""
    a, x = _timm_trunk(), _image(96)
    b = copy.deepcopy(a)
    ek.patch(b)
    a.train()
    b.train()
    for _ in range(2):
        assert all(torch.equal(p, q) for p, q in zip(_run(a, x), _run(b, x)))
    for (name, p), q in zip(a.named_buffers(), b.buffers()):
        assert torch.equal(p, q), name
    # back in eval mode the fused path uses the updated statistics
    a.eval()
    b.eval()
    assert max(rel_l2(p, q) for p, q in zip(_run(b, x), _run(a, x))) < FP32_REL_L2


def test_gradients():
    """Gradients into the weights: the original forward (the fused copies would not pass them
    on). Gradients into the input only: the fused path, usable after an inference_mode call."""
    module, x = _timm_trunk(), _image(64)
    ek.patch(module)
    with torch.inference_mode():
        module(x)  # fused weights computed in inference mode
    out = module(x)
    sum(o.square().sum() for o in out).backward()
    bn = module.stem.conv1.bn
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    ref = copy.deepcopy(module)
    ek.unpatch(ref)
    assert all(torch.equal(p, q) for p, q in zip(out, ref(x)))  # the same (original) path

    module.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    out = module(xg)
    sum(o.sum() for o in out).backward()
    xr = x.clone().requires_grad_(True)
    sum(o.sum() for o in ref.requires_grad_(False)(xr)).backward()
    assert rel_l2(xg.grad, xr.grad) < 1e-4


def test_fused_weights_follow_weight_changes():
    module, x = _timm_trunk(seed=0), _image()
    other = _timm_trunk(seed=5)
    ek.patch(module)
    _run(module, x)
    # a new state dict (copied into the same tensors: in-place version bumps)
    module.load_state_dict(other.state_dict())
    ref = _run(other, x)
    assert max(rel_l2(a, b) for a, b in zip(_run(module, x), ref)) < FP32_REL_L2
    # an in-place update of one running statistic
    with torch.no_grad():
        module.stages_2.blocks[3].token_mixer.conv.bn.running_var.mul_(3.0)
        other.stages_2.blocks[3].token_mixer.conv.bn.running_var.mul_(3.0)
    ref = _run(other, x)
    assert max(rel_l2(a, b) for a, b in zip(_run(module, x), ref)) < FP32_REL_L2
    # a dtype change (new tensors)
    module.double()
    out = _run(module, x.double())
    assert out[0].dtype == torch.float64
    assert max(rel_l2(a, b) for a, b in zip(out, ref)) < FP32_REL_L2


def test_fuse_encoder_option():
    predictor = M.meta_video_predictor(512)
    ek.patch(predictor, backend="reference", fuse_encoder=False)
    names = patched_modules(predictor)
    assert "spatial_perceiver" in names and not any(n.startswith("image_encoder") for n in names)
    ek.patch(predictor, backend="reference")  # on again
    enc = [n for n in patched_modules(predictor) if n.startswith("image_encoder")]
    assert "image_encoder.trunk.body" in enc  # channels-last
    assert "image_encoder.trunk.body.stem.conv1" in enc  # conv + BatchNorm
    assert "image_encoder.trunk.body.stages_2.blocks.13.token_mixer" in enc
    assert len(enc) == _ENCODER_PATCHES + _NECK_PATCHES
    ek.patch(predictor, backend="reference", fuse_encoder=False)  # off again: only the encoder
    assert patched_modules(predictor) == names
    ek.unpatch(predictor)
    assert patched_modules(predictor) == []
    with pytest.raises(TypeError, match="fuse_encoder=False"):
        ek.patch(_timm_trunk(), fuse_encoder=False)


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_whole_model_encoder(kind):
    """Meta's image_encoder (trunk + FPN neck) and HF's vision_encoder, patched vs unpatched."""
    model = M.meta_video_predictor(256) if kind == "meta" else M.hf_model(256)
    enc = model.image_encoder if kind == "meta" else model.vision_encoder
    M.randomize_batchnorm_(enc)
    snap = _snapshot(model)
    x = _image(256)
    with torch.no_grad():
        before = enc(x)
        ek.patch(model)
        assert sum(is_patched(m) for m in enc.modules()) == _ENCODER_PATCHES + _NECK_PATCHES
        fused = enc(x)
        ek.unpatch(model)
        after = enc(x)
    _assert_untouched(model, snap)
    if kind == "meta":
        pairs = [(before["vision_features"], fused["vision_features"], after["vision_features"])]
        pairs += list(zip(before["backbone_fpn"], fused["backbone_fpn"], after["backbone_fpn"]))
    else:
        pairs = [(before.last_hidden_state, fused.last_hidden_state, after.last_hidden_state)]
        pairs += list(zip(before.fpn_hidden_states, fused.fpn_hidden_states,
                          after.fpn_hidden_states))
    for b, f, a in pairs:
        assert torch.equal(a, b)
        assert 0 < rel_l2(f, b) < FP32_REL_L2


def test_our_model_keeps_fusing():
    """Our edgetam/ model: patch() folds an unfused one reversibly; a model fused by
    `fuse_()` (the CLI's) has no BatchNorm left, and patch() keeps it so (adds channels-last)."""
    import edgetam

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgetam.load(image_size=256)
    M.randomize_batchnorm_(model.image_encoder)
    x = _image(256)
    with torch.no_grad():
        base = model.image_features(x)
        ek.patch(model, backend="reference")
        names = patched_modules(model)
        assert "image_encoder.trunk.body" in names
        assert "image_encoder.trunk.body.stages_0.blocks.0.token_mixer" in names
        patched = model.image_features(x)
        ek.unpatch(model)
        fused_model = copy.deepcopy(model).fuse_()
        fused = fused_model.image_features(x)
        ek.patch(fused_model, backend="reference")
        enc = [n for n in patched_modules(fused_model) if n.startswith("image_encoder")]
        kinds = {type(fused_model.get_submodule(n)).__name__ for n in enc}
        # no ConvNorm or DwMixer left to fold; the MLPs' GELU and residual go to oneDNN
        assert kinds == {"RepViT", "Stem", "ConvMlp", "Block", "Downsample"}
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused_model.modules())
        both = fused_model.image_features(x)
    def flat(feats):
        return [feats["vision"], feats["vision_pos"], *feats["high_res"]]

    for b, p, f, q in zip(flat(base), flat(patched), flat(fused), flat(both)):
        assert rel_l2(p, b) < FP32_REL_L2 and rel_l2(q, f) < FP32_REL_L2


def test_compile_fullgraph():
    """torch.compile(fullgraph=True) through the patched trunk: the folds are traced into the
    graph (the cache's pointer checks are skipped while compiling)."""
    module, x = _timm_trunk(), _image(64)
    with torch.no_grad():
        ref = _run(copy.deepcopy(module).double(), x.double())
        ek.patch(module)
        torch._dynamo.reset()
        out = torch.compile(module, fullgraph=True, backend="eager")(x)
    assert max(rel_l2(o, r) for o, r in zip(out, ref)) < FP32_REL_L2


def test_onednn_post_ops_match_the_plain_path(monkeypatch):
    """On CPU the MLPs run as oneDNN convolutions with GELU / the residual add fused in; the
    result equals the plain fused path (conv, NHWC GELU, conv, add), and that path still runs
    where the fused ops are unavailable."""
    from edgetam_kernels.patch import repvit as R

    if not R._conv_pointwise_works():
        pytest.skip("this torch has no oneDNN fused-conv ops (the plain path is tested above)")
    trunk = _timm_trunk(seed=3)
    x = _image(128)
    ek.patch(trunk)
    calls = []
    real = R._onednn_mlp

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(R, "_onednn_mlp", counting)
    with torch.no_grad():
        fused = _run(trunk, x)
        assert calls and all(calls) and len(calls) == 1 + 23 + 3  # stem, blocks, downsamples
        monkeypatch.setattr(R, "_CONV_POINTWISE", False)
        plain = _run(trunk, x)
    for f, p in zip(fused, plain):
        assert rel_l2(f, p) < 1e-6


def test_onednn_post_ops_step_aside_for_autocast(monkeypatch):
    """Under CPU autocast the plain path runs, so the convs follow autocast as unpatched ones
    do; the once-per-process probe, first run under autocast, still sees the fp32 ops."""
    from edgetam_kernels.patch import repvit as R

    outside = R._probe_conv_pointwise()
    monkeypatch.setattr(R, "_CONV_POINTWISE", None)
    trunk = _timm_trunk(seed=4)
    x = _image(128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert R._conv_pointwise_works() == outside
        plain = _run(trunk, x)
        ek.patch(trunk)
        fused = _run(trunk, x)
    for f, p in zip(fused, plain):
        assert f.dtype == p.dtype
        assert rel_l2(f, p) < 2e-2  # both in bf16: the fold rounds differently
