"""Video and image predictors with the interface people know from Meta's SAM 2 / EdgeTAM.

    predictor = edgetam.VideoPredictor(edgetam.load("edgetam.pt"))
    state = predictor.init_state(frames)          # list of HxWx3 uint8 frames, or a path
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=[[x, y]], labels=[1])
    for frame_idx, obj_ids, mask_logits in predictor.propagate_in_video(state):
        masks = mask_logits > 0                    # (num_objects, 1, H, W)

Objects are tracked together as one batch. The bookkeeping (conditioning frames, temporary
per-object outputs merged before propagation, memory stored in bfloat16, small holes filled)
follows Meta's video predictor, so results match it.
"""

from __future__ import annotations

import numbers
import warnings
from collections import OrderedDict
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .model import NO_OBJ_SCORE, EdgeTAM
from .postprocess import fill_holes

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def _as_hwc_uint8(frame, where: str) -> Tensor:
    t = torch.as_tensor(np.asarray(frame)) if not isinstance(frame, Tensor) else frame
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"{where}: expected an HxWx3 RGB frame, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise ValueError(f"{where}: expected uint8 pixels (0..255), got {t.dtype}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{where}: empty frame of shape {tuple(t.shape)}")
    return t


def preprocess_frame(frame, image_size: int, device=None) -> Tensor:
    """HxWx3 uint8 RGB -> (3, S, S) float32, resized (bilinear, antialiased) and normalized with
    ImageNet mean / std, as the model expects."""
    t = _as_hwc_uint8(frame, "frame")
    x = t.to(device=device).permute(2, 0, 1).float().div(255.0)[None]
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor(IMG_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMG_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


class Frames:
    """A video's frames, preprocessed on access (keeps memory at the size of the input).

    A path (mp4 or frame folder) is read as Meta's predictor reads it: each frame resized to
    image_size x image_size on loading, as Meta's loader resizes it (video_io.read_model_frames),
    so the same path gives Meta's masks. In-memory frames are resized when accessed (bilinear,
    antialiased). `video_size=(height, width)` says the frames were already resized to the
    model's input and gives the video's own size (for the output masks)."""

    def __init__(self, frames, image_size: int, video_size: Optional[Tuple[int, int]] = None
                 ) -> None:
        if isinstance(frames, (str, bytes)) or hasattr(frames, "__fspath__"):
            from .video_io import read_model_frames

            if video_size is not None:
                raise ValueError("video_size is read from the path; give it only with frames")
            frames, video_size = read_model_frames(frames, image_size)
        if isinstance(frames, np.ndarray) or isinstance(frames, Tensor):
            if frames.ndim != 4:
                raise ValueError(
                    f"frames: expected (T, H, W, 3) uint8, got shape {tuple(frames.shape)}")
            frames = [frames[i] for i in range(frames.shape[0])]
        frames = list(frames)
        if not frames:
            raise ValueError("frames: the video has no frames")
        self.frames = [_as_hwc_uint8(f, f"frame {i}") for i, f in enumerate(frames)]
        shapes = {tuple(f.shape) for f in self.frames}
        if len(shapes) != 1:
            raise ValueError(f"frames: all frames must have the same size, got {sorted(shapes)}")
        self.height, self.width = self.frames[0].shape[:2]
        if video_size is not None:
            if (self.height, self.width) != (image_size, image_size):
                raise ValueError(f"frames: with video_size, frames must be already resized to "
                                 f"{image_size}x{image_size}, got {self.height}x{self.width}")
            h, w = video_size
            if min(int(h), int(w)) < 1:
                raise ValueError(f"video_size must be (height, width) >= 1, got {video_size}")
            self.height, self.width = int(h), int(w)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Tensor:
        return preprocess_frame(self.frames[i], self.image_size)


def prompt_points(points, labels, box, width: int, height: int, image_size: int,
                  normalize_coords: bool = True, device=None) -> Tuple[Tensor, Tensor]:
    """Validate clicks (N, 2) with labels 0/1 and / or a box (x0, y0, x1, y1) in pixels of a
    width x height frame (or in [0, 1] when normalize_coords is False) and turn them into model
    points (1, M, 2) and labels (1, M) (a box becomes 2 points, labels 2 and 3, first)."""
    w, h = width, height
    if (points is None) != (labels is None):
        raise ValueError("points and labels must be given together")
    if points is None and box is None:
        raise ValueError("give points (with labels) or a box")
    lim = torch.tensor([w, h], dtype=torch.float32) if normalize_coords else torch.ones(2)
    unit = "pixels" if normalize_coords else "normalized [0, 1] coordinates"
    if points is None:
        pts = torch.zeros(0, 2)
        labs = torch.zeros(0, dtype=torch.int32)
    else:
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32)) \
            if not isinstance(points, Tensor) else points.detach().float().cpu()
        labs = torch.as_tensor(np.asarray(labels)) \
            if not isinstance(labels, Tensor) else labels.detach().cpu()
        if pts.dim() == 1 and pts.numel() == 2:
            pts = pts[None]
        if pts.dim() != 2 or pts.shape[-1] != 2:
            raise ValueError(f"points must be (N, 2) as (x, y), got shape {tuple(pts.shape)}")
        labs = labs.reshape(-1)
        if labs.shape[0] != pts.shape[0]:
            raise ValueError(f"got {pts.shape[0]} points but {labs.shape[0]} labels")
        if labs.is_floating_point() and not torch.equal(labs, labs.round()):
            raise ValueError(f"labels must be 0 (background) or 1 (foreground), got {labs}")
        labs = labs.to(torch.int32)
        if not bool(((labs == 0) | (labs == 1)).all()):
            raise ValueError(
                f"labels must be 0 (background) or 1 (foreground), got {labs.tolist()}")
        _check_inside(pts, lim, "point(s)", unit)
    if box is not None:
        b = torch.as_tensor(np.asarray(box, dtype=np.float32)) \
            if not isinstance(box, Tensor) else box.detach().float().cpu()
        if b.numel() != 4:
            raise ValueError(f"box must be (x0, y0, x1, y1), got shape {tuple(b.shape)}")
        b = b.reshape(2, 2)
        if not bool((b[1] > b[0]).all()):
            raise ValueError(f"box must have x0 < x1 and y0 < y1, got {b.reshape(-1).tolist()}")
        _check_inside(b, lim, "box corner(s)", unit)
        pts = torch.cat([b, pts], dim=0)
        labs = torch.cat([torch.tensor([2, 3], dtype=torch.int32), labs], dim=0)
    pts = pts / lim * image_size
    return pts[None].to(device), labs[None].to(device)


