"""Meta's and Hugging Face's EdgeTAM as timed workloads, for the bench/ scripts and the e2e
benchmark tests: per tracked frame, the image features of one frame, the memory-attention module
alone. Random weights (edgetam_kernels.testing.hosts: offline, object score forced positive so
masks flow into memory), 1 object, a point prompt on frame 0.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from .timing import race
from .variants import Variant

KINDS = ("meta", "hf")


def _hosts():
    from ..testing import hosts  # imported when used: it needs sam2 / transformers

    return hosts


def best_backend() -> str:
    """What backend="auto" picks on this CPU machine (Triton aside: CUDA only)."""
    from .. import backends

    usable = [n for n, b in backends().items() if b["available"] and n != "triton"]
    return usable[-1]


def build_model(kind: str, size: int):
    """Meta's SAM2VideoPredictor or HF's EdgeTamVideoModel for EdgeTAM at this image size."""
    hosts = _hosts()
    return hosts.meta_video_predictor(size) if kind == "meta" else hosts.hf_model(size)


def prompt_point(size: int) -> Tuple[float, float]:
    return size * 0.4, size * 0.5


def tracker_setup(kind: str, model, size: int, clip) -> Tuple[Callable[[], object],
                                                                Callable[[object], None]]:
    """(setup, track): setup() prompts frame 0 of a fresh session and returns it (for HF, frame
    0 is also run); track(session) propagates through the clip."""
    hosts = _hosts()
    x, y = prompt_point(size)
    if kind == "meta":
        def setup():
            state = hosts.meta_init_state(model, clip)
            model.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                        points=np.array([[x, y]], np.float32),
                                        labels=np.array([1], np.int32))
            return state

        def track(state):
            for _ in model.propagate_in_video(state):
                pass
    else:
        def setup():
            session = hosts.hf_session(clip)
            hosts.hf_add_prompt(session, 0, 1, points=[[x, y]], labels=[1])
            model(inference_session=session, frame_idx=0)
            return session

        def track(session):
            for _ in model.propagate_in_video_iterator(session, start_frame_idx=0):
                pass
    return setup, track


def random_clip(frames: int, size: int):
    """The clip every tracking benchmark uses (seed 1)."""
    return _hosts().random_clip(frames, size, seed=1)


def tracker(kind: str, model, size: int, frames: int) -> Callable[[], float]:
    """() -> seconds per tracked frame of one propagation (prompting frame 0 untimed)."""
    setup, track = tracker_setup(kind, model, size, random_clip(frames + 1, size))

    def run():
        session = setup()
        t = time.perf_counter()
        track(session)
        return (time.perf_counter() - t) / frames

    return run


def image_features(kind: str, model, size: int) -> Callable[[], object]:
    """One frame's image features as the trackers compute them: Meta's `forward_image`, HF's
    `get_image_features` (RepViT trunk, FPN neck, the mask decoder's conv_s0 / conv_s1)."""
    x = _hosts().random_clip(1, size, seed=2)
    if kind == "meta":
        return lambda: model.forward_image(x)  # looked up per call: patching replaces it
    return lambda: model.get_image_features(x, return_dict=True)


def memory_attention(kind: str, size: int, frames: int = 7, pointers: int = 16):
    """(module, call): the memory-attention module alone on EdgeTAM's shapes at this size (grid
    size / 16, `frames` memory frames, `pointers` object pointers), Meta's or HF's with the same
    weights."""
    hosts = _hosts()
    grid = size // 16
    meta = hosts.meta_memory_attention(grid, seed=0)
    module = meta if kind == "meta" else hosts.hf_memory_attention_like(meta, grid)
    inputs = hosts.memory_attention_inputs(grid, frames, pointers, 1, seed=0)
    if kind == "hf":
        inputs = hosts.hf_memory_attention_kwargs(inputs)
    return module, lambda: module(**inputs)


def time_variants(target, variants: Sequence[Variant], fn: Callable[[], object], rounds: int,
                  self_timed: bool = False, fold_call: bool = True) -> Dict[str, List[float]]:
    """Seconds of fn() per variant, the variants interleaved round by round on one `target`
    (re-patched before each call, so all share the weights). fold_call: one untimed call after
    each re-patch (patched modules fold their weights on their first call); a tracker leaves it
    to its untimed prompted frame. Leaves `target` unpatched."""
    by_name = {str(v): v for v in variants}

    def before(name):
        by_name[name].apply(target)
        if fold_call:
            fn()

    try:
        with torch.inference_mode():
            return race({name: fn for name in by_name}, rounds, warmup=1, before=before,
                        self_timed=self_timed)
    finally:
        Variant().apply(target)
