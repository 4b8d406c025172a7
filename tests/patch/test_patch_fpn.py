"""patch(..., fuse_encoder=True) around the FPN neck (edgetam_kernels/patch/fpn.py).

Meta's `forward_image` and HF's `get_image_features` with the lateral conv of levels 0 and 1
folded into the mask decoder's conv_s0 / conv_s1, and the sine position encodings served from
per-shape tables. Checked: every output against a float64 run of the unpatched model (relative
L2 within the fp32 bound) and the position encodings bit for bit; a fold that drops a bias
fails that; structures the fold does not cover (top-down fusion into level 1, hooks) run the
original; tables survive in-place edits of what they handed out; unpatch, idempotence,
fuse_encoder=False, gradients.
"""

import copy

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels.patch import fpn as _adapters_fpn
from edgetam_kernels.testing import rel_l2

from edgetam_kernels.testing import hosts as M

pytest.importorskip("timm")

FP32_REL_L2 = 1e-5
SIZE = 256  # levels 64x64, 32x32, 16x16 (+ 8x8, dropped)


def _model(kind: str):
    """Random weights; the folded convs' biases random too (HF initialises them to zero, and a
    fold that lost a bias would not show)."""
    model = M.meta_video_predictor(SIZE) if kind == "meta" else M.hf_model(SIZE)
    neck = model.image_encoder.neck if kind == "meta" else model.vision_encoder.neck
    dec = model.sam_mask_decoder if kind == "meta" else model.mask_decoder
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for conv in [dec.conv_s0, dec.conv_s1] + [c for c in neck.convs.modules()
                                                  if isinstance(c, torch.nn.Conv2d)]:
            conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=gen))
    return model


def _features(kind: str, model, x):
    """(fpn maps, position encodings) as lists, whichever model."""
    with torch.no_grad():
        if kind == "meta":
            out = model.forward_image(x)
            assert out["vision_features"] is out["backbone_fpn"][-1]
            return list(out["backbone_fpn"]), list(out["vision_pos_enc"])
        out = model.get_image_features(x)
        return list(out.fpn_hidden_states), list(out.fpn_position_encoding)


@pytest.fixture(scope="module", params=["meta", "hf"])
def case(request):
    kind = request.param
    model = _model(kind)
    x = M.random_clip(1, SIZE, seed=3)
    plain = _features(kind, model, x)
    exact = _features(kind, copy.deepcopy(model).double(), x.double())
    return kind, model, x, plain, exact


def _patched(kind, model, folds: bool = True):
    patched = ek.patch(copy.deepcopy(model), backend="reference")
    method = "forward_image" if kind == "meta" else "get_image_features"
    assert (method in patched.__dict__) == folds
    return patched


def test_matches_float64_and_position_bit_identical(case):
    kind, model, x, (maps0, pos0), (maps64, _) = case
    maps, pos = _features(kind, _patched(kind, model), x)
    assert [m.shape for m in maps] == [m.shape for m in maps0]
    for level, (got, plain, exact) in enumerate(zip(maps, maps0, maps64)):
        assert got.dtype == plain.dtype
        err, err_plain = rel_l2(got, exact), rel_l2(plain, exact)
        assert err < FP32_REL_L2, (level, err, err_plain)
    for got, plain in zip(pos, pos0):
        assert torch.equal(got, plain)


def test_the_hosts_own_calls_take_the_fold(case, monkeypatch):
    """As the trackers call it (HF passes return_dict=True): the neck's forward never runs,
    and the result is the same as a direct call's."""
    kind, model, x, _, _ = case
    patched = _patched(kind, model)
    neck = patched.image_encoder.neck if kind == "meta" else patched.vision_encoder.neck
    calls = []
    real = type(neck).forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    with torch.no_grad():
        direct = _features(kind, patched, x)[0]
        monkeypatch.setattr(type(neck), "forward", counting)
        if kind == "meta":
            maps = patched.forward_image(x)["backbone_fpn"]
        else:
            maps = patched.get_image_features(x, return_dict=True).fpn_hidden_states
            # an option the fold does not cover goes to the original: its own error here
            with pytest.raises(ValueError, match="output_hidden_states"):
                patched.get_image_features(x, output_hidden_states=True)
    assert calls == []
    for a, b in zip(maps, direct):
        assert torch.equal(a, b)