def _check_inside(pts: Tensor, lim: Tensor, what: str, unit: str) -> None:
    if not bool(torch.isfinite(pts).all()):
        raise ValueError(f"{what} must be finite, got {pts.tolist()}")
    bad = ((pts < 0) | (pts > lim)).any(dim=-1)
    if bool(bad.any()):
        raise ValueError(
            f"{what} {pts[bad].tolist()} outside the frame: x must lie in [0, {lim[0]:g}] "
            f"and y in [0, {lim[1]:g}] ({unit})")


# ---------------------------------------------------------------------------------------------
# Video predictor
# ---------------------------------------------------------------------------------------------


class VideoPredictor:
    """Meta-style video predictor. fill_hole_area: background holes of at most this many
    low-res (S/4) pixels in each object's mask are filled (Meta's default, 8; 0 turns it off).
    non_overlap_masks: where objects overlap in the output, only the highest logit stays
    positive."""

    def __init__(self, model: EdgeTAM, fill_hole_area: int = 8, non_overlap_masks: bool = False):
        if not isinstance(model, EdgeTAM):
            raise TypeError(f"VideoPredictor takes an edgetam.EdgeTAM model, got {type(model)}")
        if fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
        self.model = model.eval()
        self.fill_hole_area = int(fill_hole_area)
        self.non_overlap_masks = non_overlap_masks

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- state --------------------------------------------------------------------------------

    @torch.inference_mode()
    def init_state(self, frames) -> dict:
        """frames: a list / array of HxWx3 uint8 RGB frames, a (T, H, W, 3) uint8 array or
        tensor, or a path (mp4 file or folder of JPEG / PNG frames)."""
        src = frames if isinstance(frames, Frames) else Frames(frames, self.image_size)
        state = {
            "images": src,
            "num_frames": len(src),
            "video_height": src.height,
            "video_width": src.width,
            "device": self.device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict": {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "consolidated_frame_inds": {"cond_frame_outputs": set(),
                                        "non_cond_frame_outputs": set()},
            "tracking_has_started": False,
            "frames_already_tracked": {},
        }
        return state

    @torch.inference_mode()
    def reset_state(self, state: dict) -> None:
        """Remove every prompt, object and result (the frames stay)."""
        self._reset_tracking_results(state)
        for key in ("obj_id_to_idx", "obj_idx_to_id", "point_inputs_per_obj",
                    "mask_inputs_per_obj", "output_dict_per_obj", "temp_output_dict_per_obj"):
            state[key].clear()
        state["obj_ids"] = []

    def _reset_tracking_results(self, state: dict) -> None:
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj"):
            for v in state[key].values():
                v.clear()
        for key in ("output_dict_per_obj", "temp_output_dict_per_obj"):
            for v in state[key].values():
                v["cond_frame_outputs"].clear()
                v["non_cond_frame_outputs"].clear()
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            state["output_dict"][key].clear()
            state["consolidated_frame_inds"][key].clear()
        state["tracking_has_started"] = False
        state["frames_already_tracked"].clear()

    # --- objects ------------------------------------------------------------------------------

    @staticmethod
    def _check_obj_id(obj_id) -> None:
        if isinstance(obj_id, bool) or not isinstance(obj_id, (numbers.Integral, str)):
            raise TypeError(f"obj_id must be an int (or str), got {obj_id!r}")

    def _obj_idx(self, state: dict, obj_id, create: bool) -> int:
        self._check_obj_id(obj_id)
        idx = state["obj_id_to_idx"].get(obj_id)
        if idx is not None:
            return idx
        if not create:
            raise KeyError(f"unknown object id {obj_id!r}; known ids: {state['obj_ids']}")
        if state["tracking_has_started"]:
            raise RuntimeError(
                f"cannot add the new object id {obj_id!r} after tracking has started "
                f"(known ids: {state['obj_ids']}); call reset_state(state) first")
        idx = len(state["obj_id_to_idx"])
        state["obj_id_to_idx"][obj_id] = idx
        state["obj_idx_to_id"][idx] = obj_id
        state["obj_ids"] = list(state["obj_id_to_idx"])
        state["point_inputs_per_obj"][idx] = {}
        state["mask_inputs_per_obj"][idx] = {}
        for key in ("output_dict_per_obj", "temp_output_dict_per_obj"):
            state[key][idx] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        return idx

    def _check_frame(self, state: dict, frame_idx) -> int:
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, numbers.Integral):
            raise TypeError(f"frame_idx must be an int, got {frame_idx!r}")
        n = state["num_frames"]
        if not 0 <= frame_idx < n:
            raise IndexError(f"frame_idx {frame_idx} is outside the video (0..{n - 1})")
        return int(frame_idx)

    # --- prompts ------------------------------------------------------------------------------

    def _prompt_points(self, state, points, labels, box, normalize_coords):
        return prompt_points(points, labels, box, state["video_width"], state["video_height"],
                             self.image_size, normalize_coords, self.device)

    @torch.inference_mode()
    def add_new_points_or_box(self, state: dict, frame_idx: int, obj_id, points=None,
                              labels=None, clear_old_points: bool = True,
                              normalize_coords: bool = True, box=None):
        """Prompt object `obj_id` on `frame_idx` with clicks (x, y in pixels of the original
        video; labels 1 foreground, 0 background) and / or a box (x0, y0, x1, y1).
        Returns (frame_idx, obj_ids, mask logits (num_objects, 1, H, W)) for that frame."""
        frame_idx = self._check_frame(state, frame_idx)
        self._check_obj_id(obj_id)
        if box is not None and not clear_old_points:
            raise ValueError("a box must come first: use clear_old_points=True with a box")
        pts, labs = self._prompt_points(state, points, labels, box, normalize_coords)
        obj_idx = self._obj_idx(state, obj_id, create=True)
        if box is not None and state["tracking_has_started"]:
            warnings.warn("a box added after tracking started may not refine the mask well; "
                          "call reset_state to start over with a box", stacklevel=2)
        per_frame = state["point_inputs_per_obj"][obj_idx]
        old = None if clear_old_points else per_frame.get(frame_idx)
        if old is not None:
            pts = torch.cat([old["point_coords"], pts], dim=1)
            labs = torch.cat([old["point_labels"], labs], dim=1)
        point_inputs = {"point_coords": pts, "point_labels": labs}
        per_frame[frame_idx] = point_inputs
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._interact(state, frame_idx, obj_idx, point_inputs, None, use_prev=True)

    @torch.inference_mode()
    def add_new_mask(self, state: dict, frame_idx: int, obj_id, mask):
        """Prompt object `obj_id` with a binary HxW mask on `frame_idx`."""
        frame_idx = self._check_frame(state, frame_idx)
        self._check_obj_id(obj_id)
        m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, Tensor) else mask.detach()
        if m.dim() != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(m.shape)}")
        obj_idx = self._obj_idx(state, obj_id, create=True)
        m = m.to(self.device, torch.bool).float()[None, None]
        s = self.image_size
        if m.shape[-2:] != (s, s):
            m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=True)
            m = (m >= 0.5).float()
        state["mask_inputs_per_obj"][obj_idx][frame_idx] = m
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._interact(state, frame_idx, obj_idx, None, m, use_prev=False)

    def _interact(self, state, frame_idx, obj_idx, point_inputs, mask_inputs, use_prev):
        is_init = frame_idx not in state["frames_already_tracked"]
        reverse = False if is_init else state["frames_already_tracked"][frame_idx]["reverse"]
        obj_out = state["output_dict_per_obj"][obj_idx]
        obj_temp = state["temp_output_dict_per_obj"][obj_idx]
        key = "cond_frame_outputs" if is_init else "non_cond_frame_outputs"
        prev_logits = None
        if use_prev:
            prev = obj_temp[key].get(frame_idx) or obj_out["cond_frame_outputs"].get(frame_idx) \
                or obj_out["non_cond_frame_outputs"].get(frame_idx)
            if prev is not None and prev["pred_masks"] is not None:
                prev_logits = torch.clamp(prev["pred_masks"].to(self.device), -32.0, 32.0)
        out, _ = self._run_frame(state, obj_out, frame_idx, 1, is_init, point_inputs,
                                 mask_inputs, reverse, run_mem_encoder=False,
                                 prev_sam_mask_logits=prev_logits)
        obj_temp[key][frame_idx] = out
        merged = self._consolidate(state, frame_idx, is_cond=is_init, run_mem_encoder=False,
                                   at_video_res=True)
        return frame_idx, list(state["obj_ids"]), self._to_video_res(
            state, merged["pred_masks_video_res"])

    # --- propagation --------------------------------------------------------------------------

    @torch.inference_mode()
    def propagate_in_video(self, state: dict, start_frame_idx: Optional[int] = None,
                           max_frame_num_to_track: Optional[int] = None,
                           reverse: bool = False) -> Iterator[Tuple[int, List, Tensor]]:
        """Track every prompted object; yields (frame_idx, obj_ids, mask logits (num_objects,
        1, H, W)) per frame, in processing order."""
        self._preflight(state)
        out_dict = state["output_dict"]
        done = state["consolidated_frame_inds"]
        n = state["num_frames"]
        batch = len(state["obj_ids"])
        if start_frame_idx is None:
            start_frame_idx = min(out_dict["cond_frame_outputs"])
        start_frame_idx = self._check_frame(state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = n
        if max_frame_num_to_track < 0:
            raise ValueError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}")
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else []
        else:
            end = min(start_frame_idx + max_frame_num_to_track, n - 1)
            order = range(start_frame_idx, end + 1)
        obj_ids = list(state["obj_ids"])
        for t in order:
            if t in done["cond_frame_outputs"]:
                key = "cond_frame_outputs"
                out = out_dict[key][t]
                masks = out["pred_masks"]
            elif t in done["non_cond_frame_outputs"]:
                key = "non_cond_frame_outputs"
                out = out_dict[key][t]
                masks = out["pred_masks"]
            else:
                key = "non_cond_frame_outputs"
                out, masks = self._run_frame(state, out_dict, t, batch, False, None, None,
                                             reverse, run_mem_encoder=True)
                out_dict[key][t] = out
            self._split_per_object(state, t, out, key)
            state["frames_already_tracked"][t] = {"reverse": reverse}
            yield t, obj_ids, self._to_video_res(state, masks)

    def _preflight(self, state: dict) -> None:
        if not state["obj_ids"]:
            raise RuntimeError("no prompts yet: call add_new_points_or_box (or add_new_mask) "
                               "for at least one object before propagate_in_video")
        state["tracking_has_started"] = True
        out_dict = state["output_dict"]
        done = state["consolidated_frame_inds"]
        temp = state["temp_output_dict_per_obj"]
        for is_cond in (False, True):
            key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
            frames = set()
            for d in temp.values():
                frames.update(d[key].keys())
            done[key].update(frames)
            for t in sorted(frames):
                merged = self._consolidate(state, t, is_cond=is_cond, run_mem_encoder=True)
                out_dict[key][t] = merged
                self._split_per_object(state, t, merged, key)
            for d in temp.values():
                d[key].clear()
        for t in out_dict["cond_frame_outputs"]:
            out_dict["non_cond_frame_outputs"].pop(t, None)
        for d in state["output_dict_per_obj"].values():
            for t in d["cond_frame_outputs"]:
                d["non_cond_frame_outputs"].pop(t, None)
        for t in done["cond_frame_outputs"]:
            done["non_cond_frame_outputs"].discard(t)
        if not out_dict["cond_frame_outputs"]:
            raise RuntimeError("no prompted frame to start from: add points, a box or a mask")

    def _split_per_object(self, state, frame_idx, out, key) -> None:
        for idx, d in state["output_dict_per_obj"].items():
            sl = slice(idx, idx + 1)
            d[key][frame_idx] = {
                "maskmem_features": None if out["maskmem_features"] is None
                else out["maskmem_features"][sl],
                "maskmem_pos_enc": None if out["maskmem_pos_enc"] is None
                else out["maskmem_pos_enc"][sl],
                "pred_masks": out["pred_masks"][sl],
                "obj_ptr": out["obj_ptr"][sl],
                "object_score_logits": out["object_score_logits"][sl],
            }

    def _consolidate(self, state, frame_idx, is_cond, run_mem_encoder, at_video_res=False):
        """Merge the objects' latest outputs on a frame into one batch (missing objects get
        NO_OBJ_SCORE masks); optionally re-encode the memory for the whole batch."""
        batch = len(state["obj_ids"])
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        if at_video_res:
            size = (state["video_height"], state["video_width"])
            mask_key = "pred_masks_video_res"
        else:
            size = (self.image_size // 4, self.image_size // 4)
            mask_key = "pred_masks"
        dev = self.device
        merged = {
            "maskmem_features": None,
            "maskmem_pos_enc": None,
            mask_key: torch.full((batch, 1, *size), NO_OBJ_SCORE, dtype=torch.float32, device=dev),
            "obj_ptr": torch.full((batch, self.model.hidden_dim), NO_OBJ_SCORE,
                                  dtype=torch.float32, device=dev),
            "object_score_logits": torch.full((batch, 1), 10.0, dtype=torch.float32, device=dev),
        }
        empty_ptr = None
        for idx in range(batch):
            out = state["temp_output_dict_per_obj"][idx][key].get(frame_idx)
            obj_out = state["output_dict_per_obj"][idx]
            if out is None:
                out = obj_out["cond_frame_outputs"].get(frame_idx)
            if out is None:
                out = obj_out["non_cond_frame_outputs"].get(frame_idx)
            if out is None:
                if run_mem_encoder:
                    if empty_ptr is None:
                        empty_ptr = self._empty_mask_ptr(state, frame_idx)
                    merged["obj_ptr"][idx: idx + 1] = empty_ptr
                continue
            m = out["pred_masks"]
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            merged[mask_key][idx: idx + 1] = m
            merged["obj_ptr"][idx: idx + 1] = out["obj_ptr"]
            merged["object_score_logits"][idx: idx + 1] = out["object_score_logits"]
        if run_mem_encoder:
            s = self.image_size
            high = F.interpolate(merged["pred_masks"].to(dev), size=(s, s), mode="bilinear",
                                 align_corners=False)
            feats = self._features(state, frame_idx, batch)
            b, n, c = feats["vision"].shape
            pix = feats["vision"].transpose(1, 2).reshape(b, c, self.model.feat_size, -1)
            mem, pos = self.model.encode_memory(pix, high, is_mask_from_pts=True)
            merged["maskmem_features"] = mem.to(torch.bfloat16)
            merged["maskmem_pos_enc"] = self._shared_pos(state, pos)
        return merged

    def _empty_mask_ptr(self, state, frame_idx) -> Tensor:
        s = self.image_size
        feats = self._features(state, frame_idx, 1)
        out = self.model.track_step(frame_idx, True, feats, None,
                                    torch.zeros(1, 1, s, s, device=self.device), {},
                                    state["num_frames"], run_mem_encoder=False)
        return out["obj_ptr"]

    def _shared_pos(self, state, pos: Tensor) -> Tensor:
        """The memory position encoding is the same for every frame and object: keep one."""
        const = state["constants"]
        if "maskmem_pos_enc" not in const:
            const["maskmem_pos_enc"] = pos[0:1].clone()
        return const["maskmem_pos_enc"].expand(pos.shape[0], -1, -1)

    def _features(self, state, frame_idx: int, batch: int):
        cached = state["cached_features"].get(frame_idx)
        if cached is None:
            image = state["images"][frame_idx].to(self.device).float()[None]
            cached = self.model.image_features(image)
            state["cached_features"] = {frame_idx: cached}  # the latest frame only
        return {"vision": cached["vision"].expand(batch, -1, -1),
                "vision_pos": cached["vision_pos"].expand(batch, -1, -1),
                "high_res": [f.expand(batch, -1, -1, -1) for f in cached["high_res"]]}

    def _run_frame(self, state, output_dict, frame_idx, batch, is_init, point_inputs,
                   mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits=None):
        feats = self._features(state, frame_idx, batch)
        out = self.model.track_step(frame_idx, is_init, feats, point_inputs, mask_inputs,
                                    output_dict, state["num_frames"], reverse,
                                    run_mem_encoder, prev_sam_mask_logits)
        mem = out["maskmem_features"]
        pred = out["pred_masks"]
        if self.fill_hole_area > 0:
            pred = fill_holes(pred, self.fill_hole_area)
        compact = {
            # stored in bfloat16, as Meta's predictor does
            "maskmem_features": None if mem is None else mem.to(torch.bfloat16),
            "maskmem_pos_enc": None if out["maskmem_pos_enc"] is None
            else self._shared_pos(state, out["maskmem_pos_enc"]),
            "pred_masks": pred,
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }
        return compact, pred

    def _to_video_res(self, state, masks: Tensor) -> Tensor:
        size = (state["video_height"], state["video_width"])
        if masks.shape[-2:] != size:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        if self.non_overlap_masks and masks.shape[0] > 1:
            top = torch.argmax(masks, dim=0, keepdim=True)
            keep = top == torch.arange(masks.shape[0], device=masks.device)[:, None, None, None]
            masks = torch.where(keep, masks, torch.clamp(masks, max=-10.0))
        return masks

    # --- removing objects ---------------------------------------------------------------------

    @torch.inference_mode()
    def remove_object(self, state: dict, obj_id) -> List:
        """Forget object `obj_id` (its prompts and results). Returns the remaining ids."""
        idx = self._obj_idx(state, obj_id, create=False)
        ids = [i for i in state["obj_ids"] if i != obj_id]
        if not ids:
            self.reset_state(state)
            return []
        keep = [i for i in range(len(state["obj_ids"])) if i != idx]
        remap = {old: new for new, old in enumerate(keep)}
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
                    "temp_output_dict_per_obj"):
            old = state[key]
            state[key] = {remap[k]: v for k, v in old.items() if k in remap}
        state["obj_ids"] = ids
        state["obj_id_to_idx"] = OrderedDict((o, i) for i, o in enumerate(ids))
        state["obj_idx_to_id"] = OrderedDict((i, o) for i, o in enumerate(ids))
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for t, out in list(state["output_dict"][key].items()):
                for name in ("maskmem_features", "maskmem_pos_enc", "pred_masks", "obj_ptr",
                             "object_score_logits"):
                    if out.get(name) is not None:
                        out[name] = out[name][keep]
        # frames prompted only for the removed object stop being conditioning frames
        prompted = set()
        for d in list(state["point_inputs_per_obj"].values()) + \
                list(state["mask_inputs_per_obj"].values()):
            prompted.update(d)
        for t in list(state["output_dict"]["cond_frame_outputs"]):
            if t not in prompted:
                out = state["output_dict"]["cond_frame_outputs"].pop(t)
                state["output_dict"]["non_cond_frame_outputs"][t] = out
                state["consolidated_frame_inds"]["cond_frame_outputs"].discard(t)
                state["frames_already_tracked"].pop(t, None)
                for d in state["output_dict_per_obj"].values():
                    o = d["cond_frame_outputs"].pop(t, None)
                    if o is not None:
                        d["non_cond_frame_outputs"][t] = o
        if not state["output_dict"]["cond_frame_outputs"]:
            self._reset_tracking_results(state)
        return list(ids)


