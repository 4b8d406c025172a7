"""End-to-end speed of patch(): Meta's EdgeTAM predictor and HF's EdgeTamVideoModel, unpatched
vs patched, per tracked frame; and their memory attention module and image encoder alone.

    pytest bench/test_e2e.py --benchmark-only --benchmark-json bench/results/e2e_cpu.json
    python bench/plot_e2e.py bench/results/e2e_cpu.json     # markdown table + PNG

Random weights, 1 object, fp32, object score forced positive so masks flow into memory.
A tracking benchmark round = propagate through a clip whose frame 0 was prompted in setup;
extra_info["frames"] is the number of tracked frames, so per-frame time = time / frames.
Variants: "unpatched", "patched:<backend>" for the reference and every built backend (patch's
defaults, so with the re-parameterised encoder), "patched:<backend>:no-fuse"
(fuse_encoder=False; tracking and encoder, best backend only) and "patched:<backend>:bf16"
(compute_dtype=torch.bfloat16 in memory attention; for tracking only with the best backend).

pytest-benchmark runs one variant after the other; for ratios on a shared machine prefer
bench/e2e_side_by_side.py, which interleaves the variants round by round.

Environment: EDGETAM_BENCH_E2E_SIZE (default 1024), EDGETAM_BENCH_E2E_FRAMES (tracked frames
per round, default 7: the memory bank fills up to EdgeTAM's 7 frames), EDGETAM_BENCH_E2E_ROUNDS
(default 2; min over rounds is the robust statistic on a shared machine).
"""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import pytest
import torch

import edgetam_kernels as ek

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import _models as M  # noqa: E402

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
# Module: every backend in fp32 and bf16 compute; tracking (minutes per variant on a CPU):
# every backend in fp32 and the best one in bf16.
VARIANTS = ["unpatched"] + [f"patched:{b}" for b in BACKENDS] + [
    f"patched:{b}:bf16" for b in BACKENDS
]
TRACK_VARIANTS = ["unpatched"] + [f"patched:{b}" for b in BACKENDS] + [
    f"patched:{BEST}:no-fuse", f"patched:{BEST}:bf16"]
ENCODER_VARIANTS = ["unpatched", f"patched:{BEST}:no-fuse", f"patched:{BEST}"]
_MODELS = {}


def _model(kind):
    if kind not in _MODELS:
        _MODELS[kind] = M.meta_video_predictor(SIZE) if kind == "meta" else M.hf_model(SIZE)
    return _MODELS[kind]


def _apply(module, variant):
    ek.unpatch(module)
    if variant != "unpatched":
        parts = variant.split(":")
        ek.patch(module, backend=parts[1], fuse_encoder="no-fuse" not in parts,
                 compute_dtype=torch.bfloat16 if parts[-1] == "bf16" else None)
    return module


def _info(benchmark, **extra):
    benchmark.extra_info.update(
        machine=platform.machine(), processor=platform.processor(), threads=torch.get_num_threads(),
        torch=torch.__version__, size=SIZE, **extra,
    )


# ---------------------------------------------------------------------------------------------
# Per tracked frame
# ---------------------------------------------------------------------------------------------


def _meta_setup(predictor, clip):
    def setup():
        state = M.meta_init_state(predictor, clip)
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                        points=np.array([[SIZE * 0.4, SIZE * 0.5]], np.float32),
                                        labels=np.array([1], np.int32))
        return (state,), {}

    def track(state):
        for _ in predictor.propagate_in_video(state):
            pass

    return setup, track


def _hf_setup(model, clip):
    def setup():
        session = M.hf_session(clip)
        M.hf_add_prompt(session, 0, 1, points=[[SIZE * 0.4, SIZE * 0.5]], labels=[1])
        model(inference_session=session, frame_idx=0)
        return (session,), {}

    def track(session):
        for _ in model.propagate_in_video_iterator(session, start_frame_idx=0):
            pass

    return setup, track


@pytest.mark.parametrize("variant", TRACK_VARIANTS)
@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_track_frame(benchmark, kind, variant):
    model = _apply(_model(kind), variant)
    clip = M.random_clip(FRAMES + 1, SIZE, seed=1)
    setup, track = (_meta_setup if kind == "meta" else _hf_setup)(model, clip)
    benchmark.group = f"{kind}: tracked frames at {SIZE}"
    _info(benchmark, model=kind, variant=variant, frames=FRAMES, what="track")
    with torch.inference_mode():
        benchmark.pedantic(track, setup=setup, rounds=ROUNDS, iterations=1)
    ek.unpatch(model)


# ---------------------------------------------------------------------------------------------
# Memory attention module alone (EdgeTAM's shapes: 64x64 grid, 7 frames, 16 object pointers)
# ---------------------------------------------------------------------------------------------


def _memory_attention(kind):
    key = "memattn-" + kind
    if key not in _MODELS:
        grid = SIZE // 16
        meta = M.meta_memory_attention(grid, seed=0)
        _MODELS[key] = meta if kind == "meta" else M.hf_memory_attention_like(meta, grid)
    return _MODELS[key]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_memory_attention(benchmark, kind, variant):
    module = _apply(_memory_attention(kind), variant)
    inputs = M.memory_attention_inputs(SIZE // 16, 7, 16, 1, seed=0)
    if kind == "hf":
        inputs = M.hf_memory_attention_kwargs(inputs)
    benchmark.group = f"{kind}: memory attention module at {SIZE}"
    _info(benchmark, model=kind, variant=variant, frames=1, what="memory_attention")
    with torch.inference_mode():
        benchmark.pedantic(lambda: module(**inputs), rounds=max(3, ROUNDS), iterations=1,
                           warmup_rounds=1)
    ek.unpatch(module)


# ---------------------------------------------------------------------------------------------
# Image encoder alone (Meta: RepViT trunk + FPN neck; HF: vision_encoder), one image
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_image_encoder(benchmark, kind, variant):
    model = _apply(_model(kind), variant)
    encoder = model.image_encoder if kind == "meta" else model.vision_encoder
    x = M.random_clip(1, SIZE, seed=2)
    benchmark.group = f"{kind}: image encoder at {SIZE}"
    _info(benchmark, model=kind, variant=variant, frames=1, what="image_encoder")
    with torch.inference_mode():
        benchmark.pedantic(lambda: encoder(x), rounds=max(3, ROUNDS), iterations=1,
                           warmup_rounds=1)
    ek.unpatch(model)
