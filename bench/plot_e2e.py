"""Turn the e2e benchmarks' JSON into a markdown table and a PNG plot.

    python bench/plot_e2e.py bench/results/e2e_cpu.json [--out bench/results/e2e_cpu]

writes <out>.table.md (per group: time per frame or per call, min and median over rounds,
speed-ups of min and of median over the unpatched variant, and a legend saying what each
variant runs: edgetam_kernels.harness.variants, the one parser every bench script uses) and
<out>.png (one panel per group, --columns per row, bars per variant). Reads pytest-benchmark's
JSON (bench/test_e2e_speed.py) and bench/e2e_side_by_side.py's, which has the same layout.
Needs matplotlib for the PNG (the table is written without it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from edgetam_kernels.harness.variants import Variant  # noqa: E402


def _parsed(variant: str):
    try:
        return Variant.parse(variant)
    except ValueError:  # a name from an older file, or a custom one: shown as it is
        return None


def short_name(variant: str) -> str:
    """The bar's label: the canonical text without "patched:"."""
    v = _parsed(variant)
    return (str(v) if v else variant).replace("patched:", "")


def legend(groups) -> str:
    """One line per variant in the file: what it runs."""
    seen = OrderedDict((r[0], None) for rows in groups.values() for r in rows)
    lines = []
    for name in seen:
        v = _parsed(name)
        lines.append(f"- `{name}`: {v.describe() if v else '(not a variant this parser knows)'}")
    return "\n".join(lines)


def load(path: str) -> "OrderedDict[str, list]":
    """group -> [(variant, min_s, median_s)] with times per tracked frame (or per call)."""
    with open(path) as f:
        data = json.load(f)
    groups: "OrderedDict[str, list]" = OrderedDict()
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        frames = max(1, int(info.get("frames", 1)))
        stats = b["stats"]
        groups.setdefault(b["group"] or b["name"], []).append(
            (info.get("variant", b["name"]), stats["min"] / frames, stats["median"] / frames)
        )
    return groups


def table(groups, machine: str = "") -> str:
    lines = []
    if machine:
        lines += [machine, ""]
    for group, rows in groups.items():
        unit = "per tracked frame" if "tracked" in group else "per call"
        base = next((r[1:] for r in rows if short_name(r[0]) == "unpatched"), None)
        lines += [f"### {group}", "",
                  f"| variant | min ({unit}) | median | speed-up vs unpatched (min) | (median) |",
                  "|---|---:|---:|---:|---:|"]
        for variant, tmin, tmed in rows:
            speed = f"{base[0] / tmin:.2f}x | {base[1] / tmed:.2f}x" if base else "- | -"
            lines.append(f"| {variant} | {tmin * 1e3:.0f} ms | {tmed * 1e3:.0f} ms | {speed} |")
        lines.append("")
    lines += ["Variants:", "", legend(groups), ""]
    return "\n".join(lines)


def plot(groups, path: str, title: str = "", columns: int = 4) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
        return False
    n = len(groups)
    ncols = min(n, columns)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (group, rows) in zip(axes.flat, groups.items()):
        names = [r[0] for r in rows]
        ms = [r[1] * 1e3 for r in rows]
        base = next((r[1] * 1e3 for r in rows if short_name(r[0]) == "unpatched"), None)
        bars = ax.bar(range(len(rows)), ms, color=["#999999" if short_name(v) == "unpatched"
                                                   else "#1f77b4" for v in names])
        for bar, v in zip(bars, ms):
            label = f"{v:.0f} ms" + (f"\n{base / v:.2f}x" if base else "")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(rows)), [short_name(v) for v in names],
                      rotation=30, ha="right", fontsize=8)
        ax.set_title(group, fontsize=9)
        ax.set_ylabel("ms " + ("per tracked frame" if "tracked" in group else "per call"))
        ax.set_ylim(0, max(ms) * 1.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    ap.add_argument("--out", help="output prefix (default: the JSON path without .json)")
    ap.add_argument("--machine", default="", help="machine description put above the table")
    ap.add_argument("--columns", type=int, default=4, help="plot panels per row")
    args = ap.parse_args(argv)
    out = args.out or os.path.splitext(args.json)[0]
    groups = load(args.json)
    md = table(groups, args.machine)
    with open(out + ".table.md", "w") as f:
        f.write(md + "\n")
    print(md)
    if plot(groups, out + ".png", args.machine, args.columns):
        print(f"wrote {out}.table.md and {out}.png")


if __name__ == "__main__":
    main()
