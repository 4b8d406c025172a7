"""`torch.export` of the streaming tracker's programs, the path to on-device runtimes.

`TrackStep` (edgetam/tracker_step.py) is one tracked frame for every object: image encoder ->
memory attention over the fixed-capacity bank (custom op `edgetam::rope_attention`, empty slots
masked with its key_mask) -> mask decoder and object pointer -> memory encoder and spatial
perceiver (`edgetam::spatial_perceiver`) -> the bank's ring update. Its inputs and outputs are
tensors only and `new_state` has the shapes of `state`, so a runtime feeds outputs back:

    ep = edgetam.export.export_track_step(model, num_objects=1)
    mask_logits, scores, *state = ep.module()(image, *state)

`PromptStep` (clicks / box, a fixed number of points) exports the same way
(`export_prompt_step`); its memory entry goes into a conditioning slot of the state
(see `edgetam.Tracker._store_prompts` for the rule).
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .model import EdgeTAM
from .tracker_state import DEFAULT_MAX_COND_FRAMES, StateLayout
from .tracker_step import PromptStep, TrackStep, step_example_inputs


def track_step(model: EdgeTAM, max_cond_frames: int = DEFAULT_MAX_COND_FRAMES,
               fill_hole_area: int = 8) -> TrackStep:
    return TrackStep(model.eval(), StateLayout.for_model(model, max_cond_frames), fill_hole_area)


def example_inputs(model: EdgeTAM, num_objects: int = 1,
                   max_cond_frames: int = DEFAULT_MAX_COND_FRAMES) -> List[Tensor]:
    """(image, *state) with every slot filled, random values."""
    return step_example_inputs(track_step(model, max_cond_frames), num_objects)


def export_track_step(model: EdgeTAM, num_objects: int = 1,
                      max_cond_frames: int = DEFAULT_MAX_COND_FRAMES):
    """torch.export.export of `TrackStep` for `num_objects` rows (static shapes)."""
    step = track_step(model, max_cond_frames)
    with torch.no_grad():
        return torch.export.export(step, tuple(step_example_inputs(step, num_objects)))


def prompt_example_inputs(model: EdgeTAM, num_objects: int = 1, num_points: int = 1):
    s = model.image_size
    g = torch.Generator().manual_seed(0)
    dev = model.device
    return (torch.randn(1, 3, s, s, generator=g).to(dev),
            (torch.rand(num_objects, num_points, 2, generator=g) * s).to(dev),
            torch.ones(num_objects, num_points, dtype=torch.int32, device=dev))


def export_prompt_step(model: EdgeTAM, num_objects: int = 1, num_points: int = 1):
    """torch.export.export of `PromptStep` for `num_points` points per object."""
    step = PromptStep(model.eval(), 8)
    with torch.no_grad():
        return torch.export.export(step, prompt_example_inputs(model, num_objects, num_points))
