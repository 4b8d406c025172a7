"""End to end: Meta's EdgeTAM video predictor and HF's EdgeTamVideoModel, patched vs unpatched.

Same random weights (one model, run unpatched, then patched, then unpatched again), a 10-frame
clip of random frames, object-score bias forced positive (RECIPES) so that masks and object
pointers flow into memory, the image encoder's BatchNorms given random statistics (so that the
re-parameterised encoder of patch's fuse_encoder=True is tested). Every tracked frame must give:
- mask logits within 1e-3 absolute (and, since random weights give small logits, relative L2
  under 1e-4), binarised masks agreeing on >= 99.9 % of pixels;
- the same memory features (Meta stores them in bfloat16: equal up to one bf16 rounding step)
  and object pointers (1e-4 absolute). Where an object's mask had pixels flip sign on a frame
  (random weights give logits within 1e-8 of zero, so any change of rounding flips a few), that
  frame's memory is compared at 1e-2: on prompted frames Meta binarises the mask for the memory
  encoder, so one flipped pixel is a +-20 step in its input (measured: 1.1e-3 from 1 pixel).

CPU budget: the full prompt/object matrix runs at 512; at 1024 one case per model runs in CI,
the rest is marked slow. The image encoder is computed once per frame and encoder state
(unpatched, or re-parameterised by patch's default fuse_encoder=True) and reused by every run on
the same clip (edgetam_kernels.testing.hosts.memoize_image_encoder).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels.patch import patched_modules
from edgetam_kernels.testing import rel_l2

from edgetam_kernels.testing import hosts as M

pytest.importorskip("sam2")
pytest.importorskip("transformers.models.edgetam_video")

FRAMES = 10
# "auto": the best backend built here (the C++ CPU kernels where built, else the reference);
# EDGETAM_KERNELS_BACKEND forces one.
BACKEND = "auto"
LOGIT_ATOL = 1e-3
LOGIT_REL_L2 = 1e-4
MASK_AGREEMENT = 0.999
PTR_ATOL = 1e-4
MEMORY_REL_L2 = 1e-3
MEMORY_REL_L2_FLIPPED = 1e-2  # the object's mask flipped sign somewhere on that frame


def prompts(kind: str, n_obj: int, size: int) -> List[dict]:
    """Per object: a positive click, a box, or (kind="mixed") click / box / box + click."""
    out = []
    for i in range(n_obj):
        cx, cy = size * (0.25 + 0.25 * i), size * (0.4 + 0.1 * i)
        point = dict(points=[[cx, cy]], labels=[1])
        box = dict(box=[cx - size * 0.15, cy - size * 0.1, cx + size * 0.15, cy + size * 0.2])
        k = kind if kind != "mixed" else ("point", "box", "both")[i % 3]
        out.append(point if k == "point" else box if k == "box" else {**box, **point})
    return out


@dataclass
class Track:
    masks: Dict[int, torch.Tensor] = field(default_factory=dict)  # frame -> (n_obj, 1, h, w)
    memory: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (obj, frame)
    pointers: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict)
    scores: Dict[Tuple[int, int], float] = field(default_factory=dict)


def track_meta(predictor, frames, objects) -> Track:
    state = M.meta_init_state(predictor, frames)
    for obj_id, p in enumerate(objects, start=1):
        predictor.add_new_points_or_box(
            state, frame_idx=0, obj_id=obj_id,
            points=np.array(p["points"], np.float32) if "points" in p else None,
            labels=np.array(p["labels"], np.int32) if "labels" in p else None,
            box=np.array(p["box"], np.float32) if "box" in p else None,
        )
    t = Track()
    for f, _, masks in predictor.propagate_in_video(state):
        t.masks[f] = masks.clone()
    for obj_idx, out in state["output_dict_per_obj"].items():
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for f, o in out[kind].items():
                t.memory[obj_idx, f] = o["maskmem_features"]
                t.pointers[obj_idx, f] = o["obj_ptr"]
                t.scores[obj_idx, f] = float(o["object_score_logits"].min())
    return t


def track_hf(model, frames, objects) -> Track:
    session = M.hf_session(frames)
    for obj_id, p in enumerate(objects, start=1):
        M.hf_add_prompt(session, 0, obj_id, points=p.get("points"), labels=p.get("labels"),
                        box=p.get("box"))
    t = Track()
    for out in model.propagate_in_video_iterator(session, start_frame_idx=0):
        t.masks[out.frame_idx] = out.pred_masks.clone()
    for obj_idx, out in session.output_dict_per_obj.items():
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for f, o in out[kind].items():
                t.memory[obj_idx, f] = o["maskmem_features"]
                t.pointers[obj_idx, f] = o["object_pointer"]
                t.scores[obj_idx, f] = float(o["object_score_logits"].min())
    return t


def compare(base: Track, patched: Track, n_obj: int, logit_atol=LOGIT_ATOL,
            logit_rel=LOGIT_REL_L2, ptr_atol=PTR_ATOL, memory_rel=MEMORY_REL_L2,
            agreement=MASK_AGREEMENT) -> dict:
    """Assert the module docstring's criteria; return the measured worst cases."""
    assert sorted(base.masks) == sorted(patched.masks) == list(range(FRAMES))
    assert base.masks[0].shape[0] == n_obj
    # masks really flowed into memory: objects present, memory on every frame of every object
    assert min(base.scores.values()) > 0
    assert sorted(base.memory) == sorted(patched.memory)
    assert len(base.memory) == n_obj * FRAMES
    worst = dict(logit_abs=0.0, logit_rel_l2=0.0, agreement=1.0, memory_abs=0.0,
                 memory_rel_l2=0.0, memory_rel_l2_flipped=0.0, pointer_abs=0.0)
    for f in base.masks:
        a, b = base.masks[f], patched.masks[f]
        worst["logit_abs"] = max(worst["logit_abs"], (a - b).abs().max().item())
        worst["logit_rel_l2"] = max(worst["logit_rel_l2"], rel_l2(b, a))
        agree = ((a > 0) == (b > 0)).double().mean().item()
        worst["agreement"] = min(worst["agreement"], agree)
    for key in base.memory:
        ma, mb = base.memory[key].float(), patched.memory[key].float()
        worst["memory_abs"] = max(worst["memory_abs"], (ma - mb).abs().max().item())
        obj, f = key
        flipped = bool(((base.masks[f][obj] > 0) != (patched.masks[f][obj] > 0)).any())
        slot = "memory_rel_l2_flipped" if flipped else "memory_rel_l2"
        worst[slot] = max(worst[slot], rel_l2(mb, ma))
        pa, pb = base.pointers[key], patched.pointers[key]
        worst["pointer_abs"] = max(worst["pointer_abs"], (pa - pb).abs().max().item())
    print(f"\n{worst}")
    assert worst["memory_rel_l2"] <= memory_rel, worst
    assert worst["memory_rel_l2_flipped"] <= max(memory_rel, MEMORY_REL_L2_FLIPPED), worst
    assert worst["logit_abs"] <= logit_atol, worst
    assert worst["logit_rel_l2"] <= logit_rel, worst
    assert worst["agreement"] >= agreement, worst
    assert worst["pointer_abs"] <= ptr_atol, worst
    return worst