def test_trunk_layout_kept_inside_the_fold_only(case, monkeypatch):
    """On CPU the fold reads the trunk's channels-last outputs as they are (no contiguous
    copies); a direct call of the trunk still gets contiguous ones."""
    from edgetam_kernels.patch import repvit as _adapters_repvit

    kind, model, x, (maps0, _), _ = case
    patched = _patched(kind, model)
    nets = [m for m in patched.modules() if type(m).__name__ == "FeatureListNet"]
    assert len(nets) == 1 and "forward" in nets[0].__dict__  # HF calls .forward() directly
    copies = []
    real = _adapters_repvit._contiguous
    monkeypatch.setattr(_adapters_repvit, "_contiguous", lambda out: copies.append(1) or real(out))
    maps = _features(kind, patched, x)[0]
    assert copies == []
    for got, plain in zip(maps, maps0):  # the hosts' layout (HF's: views of NCHW maps)
        assert got.shape == plain.shape and got.stride() == plain.stride()
    with torch.no_grad():
        direct = nets[0].forward(x)
    assert copies and all(t.is_contiguous() for t in direct)


def test_a_wrong_fold_fails(case, monkeypatch):
    """The comparison above can fail: the fold without the lateral conv's bias is off by far
    more than the bound (the conv biases are nonzero)."""
    kind, model, x, _, (maps64, _) = case

    def no_bias(w_1, b_1, w_2, b_2, out_dtype):
        return real(w_1, None, w_2, b_2, out_dtype)

    real = _adapters_fpn.compose_linear
    monkeypatch.setattr(_adapters_fpn, "compose_linear", no_bias)
    maps, _ = _features(kind, _patched(kind, model), x)
    assert rel_l2(maps[0], maps64[0]) > 100 * FP32_REL_L2
    assert rel_l2(maps[2], maps64[2]) < FP32_REL_L2  # level 2 is not folded


def test_top_down_into_level_1_runs_the_original(case):
    """Declined when patching, and at call time for a model patched while it was foldable."""
    kind, model, x, _, _ = case

    def neck_of(m):
        return m.image_encoder.neck if kind == "meta" else m.vision_encoder.neck

    def encoder_off(m):  # compare the FPN part alone: the trunk unfused in both
        ek.unpatch(m.image_encoder.trunk if kind == "meta" else m.vision_encoder.backbone)
        return m

    changed = copy.deepcopy(model)
    neck_of(changed).fpn_top_down_levels = [1, 2, 3]
    plain = _features(kind, changed, x)
    assert rel_l2(plain[0][1], _features(kind, model, x)[0][1]) > 1e-3  # level 1 did change
    for patched in (encoder_off(_patched(kind, changed, folds=False)),
                    encoder_off(_patched(kind, model))):
        neck_of(patched).fpn_top_down_levels = [1, 2, 3]
        got = _features(kind, patched, x)
        for a, b in zip(got[0] + got[1], plain[0] + plain[1]):
            assert torch.equal(a, b)


def test_hooks_run_the_original(case):
    kind, model, x, _, _ = case
    patched = _patched(kind, model)
    neck = patched.image_encoder.neck if kind == "meta" else patched.vision_encoder.neck
    seen = []
    handle = neck.register_forward_hook(lambda m, i, o: seen.append(1))
    _features(kind, patched, x)
    assert seen == [1]
    handle.remove()
    _features(kind, patched, x)
    assert seen == [1]


