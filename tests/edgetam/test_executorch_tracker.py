"""The tracking step as a .pte (python -m edgetam export) tracks a 24-frame clip as the eager
Tracker does, with 1 and 3 objects, at 256 (random weights, fp32 model; the memory bank is
bf16 in both): through ExecuTorch's Python runtime (PteTracker) and through the C++ runner.

Runs in CI (issue 19: the x86-64 parity): about 2 minutes per object count on a quiet 2-core
machine, nearly all of it lowering the whole step with XNNPACK. The aarch64 runner tracks the
same clip under qemu in scripts/pte_aarch64_clip.py (too slow for CI)."""

from __future__ import annotations

import copy
import os
import subprocess
import warnings

import numpy as np
import pytest
import torch

import edgetam
from edgetam import _meta, video_io
from edgetam.tracker import Tracker

if os.environ.get("CI"):  # CI installs the extra (scripts/setup.sh): a missing one is a failure
    import executorch.exir  # noqa: F401
pytest.importorskip("executorch.exir", reason="the executorch extra is not installed")
from edgetam import pte  # noqa: E402
from edgetam_kernels import executorch as ket  # noqa: E402

S = 256
FRAMES, CENTRE = video_io.synthetic_clip(24, 96, 128)
POINTS = [CENTRE, (100.0, 70.0), (20.0, 80.0)]  # the disc, the blue square, background
MASK_AGREE = 0.999
LOGIT_TOL = 1e-3


@pytest.fixture(scope="module")
def model():
    # object score positive, realistic logits: masks flow into memory
    return _meta.random_edgetam(S, seed=0)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The step exported once per object count."""
    cache = {}

    def get(n):
        if n not in cache:
            path = tmp_path_factory.mktemp("pte") / f"step{n}.pte"
            cache[n] = (path, pte.export_step(model, path, num_objects=n))
        return cache[n]

    return get


def _prompt(tracker, n):
    ids = list(range(1, n + 1))
    return tracker.add(FRAMES[0], ids, points=[[list(p)] for p in POINTS[:n]],
                       labels=[[1] for _ in range(n)])


def _compare(got, want, what):
    diff = (got - want).abs().max().item()
    agree = ((got > 0) == (want > 0)).float().mean().item()
    assert diff <= LOGIT_TOL, f"{what}: logits differ by {diff:.2e}"
    assert agree >= MASK_AGREE, f"{what}: masks agree on {agree:.5f} of pixels"


@pytest.mark.parametrize("n", [1, 3])
def test_pte_tracks_like_eager(model, exported, n, tmp_path):
    path, info = exported(n)
    assert {"rope_attention", "spatial_perceiver"} <= set(info["fused_ops"])
    assert "edgetam::rope_attention.out" in info["operators"]

    eager, on_pte = Tracker(model, graph=False), pte.PteTracker(model, path, num_objects=n)
    _prompt(eager, n)
    _prompt(on_pte, n)
    start_state = eager.state()
    for t, frame in enumerate(FRAMES[1:], start=1):
        a, b = eager.track(frame), on_pte.track(frame)
        _compare(b.mask_logits, a.mask_logits, f"Python runtime, {n} object(s), frame {t}")

    # The C++ runner from the same start state: low-res logits as the step returns them.
    probe = Tracker(model, graph=False)
    _prompt(probe, n)
    steps = pte.write_runner_clip(probe, FRAMES[1:], tmp_path / "in")
    (tmp_path / "out").mkdir()
    r = subprocess.run([str(ket.runner_path()), str(path), str(tmp_path / "in"),
                        str(tmp_path / "out"), "--steps", str(steps), "--feedback", "2"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    logits = torch.from_numpy(np.fromfile(tmp_path / "out" / "output_0.bin", np.float32))
    logits = logits.view(steps, n, 1, S // 4, S // 4)
    state = start_state
    with torch.no_grad():
        for t, frame in enumerate(FRAMES[1:]):
            want, _, *state = eager.step(eager._image(frame)[0], *state)
            _compare(logits[t], want, f"C++ runner, {n} object(s), frame {t + 1}")


def test_pte_of_another_size_is_refused(model, exported):
    path, _ = exported(1)
    with pytest.raises(pte.PteError, match="object"):
        pte.PteTracker(model, path, num_objects=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = edgetam.EdgeTAM(image_size=512).eval()
    with pytest.raises(pte.PteError, match="image-size 256"):
        pte.PteTracker(other, path, num_objects=1)
    with pytest.raises(pte.PteError, match="dtype"):
        pte.PteTracker(copy.deepcopy(model).to(torch.bfloat16), path, num_objects=1)
