"""The streaming tracker's per-frame programs: pure functions of tensors, static shapes.

Contract of `TrackStep` (the tracked-frame step, what a CUDA graph captures and torch.export /
ExecuTorch take):

    mask_logits, scores, *new_state = step(image, *state)

- image: (1, 3, S, S) float, preprocessed (resized to the model's S, ImageNet-normalised).
- state: the 8 tensors of `tracker_state.StateLayout` (frame counter and, per object row, the
  conditioning-frame slots, the ring of the last 6 frames' memory, the last 15 object pointers,
  validity masks). `new_state` has exactly the shapes and dtypes of `state`, in the same order,
  so a runner feeds the outputs back as the next inputs.
- mask_logits: (N, 1, S/4, S/4) float32 low-resolution logits (small holes filled, as Meta's
  predictor outputs them); scores: (N, 1) float32 object-presence logits, whatever the model's
  dtype (a bf16 / fp16 model computes in its dtype; the state keeps its layout's dtypes).

Inside there is no `.item()`, `.cpu()`, `nonzero` or Python branch on a tensor's value: the ring
slot to write and every slot's temporal encoding come from `frame_idx` through tensor ops, and
empty slots are masked out of memory attention with `rope_attention`'s key_mask, so a bank with
empty slots gives what Meta's predictor gives by concatenating only the filled ones.

`PromptStep` is the prompted-frame program for clicks / boxes (points (N, P, 2) in model
coordinates 0..S, labels (N, P) int32; for a fixed P it exports as well): the SAM heads without
memory, as Meta runs a first prompt on a frame, and the memory entry the frame leaves. A mask
prompt runs `PromptStep.from_mask` (eager).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import sine_position_encoding
from .model import EdgeTAM
from .postprocess import fill_holes
from .tracker_state import StateLayout


class _Features(nn.Module):
    """Image features of one frame, flat: vision (1, HW, C), vision_pos, two high-res maps."""

    def __init__(self, model: EdgeTAM, fill_hole_area: int) -> None:
        super().__init__()
        self.model = model
        self.fill_hole_area = int(fill_hole_area)

    def features(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        f = self.model.image_features(image)
        return f["vision"], f["vision_pos"], f["high_res"][0], f["high_res"][1]

    def _pix(self, vision: Tensor, n: int) -> Tensor:
        s = self.model.feat_size
        return vision.expand(n, -1, -1).transpose(1, 2).reshape(n, -1, s, s)


class TrackStep(_Features):
    """One tracked frame for every object row of the state (see the module docstring)."""

    def __init__(self, model: EdgeTAM, layout: StateLayout, fill_hole_area: int = 8) -> None:
        super().__init__(model, fill_hole_area)
        self.layout = layout
        side = 16  # the perceiver's patch latents sit on a 16x16 grid
        pos_2d = sine_position_encoding(layout.mem_dim, side, side).flatten(1).transpose(0, 1)
        n_global = layout.mem_tokens - side * side
        mem_pos = torch.cat([torch.zeros(n_global, layout.mem_dim), pos_2d])
        # the same for every stored frame (Meta stores one copy per frame); dtype of the model
        self.register_buffer("mem_pos", mem_pos.to(model.device, model.no_obj_ptr.dtype),
                             persistent=False)

    def forward(self, image: Tensor, *state: Tensor) -> Tuple[Tensor, ...]:
        return self.track_features(*self.features(image), *state)

    def memory_bank(self, state: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor, Tensor, int, int]:
        """The fixed-layout memory of every row: tokens (N, K, 64), positions, key_mask (N, K),
        number of memory frames, number of pointer tokens."""
        t, cond_mem, cond_ptr, cond_valid, recent_mem, recent_valid, ptr, ptr_valid = state
        m = self.model
        lay = self.layout
        n, c, r = cond_mem.shape[0], lay.max_cond_frames, lay.num_recent
        dtype = m.no_obj_ptr.dtype
        # ring slot j holds the frame t - age with age = (t - j) mod R in 1..R
        slots = torch.arange(r, device=t.device)
        age = torch.remainder(t - slots, r)
        age = torch.where(age == 0, torch.full_like(age, r), age)
        tpos = m.maskmem_tpos_enc.reshape(m.num_maskmem, lay.mem_dim).to(dtype)
        frame_tpos = torch.cat([tpos[m.num_maskmem - 1].expand(c, -1), tpos[age - 1]])
        frames = c + r
        mem_pos = (self.mem_pos[None] + frame_tpos[:, None, :]).reshape(1, -1, lay.mem_dim)
        mem = torch.cat([cond_mem, recent_mem], dim=1).to(dtype).reshape(n, -1, lay.mem_dim)
        split = lay.ptr_dim // lay.mem_dim
        ptrs = torch.cat([cond_ptr, ptr], dim=1).to(dtype).reshape(n, -1, lay.mem_dim)
        memory = torch.cat([mem, ptrs], dim=1)
        memory_pos = torch.cat([mem_pos.expand(n, -1, -1), torch.zeros_like(ptrs)], dim=1)
        frame_ok = torch.cat([cond_valid, recent_valid], dim=1)
        ptr_ok = torch.cat([cond_valid, ptr_valid], dim=1)
        key_mask = torch.cat([frame_ok.repeat_interleave(lay.mem_tokens, dim=1),
                              ptr_ok.repeat_interleave(split, dim=1)], dim=1)
        return memory, memory_pos, key_mask, frames, ptrs.shape[1]

    def track_features(self, vision: Tensor, vision_pos: Tensor, high0: Tensor, high1: Tensor,
                       *state: Tensor) -> Tuple[Tensor, ...]:
        t, cond_mem, cond_ptr, cond_valid, recent_mem, recent_valid, ptr, ptr_valid = state
        m = self.model
        n = cond_mem.shape[0]
        memory, memory_pos, key_mask, frames, ptr_tokens = self.memory_bank(state)
        high_res = [high0.expand(n, -1, -1, -1), high1.expand(n, -1, -1, -1)]
        low, high, obj_ptr, score = m.tracked_frame(
            vision.expand(n, -1, -1), vision_pos.expand(n, -1, -1), high_res, memory,
            memory_pos, frames, ptr_tokens, key_mask)
        new_mem, _ = m.encode_memory(self._pix(vision, n), high, is_mask_from_pts=False)
        masks = fill_holes(low, self.fill_hole_area)
        r, p = recent_valid.shape[1], ptr_valid.shape[1]
        at_r = torch.arange(r, device=t.device) == torch.remainder(t, r)  # (R,) one-hot
        at_p = torch.arange(p, device=t.device) == torch.remainder(t, p)
        recent_mem = torch.where(at_r[None, :, None, None],
                                 new_mem.to(recent_mem.dtype)[:, None], recent_mem)
        recent_valid = recent_valid | at_r[None]
        ptr = torch.where(at_p[None, :, None], obj_ptr.to(ptr.dtype)[:, None], ptr)
        ptr_valid = ptr_valid | at_p[None]
        # unchanged slots come back as copies: outputs never alias inputs (graphs, ExecuTorch)
        return (masks, score.float(), t + 1, cond_mem.clone(), cond_ptr.clone(), cond_valid.clone(),
                recent_mem, recent_valid, ptr, ptr_valid)


class PromptStep(_Features):
    """A frame on which objects get a prompt: mask logits, score, object pointer and the
    conditioning-memory entry of each prompted object (see the module docstring)."""

    def forward(self, image: Tensor, points: Tensor, labels: Tensor) -> Tuple[Tensor, ...]:
        return self.from_points(*self.features(image), points, labels)

    def from_points(self, vision: Tensor, vision_pos: Tensor, high0: Tensor, high1: Tensor,
                    points: Tensor, labels: Tensor) -> Tuple[Tensor, ...]:
        """-> mask_logits (N, 1, S/4, S/4), scores (N, 1), obj_ptr (N, 256), memory
        (N, 512, 64) in the model's dtype (the bank stores it in bfloat16)."""
        m = self.model
        n = points.shape[0]
        pix = self._pix(vision + m.no_mem_embed, n)
        high_res = [high0.expand(n, -1, -1, -1), high1.expand(n, -1, -1, -1)]
        inputs = {"point_coords": points, "point_labels": labels}
        low, _, _, obj_ptr, score = m.sam_heads(pix, high_res, inputs, None,
                                                m.use_multimask(True, inputs))
        return self._finish(vision, low, score, obj_ptr)

    def from_mask(self, vision: Tensor, vision_pos: Tensor, high0: Tensor, high1: Tensor,
                  mask: Tensor) -> Tuple[Tensor, ...]:
        """mask: (N, 1, S, S) binary float at the model's resolution."""
        m = self.model
        n = mask.shape[0]
        high_res = [high0.expand(n, -1, -1, -1), high1.expand(n, -1, -1, -1)]
        low, _, _, obj_ptr, score = m.mask_as_output(self._pix(vision, n), high_res, mask)
        return self._finish(vision, low, score, obj_ptr)

    def _finish(self, vision: Tensor, low: Tensor, score: Tensor, obj_ptr: Tensor):
        # Meta's predictor consolidates a prompted frame before tracking: the memory comes from
        # the (hole-filled) low-res output upsampled to S and binarised
        m = self.model
        masks = fill_holes(low, self.fill_hole_area)
        s = m.image_size
        high = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
        mem, _ = m.encode_memory(self._pix(vision, masks.shape[0]), high, is_mask_from_pts=True)
        return masks, score.float(), obj_ptr, mem


def step_example_inputs(step: TrackStep, num_objects: int = 1, seed: int = 0
                        ) -> List[Tensor]:
    """Random inputs in the step's layout with every slot filled (for export and tests)."""
    g = torch.Generator().manual_seed(seed)
    dev = step.mem_pos.device
    s = step.model.image_size
    out = [torch.randn(1, 3, s, s, generator=g).to(dev)]
    for name, shape, dt in step.layout.specs(num_objects):
        if name == "frame_idx":
            out.append(torch.full(shape, 20, dtype=dt, device=dev))
        elif dt == torch.bool:
            out.append(torch.ones(shape, dtype=dt, device=dev))
        else:
            out.append(torch.randn(shape, generator=g).to(dev, dt))
    return out