# ---------------------------------------------------------------------------------------------
# Image predictor
# ---------------------------------------------------------------------------------------------


class ImagePredictor:
    """Single-image segmentation (SAM style): set_image once, predict with several prompts."""

    def __init__(self, model: EdgeTAM, mask_threshold: float = 0.0) -> None:
        if not isinstance(model, EdgeTAM):
            raise TypeError(f"ImagePredictor takes an edgetam.EdgeTAM model, got {type(model)}")
        self.model = model.eval()
        self.mask_threshold = mask_threshold
        self._features = None
        self._orig_hw = None

    @torch.inference_mode()
    def set_image(self, image) -> None:
        """image: HxWx3 uint8 RGB (numpy array, tensor or PIL image)."""
        if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
            image = np.asarray(image.convert("RGB"))
        t = _as_hwc_uint8(image, "image")
        self._orig_hw = tuple(t.shape[:2])
        x = preprocess_frame(t, self.model.image_size, self.model.device)[None]
        feats = self.model.image_features(x)
        s = self.model.feat_size
        embed = (feats["vision"] + self.model.no_mem_embed).transpose(1, 2).reshape(1, -1, s, s)
        self._features = {"image_embed": embed, "high_res": feats["high_res"]}

    def reset_predictor(self) -> None:
        self._features = None
        self._orig_hw = None

    @torch.inference_mode()
    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """Prompts in pixels of the image set with `set_image`. Returns numpy arrays
        (masks (M, H, W), iou scores (M,), low-res logits (M, S/4, S/4)); M = 3 with
        multimask_output else 1."""
        if self._features is None:
            raise RuntimeError("call set_image(image) before predict(...)")
        h, w = self._orig_hw
        dev = self.model.device
        pts, labs = None, None
        if point_coords is not None or point_labels is not None or box is not None:
            pts, labs = prompt_points(point_coords, point_labels, box, w, h,
                                      self.model.image_size, True, dev)
        dense_in = None
        if mask_input is not None:
            m = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32).to(dev)
            if m.dim() == 2:
                m = m[None]
            if m.dim() == 3:
                m = m[None]
            side = self.model.image_size // 4
            if m.shape[-2:] != (side, side):
                raise ValueError(f"mask_input must be low-res logits of {side}x{side} "
                                 f"(a previous call's third output), got {tuple(m.shape[-2:])}")
            dense_in = m
        if pts is None:
            pts = torch.zeros(1, 1, 2, device=dev)
            labs = -torch.ones(1, 1, dtype=torch.int32, device=dev)
        sparse, dense = self.model.sam_prompt_encoder((pts, labs), dense_in)
        low, iou, _, _ = self.model.sam_mask_decoder(
            self._features["image_embed"], self.model.sam_prompt_encoder.get_dense_pe(),
            sparse, dense, multimask_output=multimask_output,
            high_res_features=self._features["high_res"])
        masks = F.interpolate(low.float(), size=(h, w), mode="bilinear", align_corners=False)
        low = torch.clamp(low, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low[0].float().cpu().numpy()
