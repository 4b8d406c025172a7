"""edgetam/: loading, predictors and bad input. No Meta code needed; a 256-pixel model keeps
every test fast (the architecture and checkpoint layout do not depend on the size)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import edgetam
from edgetam import video_io

SIZE = 256


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = edgetam.load(image_size=SIZE)
    with torch.no_grad():  # random weights say "no object": make masks flow into memory
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    return m


@pytest.fixture(scope="module")
def clip():
    frames, centre = video_io.synthetic_clip(4, height=96, width=128)
    return frames, centre


def test_import_is_dependency_light():
    code = ("import sys, edgetam, edgetam.cli, edgetam.export, edgetam.video_io; "
            "bad = [m for m in ('sam2', 'timm', 'hydra', 'torchvision', 'av', 'PIL', "
            "'transformers', 'cv2') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_load_random_warns_and_is_eval():
    with pytest.warns(UserWarning, match="RANDOM"):
        m = edgetam.load(image_size=SIZE)
    assert not m.training
    assert sum(p.numel() for p in m.parameters()) > 13_000_000


def test_fused_encoder_matches(model):
    """fuse_(): BatchNorms and token mixers folded, conv_s0 / conv_s1 folded into the FPN's
    lateral convs; every image feature within the fp32 bound of a float64 run."""
    import copy

    from edgetam_kernels.testing import rel_l2

    model = copy.deepcopy(model)
    with torch.no_grad():  # nonzero biases, so a fold that lost one would show
        for conv in (model.sam_mask_decoder.conv_s0, model.sam_mask_decoder.conv_s1,
                     model.image_encoder.neck.convs[-1].conv):
            conv.bias.normal_(std=0.1)
    fused = copy.deepcopy(model).fuse_()
    assert fused.fuse_() is fused  # idempotent
    assert isinstance(fused.sam_mask_decoder.conv_s0, torch.nn.Identity)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        exact = copy.deepcopy(model).double().image_features(x.double())
        a, b = model.image_features(x), fused.image_features(x)
        bo = fused.forward_image(x)
    for key in ("vision", "vision_pos"):
        assert rel_l2(b[key], exact[key]) < 1e-5, key
    for level in (0, 1):
        assert b["high_res"][level].shape == a["high_res"][level].shape
        assert rel_l2(b["high_res"][level], exact["high_res"][level]) < 1e-5, level
    assert torch.equal(b["vision_pos"], a["vision_pos"])
    assert [p.shape[1] for p in bo["vision_pos_enc"]] == [256, 256, 256]
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert n_bn == 0


def test_position_tables_are_reused_and_survive_edits(model):
    enc = model.image_encoder
    f = torch.zeros(1, 8, 16, 16)
    a, b = enc._position(f), enc._position(f)
    assert a is b
    ref = a.clone()
    a.add_(1.0)  # an in-place edit of a handed-out table: the next call builds it again
    c = enc._position(f)
    assert c is not a and torch.equal(c, ref)


def test_bad_image_size():
    with pytest.raises(ValueError, match="multiple of 256"):
        edgetam.EdgeTAM(image_size=500)


def test_checkpoint_roundtrip(model, tmp_path):
    path = tmp_path / "edgetam.pt"
    torch.save({"model": model.state_dict()}, path)
    m2 = edgetam.load(str(path), image_size=SIZE)
    for (k, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_checkpoint_missing(tmp_path):
    with pytest.raises(edgetam.CheckpointError, match="not found"):
        edgetam.load(str(tmp_path / "nope.pt"), image_size=SIZE)


def test_checkpoint_corrupt(model, tmp_path):
    path = tmp_path / "edgetam.pt"
    torch.save({"model": model.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated download
    with pytest.raises(edgetam.CheckpointError, match="cannot read"):
        edgetam.load(str(path), image_size=SIZE)
    path.write_text("not a checkpoint")
    with pytest.raises(edgetam.CheckpointError, match="cannot read"):
        edgetam.load(str(path), image_size=SIZE)


def test_checkpoint_of_another_model(model, tmp_path):
    sd = dict(model.state_dict())
    # a SAM 2 (Hiera) checkpoint: other trunk names
    sd = {k: v for k, v in sd.items() if not k.startswith("image_encoder.trunk.")}
    sd["image_encoder.trunk.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(edgetam.CheckpointError, match=r"missing: .*unexpected: image_encoder"):
        edgetam.load(sd, image_size=SIZE)
    with pytest.raises(edgetam.CheckpointError, match="not look like an EdgeTAM"):
        edgetam.load({"model": {"fc.weight": torch.zeros(2, 2)}}, image_size=SIZE)
    with pytest.raises(edgetam.CheckpointError, match="no state dict"):
        edgetam.load({"model": [1, 2]}, image_size=SIZE)
    bad = dict(model.state_dict())
    bad["no_obj_ptr"] = torch.zeros(1, 128)
    with pytest.raises(edgetam.CheckpointError, match="shapes do not match"):
        edgetam.load(bad, image_size=SIZE)


def _track(model, frames, prompts, **kw):
    pred = edgetam.VideoPredictor(model)
    state = pred.init_state(frames)
    for obj_id, kwargs in prompts:
        pred.add_new_points_or_box(state, 0, obj_id, **kwargs)
    return pred, state, {t: (ids, m) for t, ids, m in pred.propagate_in_video(state, **kw)}


def test_video_predictor_two_objects(model, clip):
    frames, (cx, cy) = clip
    prompts = [(1, dict(points=[[cx, cy]], labels=[1])),
               (7, dict(box=[60, 50, 90, 80]))]
    pred, state, out = _track(model, frames, prompts)
    assert sorted(out) == [0, 1, 2, 3]
    for t, (ids, m) in out.items():
        assert ids == [1, 7]
        assert m.shape == (2, 1, 96, 128) and m.dtype == torch.float32
        assert torch.isfinite(m).all()
    assert (out[2][1][0] > 0).any()  # the object is present in memory and tracked

    # objects are independent in a batch: each alone gives the same masks
    for i, p in enumerate(prompts):
        _, _, single = _track(model, frames, [p])
        for t in out:
            torch.testing.assert_close(single[t][1][0], out[t][1][i], atol=1e-4, rtol=0)

    # reset: no objects, then a fresh run reproduces the first
    pred.reset_state(state)
    assert state["obj_ids"] == [] and not state["output_dict"]["cond_frame_outputs"]
    for obj_id, kwargs in prompts:
        pred.add_new_points_or_box(state, 0, obj_id, **kwargs)
    again = {t: m for t, _, m in pred.propagate_in_video(state)}
    for t in out:
        torch.testing.assert_close(again[t], out[t][1], atol=1e-5, rtol=0)


def test_video_predictor_mask_prompt_reverse_and_remove(model, clip):
    frames, _ = clip
    pred = edgetam.VideoPredictor(model)
    state = pred.init_state(np.stack(frames))  # a (T, H, W, 3) array works too
    mask = np.zeros((96, 128), bool)
    mask[30:60, 20:50] = True
    _, ids, m = pred.add_new_mask(state, 2, "a", mask)
    assert ids == ["a"] and m.shape == (1, 1, 96, 128)
    assert ((m[0, 0] > 0).numpy() == mask).mean() > 0.95  # the mask itself is the output
    pred.add_new_points_or_box(state, 2, "b", points=[[100, 20]], labels=[1])
    order = [t for t, _, _ in pred.propagate_in_video(state, reverse=True)]
    assert order == [2, 1, 0]
    order = [t for t, _, _ in pred.propagate_in_video(state, start_frame_idx=2)]
    assert order == [2, 3]
    assert pred.remove_object(state, "a") == ["b"]
    out = list(pred.propagate_in_video(state))
    assert all(m.shape[0] == 1 and ids == ["b"] for _, ids, m in out)
    with pytest.raises(KeyError, match="unknown object id 'a'"):
        pred.remove_object(state, "a")


def test_occlusion_no_object(clip):
    """Object score <= 0: masks are NO_OBJ_SCORE and the memory gets the no-object pointer."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = edgetam.load(image_size=SIZE)
    with torch.no_grad():
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-20.0)
    frames, (cx, cy) = clip
    pred = edgetam.VideoPredictor(m)
    state = pred.init_state(frames[:3])
    pred.add_new_points_or_box(state, 0, 1, points=[[cx, cy]], labels=[1])
    out = {t: logits for t, _, logits in pred.propagate_in_video(state)}
    for t in (1, 2):
        assert torch.all(out[t] == edgetam.NO_OBJ_SCORE)
        ptr = state["output_dict"]["non_cond_frame_outputs"][t]["obj_ptr"]
        torch.testing.assert_close(ptr, m.no_obj_ptr)


