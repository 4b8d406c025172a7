"""`python -m edgetam track`: track one object through a video, write masks and an overlay GIF.

    python -m edgetam track --out out/ --frames 8 --image-size 512        # synthetic demo clip
    python -m edgetam track video.mp4 --point 320,180 --checkpoint edgetam.pt --out out/
    python -m edgetam track frames/ --box 100,80,260,200 --out out/
    python -m edgetam track 0 --stream --point 320,240 --out out/       # camera 0, live
    python -m edgetam track rtsp://host/cam --stream --box 10,10,200,200 --out out/

Output folder: masks/00000.png ... (0 / 255), overlay.gif, summary.json (per-frame times).
With --stream the source is decoded and tracked one frame at a time (edgetam.Tracker) with the
FPS printed as it goes; masks are written as they come, no overlay, and Ctrl-C stops cleanly
with the summary written.
Everything is written into a temporary folder next to DIR and moved into place at the end, so an
error leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import List, Optional, Sequence, Tuple


# the dtypes a .pte can hold (export --dtype, track --pte --dtype)
PROGRAM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _pair(text: str, n: int, what: str) -> Tuple[float, ...]:
    parts = text.replace(" ", "").split(",")
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != n:
        fmt = "X,Y" if n == 2 else "X0,Y0,X1,Y1"
        raise argparse.ArgumentTypeError(f"{what} must be {fmt} (numbers), got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgetam",
                                description="Minimal pure-PyTorch EdgeTAM video tracking.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("track", help="track one object from a click or box on the first frame")
    t.add_argument("video", nargs="?", default="synthetic", metavar="SOURCE",
                   help="mp4 file, folder of JPEG/PNG frames, 'synthetic' (default: a generated "
                        "clip of a moving disc); with --stream also a camera index (0, 1, ...) "
                        "or a URL FFmpeg opens (rtsp://..., http://..., file:...)")
    t.add_argument("--stream", action="store_true",
                   help="read SOURCE frame by frame and track each frame as it arrives "
                        "(edgetam.Tracker): live FPS, bounded memory, Ctrl-C stops; implied "
                        "by a camera index or a URL")
    t.add_argument("--point", action="append", type=lambda s: _pair(s, 2, "--point"),
                   metavar="X,Y", help="foreground click on frame 0, in pixels (repeatable)")
    t.add_argument("--box", type=lambda s: _pair(s, 4, "--box"), metavar="X0,Y0,X1,Y1",
                   help="box around the object on frame 0, in pixels")
    t.add_argument("--checkpoint",
                   help="Meta's edgetam.pt, or Hugging Face's EdgeTAM: a folder with config.json "
                        "+ model.safetensors or the hub id yonigozlan/EdgeTAM-hf (downloaded "
                        "once, then cached); without it the weights are random")
    t.add_argument("--out", required=True,
                   help="output folder (must not exist or be empty; missing parents are created)")
    t.add_argument("--image-size", type=int, default=1024, choices=(256, 512, 768, 1024),
                   help="model input size (1024 is EdgeTAM's own; 512 is ~4x faster)")
    t.add_argument("--frames", type=int, default=None,
                   help="process at most N frames (synthetic clip: its length, default 8)")
    t.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    t.add_argument("--backend", default="auto",
                   help="edgetam_kernels backend: auto, reference, cpu, triton, metal")
    t.add_argument("--dtype", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                   help="precision of the perceiver's and memory attention's products: fp32 "
                        "(default), auto (the fastest within the accuracy budget on this "
                        "hardware: bf16 only where it runs fast), bf16 or fp16 (fp32 instead, "
                        "with a warning, where this hardware cannot run it fast)")
    t.add_argument("--threads", default="auto",
                   help="CPU threads for torch; 'auto' (default): torch's default, reduced to "
                        "the cores other processes leave idle (1-minute load average), since "
                        "oversubscribed threads slow every step down many times over")
    t.add_argument("--seed", type=int, default=0, help="seed for random weights")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--pte", help="track with this ExecuTorch program of the step (from "
                   "`python -m edgetam export --pte`; same --checkpoint, --image-size and "
                   "--dtype, which then names the program's dtype: fp32, bf16 or fp16) instead "
                   "of eager PyTorch")
    e = sub.add_parser("export", help="export the tracking step as an ExecuTorch program (.pte)")
    e.add_argument("--pte", required=True, help="output .pte file (written atomically)")
    e.add_argument("--checkpoint", help="Meta's edgetam.pt or Hugging Face's EdgeTAM (folder or "
                   "hub id); without it the weights are random")
    e.add_argument("--image-size", type=int, default=1024, choices=(256, 512, 768, 1024),
                   help="model input size the program is fixed to")
    e.add_argument("--dtype", default="fp32", choices=tuple(PROGRAM_DTYPES),
                   help="the program's dtype (weights and activations)")
    e.add_argument("--objects", type=int, default=1,
                   help="number of objects the program tracks at once (its state's rows)")
    e.add_argument("--seed", type=int, default=0, help="seed for random weights")
    return p


def _check_out_dir(out: str) -> str:
    out = os.path.abspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise CliError(f"--out {out} exists and is not a folder")
        if os.listdir(out):
            raise CliError(f"--out {out} is not empty; choose a new or empty folder")
    # missing parents are created when the results are written (nothing is made before then,
    # so an error leaves nothing behind); the nearest existing one must be a folder
    parent = os.path.dirname(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CliError(f"--out {out} lies under {parent}, which is not a folder")
    return out


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc="tracking", unit="frame", file=sys.stderr)


def _choose_threads(spec: str) -> int:
    import torch

    default = torch.get_num_threads()
    if spec != "auto":
        try:
            n = int(spec)
        except ValueError:
            n = 0
        if n < 1:
            raise CliError(f"--threads must be 'auto' or a positive integer, got {spec!r}")
        return n
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return default
    idle = int((os.cpu_count() or default) - busy + 0.5)
    return max(1, min(default, idle))


def _load_model(args, patch: bool = True):
    """The model for `track` and `export`: (model, CPU threads, dtype name). Eager tracking
    runs float32 weights with --dtype as the compute precision (the precision policy's choice,
    warning once where it falls back) on the library's fast paths; a .pte (export, track --pte)
    holds the model in --dtype itself. The same --seed gives the same random weights, so a .pte
    exported without --checkpoint matches `track --pte` without one."""
    import torch

    import edgetam
    import edgetam_kernels
    from edgetam_kernels import precision

    threads = _choose_threads(str(getattr(args, "threads", "auto")))
    torch.set_num_threads(threads)
    device = getattr(args, "device", "cpu")
    program = args.command == "export" or getattr(args, "pte", None) is not None
    if program:
        if args.dtype not in PROGRAM_DTYPES:
            raise CliError(f"--dtype {args.dtype}: a .pte holds one of "
                           f"{', '.join(PROGRAM_DTYPES)}; give the one it was exported in")
        compute, dtype_name = None, PROGRAM_DTYPES[args.dtype]
    else:
        compute = precision.resolve(args.dtype, device)  # warns (once) where it falls back
        dtype_name = str(compute or torch.float32).replace("torch.", "")
    torch.manual_seed(args.seed)
    if args.checkpoint is None:
        print("NOTE: no --checkpoint given: the weights are RANDOM, so the masks are meaningless; "
              "the timings are real.", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = edgetam.load(args.checkpoint, image_size=args.image_size, device=device,
                                 backend=getattr(args, "backend", "auto"), fuse=True,
                                 compute_dtype=compute)
    except edgetam.CheckpointError as e:
        raise CliError(str(e)) from e
    if args.checkpoint is None:
        # random weights predict "no object": bias the object score so masks flow into memory
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    if program:
        return model.to(dtype=getattr(torch, dtype_name)), threads, dtype_name
    if patch:
        # the fused model's encoder on the library's fast paths too (on CPU: channels-last
        # convs, the MLPs' GELU and residual fused into oneDNN convolutions; docs/patch.md)
        edgetam_kernels.patch(model, backend=args.backend, compute_dtype=compute)
    return model, threads, dtype_name


@contextlib.contextmanager
def _staging(out_dir: str):
    """A temporary sibling of `out_dir` to write the results into: moved into place when the
    block ends normally, removed when it raises, so an error leaves nothing half-written."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".edgetam-tmp-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked by _check_out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _prompt_kwargs(points, box) -> dict:
    return dict(points=None if points is None else [list(p) for p in points],
                labels=None if points is None else [1] * len(points),
                box=None if box is None else list(box))


