"""The streaming tracker's state: a fixed-capacity memory bank per object, as plain tensors.

Rows are objects (the tracker's objects in the order they joined). Per object:

    name          shape                     dtype      holds
    frame_idx     (1,)                      int64      index of the frame the step sees next
    cond_mem      (N, C, 512, 64)           bfloat16   memory latents of conditioning frames
    cond_ptr      (N, C, 256)               float32    their object pointers
    cond_valid    (N, C)                    bool       which conditioning slots are filled
    recent_mem    (N, R, 512, 64)           bfloat16   memory of the last R tracked frames
    recent_valid  (N, R)                    bool
    ptr           (N, P, 256)               float32    object pointers of the last P frames
    ptr_valid     (N, P)                    bool

C = max_cond_frames (the cap on conditioning frames, default 2: the first prompted frame and the
latest one; each slot costs 512 keys of memory attention whether filled or not), R = num_maskmem - 1 = 6, P = max_obj_ptrs_in_encoder - 1 = 15 (Meta attends to the
pointers of every conditioning frame plus those of the 15 previous frames). Memory latents are
stored in bfloat16, as Meta's predictor stores them. Frame t writes ring slot t % R (t % P): a
slot's age, and so its temporal encoding, follows from frame_idx alone, and a frame that was a
conditioning frame for an object leaves its ring slots invalid, as Meta's window skips it.
Positions are not stored: the perceiver's position encoding is the same for every frame, so the
step adds it (plus the temporal encoding for the slot's age) when it reads the bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

# conditioning frames kept per object unless asked otherwise: the first and the latest prompted
DEFAULT_MAX_COND_FRAMES = 2

STATE_NAMES = ("frame_idx", "cond_mem", "cond_ptr", "cond_valid", "recent_mem", "recent_valid",
               "ptr", "ptr_valid")


@dataclass(frozen=True)
class StateLayout:
    """Sizes of the bank; `num_objects` is the number of rows."""

    max_cond_frames: int = DEFAULT_MAX_COND_FRAMES
    num_recent: int = 6
    num_ptrs: int = 15
    mem_tokens: int = 512
    mem_dim: int = 64
    ptr_dim: int = 256
    mem_dtype: torch.dtype = torch.bfloat16
    ptr_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be >= 1, got {self.max_cond_frames}")

    @classmethod
    def for_model(cls, model, max_cond_frames: int = DEFAULT_MAX_COND_FRAMES) -> "StateLayout":
        """The bank an EdgeTAM model reads: Meta's windows (num_maskmem - 1 recent frames,
        max_obj_ptrs_in_encoder - 1 recent pointers) and its memory / pointer widths."""
        return cls(max_cond_frames=int(max_cond_frames), num_recent=model.num_maskmem - 1,
                   num_ptrs=model.max_obj_ptrs_in_encoder - 1, mem_dim=model.mem_dim,
                   ptr_dim=model.hidden_dim)

    def specs(self, num_objects: int) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
        n, c, r, p = num_objects, self.max_cond_frames, self.num_recent, self.num_ptrs
        m, d, pd = self.mem_tokens, self.mem_dim, self.ptr_dim
        return [("frame_idx", (1,), torch.int64),
                ("cond_mem", (n, c, m, d), self.mem_dtype),
                ("cond_ptr", (n, c, pd), self.ptr_dtype),
                ("cond_valid", (n, c), torch.bool),
                ("recent_mem", (n, r, m, d), self.mem_dtype),
                ("recent_valid", (n, r), torch.bool),
                ("ptr", (n, p, pd), self.ptr_dtype),
                ("ptr_valid", (n, p), torch.bool)]

    def empty(self, num_objects: int, frame_idx: int, device) -> Tuple[Tensor, ...]:
        """A bank with `num_objects` rows and nothing stored (every slot invalid)."""
        out = [torch.zeros(shape, dtype=dt, device=device)
               for _, shape, dt in self.specs(num_objects)]
        out[0].fill_(frame_idx)
        return tuple(out)

    def check(self, state: Tuple[Tensor, ...]) -> None:
        """Raise if `state` does not have this layout (any number of rows)."""
        if len(state) != len(STATE_NAMES):
            raise ValueError(f"state must be {len(STATE_NAMES)} tensors {STATE_NAMES}, "
                             f"got {len(state)}")
        n = state[1].shape[0]
        for (name, shape, dt), t in zip(self.specs(n), state):
            if tuple(t.shape) != shape or t.dtype != dt:
                raise ValueError(f"state tensor {name} must be {shape} {dt}, got "
                                 f"{tuple(t.shape)} {t.dtype}")


def state_bytes(state: Tuple[Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in state)
