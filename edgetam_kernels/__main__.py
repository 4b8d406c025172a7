"""Command line: `python -m edgetam_kernels info | bench` (also installed as `edgetam-kernels`)."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    import torch

    from . import __version__, backends

    print(f"edgetam_kernels {__version__}  torch {torch.__version__}")
    for name, b in backends().items():
        state = "available" if b["available"] else "unavailable"
        extra = b["detail"] if b["available"] else b["reason"]
        ops = ", ".join(b["ops"]) if b["ops"] else "-"
        print(f"  {name:<10} {state:<12} {extra}")
        print(f"  {'':<10} ops: {ops}")
    from . import precision

    for line in precision.describe():
        print(line)
    return 0


def _bench(args) -> int:
    import torch
    from tqdm import tqdm

    from . import benchmarks as B
    from .harness import ceilings, machine, race, report

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = getattr(torch, args.dtype)
    print("machine:", json.dumps(machine()))
    ceiling = ceilings(device, [dtype])
    print(f"ceilings ({args.dtype}): matmul {ceiling['matmul_gflops']:.0f} GFLOP/s, "
          f"copy {ceiling['copy_gbps']:.1f} GB/s")
    cases = B.all_cases(device, dtype, compile_ref=not args.no_compile, quick=args.quick)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    table = []
    # the providers of a case race each other (interleaved rounds); cases run one after another
    for case in tqdm(cases, desc="bench", unit="case", file=sys.stderr):
        with torch.no_grad():
            samples = race(case.providers, args.reps, warmup=args.warmup, device=device)
        baseline = {p: min(s) for p, s in samples.items()}
        table += [report.summarize(case, p, s, ceiling, baseline) for p, s in samples.items()]
    print()
    print(report.fmt_table(table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "ceilings": ceiling, "rows": table}, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="edgetam-kernels", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="which backends are built and usable here, and why not; "
                   "what compute_dtype 'auto' / 'bf16' / 'fp16' resolve to per device, and why")
    b = sub.add_parser("bench", help="side-by-side timing of every op on EdgeTAM's shapes")
    b.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    b.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    b.add_argument("--reps", type=int, default=3, help="interleaved rounds per case")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    b.add_argument("--quick", action="store_true", help="32x32 grid (512 input) instead of 64x64")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    b.add_argument("--only", default="", help="run only cases whose name contains this")
    b.add_argument("--json", default="", help="write results to this JSON file")
    args = p.parse_args(argv)
    return {"info": _info, "bench": _bench}[args.cmd](args)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