def _track_eager(model, inputs, n_frames: int, points, args):
    """VideoPredictor over the clip: (masks, per-frame ms, prompt ms)."""
    import edgetam

    predictor = edgetam.VideoPredictor(model)
    state = predictor.init_state(inputs)

    t0 = time.perf_counter()
    try:
        predictor.add_new_points_or_box(state, 0, 1, **_prompt_kwargs(points, args.box))
    except (ValueError, TypeError) as e:
        raise CliError(f"bad prompt: {e}") from e
    prompt_ms = (time.perf_counter() - t0) * 1e3

    masks: list = [None] * n_frames
    times: List[float] = []
    bar = _progress(predictor.propagate_in_video(state), n_frames, not args.no_progress)
    t_prev = time.perf_counter()
    for frame_idx, _, logits in bar:
        now = time.perf_counter()
        times.append((now - t_prev) * 1e3)
        masks[frame_idx] = (logits[0, 0] > 0).cpu().numpy()
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{times[-1]:.0f} ms/frame")
        t_prev = time.perf_counter()
    return masks, times, prompt_ms


def _track_pte(model, frames, points, args):
    """Frame 0 prompted eagerly, every later frame through the .pte (edgetam.pte.PteTracker)."""
    from edgetam import pte
    from edgetam_kernels.executorch import ExecuTorchUnavailable

    try:
        tracker = pte.PteTracker(model, args.pte, num_objects=1)
    except (pte.PteError, ExecuTorchUnavailable) as e:
        raise CliError(str(e)) from e
    t0 = time.perf_counter()
    try:
        res = tracker.add(frames[0], 1, **_prompt_kwargs(points, args.box))
    except (ValueError, TypeError) as e:
        raise CliError(f"bad prompt: {e}") from e
    prompt_ms = (time.perf_counter() - t0) * 1e3
    masks = [(res.mask_logits[0, 0] > 0).cpu().numpy()]
    times = [prompt_ms]
    bar = _progress(frames[1:], len(frames) - 1, not args.no_progress)
    for f in bar:
        t = time.perf_counter()
        res = tracker.track(f)
        times.append((time.perf_counter() - t) * 1e3)
        masks.append((res.mask_logits[0, 0] > 0).cpu().numpy())
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{times[-1]:.0f} ms/frame")
    return masks, times, prompt_ms


