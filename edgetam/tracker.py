"""Streaming tracking: `edgetam.Tracker`, frame by frame, objects joining at any frame.

    tracker = edgetam.Tracker(edgetam.load("edgetam.pt"))
    res = tracker.add(frame0, obj_id=1, points=[[x, y]], labels=[1])
    for frame in stream:
        res = tracker.track(frame)           # res.obj_ids, res.mask_logits (N, 1, H, W), res.scores
        masks = res.mask_logits > 0

Every tracked frame is one call of the pure step `tracker.step` (edgetam/tracker_step.py) on a
fixed-capacity state (edgetam/tracker_state.py): the state's shapes depend only on the number of
objects, so its size stops growing once the windows are full. On CUDA, graph="auto" captures
the step as a CUDA graph (one per object count) and replays it every frame; a frame that adds or
re-prompts objects (`add`) runs eagerly: the step for the objects already tracked, then
`tracker.prompt_step` for the prompted ones. Resizing a frame to the model's input and the
output masks back to the frame's size happen outside the step (frames may change size).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .model import EdgeTAM
from .predictor import _as_hwc_uint8, preprocess_frame, prompt_points
from .tracker_state import DEFAULT_MAX_COND_FRAMES, StateLayout, state_bytes
from .tracker_step import PromptStep, TrackStep


@dataclass
class TrackResult:
    """One frame's result: `mask_logits` (N, 1, H, W) at the frame's resolution (on the
    model's device; > 0 is the object), `scores` (N,) object-presence logits, one per id in
    `obj_ids`."""

    frame_idx: int
    obj_ids: List = field(default_factory=list)
    mask_logits: Optional[Tensor] = None
    scores: Optional[Tensor] = None


class _CudaGraphStep:
    """The step captured once as a CUDA graph for one object count; static inputs and outputs.
    Each call copies the frame (and a state that is not already the static one) in, replays,
    and copies the new state onto the static inputs for the next frame."""

    def __init__(self, step: Callable[..., Tuple[Tensor, ...]], image: Tensor,
                 state: Sequence[Tensor]) -> None:
        self.inputs = [image.clone()] + [s.clone() for s in state]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy initialisation, allocator, autotuning
            for _ in range(2):
                step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(*self.inputs)

    def __call__(self, image: Tensor, state: Sequence[Tensor]):
        self.inputs[0].copy_(image)
        for buf, s in zip(self.inputs[1:], state):
            if buf is not s:
                buf.copy_(s)
        self.graph.replay()
        masks, scores, *new = self.outputs
        for buf, s in zip(self.inputs[1:], new):
            buf.copy_(s)
        return masks, scores, tuple(self.inputs[1:])


class Tracker:
    """Streaming tracker (see the module docstring).

    model: an `edgetam.EdgeTAM` (moved to `device` / `dtype` when given). max_objects: the most
    objects tracked at once. graph: "auto" (a CUDA graph on CUDA, eager elsewhere), True
    (require CUDA) or False. max_cond_frames: conditioning (prompted) frames kept per object:
    the first and the latest max_cond_frames - 1 (Meta keeps them all). fill_hole_area: as
    Meta's predictor (8 low-res pixels; 0 turns it off). compile: True runs tracked frames
    through `torch.compile(step, fullgraph=True, dynamic=False)`, a dict adds or overrides
    torch.compile's keyword arguments (e.g. {"mode": "max-autotune"}). Our ops stay opaque
    custom ops in the compiled graph; the first tracked frame for each object count compiles
    (a minute or more on a small CPU); on CUDA the compiled step is what the graph captures.
    Off by default: what it gains on CPU is in bench/results/tracker_cpu_*.md.
    """

    def __init__(self, model: EdgeTAM, *, device=None, dtype=None, max_objects: int = 16,
                 graph="auto", max_cond_frames: int = DEFAULT_MAX_COND_FRAMES,
                 fill_hole_area: int = 8, compile=False) -> None:
        if not isinstance(model, EdgeTAM):
            raise TypeError(f"model: Tracker takes an edgetam.EdgeTAM, got {type(model)}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, numbers.Integral) \
                or max_objects < 1:
            raise ValueError(f"max_objects must be a positive int, got {max_objects!r}")
        if graph not in ("auto", True, False):
            raise ValueError(f"graph must be 'auto', True or False, got {graph!r}")
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"compile must be True, False or a dict of torch.compile "
                            f"arguments, got {compile!r}")
        if fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval()
        dev = self.model.device
        if graph is True and dev.type != "cuda":
            raise ValueError(f"graph=True needs a CUDA model, the model is on {dev}")
        self.use_graph = dev.type == "cuda" and graph in ("auto", True)
        self.max_objects = int(max_objects)
        self.layout = StateLayout.for_model(model, max_cond_frames)
        self.step = TrackStep(self.model, self.layout, fill_hole_area)
        self.prompt_step = PromptStep(self.model, fill_hole_area)
        # what tracked frames call: the step itself or its compiled graph (one per object count)
        self._run = self.step
        if compile is not False:
            options = {"fullgraph": True, "dynamic": False}
            options.update(compile if isinstance(compile, dict) else {})
            self._run = torch.compile(self.step, **options)
        self.reset()

    # --- public API ---------------------------------------------------------------------------

    @property
    def obj_ids(self) -> List:
        return list(self._ids)

    @property
    def frame_idx(self) -> int:
        """Index of the next frame (frames seen so far)."""
        return self._frame

    def reset(self) -> None:
        """Forget every object and frame."""
        self._ids: List = []
        self._state: Optional[Tuple[Tensor, ...]] = None
        self._cond: List[List[Tuple[int, int]]] = []  # per object: (frame, slot) of cond frames
        self._frame = 0
        self._last_image: Optional[Tensor] = None
        self._graphs: Dict[int, _CudaGraphStep] = {}

    def state(self) -> Tuple[Tensor, ...]:
        """The current state tensors (see edgetam/tracker_state.py); empty tuple before any
        object."""
        return tuple(self._state) if self._state is not None else ()

    def state_bytes(self) -> int:
        return 0 if self._state is None else state_bytes(self._state)

    def step_inputs(self) -> Tuple[Tensor, ...]:
        """(image, *state) as the next `track()` hands them to `step` (the image is the last
        frame's, preprocessed)."""
        if self._state is None or self._last_image is None:
            raise RuntimeError("step_inputs: no object yet; call add(frame, obj_id, ...) first")
        return (self._last_image, *self._state)

    @torch.no_grad()
    def track(self, frame) -> TrackResult:
        """Track every object through the next frame (HxWx3 uint8, any size)."""
        image, (h, w) = self._image(frame)
        if not self._ids:
            self._last_image = image
            self._frame += 1
            return TrackResult(self._frame - 1, [], self._masks_out(
                torch.zeros(0, 1, 1, 1, device=image.device), h, w), image.new_zeros(0))
        masks, scores, *state = self._run_step(image)
        self._state = tuple(state)
        self._last_image = image
        self._frame += 1
        return TrackResult(self._frame - 1, list(self._ids), self._masks_out(masks, h, w),
                           scores[:, 0].clone())

    @torch.no_grad()
    def add(self, frame, obj_id, points=None, labels=None, box=None, mask=None) -> TrackResult:
        """Process `frame` as the next frame: track the objects already there and prompt
        `obj_id` (new: it joins; known: this frame becomes one of its conditioning frames).

        points (P, 2) pixels (x, y) of this frame with labels (P,) 1 / 0, and / or box
        (x0, y0, x1, y1); or mask (H, W) at the frame's size. Several objects at once: obj_id
        a list of N ids and per-object lists (or arrays) points [N x (P_i, 2)], labels
        [N x (P_i,)], box [N x 4] (an entry may be None, e.g. a box for one object and clicks
        for another), or mask (N, H, W). Objects with the same number of points run as one
        batch of `prompt_step`."""
        t = _as_hwc_uint8(frame, "frame")
        h, w = int(t.shape[0]), int(t.shape[1])
        ids = self._check_ids(obj_id)
        prompt = self._check_prompt(ids, points, labels, box, mask, h, w)
        image, _ = self._image(t)
        # everything is validated: from here on the state changes
        m = self.model
        feats = self.step.features(image)
        new_ids = [i for i in ids if i not in self._ids]
        rows = [self._ids.index(i) if i in self._ids else len(self._ids) + new_ids.index(i)
                for i in ids]
        if self._ids:
            masks, scores, *state = self.step.track_features(*feats, *self._state)
        else:
            masks = torch.zeros(0, 1, m.image_size // 4, m.image_size // 4, device=m.device)
            scores = torch.zeros(0, 1, device=m.device)
            state = list(self.layout.empty(0, self._frame + 1, m.device))
        if prompt[0] == "points":  # one batch per number of points
            parts = [(ks, self.prompt_step.from_points(*feats, pts, labs))
                     for ks, pts, labs in prompt[1]]
            order = torch.tensor([k for ks, _ in parts for k in ks], device=m.device)
            p_masks, p_scores, p_ptr, p_mem = (
                torch.cat([out[j] for _, out in parts]).index_select(0, order.argsort())
                for j in range(4))
        else:
            p_masks, p_scores, p_ptr, p_mem = self.prompt_step.from_mask(*feats, prompt[1])
        if new_ids:
            fresh = self.layout.empty(len(new_ids), 0, m.device)
            state = [state[0]] + [torch.cat([s, f]) for s, f in zip(state[1:], fresh[1:])]
            masks = torch.cat([masks, p_masks.new_zeros(len(new_ids), *p_masks.shape[1:])])
            scores = torch.cat([scores, p_scores.new_zeros(len(new_ids), 1)])
            self._ids.extend(new_ids)
            self._cond.extend([] for _ in new_ids)
        state = self._store_prompts(state, rows, p_mem, p_ptr)
        rows_t = torch.tensor(rows, device=masks.device)
        masks = masks.index_copy(0, rows_t, p_masks)
        scores = scores.index_copy(0, rows_t, p_scores)
        self._state = tuple(state)
        self._last_image = image
        self._frame += 1
        return TrackResult(self._frame - 1, list(self._ids), self._masks_out(masks, h, w),
                           scores[:, 0].clone())

    def remove(self, obj_id) -> List:
        """Forget object `obj_id`; returns the ids left."""
        self._check_id_type(obj_id, "obj_id")
        if obj_id not in self._ids:
            raise KeyError(f"obj_id: unknown object {obj_id!r}; known ids: {self._ids}")
        row = self._ids.index(obj_id)
        keep = [i for i in range(len(self._ids)) if i != row]
        idx = torch.tensor(keep, dtype=torch.long, device=self._state[0].device)
        self._state = (self._state[0],) + tuple(s.index_select(0, idx) for s in self._state[1:])
        del self._ids[row]
        del self._cond[row]
        if not self._ids:
            self._state = None
        return list(self._ids)

    # --- internals ----------------------------------------------------------------------------

    def _image(self, frame) -> Tuple[Tensor, Tuple[int, int]]:
        t = _as_hwc_uint8(frame, "frame")
        image = preprocess_frame(t, self.model.image_size, self.model.device)[None]
        return image.to(self.model.no_obj_ptr.dtype), (int(t.shape[0]), int(t.shape[1]))

    def _masks_out(self, masks: Tensor, h: int, w: int) -> Tensor:
        if masks.shape[0] == 0:
            return masks.new_zeros(0, 1, h, w)
        return F.interpolate(masks.float(), size=(h, w), mode="bilinear", align_corners=False)

    def _run_step(self, image: Tensor):
        if not self.use_graph:
            return self._run(image, *self._state)
        n = len(self._ids)
        runner = self._graphs.get(n)
        if runner is None:
            self._graphs.clear()  # one captured graph at a time: its pool holds the activations
            runner = self._graphs[n] = _CudaGraphStep(self._run, image, self._state)
        masks, scores, state = runner(image, self._state)
        return (masks, scores, *state)

    @staticmethod
    def _check_id_type(obj_id, name: str) -> None:
        if isinstance(obj_id, bool) or not isinstance(obj_id, (numbers.Integral, str)):
            raise TypeError(f"{name} must be an int or str, got {obj_id!r}")

    def _check_ids(self, obj_id) -> List:
        ids = list(obj_id) if isinstance(obj_id, (list, tuple)) else [obj_id]
        if not ids:
            raise ValueError("obj_id: give at least one object id")
        for i in ids:
            self._check_id_type(i, "obj_id")
        if len(set(ids)) != len(ids):
            raise ValueError(f"obj_id: ids repeat in {ids}")
        total = len(set(self._ids) | set(ids))
        if total > self.max_objects:
            raise ValueError(f"obj_id: adding {ids} would track {total} objects, more than "
                             f"max_objects={self.max_objects}; remove() some first")
        return ids

    def _check_prompt(self, ids, points, labels, box, mask, h: int, w: int):
        n = len(ids)
        if mask is not None:
            if points is not None or labels is not None or box is not None:
                raise ValueError("mask: give either a mask or points / box, not both")
            m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, Tensor) else mask
            m = m.detach()
            if m.dim() == 2:
                m = m[None]
            if m.dim() != 3 or m.shape[0] != n or tuple(m.shape[1:]) != (h, w):
                raise ValueError(f"mask must be (H, W) = ({h}, {w}) for one object or "
                                 f"({n}, {h}, {w}) for {n}, got shape {tuple(m.shape)}")
            s = self.model.image_size
            # float32 whatever the model's dtype: the heads read a mask prompt as fp32
            m = m.to(self.model.device, torch.bool).float()[:, None]
            if m.shape[-2:] != (s, s):  # as Meta's add_new_mask
                m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False,
                                  antialias=True)
                m = (m >= 0.5).to(m.dtype)
            return ("mask", m)
        if isinstance(points, (list, tuple)) and all(x is None for x in points):
            points = None
        if isinstance(labels, (list, tuple)) and all(x is None for x in labels):
            labels = None
        if isinstance(box, (list, tuple)) and all(x is None for x in box):
            box = None
        per_obj = []
        for k in range(n):
            pk = None if points is None else (points if n == 1 and _rank(points) < 3
                                              else _index(points, k, n, "points"))
            lk = None if labels is None else (labels if n == 1 and _rank(labels) < 2
                                              else _index(labels, k, n, "labels"))
            bk = None if box is None else (box if n == 1 and _rank(box) < 2
                                           else _index(box, k, n, "box"))
            per_obj.append(prompt_points(pk, lk, bk, w, h, self.model.image_size, True,
                                         self.model.device))
        groups = []
        for count in sorted({p.shape[1] for p, _ in per_obj}):
            ks = [k for k, (p, _) in enumerate(per_obj) if p.shape[1] == count]
            pts = torch.cat([per_obj[k][0] for k in ks]).to(self.model.no_obj_ptr.dtype)
            groups.append((ks, pts, torch.cat([per_obj[k][1] for k in ks])))
        return ("points", groups)

    def _store_prompts(self, state: List[Tensor], rows: List[int], mem: Tensor,
                       obj_ptr: Tensor) -> List[Tensor]:
        """Put each prompted object's entry into a conditioning slot (the first prompted frame
        stays; later ones replace the oldest other) and mark this frame's ring slots empty for
        it: to Meta's window a conditioning frame is not a recent frame."""
        t, cond_mem, cond_ptr, cond_valid, recent_mem, recent_valid, ptr, ptr_valid = state
        cond_mem, cond_ptr, cond_valid = cond_mem.clone(), cond_ptr.clone(), cond_valid.clone()
        recent_valid, ptr_valid = recent_valid.clone(), ptr_valid.clone()
        c = self.layout.max_cond_frames
        for k, row in enumerate(rows):
            held = self._cond[row]
            if len(held) < c:
                slot = len(held)
            elif c == 1:
                slot = 0
            else:
                slot = min(held[1:], key=lambda fs: fs[0])[1]
            self._cond[row] = [fs for fs in held if fs[1] != slot] + [(self._frame, slot)]
            cond_mem[row, slot] = mem[k].to(cond_mem.dtype)
            cond_ptr[row, slot] = obj_ptr[k].to(cond_ptr.dtype)
            cond_valid[row, slot] = True
            recent_valid[row, self._frame % recent_valid.shape[1]] = False
            ptr_valid[row, self._frame % ptr_valid.shape[1]] = False
        return [t, cond_mem, cond_ptr, cond_valid, recent_mem, recent_valid, ptr, ptr_valid]


def _rank(x) -> int:
    return x.dim() if isinstance(x, Tensor) else np.asarray(x).ndim


def _index(x, k: int, n: int, name: str):
    """Object k's entry of a per-object argument (a list may hold None or ragged entries)."""
    arr = x if isinstance(x, (Tensor, list, tuple)) else np.asarray(x)
    if len(arr) != n:
        raise ValueError(f"{name}: {n} object ids but {len(arr)} entries")
    return arr[k]
