"""Live sources (edgetam/stream.py) and `python -m edgetam track --stream`, without a network or
a camera: a video file the test writes, the same file as a `file:` URL through the same PyAV
open call, a fake camera (the PyAV call answered from the file) and Ctrl-C mid-stream."""

import json
import os

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("PIL")

from edgetam import stream, video_io  # noqa: E402
from edgetam.cli import main  # noqa: E402

H, W, N = 48, 64, 5


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames, centre = video_io.synthetic_clip(N, height=H, width=W)
    path = tmp_path_factory.mktemp("stream") / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path), centre


def _all(src):
    with src:
        return list(src)


def test_file_read_frame_by_frame_equals_whole_read(clip):
    path, _ = clip
    whole = video_io.read_frames(path)
    src = stream.open_source(path)
    it = iter(src)
    first = next(it)
    assert src.frames_read == 1  # nothing read ahead
    rest = list(it)
    src.close()
    got = [first] + rest
    assert len(got) == len(whole) == N
    assert all(a.dtype == np.uint8 and a.shape == (H, W, 3) and np.array_equal(a, b)
               for a, b in zip(got, whole))
    assert len(_all(stream.open_source(path, max_frames=2))) == 2


def test_file_url_goes_through_the_same_open(clip, monkeypatch):
    path, _ = clip
    calls = []
    real = stream.open_container
    monkeypatch.setattr(stream, "open_container",
                        lambda url, **kw: calls.append((url, kw)) or real(url, **kw))
    url = "file:" + path
    assert stream.is_url(url) and stream.is_live(url) and not stream.is_live(path)
    got = _all(stream.open_source(url))
    assert calls and calls[0][0] == url
    assert len(got) == N and all(np.array_equal(a, b)
                                 for a, b in zip(got, video_io.read_frames(path)))


def test_fake_camera(clip, monkeypatch):
    path, _ = clip
    calls = []

    def fake_open(url, format=None, options=None, timeout=None):
        calls.append((url, format))
        return av.open(path)  # the "camera" plays the file

    monkeypatch.setattr(stream, "open_container", fake_open)
    monkeypatch.setattr(stream.sys, "platform", "linux")
    assert stream.is_camera("0") and stream.is_live("2")
    src = stream.open_source("2", max_frames=3)
    assert "camera 2" in src.description
    assert len(_all(src)) == 3
    assert calls == [("/dev/video2", "v4l2")]
    assert stream.camera_url(0, "darwin") == ("0", "avfoundation")
    with pytest.raises(video_io.VideoReadError, match="camera 1"):
        stream.camera_url(1, "win32")


def test_folder_source_and_errors(tmp_path):
    from PIL import Image

    frames, _ = video_io.synthetic_clip(3, height=H, width=W)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{[2, 10, 11][i]}.png")
    got = _all(stream.open_source(str(tmp_path)))
    assert all(np.array_equal(a, b) for a, b in zip(got, frames))
    with pytest.raises(video_io.VideoReadError, match="no such"):
        stream.open_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(video_io.VideoReadError, match="cannot open"):
        stream.open_source("file:" + str(tmp_path / "nope.mp4"))
    with pytest.raises(ValueError, match="max_frames"):
        stream.open_source(str(tmp_path), max_frames=0)


def test_fps_meter():
    now = [0.0]
    meter = stream.FpsMeter(lambda: now[0], window_s=1.0)
    lines = []
    for _ in range(6):
        now[0] += 0.5
        lines.append(meter.add(0.4))
    assert [bool(x) for x in lines] == [False, True] * 3
    assert "2.00 FPS now" in lines[1]
    assert meter.mean_fps() == pytest.approx(2.0) and meter.mean_step_ms() == pytest.approx(400)
    assert meter.frames == 6


def _cli(*args):
    return main(["track", *args, "--image-size", "512", "--threads", "1", "--no-progress"])


def test_cli_stream_url(clip, tmp_path, capsys):
    path, (cx, cy) = clip
    out = tmp_path / "out"
    assert _cli("file:" + path, "--point", f"{cx:.0f},{cy:.0f}", "--frames", "3",
                "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "FPS" in captured.out and "end of stream after 3 frame(s)" in captured.out
    assert sorted(os.listdir(out)) == ["masks", "summary.json"]
    assert sorted(os.listdir(out / "masks")) == ["00000.png", "00001.png", "00002.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "stream" and summary["frames"] == 3
    assert summary["stopped_by"] is None and summary["fps"] > 0
    assert summary["tracker_state_bytes"] > 0


def test_cli_stream_ctrl_c_writes_summary(clip, tmp_path, capsys, monkeypatch):
    path, (cx, cy) = clip

    def camera_then_ctrl_c(spec, max_frames=None):
        assert spec == "0"

        def frames():
            yield from video_io.read_frames(path)[:3]
            raise KeyboardInterrupt

        return stream.FrameSource(frames, "fake camera 0", max_frames)

    monkeypatch.setattr(stream, "open_source", camera_then_ctrl_c)
    out = tmp_path / "out"
    # a camera index implies --stream
    assert _cli("0", "--point", f"{cx:.0f},{cy:.0f}", "--out", str(out)) == 0
    assert "stopped by Ctrl-C after 3 frame(s)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupt" and summary["frames"] == 3
    assert len(os.listdir(out / "masks")) == 3
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".edgetam-tmp")]


@pytest.mark.parametrize("case", ["no_prompt", "unopenable", "outside"])
def test_cli_stream_bad_input_writes_nothing(clip, tmp_path, capsys, case):
    path, _ = clip
    args = {"no_prompt": [path, "--stream"],
            "unopenable": ["file:" + str(tmp_path / "nope.mp4"), "--point", "1,1"],
            "outside": [path, "--stream", "--point", f"{W + 5},1"]}[case]
    before = sorted(os.listdir(tmp_path))
    assert _cli(*args, "--out", str(tmp_path / "out")) == 2
    assert "error:" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before
