"""`python -m edgetam track`: the demo on the synthetic clip, real inputs, and bad input leaving
nothing half-written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgetam import video_io
from edgetam.cli import main

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _run(tmp_path, *args):
    return main(["track", *args, "--image-size", "512", "--no-progress"])


def test_synthetic_demo(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "runs" / "demo"  # parents that do not exist yet are created
    assert _run(tmp_path, "--out", str(out), "--frames", "3", "--threads", "1") == 0
    assert torch.get_num_threads() == threads  # restored
    captured = capsys.readouterr()
    assert "RANDOM" in captured.err and "timings only" in captured.out
    assert "ms/frame" in captured.out and "FPS" in captured.out
    names = sorted(os.listdir(out))
    assert names == ["masks", "overlay.gif", "summary.json"]
    assert sorted(os.listdir(out / "masks")) == ["00000.png", "00001.png", "00002.png"]
    mask = np.asarray(Image.open(out / "masks" / "00000.png"))
    assert mask.shape == (240, 320) and set(np.unique(mask)) <= {0, 255}
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["random_weights"] is True
    assert summary["fps"] > 0 and len(summary["frame_ms"]) == 3 and summary["threads"] >= 1
    assert os.listdir(tmp_path / "runs") == ["demo"]  # no temp folder left


def test_frame_folder_and_box(tmp_path):
    frames, _ = video_io.synthetic_clip(3, height=64, width=80)
    src = tmp_path / "frames"
    src.mkdir()
    for i, f in enumerate(frames):  # natural order: 2 < 10
        Image.fromarray(f).save(src / f"{[2, 10, 11][i]}.png")
    out = tmp_path / "out"
    assert _run(tmp_path, str(src), "--box", "10,10,40,40", "--out", str(out)) == 0
    assert len(os.listdir(out / "masks")) == 3
    assert np.asarray(Image.open(out / "masks" / "00000.png")).shape == (64, 80)


def test_mp4(tmp_path):
    av = pytest.importorskip("av")
    frames, (cx, cy) = video_io.synthetic_clip(3, height=64, width=80)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 80, 64, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert len(video_io.read_frames(path)) == 3
    out = tmp_path / "out"
    assert _run(tmp_path, str(path), "--point", f"{cx:.0f},{cy:.0f}", "--out", str(out),
                "--frames", "2") == 0
    assert len(os.listdir(out / "masks")) == 2


@pytest.mark.parametrize("case", ["unreadable", "missing", "no_prompt", "outside", "checkpoint",
                                  "corrupt_checkpoint", "not_empty", "bad_frames", "threads",
                                  "under_a_file"])
def test_bad_input_writes_nothing(tmp_path, capsys, case):
    # missing parents of --out are created only once the results are written: not on error
    out = tmp_path / "new" / "out"
    args = ["--out", str(out)]
    if case == "unreadable":
        bad = tmp_path / "clip.mp4"
        bad.write_bytes(b"this is not a video")
        args = [str(bad), "--point", "1,1"] + args
    elif case == "missing":
        args = [str(tmp_path / "nope.mp4"), "--point", "1,1"] + args
    elif case == "no_prompt":
        folder = tmp_path / "frames"
        folder.mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "0.jpg")
        args = [str(folder)] + args
    elif case == "outside":
        args = ["--point", "1000,10"] + args
    elif case == "checkpoint":
        args = ["--checkpoint", str(tmp_path / "edgetam.pt")] + args
    elif case == "corrupt_checkpoint":
        (tmp_path / "edgetam.pt").write_bytes(b"\x80\x04garbage")
        args = ["--checkpoint", str(tmp_path / "edgetam.pt")] + args
    elif case == "not_empty":
        out = tmp_path / "out"
        args = ["--out", str(out)]
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "bad_frames":
        args = ["--frames", "0"] + args
    elif case == "threads":
        args = ["--threads", "zero"] + args
    elif case == "under_a_file":
        (tmp_path / "file").write_text("mine")
        args = ["--out", str(tmp_path / "file" / "sub" / "out")]
    before = sorted(os.listdir(tmp_path))
    assert _run(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert sorted(os.listdir(tmp_path)) == before  # no output folder, no temp folder
    if case == "not_empty":
        assert os.listdir(out) == ["keep.txt"]


def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgetam", "track", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--checkpoint" in r.stdout
    r = subprocess.run([sys.executable, "-m", "edgetam", "track", "--point", "1,2,3",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "X,Y" in r.stderr
