"""The tracking step as an ExecuTorch program (.pte), and a Tracker that runs it.

    edgetam.pte.export_step(model, "step.pte", num_objects=1)     # torch.export + XNNPACK
    tracker = edgetam.pte.PteTracker(model, "step.pte")            # as edgetam.Tracker
    res = tracker.add(frame0, 1, points=[[x, y]], labels=[1])     # prompted frame: eager
    res = tracker.track(frame1)                                    # tracked frames: the .pte

The program is `Tracker.step` (edgetam/tracker_step.py: `step(image, *state) -> (mask_logits,
scores, *new_state)`, static shapes) for a fixed number of objects, lowered with XNNPACK for the
standard ops; our fused ops stay `edgetam::*.out` operators that ExecuTorch runs with the C++
kernels of edgetam_kernels.executorch (NEON on ARM). The weights are inside the .pte; the eager
model passed to PteTracker runs the prompted frames only and must be the same checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from .model import EdgeTAM
from .tracker import Tracker
from .tracker_state import DEFAULT_MAX_COND_FRAMES
from .tracker_step import step_example_inputs

OUR_OPS = ("rope_attention", "perceiver_attention", "spatial_perceiver")
# ExecuTorch's ScalarType codes (those of c10) for the dtypes a step's inputs have.
_ET_DTYPE = {torch.float32: 6, torch.float16: 5, torch.bfloat16: 15, torch.bool: 11,
             torch.int64: 4, torch.int32: 3, torch.uint8: 0}


def step_inputs(tracker: Tracker, num_objects: int) -> List[Tensor]:
    """Example (image, *state) in the dtypes the tracker feeds its step (the image in the
    model's dtype, as Tracker preprocesses frames)."""
    image, *state = step_example_inputs(tracker.step, num_objects)
    return [image.to(tracker.model.no_obj_ptr.dtype), *state]


class PteError(RuntimeError):
    """A step that cannot be exported, or a .pte that does not fit the tracker asked for."""


def _lower(ep):
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.exir.passes.constant_prop_pass import constant_prop_pass
    except ImportError as e:
        raise PteError("exporting a .pte needs executorch: pip install executorch==1.5.1 "
                       "(the `executorch` extra)") from e
    # Fold what depends on weights alone (the cross-attention's value projection folded into
    # its output projection, position tables) into constants first: XNNPACK takes a linear
    # only with a constant weight, and a linear left out runs on ExecuTorch's portable,
    # scalar addmm (4 of them were 55 % of a 512 frame).
    ep = constant_prop_pass(ep.run_decompositions({}))  # functional first: no in-place op
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()


def export_step(model: EdgeTAM, path: os.PathLike, *, num_objects: int = 1,
                max_cond_frames: int = DEFAULT_MAX_COND_FRAMES) -> Dict:
    """torch.export of the tracking step for `num_objects` objects, lowered with XNNPACK, written
    atomically to `path`. Returns a summary (bytes, operators, delegated partitions)."""
    if num_objects < 1:
        raise PteError(f"num_objects must be >= 1, got {num_objects}")
    tracker = Tracker(model, graph=False, max_cond_frames=max_cond_frames)
    if tracker.model.device.type != "cpu":
        raise PteError(f"export runs on CPU; the model is on {tracker.model.device}")
    step = tracker.step.eval()
    inputs = tuple(step_inputs(tracker, num_objects))
    try:
        with torch.no_grad():
            ep = torch.export.export(step, inputs)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; say which step
        raise PteError(f"torch.export of the tracking step failed: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from e
    used = {n.target.name().split("::")[1].split(".")[0] for n in ep.graph.nodes
            if n.op == "call_function" and hasattr(n.target, "name")
            and n.target.name().startswith("edgetam::")}
    try:
        program = _lower(ep)
    except PteError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PteError(f"lowering the exported step to ExecuTorch failed: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from e
    plan = program.executorch_program.execution_plan[0]
    operators = sorted({f"{o.name}.{o.overload}" for o in plan.operators})
    missing = [op for op in used if f"edgetam::{op}.out" not in operators]
    if missing:
        raise PteError(f"the program lost our fused ops {missing} (decomposed?); operators: "
                       f"{operators}")
    path = Path(path)
    if not path.parent.is_dir():
        raise PteError(f"the folder of {path} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            program.write_to_file(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"path": str(path), "bytes": path.stat().st_size, "num_objects": num_objects,
            "image_size": tracker.model.image_size, "dtype": str(tracker.model.no_obj_ptr.dtype),
            "operators": operators, "xnnpack_partitions": len(plan.delegates),
            "fused_ops": sorted(used)}


class PteStep:
    """A .pte of the tracking step, checked against the inputs a Tracker will give it."""

    def __init__(self, path: os.PathLike, example_inputs: List[Tensor]) -> None:
        from edgetam_kernels import executorch as ket

        path = Path(path)
        if not path.is_file():
            raise PteError(f"no such .pte: {path}")
        try:
            self.program = ket.runtime().load_program(path)
        except ket.ExecuTorchUnavailable:
            raise
        except Exception as e:  # noqa: BLE001
            raise PteError(f"cannot load {path} as an ExecuTorch program: {e}") from e
        meta = self.program.metadata("forward")
        if meta.num_inputs() != len(example_inputs):
            raise PteError(f"{path} takes {meta.num_inputs()} inputs; the tracking step has "
                           f"{len(example_inputs)} (image + state): not a step of this tracker")
        for i, x in enumerate(example_inputs):
            info = meta.input_tensor_meta(i)
            sizes, dt = tuple(info.sizes()), info.dtype()
            if sizes != tuple(x.shape) or dt != _ET_DTYPE.get(x.dtype):
                what = ("image" if i == 0 else f"state tensor {i - 1}")
                hint = _mismatch_hint(i, sizes, dt, x)
                raise PteError(f"{path} does not fit this tracker: its {what} is {sizes} "
                               f"(dtype code {dt}), the tracker needs {tuple(x.shape)} "
                               f"{x.dtype}{hint}")
        self.path = path
        self.method = self.program.load_method("forward")

    def __call__(self, image: Tensor, *state: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.method.execute([image.contiguous(), *(s.contiguous() for s in state)]))


def _mismatch_hint(i: int, sizes, dt, x: Tensor) -> str:
    if i == 0 and len(sizes) == 4 and sizes[-1] != x.shape[-1]:
        return f" (the .pte is for --image-size {sizes[-1]})"
    if i == 0 and dt != _ET_DTYPE.get(x.dtype):
        names = {v: k for k, v in _ET_DTYPE.items()}
        short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
        name = str(names.get(dt, dt)).replace("torch.", "")
        return f" (the .pte is for --dtype {short.get(name, name)})"
    if i > 0 and len(sizes) > 1 and sizes[0] != x.shape[0]:
        return f" (the .pte tracks {sizes[0]} object(s))"
    return ""


class PteTracker(Tracker):
    """edgetam.Tracker whose tracked frames run the .pte (prompted frames run eagerly: the
    prompt path is not in the program). Tracks exactly the .pte's number of objects."""

    def __init__(self, model: EdgeTAM, pte: os.PathLike, *, num_objects: int = 1,
                 max_cond_frames: int = DEFAULT_MAX_COND_FRAMES, **kwargs) -> None:
        super().__init__(model, graph=False, max_cond_frames=max_cond_frames, **kwargs)
        self.num_objects = int(num_objects)
        self.pte = PteStep(pte, step_inputs(self, self.num_objects))

    def _run_step(self, image: Tensor):
        if len(self._ids) != self.num_objects:
            raise PteError(f"the .pte tracks {self.num_objects} object(s); the tracker has "
                           f"{len(self._ids)}")
        return self.pte(image, *self._state)


def _raw(t: Tensor) -> bytes:
    """A tensor's bytes as ExecuTorch lays them out (contiguous; bf16 and bool included)."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def write_runner_clip(tracker: Tracker, frames, folder: os.PathLike) -> int:
    """Inputs for csrc/executorch/runner.cpp (`edgetam_runner STEP.pte DIR OUT --steps T
    --feedback 2`) to track `frames` from the tracker's current state: input_0.bin holds the T
    preprocessed frames, input_<i>.bin state tensor i - 1. Returns T."""
    if not tracker.state():
        raise PteError("write_runner_clip: the tracker has no object yet; add() one first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "input_0.bin", "wb") as f:
        for frame in frames:
            f.write(_raw(tracker._image(frame)[0]))
    for i, s in enumerate(tracker.state(), start=1):
        (folder / f"input_{i}.bin").write_bytes(_raw(s))
    return len(frames)
