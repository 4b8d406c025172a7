"""End-to-end speed of patch(): Meta's EdgeTAM predictor and HF's EdgeTamVideoModel, unpatched
vs patched, per tracked frame; and their memory attention module and image features alone.

    pytest bench/test_e2e_speed.py --benchmark-only --benchmark-json bench/results/e2e_cpu.json
    python bench/plot_e2e.py bench/results/e2e_cpu.json     # markdown table + PNG

(named so that pytest collects it beside tests/test_e2e.py, the tracking parity test). Random
weights, 1 object, fp32, object score forced positive so masks flow into memory; the workloads
are edgetam_kernels.harness.e2e's, as in bench/e2e_side_by_side.py. A tracking benchmark round
= propagate through a clip whose frame 0 was prompted in setup; extra_info["frames"] is the
number of tracked frames, so per-frame time = time / frames.
Variants (edgetam_kernels.harness.variants, one meaning everywhere): "unpatched",
"patched:<backend>" for the reference and every built backend (patch's defaults),
"patched:<backend>:no-fuse" (neither encoder fused; tracking and image features, best backend
only), "patched:<backend>:bf16" (compute_dtype=torch.bfloat16; for tracking only with the best
backend) and, where compute_dtype="auto" exists, "patched:<best>:auto" (memory attention).

pytest-benchmark runs one variant after the other; for ratios on a shared machine prefer
bench/e2e_side_by_side.py, which interleaves the variants round by round.

Environment: EDGETAM_BENCH_E2E_SIZE (default 1024), EDGETAM_BENCH_E2E_FRAMES (tracked frames
per round, default 7: the memory bank fills up to EdgeTAM's 7 frames), EDGETAM_BENCH_E2E_ROUNDS
(default 2; min over rounds is the robust statistic on a shared machine).
"""

from __future__ import annotations

import os

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels.harness import Variant, e2e, machine
from edgetam_kernels.harness.variants import auto_supported

pytest.importorskip("sam2")
pytest.importorskip("transformers.models.edgetam_video")

SIZE = int(os.environ.get("EDGETAM_BENCH_E2E_SIZE", "1024"))
FRAMES = int(os.environ.get("EDGETAM_BENCH_E2E_FRAMES", "7"))
ROUNDS = int(os.environ.get("EDGETAM_BENCH_E2E_ROUNDS", "2"))


def _backends():
    usable = [n for n, b in ek.backends().items() if b["available"] and n != "triton"]
    if torch.cuda.is_available() and ek.backends()["triton"]["available"]:
        usable.append("triton")
    return usable


BACKENDS = _backends()
BEST = BACKENDS[-1]  # what backend="auto" picks here (the reference comes first)
AUTO = [f"patched:{BEST}:auto"] if auto_supported() else []
# Module: every backend in fp32 and bf16 compute (and the policy's "auto"); tracking (minutes
# per variant on a CPU): every backend in fp32 and the best one without encoders and in bf16.
VARIANTS = ["unpatched"] + [f"patched:{b}" for b in BACKENDS] + [
    f"patched:{b}:bf16" for b in BACKENDS] + AUTO
TRACK_VARIANTS = ["unpatched"] + [f"patched:{b}" for b in BACKENDS] + [
    f"patched:{BEST}:no-fuse", f"patched:{BEST}:bf16"]
ENCODER_VARIANTS = ["unpatched", f"patched:{BEST}:no-fuse", f"patched:{BEST}"]
_MODELS = {}


def _model(kind):
    if kind not in _MODELS:
        _MODELS[kind] = e2e.build_model(kind, SIZE)
    return _MODELS[kind]


def _info(benchmark, variant, **extra):
    benchmark.extra_info.update(machine=machine(), size=SIZE, variant=variant,
                                resolved_dtype=Variant.parse(variant).resolved_dtype_name(),
                                **extra)


@pytest.mark.parametrize("variant", TRACK_VARIANTS)
@pytest.mark.parametrize("kind", e2e.KINDS)
def test_track_frame(benchmark, kind, variant):
    model = Variant.parse(variant).apply(_model(kind))
    clip = e2e.random_clip(FRAMES + 1, SIZE)
    setup, track = e2e.tracker_setup(kind, model, SIZE, clip)
    benchmark.group = f"{kind}: tracked frames at {SIZE}"
    _info(benchmark, variant, model=kind, frames=FRAMES, what="track")
    with torch.inference_mode():
        benchmark.pedantic(track, setup=lambda: ((setup(),), {}), rounds=ROUNDS, iterations=1)
    ek.unpatch(model)


def _memory_attention(kind):
    key = "memattn-" + kind
    if key not in _MODELS:
        _MODELS[key] = e2e.memory_attention(kind, SIZE)
    return _MODELS[key]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", e2e.KINDS)
def test_memory_attention(benchmark, kind, variant):
    module, call = _memory_attention(kind)
    Variant.parse(variant).apply(module)
    benchmark.group = f"{kind}: memory attention module at {SIZE}"
    _info(benchmark, variant, model=kind, frames=1, what="memory_attention")
    with torch.inference_mode():
        benchmark.pedantic(call, rounds=max(3, ROUNDS), iterations=1, warmup_rounds=1)
    ek.unpatch(module)


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
@pytest.mark.parametrize("kind", e2e.KINDS)
def test_image_features(benchmark, kind, variant):
    model = Variant.parse(variant).apply(_model(kind))
    run = e2e.image_features(kind, model, SIZE)
    benchmark.group = f"{kind}: image features at {SIZE}"
    _info(benchmark, variant, model=kind, frames=1, what="image_encoder")
    with torch.inference_mode():
        benchmark.pedantic(run, rounds=max(3, ROUNDS), iterations=1, warmup_rounds=1)
    ek.unpatch(model)
