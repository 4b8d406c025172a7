"""A JPEG folder or an mp4 read by VideoPredictor gives the inputs and the masks that Meta's
predictor gives for the same path (Meta resizes a folder's frames with Pillow's bicubic, an mp4's
with decord's FFmpeg scaler; ours used to resize with torch, which alone moved 2 % of the mask
pixels on random weights).

OpenCV (opencv-python-headless) lets Meta's predictor fill holes as it does by default; without
it Meta silently skips that step, so the mask comparison needs it. decord is what Meta reads an
mp4 with; the mp4 tests need it.
"""

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")
pytest.importorskip("hydra")
PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import edgetam  # noqa: E402
from edgetam import _meta, video_io  # noqa: E402
from edgetam.predictor import Frames  # noqa: E402

SIZE = 512
H, W = 96, 136  # not square, not a divisor of SIZE: the resize filter matters
NUM_FRAMES = 4


def _clip():
    frames, centre = video_io.synthetic_clip(NUM_FRAMES, height=H, width=W)
    return frames, centre


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    frames, _ = _clip()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.jpg", quality=90)
    return str(folder)


@pytest.fixture(scope="module")
def mp4_file(tmp_path_factory):
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("mp4") / "clip.mp4"
    frames, _ = _clip()
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _meta_images(path):
    from sam2.utils.misc import load_video_frames

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_video_frames(path, SIZE, offload_video_to_cpu=True,
                                 compute_device=torch.device("cpu"))


def _ours_images(path):
    src = Frames(path, SIZE)
    return torch.stack([src[i] for i in range(len(src))]), src.height, src.width


def test_folder_inputs_equal_meta_bit_for_bit(jpeg_folder):
    theirs, th, tw = _meta_images(jpeg_folder)
    ours, oh, ow = _ours_images(jpeg_folder)
    assert (oh, ow) == (th, tw) == (H, W)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    # the old path (torch's antialiased bilinear on the full-size frames) is not Meta's
    old = torch.stack([edgetam.preprocess_frame(f, SIZE)
                       for f in video_io.read_frames(jpeg_folder)])
    assert (old - theirs).abs().max() > 0.05


def test_mp4_inputs_equal_meta_bit_for_bit(mp4_file):
    pytest.importorskip("decord")
    theirs, th, tw = _meta_images(mp4_file)
    ours, oh, ow = _ours_images(mp4_file)
    assert (oh, ow) == (th, tw) == (H, W)
    assert ours.shape == theirs.shape and torch.equal(ours, theirs)


def test_model_frames_validate(jpeg_folder, tmp_path):
    frames, hw = video_io.read_model_frames(jpeg_folder, 64, max_frames=2)
    assert len(frames) == 2 and frames[0].shape == (64, 64, 3) and hw == (H, W)
    with pytest.raises(ValueError, match="image_size"):
        video_io.read_model_frames(jpeg_folder, 0)
    with pytest.raises(video_io.VideoReadError, match="no such"):
        video_io.read_model_frames(tmp_path / "nope", 64)
    with pytest.raises(ValueError, match="already resized"):
        Frames(video_io.read_frames(jpeg_folder), 64, video_size=(H, W))
    src = Frames(frames, 64, video_size=(H, W))
    assert (src.height, src.width) == (H, W) and src[1].shape == (3, 64, 64)


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("cv2")  # Meta's own hole filling, as it runs by default
    meta = _meta.build_meta_video_predictor(SIZE)
    _meta.randomize_(meta)
    return meta, edgetam.load(meta.state_dict(), image_size=SIZE)


def _masks_meta(meta, path, prompt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = meta.init_state(path, offload_video_to_cpu=True)
        meta.add_new_points_or_box(state, 0, 1, **prompt)
        return {t: m for t, _, m in meta.propagate_in_video(state)}


def _masks_ours(ours, path, prompt):
    pred = edgetam.VideoPredictor(ours)
    state = pred.init_state(path)
    pred.add_new_points_or_box(state, 0, 1, **prompt)
    return {t: m for t, _, m in pred.propagate_in_video(state)}


@pytest.mark.parametrize("source", ["jpeg_folder", "mp4_file"])
def test_video_predictor_on_a_path_gives_metas_masks(models, source, request):
    if source == "mp4_file":
        pytest.importorskip("decord")
    path = request.getfixturevalue(source)
    meta, ours = models
    _, centre = _clip()
    prompt = dict(points=[list(centre)], labels=[1])
    with _meta.all_sdpa_kernels():
        theirs = _masks_meta(meta, path, prompt)
    mine = _masks_ours(ours, path, prompt)
    assert sorted(theirs) == sorted(mine) == list(range(NUM_FRAMES))
    for t in range(NUM_FRAMES):
        a, b = theirs[t], mine[t]
        assert a.shape == b.shape == (1, 1, H, W)
        diff = (a - b).abs().max().item()
        assert diff <= 1e-3, f"frame {t}: max |logit diff| {diff:.2e}"
        assert torch.equal(a > 0, b > 0), f"frame {t}: masks differ"
    last = theirs[NUM_FRAMES - 1]
    assert (last > 0).float().mean() > 0.001 and (last <= 0).float().mean() > 0.001
