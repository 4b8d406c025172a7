"""edgetam/ against Meta's implementation (package `sam2`, edgetam-dimos) on the same random
weights: checkpoint layout and per-frame mask logits over a 10-frame clip.

Meta's model is built offline (no ImageNet download) by `edgetam._meta`; BatchNorm statistics,
norms and biases are randomized so they are tested too, and the object-score bias is positive so
masks flow into memory. Meta's spatial perceiver cannot run a batch of several objects (a
`.view` on an expanded tensor), so for two objects each is tracked by its own Meta predictor and
compared with our batched run. Hole filling (fill_hole_area 8, Meta's default) runs in both,
with edgetam's connected components in Meta's predictor too (its own path needs OpenCV on
CPU; `tests/edgetam/test_edgetam_api.py` checks ours against a reference and OpenCV).
"""

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")
pytest.importorskip("hydra")
pytest.importorskip("timm")

import edgetam  # noqa: E402
from edgetam import _meta, video_io  # noqa: E402

TOL = 1e-3  # fp32, absolute, on mask logits of magnitude ~10
NUM_FRAMES = 10
FRAMES, CENTRE = video_io.synthetic_clip(NUM_FRAMES)
H, W = FRAMES[0].shape[:2]
PROMPTS = [
    (1, dict(points=[list(CENTRE)], labels=[1])),      # one click: multimask path
    (2, dict(box=[140.0, 128.0, 196.0, 196.0])),        # a box: single mask + stability
]


@pytest.fixture(autouse=True, scope="module")
def _meta_any_sdpa_kernel():
    """Meta's attention on any SDPA kernel (its CPU default forces the slow math path) for
    this module only: the setting is Meta's process-wide global, other tests expect Meta's own
    behaviour."""
    with _meta.all_sdpa_kernels():
        yield


def _build(image_size):
    meta = _meta.build_meta_video_predictor(image_size)
    _meta.randomize_(meta)
    ours = edgetam.load(meta.state_dict(), image_size=image_size)
    return meta, ours


def _run_meta(meta, image_size, prompts, monkeypatch_frames):
    state = _meta.init_state_on(meta, FRAMES, image_size)
    out = {}
    with _meta.our_hole_filling():  # Meta's own needs OpenCV on CPU, else it is skipped
        for obj_id, kw in prompts:
            _, _, m = meta.add_new_points_or_box(state, 0, obj_id, **kw)
            out["prompt"] = m
        for t, _, m in meta.propagate_in_video(state):
            out[t] = m
    return out


def _run_ours(ours, prompts):
    pred = edgetam.VideoPredictor(ours)
    state = pred.init_state(FRAMES)
    out = {}
    for obj_id, kw in prompts:
        _, _, m = pred.add_new_points_or_box(state, 0, obj_id, **kw)
        out["prompt"] = m
    for t, _, m in pred.propagate_in_video(state):
        out[t] = m
    return out


def _compare(meta_out, ours_out, label):
    assert set(meta_out) == set(ours_out)
    worst = 0.0
    for t in range(NUM_FRAMES):
        a, b = meta_out[t], ours_out[t]
        assert a.shape == b.shape, (t, a.shape, b.shape)
        diff = (a - b).abs().max().item()
        worst = max(worst, diff)
        assert diff <= TOL, f"{label} frame {t}: max |logit diff| {diff:.2e}"
    # the comparison means something: real masks, large logits, not all "no object"
    last = meta_out[NUM_FRAMES - 1]
    assert last.abs().max() > 2.0 and ((last > 0).float().mean() > 0.001)
    print(f"\n{label}: max |mask logit diff| over {NUM_FRAMES} frames = {worst:.2e}")
    return worst


@pytest.fixture(scope="module")
def models512():
    return _build(512)


