"""The EdgeTAM model: modules with Meta's checkpoint names, and one tracking step.

Tensors inside are batch-first: image features (B, H*W, C). The batch is the set of objects
tracked together in one video (all share the frame's image features).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP
from .image_encoder import ImageEncoder
from .mask_decoder import MaskDecoder
from .memory import MemoryAttention, MemoryEncoder, SpatialPerceiver
from .prompt_encoder import PromptEncoder

NO_OBJ_SCORE = -1024.0  # mask logit used for "object absent"


class EdgeTAM(nn.Module):
    hidden_dim = 256
    mem_dim = 64
    num_maskmem = 7  # the conditioning frame + 6 previous frames
    max_obj_ptrs_in_encoder = 16
    backbone_stride = 16
    sigmoid_scale_for_mem_enc = 20.0
    sigmoid_bias_for_mem_enc = -10.0
    binarize_mask_from_pts_for_mem_enc = True
    multimask_min_pt_num = 0
    multimask_max_pt_num = 1

    def __init__(self, image_size: int = 1024) -> None:
        super().__init__()
        if image_size % 256 != 0 or image_size <= 0:
            raise ValueError(
                f"image_size must be a positive multiple of 256 (1024 is EdgeTAM's own; 512 and "
                f"768 also work), got {image_size}")
        self.image_size = int(image_size)
        c = self.hidden_dim
        self.image_encoder = ImageEncoder(c)
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(c, self.mem_dim)
        self.memory_encoder = MemoryEncoder(c, self.mem_dim)
        self.spatial_perceiver = SpatialPerceiver(self.mem_dim)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(self.num_maskmem, 1, 1, self.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr):
            nn.init.trunc_normal_(p, std=0.02)
        self.sam_prompt_encoder = PromptEncoder(c, self.image_size, self.backbone_stride)
        self.sam_mask_decoder = MaskDecoder(c)
        self.obj_ptr_proj = MLP(c, c, c, 3)

    @property
    def device(self) -> torch.device:
        return self.no_obj_ptr.device

    @property
    def feat_size(self) -> int:
        return self.image_size // self.backbone_stride

    def fuse_(self) -> "EdgeTAM":
        """Fold the image encoder's BatchNorms and re-parameterisable token mixers into plain
        convs, and the mask decoder's conv_s0 / conv_s1 into the FPN's lateral convs of the
        two high-resolution levels (faster inference; the state dict then no longer loads
        Meta's layout)."""
        from .repvit import fuse_

        fuse_(self.image_encoder.trunk)
        if not getattr(self, "fused", False):
            dec = self.sam_mask_decoder
            self.image_encoder.fold_heads_(dec.conv_s0, dec.conv_s1)
            dec.conv_s0, dec.conv_s1 = nn.Identity(), nn.Identity()
        self.fused = True
        return self

    def set_backend(self, backend: str) -> "EdgeTAM":
        """Which edgetam_kernels backend the perceiver and memory attention use ("auto", ...)."""
        self.memory_attention.set_backend(backend)
        self.spatial_perceiver.backend = backend
        return self

    # -----------------------------------------------------------------------------------------
    # Image features
    # -----------------------------------------------------------------------------------------

    def forward_image(self, image: Tensor) -> Dict[str, List[Tensor]]:
        """(B, 3, S, S) normalized -> {"backbone_fpn": [s4 (32 ch), s8 (64 ch), s16 (256 ch)],
        "vision_pos_enc": [...]}; the two high-resolution levels are already projected for
        the mask decoder."""
        out = self.image_encoder(image)
        fpn = list(out["backbone_fpn"])
        fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return {"backbone_fpn": fpn, "vision_pos_enc": list(out["vision_pos_enc"])}

    # -----------------------------------------------------------------------------------------
    # SAM heads
    # -----------------------------------------------------------------------------------------

    def sam_heads(self, pix_feat: Tensor, high_res: List[Tensor],
                  point_inputs: Optional[Dict[str, Tensor]] = None,
                  mask_inputs: Optional[Tensor] = None, multimask_output: bool = False):
        """Prompt encoder + mask decoder + object pointer, with occlusion handling.

        Returns (low_res_masks (B,1,S/4,S/4), high_res_masks (B,1,S,S), ious, obj_ptr (B,C),
        object_score_logits (B,1))."""
        b = pix_feat.shape[0]
        dev = pix_feat.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:
            coords = torch.zeros(b, 1, 2, device=dev)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=dev)
        if mask_inputs is not None:
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                mask_inputs = F.interpolate(mask_inputs.float(),
                                            size=self.sam_prompt_encoder.mask_input_size,
                                            mode="bilinear", align_corners=False, antialias=True)
        sparse, dense = self.sam_prompt_encoder((coords, labels), mask_inputs)
        masks, ious, sam_tokens, obj_score = self.sam_mask_decoder(
            pix_feat, self.sam_prompt_encoder.get_dense_pe(), sparse, dense,
            multimask_output=multimask_output, high_res_features=high_res)
        present = obj_score > 0
        masks = torch.where(present[:, None, None], masks, NO_OBJ_SCORE).float()
        high = F.interpolate(masks, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)
        token = sam_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=dev)
            low_res = masks[rows, best].unsqueeze(1)
            high = high[rows, best].unsqueeze(1)
            if sam_tokens.shape[1] > 1:
                token = sam_tokens[rows, best]
        else:
            low_res = masks
        obj_ptr = self.obj_ptr_proj(token)
        lam = present.to(obj_ptr.dtype)
        obj_ptr = lam * obj_ptr + (1 - lam) * self.no_obj_ptr
        return low_res, high, ious, obj_ptr, obj_score

    def mask_as_output(self, pix_feat: Tensor, high_res: List[Tensor], mask_inputs: Tensor):
        """A given mask becomes the output (logits +-10) and yields an object pointer."""
        scale, bias = 20.0, -10.0
        m = mask_inputs.float()
        high = m * scale + bias
        low = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4),
                            mode="bilinear", align_corners=False, antialias=True)
        ious = m.new_ones(m.shape[0], 1)
        small = self.mask_downsample(m.to(self.mask_downsample.weight.dtype))
        _, _, _, obj_ptr, _ = self.sam_heads(pix_feat, high_res, mask_inputs=small)
        present = torch.any(m.flatten(1) > 0.0, dim=1)[..., None].float()
        obj_score = scale * present + bias
        obj_ptr = present * obj_ptr + (1 - present) * self.no_obj_ptr
        return low, high, ious, obj_ptr, obj_score

    def use_multimask(self, is_init_cond_frame: bool, point_inputs) -> bool:
        n = 0 if point_inputs is None else point_inputs["point_labels"].shape[1]
        return self.multimask_min_pt_num <= n <= self.multimask_max_pt_num

    # -----------------------------------------------------------------------------------------
    # Memory
    # -----------------------------------------------------------------------------------------

    def gather_memory(self, frame_idx: int, output_dict: dict, num_frames: int,
                      reverse: bool = False):
        """Memory tokens for `frame_idx` from stored outputs: conditioning frames (t_pos 0),
        the 6 previous frames, then up to 16 object pointers (4 tokens of 64 each).

        Returns (memory (B, N, 64), memory_pos (B, N, 64), num_spatial_mem, num_ptr_tokens)."""
        cond = output_dict["cond_frame_outputs"]
        non_cond = output_dict["non_cond_frame_outputs"]
        if len(cond) == 0:
            raise RuntimeError("tracking needs at least one conditioning (prompted) frame")
        picked = [(0, out) for out in cond.values()]
        for t_pos in range(1, self.num_maskmem):
            t_rel = self.num_maskmem - t_pos
            if t_rel == 1:
                prev = frame_idx + 1 if reverse else frame_idx - 1
            else:
                prev = frame_idx + t_rel if reverse else frame_idx - t_rel
            picked.append((t_pos, non_cond.get(prev)))
        mems, poses = [], []
        dev = self.device
        for t_pos, out in picked:
            if out is None:
                continue
            mems.append(out["maskmem_features"].to(dev))
            pos = out["maskmem_pos_enc"].to(dev)
            poses.append(pos + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1].reshape(1, 1, -1))
        num_spatial = len(mems)

        max_ptrs = min(num_frames, self.max_obj_ptrs_in_encoder)
        ptrs = [out["obj_ptr"] for t, out in cond.items()
                if (t >= frame_idx if reverse else t <= frame_idx)]
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if reverse else frame_idx - t_diff
            if t < 0 or t >= num_frames:
                break
            out = non_cond.get(t)
            if out is not None:
                ptrs.append(out["obj_ptr"])
        num_ptr_tokens = 0
        if ptrs:
            p = torch.stack(ptrs, dim=1)  # (B, P, 256)
            b, n_ptr, c = p.shape
            split = c // self.mem_dim
            p = p.reshape(b, n_ptr * split, self.mem_dim)
            mems.append(p)
            poses.append(p.new_zeros(p.shape))
            num_ptr_tokens = p.shape[1]
        # stored memories may be bfloat16 (as in Meta's predictor): attend in the model's dtype
        dtype = self.no_obj_ptr.dtype
        memory = torch.cat([m.to(dtype) for m in mems], dim=1)
        return memory, torch.cat(poses, dim=1), num_spatial, num_ptr_tokens

    def condition_on_memory(self, feat: Tensor, pos: Tensor, memory: Tensor, memory_pos: Tensor,
                            num_spatial_mem: int, num_ptr_tokens: int,
                            key_mask: Optional[Tensor] = None) -> Tensor:
        """(B, HW, C) features -> memory-conditioned (B, C, H, W). key_mask (B, N) bool: which
        memory tokens take part (None: all)."""
        b, n, c = feat.shape
        s = self.feat_size
        out = self.memory_attention(feat, pos, memory, memory_pos, (s, s), num_spatial_mem,
                                    num_ptr_tokens, key_mask)
        return out.transpose(1, 2).reshape(b, c, s, s)

    def tracked_frame(self, vision: Tensor, vision_pos: Tensor, high_res: List[Tensor],
                      memory: Tensor, memory_pos: Tensor, num_spatial_mem: int,
                      num_ptr_tokens: int, key_mask: Optional[Tensor] = None):
        """A frame without prompts: memory attention, then the SAM heads (multimask, the best
        mask kept). The per-frame math of both bookkeepers: VideoPredictor (Meta's dicts, via
        `track_step`) and Tracker's step (a fixed bank, empty slots masked by key_mask).
        Returns (low_res_masks, high_res_masks, obj_ptr, object_score_logits)."""
        pix = self.condition_on_memory(vision, vision_pos, memory, memory_pos, num_spatial_mem,
                                       num_ptr_tokens, key_mask)
        low, high, _, obj_ptr, score = self.sam_heads(pix, high_res, None, None,
                                                      self.use_multimask(False, None))
        return low, high, obj_ptr, score

    def encode_memory(self, pix_feat: Tensor, high_res_masks: Tensor, is_mask_from_pts: bool):
        """(B, C, H, W) features + (B, 1, S, S) mask logits -> perceiver latents and their pos,
        both (B, 512, 64)."""
        if self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
            m = (high_res_masks > 0).float()
        else:
            m = torch.sigmoid(high_res_masks)
        m = m * self.sigmoid_scale_for_mem_enc + self.sigmoid_bias_for_mem_enc
        feats, pos = self.memory_encoder(pix_feat, m)
        return self.spatial_perceiver(feats, pos)

    # -----------------------------------------------------------------------------------------
    # One tracking step
    # -----------------------------------------------------------------------------------------

    def track_step(self, frame_idx: int, is_init_cond_frame: bool, feats: Dict[str, Tensor],
                   point_inputs: Optional[Dict[str, Tensor]], mask_inputs: Optional[Tensor],
                   output_dict: dict, num_frames: int, reverse: bool = False,
                   run_mem_encoder: bool = True, prev_sam_mask_logits: Optional[Tensor] = None):
        """feats: "vision" (B, HW, C), "vision_pos" (B, HW, C), "high_res" [s4, s8] (B, C', h, w).
        Returns the frame's output dict (pred_masks low-res logits, pred_masks_high_res,
        obj_ptr, object_score_logits, maskmem_features / maskmem_pos_enc or None)."""
        vision, vision_pos, high_res = feats["vision"], feats["vision_pos"], feats["high_res"]
        b, n, c = vision.shape
        s = self.feat_size
        if mask_inputs is not None:
            pix = vision.transpose(1, 2).reshape(b, c, s, s)
            low, high, _, obj_ptr, obj_score = self.mask_as_output(pix, high_res, mask_inputs)
        elif not is_init_cond_frame and point_inputs is None and prev_sam_mask_logits is None:
            memory, memory_pos, n_sp, n_ptr = self.gather_memory(frame_idx, output_dict,
                                                                 num_frames, reverse)
            low, high, obj_ptr, obj_score = self.tracked_frame(vision, vision_pos, high_res,
                                                               memory, memory_pos, n_sp, n_ptr)
        else:
            if is_init_cond_frame:
                pix = (vision + self.no_mem_embed).transpose(1, 2).reshape(b, c, s, s)
            else:
                memory, memory_pos, n_sp, n_ptr = self.gather_memory(frame_idx, output_dict,
                                                                     num_frames, reverse)
                pix = self.condition_on_memory(vision, vision_pos, memory, memory_pos, n_sp, n_ptr)
            if prev_sam_mask_logits is not None:
                mask_inputs = prev_sam_mask_logits
            multimask = self.use_multimask(is_init_cond_frame, point_inputs)
            low, high, _, obj_ptr, obj_score = self.sam_heads(pix, high_res, point_inputs,
                                                              mask_inputs, multimask)
        out = {"pred_masks": low, "pred_masks_high_res": high, "obj_ptr": obj_ptr,
               "object_score_logits": obj_score, "maskmem_features": None,
               "maskmem_pos_enc": None}
        if run_mem_encoder:
            pix = vision.transpose(1, 2).reshape(b, c, s, s)
            mem, mem_pos = self.encode_memory(pix, high, point_inputs is not None)
            out["maskmem_features"], out["maskmem_pos_enc"] = mem, mem_pos
        return out

    def image_features(self, image: Tensor) -> Dict[str, Tensor]:
        """Backbone features of one or more frames in the layout `track_step` takes. Only the
        lowest-resolution level's position encoding is made: tracking reads no other (in an
        exported step the others would become constants, 22 MB at 512 and 88 MB at 1024)."""
        enc, dec = self.image_encoder, self.sam_mask_decoder
        fpn = enc.features(image)
        return {"vision": fpn[-1].flatten(2).transpose(1, 2),
                "vision_pos": enc.position(fpn[-1]).flatten(2).transpose(1, 2),
                "high_res": [dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1])]}
