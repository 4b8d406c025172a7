"""One tracked frame at a time, for every tracker the benches compare (host_overhead.py,
gpu_tracker.py). Random weights, object score forced positive (masks flow into memory).

    runner = RUNNERS["tracker"](size=256, device="cpu")
    runner.start(num_objects=1)      # builds the session and prompts frame 0 (untimed)
    runner.next()                    # tracks the next frame (the timed unit)

Runners:
  meta              Meta's SAM2VideoPredictor (edgetam-dimos), propagate_in_video one yield per
                    frame; `compile=True`: its own option, ++model.compile_image_encoder=true
                    (torch.compile of the image encoder, mode max-autotune, fullgraph).
  hf                Hugging Face's EdgeTamVideoModel, streaming session (a frame per forward).
  predictor_before  edgetam.VideoPredictor as it was before the Tracker (its package read from
                    git at `before_ref`, imported under another name).
  predictor         edgetam.VideoPredictor of this checkout.
  tracker           edgetam.Tracker.track on uint8 frames (resize / normalise, step, masks out).
  step              the pure step alone: Tracker.step(image, *state) fed its own new state.
The video is a ring of 8 random frames indexed modulo 8, so a 500-frame run costs no more input
memory than an 8-frame one; each implementation keeps whatever state it keeps per frame.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from edgetam_kernels._compat import shim_torchvision  # noqa: E402

shim_torchvision()

RING = 8


class Ring:
    """A long video of RING distinct frames: video[i] = frames[i % RING]."""

    def __init__(self, frames, length: int):
        self.frames, self.length = frames, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not -self.length <= i < self.length:
            raise IndexError(i)
        return self.frames[i % RING]


def uint8_frames(size: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (RING, size, size, 3), generator=g, dtype=torch.uint8)


def normalised(frames: torch.Tensor, device) -> torch.Tensor:
    import edgetam

    return torch.stack([edgetam.preprocess_frame(f, f.shape[0]) for f in frames]).to(device)


def prompt_points(size: int, n: int):
    """n clicks spread over the frame, one per object."""
    return [[size * (0.25 + 0.5 * i / max(n, 1)), size * (0.3 + 0.4 * (i % 2))] for i in range(n)]


def _autocast(device, dtype):
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class Runner:
    name = "?"

    def __init__(self, size: int, device="cpu", dtype=torch.float32, length: int = 10_000,
                 **options):
        self.size, self.device, self.dtype, self.length = size, device, dtype, length
        self.options = options
        self.build()

    def build(self):
        raise NotImplementedError

    def start(self, num_objects: int = 1):
        raise NotImplementedError

    def next(self):
        raise NotImplementedError

    def stop(self):
        """Drop the session (state, iterators): what is left is the model."""
        for key in ("state", "it", "session", "inputs"):
            self.__dict__.pop(key, None)
        if hasattr(self, "tracker"):
            self.tracker.reset()
        import gc

        gc.collect()


class Meta(Runner):
    name = "meta"

    def build(self):
        from edgetam_kernels.testing import hosts as M
        from edgetam import _meta

        import sam2.sam2_video_predictor as svp

        svp.tqdm = lambda iterable, **kwargs: iterable  # no progress bar per propagation
        self.M = M
        compile_ = self.options.get("compile", False)
        if compile_:
            self.model = _meta_compiled(self.size, self.device)
        else:
            self.model = _meta.build_meta_video_predictor(self.size, device=self.device)
        M.set_object_score_bias_(self.model.sam_mask_decoder.pred_obj_score_head)
        M.fix_meta_perceiver_batch_(self.model)  # upstream cannot batch several objects
        self.video = Ring(normalised(uint8_frames(self.size), self.device), self.length)
        if compile_:
            self.name = "meta+compile"

    def start(self, num_objects=1):
        from unittest import mock

        import sam2.sam2_video_predictor as svp

        s = self.size
        with mock.patch.object(svp, "load_video_frames", lambda **kw: (self.video, s, s)), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.state = self.model.init_state(video_path="<ring>")
        with _autocast(self.device, self.dtype):
            for i, p in enumerate(prompt_points(s, num_objects)):
                self.model.add_new_points_or_box(self.state, frame_idx=0, obj_id=i + 1,
                                                 points=np.array([p], np.float32),
                                                 labels=np.array([1], np.int32))
        self.it = self.model.propagate_in_video(self.state)
        self.next()  # frame 0: the prompted frame, already computed

    def next(self):
        with _autocast(self.device, self.dtype):
            return next(self.it)[2]


def _meta_compiled(size, device):
    """Meta's predictor with its own compile option switched on in the config."""
    from edgetam import _meta

    import sam2.build_sam as bs

    original = bs.build_sam2_video_predictor

    def with_compile(*args, hydra_overrides_extra=(), **kwargs):
        extra = list(hydra_overrides_extra) + ["++model.compile_image_encoder=true"]
        return original(*args, hydra_overrides_extra=extra, **kwargs)

    bs.build_sam2_video_predictor = with_compile
    try:
        return _meta.build_meta_video_predictor(size, device=device)
    finally:
        bs.build_sam2_video_predictor = original


