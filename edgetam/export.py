"""`torch.export` of one tracking step, the path towards on-device runtimes.

One step = image encoder -> memory attention over a fixed-size memory (the custom op
`edgetam::rope_attention`) -> mask decoder and object pointer -> memory encoder and spatial
perceiver (the custom op `edgetam::spatial_perceiver`) for the new memory entry. The memory bank
itself (which frames to keep) stays in the host program: it only concatenates tensors.

    ep = edgetam.export.export_track_step(model)
    masks, obj_ptr, score, mem, mem_pos = ep.module()(*edgetam.export.example_inputs(model))
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from .model import EdgeTAM


class TrackStep(nn.Module):
    """A tracked (non-prompted) frame with `num_mem_frames` memory frames and `num_ptrs`
    object pointers, for a batch of objects sharing the frame.

    Inputs: image (1, 3, S, S) normalized; memory (B, num_mem_frames * 512 + 4 * num_ptrs, 64)
    and memory_pos (same shape; temporal encodings already added).
    Outputs: low-res mask logits (B, 1, S/4, S/4), object pointer (B, 256), object score
    (B, 1), the frame's memory latents and their position encoding (B, 512, 64) each.
    """

    def __init__(self, model: EdgeTAM, num_mem_frames: int = 7, num_ptrs: int = 16) -> None:
        super().__init__()
        self.model = model
        self.num_mem_frames = int(num_mem_frames)
        self.num_ptr_tokens = 4 * int(num_ptrs)

    def forward(self, image: Tensor, memory: Tensor, memory_pos: Tensor
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        b = memory.shape[0]
        feats = m.image_features(image)
        vision = feats["vision"].expand(b, -1, -1)
        vision_pos = feats["vision_pos"].expand(b, -1, -1)
        high_res = [f.expand(b, -1, -1, -1) for f in feats["high_res"]]
        pix = m.condition_on_memory(vision, vision_pos, memory, memory_pos, self.num_mem_frames,
                                    self.num_ptr_tokens)
        low, high, _, obj_ptr, score = m.sam_heads(pix, high_res, None, None,
                                                   multimask_output=True)
        s = m.feat_size
        raw = vision.transpose(1, 2).reshape(b, -1, s, s)
        mem, mem_pos = m.encode_memory(raw, high, is_mask_from_pts=False)
        return low, obj_ptr, score, mem, mem_pos


def example_inputs(model: EdgeTAM, num_objects: int = 1, num_mem_frames: int = 7,
                   num_ptrs: int = 16):
    s = model.image_size
    n = num_mem_frames * 512 + 4 * num_ptrs
    dev = model.device
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 3, s, s, generator=g).to(dev),
            torch.randn(num_objects, n, 64, generator=g).to(dev),
            torch.randn(num_objects, n, 64, generator=g).to(dev))


def export_track_step(model: EdgeTAM, num_objects: int = 1, num_mem_frames: int = 7,
                      num_ptrs: int = 16):
    """torch.export.export of `TrackStep` (static shapes). The exported graph calls
    torch.ops.edgetam.rope_attention and torch.ops.edgetam.spatial_perceiver."""
    step = TrackStep(model.eval(), num_mem_frames, num_ptrs)
    with torch.no_grad():
        return torch.export.export(step, example_inputs(model, num_objects, num_mem_frames,
                                                        num_ptrs))