def test_video_predictor_bad_input(model, clip):
    frames, (cx, cy) = clip
    pred = edgetam.VideoPredictor(model)
    with pytest.raises(ValueError, match="uint8"):
        pred.init_state([f.astype(np.float32) for f in frames])
    with pytest.raises(ValueError, match="HxWx3"):
        pred.init_state([f[..., 0] for f in frames])
    with pytest.raises(ValueError, match="no frames"):
        pred.init_state([])
    with pytest.raises(ValueError, match="same size"):
        pred.init_state([frames[0], frames[1][:50]])
    with pytest.raises(video_io.VideoReadError, match="no such video"):
        pred.init_state("/nonexistent/video.mp4")

    state = pred.init_state(frames)
    with pytest.raises(RuntimeError, match="no prompts"):
        list(pred.propagate_in_video(state))
    with pytest.raises(ValueError, match=r"outside the frame: x must lie in \[0, 128\]"):
        pred.add_new_points_or_box(state, 0, 1, points=[[130, 10]], labels=[1])
    with pytest.raises(ValueError, match="outside the frame"):
        pred.add_new_points_or_box(state, 0, 1, points=[[10, -1]], labels=[1])
    with pytest.raises(ValueError, match="outside the frame"):
        pred.add_new_points_or_box(state, 0, 1, box=[0, 0, 200, 50])
    with pytest.raises(ValueError, match="x0 < x1"):
        pred.add_new_points_or_box(state, 0, 1, box=[50, 0, 10, 50])
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        pred.add_new_points_or_box(state, 0, 1, points=[[1, 1], [2, 2]], labels=[1])
    with pytest.raises(ValueError, match="labels must be 0"):
        pred.add_new_points_or_box(state, 0, 1, points=[[1, 1]], labels=[3])
    with pytest.raises(ValueError, match="together"):
        pred.add_new_points_or_box(state, 0, 1, points=[[1, 1]])
    with pytest.raises(ValueError, match="points .* or a box"):
        pred.add_new_points_or_box(state, 0, 1)
    with pytest.raises(IndexError, match="outside the video"):
        pred.add_new_points_or_box(state, 4, 1, points=[[1, 1]], labels=[1])
    with pytest.raises(TypeError, match="obj_id"):
        pred.add_new_points_or_box(state, 0, 1.5, points=[[1, 1]], labels=[1])
    assert state["obj_ids"] == []  # nothing registered by the failed calls
    with pytest.raises(KeyError, match="unknown object id 3"):
        pred.remove_object(state, 3)

    pred.add_new_points_or_box(state, 0, 1, points=[[cx, cy]], labels=[1])
    list(pred.propagate_in_video(state))
    with pytest.raises(RuntimeError, match="after tracking has started"):
        pred.add_new_points_or_box(state, 0, 2, points=[[cx, cy]], labels=[1])
    # a correction click on a tracked frame of a known object is fine
    _, ids, m = pred.add_new_points_or_box(state, 2, 1, points=[[cx, cy]], labels=[1])
    assert ids == [1] and m.shape == (1, 1, 96, 128)