class HF(Runner):
    name = "hf"

    def build(self):
        from edgetam_kernels.testing import hosts as M

        self.M = M
        self.model = M.hf_model(self.size).to(self.device)
        self.video = Ring(normalised(uint8_frames(self.size), self.device), self.length)

    def start(self, num_objects=1):
        from transformers.models.edgetam_video import EdgeTamVideoInferenceSession

        s, dev = self.size, self.device
        self.session = EdgeTamVideoInferenceSession(
            video_height=s, video_width=s, inference_device=dev, inference_state_device=dev,
            video_storage_device=dev, dtype=torch.float32)
        self.session.add_new_frame(self.video[0])
        for i, p in enumerate(prompt_points(s, num_objects)):
            self.M.hf_add_prompt(self.session, 0, i + 1, points=[p], labels=[1])
        self.t = 1
        with torch.inference_mode(), _autocast(dev, self.dtype):
            self.model(inference_session=self.session, frame_idx=0)

    def next(self):
        frame = self.video[self.t]
        self.t += 1
        with torch.inference_mode(), _autocast(self.device, self.dtype):
            return self.model(inference_session=self.session, frame=frame).pred_masks


def load_edgetam_at(ref: str):
    """The `edgetam` package as it was at git `ref`, imported as `edgetam_at_<sha>`."""
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", ref], check=True,
                         capture_output=True, text=True).stdout.strip()
    name = f"edgetam_at_{sha}"
    if name in sys.modules:
        return sys.modules[name]
    root = tempfile.mkdtemp(prefix="edgetam-before-")
    files = subprocess.run(["git", "-C", ROOT, "ls-tree", "-r", "--name-only", ref, "edgetam"],
                           check=True, capture_output=True, text=True).stdout.split()
    for path in files:
        dest = os.path.join(root, name, os.path.relpath(path, "edgetam"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as fh:
            fh.write(subprocess.run(["git", "-C", ROOT, "show", f"{ref}:{path}"], check=True,
                                    capture_output=True).stdout)
    sys.path.insert(0, root)
    # the old package imports the library's building blocks from their old private name
    # (edgetam_kernels._adapters_common, now the public edgetam_kernels.layers)
    import edgetam_kernels.layers

    sys.modules.setdefault("edgetam_kernels._adapters_common", edgetam_kernels.layers)
    return importlib.import_module(name)


def before_tracker_ref() -> str:
    """The commit before edgetam/tracker.py was added (HEAD if git cannot tell)."""
    out = subprocess.run(["git", "-C", ROOT, "log", "--diff-filter=A", "--format=%H", "--",
                          "edgetam/tracker.py"], capture_output=True, text=True).stdout.split()
    return out[-1] + "^" if out else "HEAD"


def _our_model(pkg, size, device, dtype):
    """Random weights (seeded, as Meta's runner's), BatchNorms folded, the kernel backend
    edgetam picks for the device. Not patch()ed: patch() knows the package by its name, and
    the old package is imported under another."""
    from edgetam._meta import randomize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = pkg.load(None, image_size=size, device="cpu")
    randomize_(model, seed=0)
    model = model.to(device).fuse_()
    return model.to(dtype=dtype) if dtype not in (None, torch.float32) else model


class Predictor(Runner):
    name = "predictor"

    def package(self):
        import edgetam

        return edgetam

    def build(self):
        pkg = self.package()
        self.pkg = pkg
        self.model = _our_model(pkg, self.size, self.device, self.dtype)
        self.predictor = pkg.VideoPredictor(self.model)
        frames = uint8_frames(self.size)

        class RingFrames(pkg.predictor.Frames):  # a long video of RING frames, no copies
            def __init__(inner, video, size):
                inner.frames, inner.image_size = video, size
                inner.height = inner.width = size

        self.frames = RingFrames(Ring(frames, self.length), self.size)

    def start(self, num_objects=1):
        self.state = self.predictor.init_state(self.frames)
        for i, p in enumerate(prompt_points(self.size, num_objects)):
            self.predictor.add_new_points_or_box(self.state, 0, i + 1, points=[p], labels=[1])
        self.it = self.predictor.propagate_in_video(self.state)
        self.next()

    def next(self):
        return next(self.it)[2]


class PredictorBefore(Predictor):
    name = "predictor_before"

    def package(self):
        return load_edgetam_at(self.options.get("before_ref") or before_tracker_ref())


class Tracker(Runner):
    """edgetam.Tracker with the model's weights in the runner's dtype (Tracker(dtype=...))."""

    name = "tracker"

    def build(self):
        from edgetam.tracker import Tracker as T

        model = _our_model(__import__("edgetam"), self.size, self.device, torch.float32)
        self.tracker = T(model, device=self.device, dtype=self.dtype,
                         graph=self.options.get("graph", "auto"))
        self.frames = uint8_frames(self.size).to(self.device)

    def start(self, num_objects=1):
        self.tracker.reset()
        ids = list(range(1, num_objects + 1))
        self.tracker.add(self.frames[0], ids,
                         points=[[p] for p in prompt_points(self.size, num_objects)],
                         labels=[[1]] * num_objects)
        self.t = 1

    def next(self):
        res = self.tracker.track(self.frames[self.t % RING])
        self.t += 1
        return res.mask_logits


class Step(Tracker):
    """The pure step fed its own new state: what one CUDA-graph replay (or an exported
    program) computes per frame, without the Python around it."""

    name = "step"

    def start(self, num_objects=1):
        super().start(num_objects)
        self.inputs = self.tracker.step_inputs()

    def next(self):
        with torch.no_grad():
            masks, scores, *state = self.tracker.step(*self.inputs)
        self.inputs = (self.inputs[0], *state)
        return masks


RUNNERS = {r.name: r for r in (Meta, HF, PredictorBefore, Predictor, Tracker, Step)}