def test_checkpoint_layout_matches_meta(models512):
    meta, ours = models512
    theirs, mine = meta.state_dict(), ours.state_dict()
    assert set(theirs) == set(mine)
    assert all(theirs[k].shape == mine[k].shape for k in theirs)
    fresh = edgetam.EdgeTAM(image_size=512)
    result = fresh.load_state_dict(theirs, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_image_features_match_meta(models512):
    meta, ours = models512
    x = torch.randn(1, 3, 512, 512)
    with torch.inference_mode():
        a = meta.forward_image(x)
        b = ours.forward_image(x)
    for fa, fb in zip(a["backbone_fpn"], b["backbone_fpn"]):
        torch.testing.assert_close(fb, fa, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b["vision_pos_enc"][-1], a["vision_pos_enc"][-1])


@pytest.fixture(scope="module")
def runs512(models512):
    meta, ours = models512
    meta_single = [_run_meta(meta, 512, [p], None) for p in PROMPTS]
    return {
        "meta": meta_single,
        "ours1": _run_ours(ours, PROMPTS[:1]),
        "ours2": _run_ours(ours, PROMPTS),
    }


def test_parity_512_one_object(runs512):
    _compare(runs512["meta"][0], runs512["ours1"], "512, 1 object")


def test_parity_512_two_objects(runs512):
    both = {t: torch.cat([r[t] for r in runs512["meta"]]) for t in range(NUM_FRAMES)}
    ours = {t: runs512["ours2"][t] for t in range(NUM_FRAMES)}
    _compare(both, ours, "512, 2 objects")


@pytest.fixture(scope="module")
def models1024():
    return _build(1024)


def test_parity_1024_one_object(models1024):
    meta, ours = models1024
    _compare({k: v for k, v in _run_meta(meta, 1024, PROMPTS[:1], None).items()},
             _run_ours(ours, PROMPTS[:1]), "1024, 1 object")


@pytest.mark.slow
def test_parity_1024_two_objects(models1024):
    meta, ours = models1024
    meta_runs = [_run_meta(meta, 1024, [p], None) for p in PROMPTS]
    both = {t: torch.cat([r[t] for r in meta_runs]) for t in range(NUM_FRAMES)}
    mine = _run_ours(ours, PROMPTS)
    _compare(both, {t: mine[t] for t in range(NUM_FRAMES)}, "1024, 2 objects")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_image_predictor_matches_meta(models1024):
    """Single-image segmentation against Meta's SAM2ImagePredictor (its own preprocessing:
    torchvision resize + normalize), 1024 input (Meta's image predictor is fixed to it)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    meta, ours = models1024
    theirs = SAM2ImagePredictor(meta)
    mine = edgetam.ImagePredictor(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.set_image(FRAMES[0])
    mine.set_image(FRAMES[0])
    cases = [dict(point_coords=[list(CENTRE)], point_labels=[1]),
             dict(box=[140.0, 128.0, 196.0, 196.0], multimask_output=False),
             dict(point_coords=[list(CENTRE), [20.0, 20.0]], point_labels=[1, 0],
                  multimask_output=False)]
    for kw in cases:
        np_kw = {k: (np.asarray(v, dtype=np.float32) if k != "multimask_output" else v)
                 for k, v in kw.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m_a, iou_a, low_a = theirs.predict(return_logits=True, **np_kw)
        m_b, iou_b, low_b = mine.predict(return_logits=True, **kw)
        assert m_a.shape == m_b.shape
        assert np.abs(m_a - m_b).max() <= TOL, kw
        assert np.abs(iou_a - iou_b).max() <= 1e-4, kw
        assert np.abs(low_a - low_b).max() <= TOL, kw


def test_random_edgetam_depends_on_the_seed_alone():
    """The weights a .pte is exported from and the model that later tracks with it may be made
    in different processes: they must come from the seed, not the global random state."""
    torch.manual_seed(123)
    a = _meta.random_edgetam(256, seed=0)
    after = torch.rand(3)
    torch.manual_seed(456)
    b = _meta.random_edgetam(256, seed=0)
    c = _meta.random_edgetam(256, seed=1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the caller's random state is left as it was
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training
