"""Live sources read one frame at a time: a camera, a stream URL (RTSP, HTTP, `file:`...), a
video file or a frame folder. Nothing is read ahead, so memory stays at one decoded frame
whatever the stream's length. Cameras, URLs and video files go through one PyAV call,
`open_container`; PyAV is imported only when one is opened.

    with stream.open_source("0") as src:          # camera 0; or "rtsp://...", "clip.mp4", "frames/"
        for frame in src:                         # HxWx3 uint8 RGB numpy arrays
            ...
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from .video_io import VideoReadError, folder_frame_paths, read_image

# seconds PyAV waits to open a network source and for each read before it gives up
NETWORK_TIMEOUT_S = 10.0


def is_camera(spec: str) -> bool:
    """'0', '1', ...: a camera index."""
    return isinstance(spec, str) and spec.isdigit()


def is_url(spec: str) -> bool:
    """'rtsp://host/x', 'http://...', 'file:clip.mp4', ...: anything FFmpeg opens by protocol."""
    if not isinstance(spec, str) or os.path.exists(spec):
        return False
    head, sep, _ = spec.partition(":")
    # a protocol name, not a Windows drive letter ("C:\\...")
    return bool(sep) and len(head) > 1 and head.replace("+", "").replace("-", "").isalnum()


def is_live(spec: str) -> bool:
    """A source that only exists as a stream (read frame by frame, never as a whole)."""
    return is_camera(spec) or is_url(spec)


def camera_url(index: int, platform: Optional[str] = None):
    """(url, FFmpeg input format) of camera `index` on this platform."""
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return f"/dev/video{index}", "v4l2"
    if platform == "darwin":
        return str(index), "avfoundation"
    raise VideoReadError(
        f"camera {index}: opening a camera by index is supported on Linux (v4l2) and macOS "
        f"(avfoundation); on {platform} give the device as a URL FFmpeg opens instead")


def open_container(url: str, format: Optional[str] = None, options: Optional[dict] = None,
                   timeout: Optional[float] = NETWORK_TIMEOUT_S):
    """The one PyAV open call for cameras, URLs and files."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise VideoReadError("reading a camera, stream or video needs PyAV: pip install av") from e
    return av.open(url, format=format, options=options or {}, timeout=timeout)


class FrameSource:
    """Frames of one source, decoded as they are asked for. Iterate once; close() (or a `with`
    block) releases the device or connection. `description` names the source for messages."""

    def __init__(self, frames: Callable[[], Iterator[np.ndarray]], description: str,
                 max_frames: Optional[int] = None, on_close: Callable[[], None] = None):
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self._frames = frames
        self._on_close = on_close
        self.description = description
        self.max_frames = max_frames
        self.frames_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self._frames():
            if self.max_frames is not None and self.frames_read >= self.max_frames:
                return
            self.frames_read += 1
            yield frame

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decoded(container, description: str) -> Iterator[np.ndarray]:
    if not container.streams.video:
        raise VideoReadError(f"{description} has no video stream")
    try:
        for frame in container.decode(container.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")
    except VideoReadError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types
        raise VideoReadError(f"cannot read {description}: {type(e).__name__}: {e}") from e


def _container_source(url: str, description: str, max_frames, format=None,
                      options=None) -> FrameSource:
    try:
        container = open_container(url, format=format, options=options)
    except VideoReadError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types
        raise VideoReadError(f"cannot open {description}: {type(e).__name__}: {e}") from e
    return FrameSource(lambda: _decoded(container, description), description, max_frames,
                       on_close=container.close)


def frames_source(frames: Iterable[np.ndarray], description: str = "frames",
                  max_frames: Optional[int] = None) -> FrameSource:
    """An in-memory or generated sequence of frames as a source (tests, the synthetic clip)."""
    return FrameSource(lambda: iter(frames), description, max_frames)


def open_source(spec: str, max_frames: Optional[int] = None) -> FrameSource:
    """A camera index ('0'), a URL FFmpeg opens ('rtsp://...', 'file:clip.mp4'), a video file
    or a folder of JPEG / PNG frames, read one frame at a time."""
    spec = os.fspath(spec)
    if is_camera(spec):
        url, fmt = camera_url(int(spec))
        return _container_source(url, f"camera {spec} ({url})", max_frames, format=fmt)
    if is_url(spec):
        options = {"rtsp_transport": "tcp"} if spec.startswith("rtsp") else None
        return _container_source(spec, f"stream {spec}", max_frames, options=options)
    if os.path.isdir(spec):
        paths = folder_frame_paths(spec)
        return FrameSource(lambda: (read_image(p)[0] for p in paths),
                           f"frame folder {spec}", max_frames)
    if not os.path.exists(spec):
        raise VideoReadError(f"no such video file, frame folder, camera index or URL: {spec}")
    return _container_source(spec, f"video {spec}", max_frames)


class FpsMeter:
    """Frames per second over the whole run and over the last `window_s` seconds; `line()`
    says both. Keeps O(1) state (a count and the last window's start), whatever the length."""

    def __init__(self, clock: Callable[[], float], window_s: float = 1.0):
        self.clock = clock
        self.window_s = window_s
        self.frames = 0
        self.busy_s = 0.0  # time spent inside tracked steps
        self.slowest_ms = 0.0
        self._start = clock()
        self._win_start, self._win_frames = self._start, 0

    def add(self, step_s: float) -> Optional[str]:
        """Count one frame that took `step_s`; returns a status line once per window."""
        self.frames += 1
        self.busy_s += step_s
        self.slowest_ms = max(self.slowest_ms, step_s * 1e3)
        self._win_frames += 1
        now = self.clock()
        if now - self._win_start < self.window_s:
            return None
        fps = self._win_frames / (now - self._win_start)
        self._win_start, self._win_frames = now, 0
        return (f"{self.frames} tracked frame(s): {fps:.2f} FPS now, {self.mean_fps():.2f} FPS "
                f"mean")

    def mean_fps(self) -> float:
        elapsed = self.clock() - self._start
        return self.frames / elapsed if elapsed > 0 else 0.0

    def mean_step_ms(self) -> float:
        return self.busy_s / self.frames * 1e3 if self.frames else 0.0
