"""Results as JSON (pytest-benchmark's layout, so one reader serves the pytest suites and the
scripts) and as markdown tables."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

from .timing import machine, stats


def entry(group: str, variant: str, samples: List[float], **extra_info) -> Dict[str, object]:
    """One benchmark as pytest-benchmark writes it: group, name, stats, extra_info."""
    return {"group": group, "name": f"{group} [{variant}]", "stats": stats(samples),
            "extra_info": {"variant": variant, **extra_info}}


def write_json(path: str, benchmarks: List[Dict[str, object]], started: float,
               argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Writes {machine_info, command, seconds, benchmarks}. The command is recorded with the
    output's file name only (the folder is the running machine's)."""
    argv = sys.argv if argv is None else argv
    out = {"machine_info": machine(),
           "command": " ".join([os.path.basename(sys.executable)] + [
               os.path.basename(a) if a == path else a for a in argv]),
           "seconds": round(time.time() - started), "benchmarks": benchmarks}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def summarize(case, provider: str, samples: List[float], ceiling: Dict[str, float],
              baseline: Dict[str, float]) -> Dict[str, object]:
    """One row of the op benchmark: times, GFLOP/s, fraction of the matmul ceiling and
    speed-ups over the reference, Meta's module (or its code path) and SDPA."""
    s = stats(samples)
    best = s["min"]
    row = {"case": case.name, "provider": provider, "median_ms": s["median"] * 1e3,
           "min_ms": best * 1e3, "reps": s["rounds"], "gflops": case.flops / best / 1e9}
    row["ceiling_frac"] = row["gflops"] / ceiling["matmul_gflops"]
    for ref_name in ("reference", "meta module", "meta module path"):
        if ref_name in baseline:
            row[f"x_vs_{ref_name}"] = baseline[ref_name] / best
    sdpa = [t for name, t in baseline.items() if name.startswith("sdpa")]  # the case's one
    if sdpa:
        row["x_vs_sdpa"] = min(sdpa) / best
    return row


def fmt_table(rows: List[Dict[str, object]]) -> str:
    head = ("case", "provider", "min ms", "median ms", "GFLOP/s", "% ceiling", "x ref",
            "x meta", "x sdpa")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        meta = r.get("x_vs_meta module", r.get("x_vs_meta module path"))
        cells = (r["case"], r["provider"], f"{r['min_ms']:.1f}", f"{r['median_ms']:.1f}",
                 f"{r['gflops']:.1f}", f"{100 * r['ceiling_frac']:.0f}%",
                 _x(r.get("x_vs_reference")), _x(meta), _x(r.get("x_vs_sdpa")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _x(v):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}x"
