"""Per tracked frame and per module call, patched vs unpatched, interleaved round by round.

    python bench/e2e_side_by_side.py --json bench/results/e2e_cpu.json [--sizes 1024,512] \
        [--kinds meta,hf] [--rounds 3] [--frames 7] [--variants ...] [--cases ...]
    python bench/plot_e2e.py bench/results/e2e_cpu.json --machine "..."

Meta's EdgeTAM video predictor and HF's EdgeTamVideoModel, random weights, fp32, 1 object,
object score forced positive (edgetam_kernels.harness.e2e). Variants (edgetam_kernels.harness.
variants: "unpatched" | "patched:<backend>[:no-fuse|no-image-encoder|no-memory-encoder]
[:fp32|bf16|fp16|auto]"), one model per kind and size, re-patched between runs. Default:
  unpatched
  patched:<best>:no-fuse   neither encoder fused: the perceiver and memory attention only
  patched:<best>           patch(...) defaults: also the re-parameterised, channels-last image
                           encoder and the channels-last memory encoder
Cases: track (one round = propagate through a clip after a prompted frame 0, untimed; time /
tracked frames), image_encoder (Meta's `forward_image`, HF's `get_image_features`: what their
trackers call per frame, one image), memory_attention (the module alone on EdgeTAM's shapes:
grid = size / 16, 7 memory frames, 16 object pointers; a variant's encoder options do not
concern it, so it runs each variant without them, and --module-variants adds its own, by
default the precisions: patched:<best>:bf16 and, where compute_dtype="auto" exists,
patched:<best>:auto, beside patched:<best>, which is fp32). Each round runs every variant once, in an order rotated per
round (edgetam_kernels.harness.race); the JSON keeps every round (pytest-benchmark's layout, so
plot_e2e.py reads it) and min / median over rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch  # noqa: E402

from edgetam_kernels.harness import e2e, parse_variants, report  # noqa: E402
from edgetam_kernels.harness.variants import auto_supported  # noqa: E402

CASES = ("track", "image_encoder", "memory_attention")


def default_variants(best: str) -> str:
    return f"unpatched,patched:{best}:no-fuse,patched:{best}"


def default_module_variants(best: str) -> str:
    return ",".join([f"patched:{best}:bf16"]
                    + ([f"patched:{best}:auto"] if auto_supported() else []))


def module_variants(variants, extra):
    """The memory-attention module's variants: the run's without encoder options, then the
    extra ones, each once."""
    out = {}
    for v in list(variants) + list(extra):
        out.setdefault(str(v.without_encoders()), v.without_encoders())
    return list(out.values())


def run_group(group, what, target, variants, fn, rounds, info):
    times = e2e.time_variants(target, variants, fn, rounds, self_timed=what == "track",
                              fold_call=what != "track")
    base = min(times["unpatched"]) if "unpatched" in times else None
    entries = []
    for v in variants:
        ts = times[str(v)]
        entries.append(report.entry(group, str(v), ts, what=what, frames=1,
                                    per="tracked frame" if what == "track" else "call",
                                    resolved_dtype=v.resolved_dtype_name(), **info))
        speed = f"{base / min(ts):.2f}x" if base else ""
        s = report.stats(ts)
        print(f"{group:40s} {str(v):28s} min {s['min'] * 1e3:7.0f} ms  median "
              f"{s['median'] * 1e3:7.0f} ms  {speed}", flush=True)
    return entries


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--kinds", default="meta,hf")
    ap.add_argument("--sizes", default="1024,512")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=7, help="tracked frames per round")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    ap.add_argument("--variants", default="", help="comma list (default: see above)")
    ap.add_argument("--module-variants", default=None,
                    help="extra variants of the memory-attention module (default: the "
                         "precisions, see above; '' for none)")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    best = e2e.best_backend()
    variants = parse_variants(args.variants or default_variants(best))
    extra = args.module_variants
    extra = parse_variants(extra) if extra is not None and extra.strip() else (
        [] if extra is not None else parse_variants(default_module_variants(best)))
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"--cases: unknown {unknown} (known: {', '.join(CASES)})")
    results = []
    started = time.time()
    for size in map(int, args.sizes.split(",")):
        for kind in args.kinds.split(","):
            info = dict(model=kind, size=size, threads=torch.get_num_threads())
            if "track" in cases or "image_encoder" in cases:
                model = e2e.build_model(kind, size)
                if "track" in cases:
                    results += run_group(f"{kind}: tracked frames at {size}", "track", model,
                                         variants, e2e.tracker(kind, model, size, args.frames),
                                         args.rounds, info)
                if "image_encoder" in cases:
                    results += run_group(f"{kind}: image features at {size}", "image_encoder",
                                         model, variants, e2e.image_features(kind, model, size),
                                         args.rounds, info)
                del model
            if "memory_attention" in cases:
                module, call = e2e.memory_attention(kind, size)
                results += run_group(f"{kind}: memory attention module at {size}",
                                     "memory_attention", module,
                                     module_variants(variants, extra), call, args.rounds, info)
                del module
    out = report.write_json(args.json, results, started)
    print(f"wrote {args.json} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
