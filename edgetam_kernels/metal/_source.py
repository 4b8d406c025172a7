"""The Metal source handed to torch.mps.compile_shader: every .metal file under kernels/, with
our own `#include "..."` lines inlined (compile_shader only resolves headers shipped with torch)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Set

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"


def metal_files() -> List[Path]:
    return sorted(KERNEL_DIR.glob("*.metal"))


def _inline(path: Path, seen: Set[Path]) -> str:
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        if m:
            dep = (path.parent / m.group(1)).resolve()
            if dep not in seen:  # headers have include guards; inlining each once is enough
                seen.add(dep)
                out.append(_inline(dep, seen))
            continue
        out.append(line)
    return "\n".join(out)


def source(bfloat: bool = True) -> str:
    """bfloat=False leaves the bf16 kernels out (for a compiler that rejects them)."""
    seen: Set[Path] = set()
    head = "" if bfloat else "#define EDGETAM_METAL_NO_BFLOAT 1\n"
    return head + "\n".join(_inline(p, seen) for p in metal_files()) + "\n"
