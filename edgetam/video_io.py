"""Frames in and masks out: a synthetic demo clip, mp4 (PyAV) or image-folder reading, PNG masks
and an overlay GIF (Pillow). PyAV and Pillow are imported only when needed.

Two ways to read a path:
- `read_frames`: the frames at their own size (for display, overlays, in-memory use).
- `read_model_frames`: the frames resized to the model's square input exactly as Meta's
  `sam2.utils.misc.load_video_frames` resizes them, so the same folder or mp4 gives the same
  masks in both predictors: a folder's images with Pillow's bicubic `Image.resize` (Meta's
  `_load_img_as_tensor`), a video file with FFmpeg's `scale=S:S` filter (bilinear) ahead of the
  RGB conversion, which is what decord's `VideoReader(width=S, height=S)` runs. Both then
  divide by 255 and normalise, which `preprocess_frame` does bit for bit as Meta does.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


class VideoReadError(RuntimeError):
    """The video or frame folder cannot be read."""


# ---------------------------------------------------------------------------------------------
# Synthetic clip
# ---------------------------------------------------------------------------------------------


def synthetic_clip(num_frames: int = 8, height: int = 240, width: int = 320,
                   seed: int = 0) -> Tuple[List[np.ndarray], Tuple[float, float]]:
    """A small clip of an orange disc gliding over a textured background, passing a static
    blue square. Returns (frames HxWx3 uint8, (x, y) of the disc's centre on frame 0)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.empty((height, width, 3), np.float32)
    base[..., 0] = 60 + 25 * np.sin(xx / 17.0)
    base[..., 1] = 80 + 25 * np.cos(yy / 13.0)
    base[..., 2] = 70 + 20 * np.sin((xx + yy) / 23.0)
    base += rng.normal(0, 6, base.shape)
    sq = (slice(int(height * 0.55), int(height * 0.8)), slice(int(width * 0.45), int(width * 0.6)))
    base[sq] = (40, 70, 200)
    r = min(height, width) * 0.12
    frames, start = [], None
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1)
        cx = width * (0.2 + 0.6 * u)
        cy = height * (0.5 + 0.15 * np.sin(2 * np.pi * u))
        img = base.copy()
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img[disc] = (235, 140, 40)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        if start is None:
            start = (float(cx), float(cy))
    return frames, start


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def folder_frame_paths(path: str, max_frames: Optional[int] = None) -> List[str]:
    """The JPEG / PNG files of a frame folder in natural order (`2.jpg` before `10.jpg`; for
    Meta's `<index>.jpg` names this is Meta's order)."""
    names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS)),
                   key=_natural_key)
    if not names:
        raise VideoReadError(f"no JPEG or PNG frames in folder {path}")
    if max_frames is not None:
        names = names[:max_frames]
    return [os.path.join(path, n) for n in names]


def read_image(path: str, size: Optional[int] = None) -> Tuple[np.ndarray, Tuple[int, int]]:
    """One image file -> (HxWx3 uint8 RGB, (height, width) of the file). With `size`, the
    image is resized to size x size the way Meta's folder loader does it: Pillow's
    `Image.resize` with its default filter for RGB, bicubic (antialiased when shrinking)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise VideoReadError("reading image frames needs Pillow: pip install pillow") from e
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            hw = (rgb.height, rgb.width)
            if size is not None:
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(rgb).copy(), hw
    except Exception as e:  # noqa: BLE001 - any decoder failure is an unreadable frame
        raise VideoReadError(f"cannot read frame {path}: {type(e).__name__}: {e}") from e


def _read_folder(path: str, max_frames: Optional[int],
                 size: Optional[int] = None) -> Tuple[List[np.ndarray], Tuple[int, int]]:
    frames, sizes = [], set()
    for p in folder_frame_paths(path, max_frames):
        frame, hw = read_image(p, size)
        frames.append(frame)
        sizes.add(hw)
    if len(sizes) != 1:
        raise VideoReadError(f"frames in {path} differ in size (height, width): {sorted(sizes)}")
    return frames, sizes.pop()


def _scaler(stream, size: int):
    """An FFmpeg filter graph that scales decoded frames to size x size (bilinear) and then
    converts them to RGB: decord's resize, which Meta's mp4 loader uses."""
    import av

    graph = av.filter.Graph()
    src = graph.add_buffer(template=stream)
    scale = graph.add("scale", f"{size}:{size}:flags=bilinear")
    fmt = graph.add("format", "rgb24")
    sink = graph.add("buffersink")
    src.link_to(scale)
    scale.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    return graph


def _read_video(path: str, max_frames: Optional[int],
                size: Optional[int] = None) -> Tuple[List[np.ndarray], Tuple[int, int]]:
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise VideoReadError("reading video files needs PyAV: pip install av") from e
    frames, hw = [], None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} has no video stream")
            stream = container.streams.video[0]
            graph = None if size is None else _scaler(stream, size)
            for frame in container.decode(stream):
                if hw is None:
                    hw = (frame.height, frame.width)
                if graph is None:
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    graph.push(frame)
                    frames.append(graph.pull().to_ndarray())
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoReadError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types
        raise VideoReadError(f"cannot read video {path}: {type(e).__name__}: {e}") from e
    if not frames:
        raise VideoReadError(f"no frames decoded from {path}")
    return frames, hw


def _read(path, max_frames: Optional[int], size: Optional[int]):
    path = os.fspath(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if not os.path.exists(path):
        raise VideoReadError(f"no such video file or frame folder: {path}")
    if os.path.isdir(path):
        return _read_folder(path, max_frames, size)
    return _read_video(path, max_frames, size)


def read_frames(path, max_frames: Optional[int] = None) -> List[np.ndarray]:
    """An mp4 (or other video file PyAV decodes) or a folder of JPEG / PNG frames ->
    list of HxWx3 uint8 RGB frames at their own size (at most `max_frames`)."""
    return _read(path, max_frames, None)[0]


def read_model_frames(path, image_size: int, max_frames: Optional[int] = None
                      ) -> Tuple[List[np.ndarray], Tuple[int, int]]:
    """Like `read_frames`, but each frame resized to image_size x image_size as Meta's loader
    resizes it (see the module docstring). Returns (frames, (height, width) of the video)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return _read(path, max_frames, image_size)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

PALETTE = np.array([(255, 60, 60), (60, 200, 255), (255, 220, 40), (150, 255, 90),
                    (220, 90, 255)], np.float32)


def overlay(frame: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Tint each object's mask (HxW bool) over the frame."""
    out = frame.astype(np.float32)
    for i, m in enumerate(masks):
        color = PALETTE[i % len(PALETTE)]
        out[m] = (1 - alpha) * out[m] + alpha * color
    return out.clip(0, 255).astype(np.uint8)


def write_mask_png(path: str, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_gif(path: str, frames: Sequence[np.ndarray], fps: float = 10.0,
              max_side: int = 480) -> None:
    from PIL import Image

    images = []
    for f in frames:
        im = Image.fromarray(f)
        scale = max_side / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))))
        images.append(im.convert("P", palette=Image.ADAPTIVE))
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=int(1000 / fps))