def test_unpatch_idempotent_and_option(case):
    kind, model, x, (maps0, pos0), _ = case
    method = "forward_image" if kind == "meta" else "get_image_features"
    patched = _patched(kind, model)
    ek.patch(patched, backend="reference")  # again: same forwards
    first = _features(kind, patched, x)
    ek.unpatch(patched)
    assert method not in patched.__dict__
    for a, b in zip(_features(kind, patched, x)[0], maps0):
        assert torch.equal(a, b)
    ek.patch(patched, backend="reference", fuse_encoder=False)
    assert method not in patched.__dict__
    ek.patch(patched, backend="reference")
    for a, b in zip(_features(kind, patched, x)[0], first[0]):
        assert torch.equal(a, b)


def test_gradients_reach_the_folded_weights(case):
    kind, model, x, _, _ = case
    model = copy.deepcopy(model)
    dec = model.sam_mask_decoder if kind == "meta" else model.mask_decoder
    neck = model.image_encoder.neck if kind == "meta" else model.vision_encoder.neck
    lateral0 = neck.convs[-1].conv if kind == "meta" else neck.convs[-1]
    weights = (dec.conv_s0.weight, lateral0.weight, lateral0.bias)

    def grads(m):
        fn = m.forward_image if kind == "meta" else m.get_image_features
        out = fn(x)
        level0 = out["backbone_fpn"][0] if kind == "meta" else out.fpn_hidden_states[0]
        return torch.autograd.grad(level0.square().sum(), weights)

    plain = grads(model)
    ek.patch(model, backend="reference", fuse_encoder=True)
    for got, ref in zip(grads(model), plain):
        assert rel_l2(got, ref) < 1e-4


def _meta_sine():
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    return PositionEmbeddingSine(num_pos_feats=64, normalize=True)


def test_meta_position_table():
    pe = _meta_sine()
    x1, x3 = torch.zeros(1, 8, 12, 20), torch.zeros(3, 8, 12, 20)
    ref1, ref3 = pe(x1).clone(), pe(x3).clone()
    ek.patch(pe)
    a, b = pe(x1), pe(x1)
    assert torch.equal(a, ref1) and a.is_contiguous()
    assert a.data_ptr() == b.data_ptr()  # one table, handed out as it is
    c = pe(x3)
    assert torch.equal(c, ref3) and c.is_contiguous() and c.data_ptr() != a.data_ptr()
    a.mul_(0)  # someone edits what they got: the next call builds the table again
    assert torch.equal(pe(x1), ref1)
    with torch.inference_mode():
        d = pe(torch.zeros(1, 8, 6, 10))
    ref_d = d.clone()
    d.add_(1)  # usable outside inference mode, and edits are seen there too
    assert torch.equal(pe(torch.zeros(1, 8, 6, 10)), ref_d)
    assert pe(torch.zeros(0, 8, 12, 20)).shape == (0, 64, 12, 20)
    ek.unpatch(pe)
    assert torch.equal(pe(x1), ref1)


def test_hf_position_table():
    from transformers.models.edgetam.modeling_edgetam import EdgeTamSinePositionEmbedding

    pe = EdgeTamSinePositionEmbedding(num_position_features=32, normalize=True)
    shapes = [torch.Size((1, 64, 16, 16)), torch.Size((1, 64, 8, 8)), torch.Size((2, 64, 8, 8))]
    refs = [pe(s, "cpu", torch.float32).clone() for s in shapes]
    ek.patch(pe)
    for _ in range(2):  # more shapes than HF's own cache holds
        for s, ref in zip(shapes, refs):
            assert torch.equal(pe(s, "cpu", torch.float32), ref)
    got = pe(shapes[0], "cpu", torch.float32)
    got.zero_()
    assert torch.equal(pe(shapes[0], "cpu", torch.float32), refs[0])
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    assert torch.equal(pe(shapes[0], "cpu", torch.float32, mask=mask),
                       EdgeTamSinePositionEmbedding.build_sine_position_embedding(
                           shapes[0], "cpu", torch.float32, 32, True, pe.scale, 10000, mask))