def test_image_predictor(model, clip):
    frames, (cx, cy) = clip
    pred = edgetam.ImagePredictor(model)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(point_coords=[[cx, cy]], point_labels=[1])
    pred.set_image(frames[0])
    masks, iou, low = pred.predict(point_coords=[[cx, cy]], point_labels=[1])
    assert masks.shape == (3, 96, 128) and masks.dtype == bool
    assert iou.shape == (3,) and low.shape == (3, SIZE // 4, SIZE // 4)
    masks, iou, low2 = pred.predict(box=[20, 20, 60, 60], mask_input=low[:1],
                                    multimask_output=False, return_logits=True)
    assert masks.shape == (1, 96, 128) and masks.dtype == np.float32
    with pytest.raises(ValueError, match="outside the frame"):
        pred.predict(point_coords=[[500, 1]], point_labels=[1])


def _holes_reference(fg: np.ndarray, max_area: int) -> np.ndarray:
    """Flood fill (8-connectivity) of each component; True where its area <= max_area."""
    h, w = fg.shape
    seen = np.zeros_like(fg)
    out = np.zeros_like(fg)
    for y in range(h):
        for x in range(w):
            if not fg[y, x] or seen[y, x]:
                continue
            stack, comp = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                comp.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            if len(comp) <= max_area:
                for cy, cx in comp:
                    out[cy, cx] = True
    return out


@pytest.mark.parametrize("max_area", [1, 3, 8, 30])
def test_fill_holes(max_area):
    from edgetam.postprocess import fill_holes

    g = torch.Generator().manual_seed(max_area)
    x = torch.randn(3, 1, 5, 6, generator=g)
    x = torch.nn.functional.interpolate(x, size=(40, 48), mode="bilinear")
    x = x + 0.5 * torch.randn(3, 1, 40, 48, generator=g)
    got = fill_holes(x, max_area)
    for i in range(3):
        holes = _holes_reference((x[i, 0] <= 0).numpy(), max_area)
        want = torch.where(torch.from_numpy(holes), torch.tensor(0.1), x[i, 0])
        assert torch.equal(got[i, 0], want)
    assert torch.equal(fill_holes(x, 0), x)
    try:  # Meta's CPU path uses OpenCV's connected components: same result
        import cv2  # noqa: F401
        from sam2.utils.misc import fill_holes_in_mask_scores
    except ImportError:
        return
    assert torch.equal(fill_holes_in_mask_scores(x.clone(), max_area), got)