_MODELS = {}


def model(kind: str, size: int):
    """One model per (kind, size) for the whole session; tests leave it unpatched."""
    key = kind, size
    if key not in _MODELS:
        m = M.meta_video_predictor(size) if kind == "meta" else M.hf_model(size)
        if kind == "meta":  # without this Meta cannot track several objects at once
            M.fix_meta_perceiver_batch_(m)
        # non-trivial BatchNorms, so that patch's folded encoder is really tested
        M.randomize_batchnorm_(m.image_encoder if kind == "meta" else m.vision_encoder, seed=size)
        M.memoize_image_encoder(m)  # compute it once per frame and encoder patch state
        _MODELS[key] = m
    assert not patched_modules(_MODELS[key])
    return _MODELS[key]


def clip(size: int) -> torch.Tensor:
    return M.random_clip(FRAMES, size, seed=size)


def run_case(kind: str, size: int, prompt: str, n_obj: int, compute_dtype=None, **tol):
    m, frames, objects = model(kind, size), clip(size), prompts(prompt, n_obj, size)
    track = track_meta if kind == "meta" else track_hf
    with torch.no_grad():
        base = track(m, frames, objects)
        ek.patch(m, backend=BACKEND, compute_dtype=compute_dtype)
        try:
            patched = track(m, frames, objects)
        finally:
            ek.unpatch(m)
    return compare(base, patched, n_obj, **tol)


# CI: every model sees 1 and 3 objects, point and box prompts (the 3 objects get a click, a
# box and a box + click), 512 and 1024 inputs; the rest of the full matrix (both models x
# {point, box, mixed 3 objects} x {512, 1024}) is slow.
CI_CASES = [
    ("meta", 512, "mixed", 3),
    ("meta", 1024, "box", 1),
    ("hf", 512, "mixed", 3),
    ("hf", 1024, "point", 1),
]
FULL = [(k, s, p, n) for k in ("meta", "hf") for s in (512, 1024)
        for p, n in (("point", 1), ("box", 1), ("mixed", 3))]
SLOW_CASES = [c for c in FULL if c not in CI_CASES]


def _id(case):
    return "-".join(str(x) for x in case)


@pytest.mark.parametrize("kind,size,prompt,n_obj", CI_CASES, ids=[_id(c) for c in CI_CASES])
def test_tracking(kind, size, prompt, n_obj):
    run_case(kind, size, prompt, n_obj)


@pytest.mark.slow
@pytest.mark.parametrize("kind,size,prompt,n_obj", SLOW_CASES, ids=[_id(c) for c in SLOW_CASES])
def test_tracking_full_matrix(kind, size, prompt, n_obj):
    run_case(kind, size, prompt, n_obj)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_bf16_memory_attention(kind):
    """compute_dtype=torch.bfloat16 in memory attention (fp32 in and out): the reduced-precision
    bounds documented in docs/patch.md hold end to end. (The module-level bf16 bound runs in CI:
    test_patch.py::test_patch_again_updates_options.)"""
    run_case(kind, 512, "point", 1, compute_dtype=torch.bfloat16, logit_atol=1e-2,
             logit_rel=2e-2, ptr_atol=5e-3, memory_rel=1e-2, agreement=0.99)