def export(args) -> dict:
    """`python -m edgetam export --pte FILE`: the tracking step as an ExecuTorch program."""
    from edgetam import pte

    if args.objects < 1:
        raise CliError(f"--objects must be >= 1, got {args.objects}")
    out = os.path.abspath(args.pte)
    if not os.path.isdir(os.path.dirname(out)):
        raise CliError(f"the folder of --pte does not exist: {os.path.dirname(out)}")
    if os.path.isdir(out):
        raise CliError(f"--pte {out} is a folder; give a file name")
    model, _, _ = _load_model(args)
    t0 = time.perf_counter()
    print(f"edgetam: exporting the tracking step ({args.objects} object(s), image size "
          f"{args.image_size}, {args.dtype}); lowering takes minutes", file=sys.stderr)
    try:
        info = pte.export_step(model, out, num_objects=args.objects)
    except pte.PteError as e:
        raise CliError(str(e)) from e
    info["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"wrote {out}: {info['bytes'] / 1e6:.1f} MB, fused ops kept: "
          f"{', '.join(info['fused_ops'])}; {info['xnnpack_partitions']} XNNPACK partitions; "
          f"{info['seconds']} s")
    return info


def track(args) -> dict:
    from edgetam import video_io
    from edgetam.predictor import Frames

    out_dir = _check_out_dir(args.out)
    if args.frames is not None and args.frames < 1:
        raise CliError(f"--frames must be >= 1, got {args.frames}")

    # frames and prompt
    if args.video == "synthetic":
        frames, centre = video_io.synthetic_clip(args.frames or 8)
        inputs = frames
        source = f"synthetic clip ({len(frames)} frames, {frames[0].shape[1]}x{frames[0].shape[0]})"
        points = args.point or ([centre] if args.box is None else None)
    else:
        try:
            frames = video_io.read_frames(args.video, args.frames)
            # the model's inputs resized as Meta's predictor resizes this path (same masks)
            resized, size = video_io.read_model_frames(args.video, args.image_size, args.frames)
        except (video_io.VideoReadError, ValueError) as e:
            raise CliError(str(e)) from e
        inputs = Frames(resized, args.image_size, video_size=size)
        source = f"{args.video} ({len(frames)} frames, {frames[0].shape[1]}x{frames[0].shape[0]})"
        points = args.point
        if points is None and args.box is None:
            raise CliError("give the object to track on frame 0: --point X,Y or --box X0,Y0,X1,Y1")

    if args.pte is not None and args.device != "cpu":
        raise CliError(f"--pte runs on the CPU (ExecuTorch); got --device {args.device}")
    model, threads, dtype_name = _load_model(args)
    engine = f"ExecuTorch program {args.pte}" if args.pte else f"backend {args.backend}"
    print(f"edgetam: {source}, image size {args.image_size}, device {args.device}, "
          f"{engine}, compute {dtype_name} (--dtype {args.dtype}), {threads} CPU thread(s)",
          file=sys.stderr)
    if args.pte:  # every tracked frame through the program (frames resized as the Tracker does)
        masks, times, prompt_ms = _track_pte(model, frames, points, args)
    else:
        masks, times, prompt_ms = _track_eager(model, inputs, len(frames), points, args)

    # frame 0 comes from the prompt step (plus its memory encoding at the first yield);
    # tracked frames are the ones that run the full step: encoder, memory attention, decoder.
    tracked = times[1:] if len(times) > 1 else times
    per_frame = sum(tracked) / len(tracked)
    summary = {
        "source": source, "image_size": args.image_size, "device": args.device,
        "backend": args.backend, "pte": args.pte, "dtype": args.dtype, "compute_dtype": dtype_name,
        "threads": threads, "random_weights": args.checkpoint is None,
        "frames": len(frames), "prompt_ms": round(prompt_ms, 2),
        "frame_ms": [round(t, 2) for t in times], "mean_tracked_frame_ms": round(per_frame, 2),
        "fps": round(1e3 / per_frame, 3),
        "mask_area": [float(m.mean()) for m in masks],
    }

    with _staging(out_dir) as tmp:
        os.makedirs(os.path.join(tmp, "masks"))
        for i, m in enumerate(masks):
            video_io.write_mask_png(os.path.join(tmp, "masks", f"{i:05d}.png"), m)
        video_io.write_gif(os.path.join(tmp, "overlay.gif"),
                           [video_io.overlay(f, [m]) for f, m in zip(frames, masks)])
        with open(os.path.join(tmp, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)

    print(f"prompt frame: {prompt_ms:.0f} ms; tracked frames: {per_frame:.0f} ms/frame "
          f"({1e3 / per_frame:.2f} FPS) at {args.image_size}x{args.image_size} on {args.device}, "
          f"{threads} thread(s)")
    if args.checkpoint is None:
        print("weights are random (no --checkpoint): the masks are meaningless, timings only")
    print(f"wrote {len(masks)} masks, overlay.gif and summary.json to {out_dir}")
    return summary


def _open_stream_source(args):
    """(frame source, prompt points) for --stream; the source is opened (and checked) before
    the model is built."""
    from edgetam import stream, video_io

    if args.video == "synthetic":
        frames, centre = video_io.synthetic_clip(args.frames or 8)
        points = args.point or ([centre] if args.box is None else None)
        return stream.frames_source(frames, "synthetic clip", args.frames), points
    if args.point is None and args.box is None:
        raise CliError("give the object to track on frame 0: --point X,Y or --box X0,Y0,X1,Y1")
    try:
        return stream.open_source(args.video, args.frames), args.point
    except (video_io.VideoReadError, ValueError) as e:
        raise CliError(str(e)) from e


def track_stream(args) -> dict:
    """--stream: decode one frame, track it, write its mask, repeat; FPS printed about once a
    second; Ctrl-C (or the end of the source, or a read error mid-stream) ends the run with the
    summary written. Memory stays bounded: one frame in flight and the Tracker's fixed state."""
    import edgetam

    out_dir = _check_out_dir(args.out)
    if args.frames is not None and args.frames < 1:
        raise CliError(f"--frames must be >= 1, got {args.frames}")
    src, points = _open_stream_source(args)
    with src:
        model, threads, dtype_name = _load_model(args)
        tracker = edgetam.Tracker(model, max_objects=1)
        print(f"edgetam: streaming {src.description}, image size {args.image_size}, device "
              f"{args.device}, backend {args.backend}, compute {dtype_name} (--dtype {args.dtype}), "
              f"{threads} CPU thread(s); Ctrl-C stops",
              file=sys.stderr)
        with _staging(out_dir) as tmp:
            os.makedirs(os.path.join(tmp, "masks"))
            run = _stream_loop(tracker, src, points, args.box, os.path.join(tmp, "masks"))
            summary = {
                "source": src.description, "mode": "stream", "image_size": args.image_size,
                "device": args.device, "backend": args.backend, "dtype": args.dtype,
                "compute_dtype": dtype_name, "threads": threads,
                "random_weights": args.checkpoint is None, **run,
            }
            with open(os.path.join(tmp, "summary.json"), "w") as fh:
                json.dump(summary, fh, indent=1)

    how = {None: "end of stream", "interrupt": "stopped by Ctrl-C"}.get(run["stopped_by"],
                                                                      "stopped by an error")
    speed = "" if run["mean_tracked_frame_ms"] is None else (
        f"; tracked frames: {run['mean_tracked_frame_ms']:.1f} ms/frame in the tracker, "
        f"{run['fps']:.2f} FPS overall (decode and writing included)")
    print(f"{how} after {run['frames']} frame(s); prompt frame {run['prompt_ms']:.0f} ms{speed}")
    if run["error"]:
        print(f"error: {run['error']}", file=sys.stderr)
    if args.checkpoint is None:
        print("weights are random (no --checkpoint): the masks are meaningless, timings only")
    print(f"wrote {run['frames']} masks and summary.json to {out_dir}")
    return summary


def _stream_loop(tracker, src, points, box, masks_dir: str) -> dict:
    from edgetam import stream, video_io

    clock = time.perf_counter
    meter = None
    frames, prompt_ms, stopped_by, error = 0, 0.0, None, None
    try:
        for frame in src:
            t0 = clock()
            if frames == 0:
                try:
                    result = tracker.add(frame, 1, **_prompt_kwargs(points, box))
                except (ValueError, TypeError) as e:
                    raise CliError(f"bad prompt: {e}") from e
            else:
                result = tracker.track(frame)
            mask = (result.mask_logits[0, 0] > 0).cpu().numpy()  # waits for the device
            step_s = clock() - t0
            if frames == 0:
                prompt_ms = step_s * 1e3
                meter = stream.FpsMeter(clock)
            else:
                line = meter.add(step_s)
                if line:
                    print(line, file=sys.stderr, flush=True)
            video_io.write_mask_png(os.path.join(masks_dir, f"{frames:05d}.png"), mask)
            frames += 1
    except KeyboardInterrupt:
        stopped_by = "interrupt"
    except (video_io.VideoReadError, ValueError) as e:
        if frames == 0:  # nothing tracked: a plain error, nothing written
            raise CliError(str(e)) from e
        stopped_by, error = "error", str(e)
    if frames == 0 and stopped_by is None:
        raise CliError(f"no frames decoded from {src.description}")
    tracked = meter.frames if meter is not None else 0
    return {
        "frames": frames, "stopped_by": stopped_by, "error": error,
        "tracker_state_bytes": tracker.state_bytes(),  # fixed once the windows are full
        "prompt_ms": round(prompt_ms, 2),
        "mean_tracked_frame_ms": round(meter.mean_step_ms(), 2) if tracked else None,
        "slowest_tracked_frame_ms": round(meter.slowest_ms, 2) if tracked else None,
        "fps": round(meter.mean_fps(), 3) if tracked else 0.0,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        if args.command == "track":
            from edgetam.stream import is_live

            if args.stream or is_live(args.video):
                if track_stream(args).get("error"):
                    return 1
            else:
                track(args)
        elif args.command == "export":
            export(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may run inside a larger program
    return 0
