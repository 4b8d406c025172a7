"""edgetam: a minimal pure-PyTorch EdgeTAM (video object tracking) on edgetam_kernels' ops.

    import edgetam
    model = edgetam.load("edgetam.pt")             # Meta's checkpoint; None: random weights
    predictor = edgetam.VideoPredictor(model)
    state = predictor.init_state(frames)           # HxWx3 uint8 frames, an mp4 or a folder
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=[[x, y]], labels=[1])
    for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
        masks = logits > 0

Streaming (frame by frame, objects joining at any frame, bounded memory):

    tracker = edgetam.Tracker(model)
    tracker.add(frame0, obj_id=1, points=[[x, y]], labels=[1])
    for frame in stream:
        result = tracker.track(frame)              # result.obj_ids, result.mask_logits

Command line: `python -m edgetam track VIDEO --point X,Y --out DIR` (see docs/edgetam.md).
Depends on torch, numpy and edgetam_kernels only; PIL and PyAV are used by the CLI for I/O.
"""

from .loading import CheckpointError, load, load_weights
from .model import NO_OBJ_SCORE, EdgeTAM
from .predictor import ImagePredictor, VideoPredictor, preprocess_frame
from .tracker import Tracker, TrackResult

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EdgeTAM",
    "ImagePredictor",
    "NO_OBJ_SCORE",
    "TrackResult",
    "Tracker",
    "VideoPredictor",
    "load",
    "load_weights",
    "preprocess_frame",
    "__version__",
]
