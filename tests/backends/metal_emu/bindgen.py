"""Generate the emulator's C++ bindings for the kernels of a .metal file.

Metal binds a kernel's arguments by their [[attributes]], which g++ ignores; this script reads the
attributes instead. The .metal file is preprocessed first (with an empty <metal_stdlib>, so the
address-space keywords survive and instantiation macros are expanded), then every
`template [[host_name("x")]] kernel void f<T>(...)` instantiation and every plain
`kernel void f(...)` becomes a launcher that casts the bound buffers to the declared parameter
types and passes each thread's ids for the [[builtin]] parameters.

It also enforces torch.mps.compile_shader's binding rule: the i-th Python argument goes to buffer
index i, so the non-builtin parameters must be declared [[buffer(0)]], [[buffer(1)]], ... in order.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

BUILTINS = {
    "thread_position_in_grid", "thread_position_in_threadgroup", "threadgroup_position_in_grid",
    "threads_per_threadgroup", "threadgroups_per_grid", "threads_per_grid",
    "dispatch_threads_per_threadgroup", "thread_index_in_threadgroup",
    "simdgroup_index_in_threadgroup", "thread_index_in_simdgroup", "threads_per_simdgroup",
    "simdgroups_per_threadgroup",
}


@dataclass
class Param:
    name: str
    type: str        # declared type, e.g. "device const float*" or "constant float&" or "uint3"
    attr: str        # attribute name, e.g. "buffer" or "thread_position_in_grid"
    index: int       # the n of [[buffer(n)]], -1 otherwise


@dataclass
class Kernel:
    host_name: str
    function: str    # C++ callable, e.g. "rope_attention<float>"
    params: List[Param]


class BindError(ValueError):
    pass


def preprocess(metal: Path, metal_version: int = 310, defines=()) -> str:
    with tempfile.TemporaryDirectory() as inc:
        (Path(inc) / "metal_stdlib").write_text("")
        cmd = ["g++", "-E", "-P", "-x", "c++", "-I", inc, "-I", str(metal.parent),
               f"-D__METAL_VERSION__={metal_version}", *(f"-D{d}" for d in defines), str(metal)]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _split_params(text: str) -> List[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return [p.strip() for p in out]


def _param(text: str, kernel: str) -> Param:
    m = re.match(r"^(.*?)\b(\w+)\s*\[\[\s*(\w+)\s*(?:\(\s*(\d+)\s*\))?\s*\]\]\s*$", text, re.S)
    if not m:
        raise BindError(f"{kernel}: parameter {text!r} has no Metal attribute")
    typ, name, attr, idx = m.groups()
    return Param(name=name, type=" ".join(typ.split()), attr=attr, index=int(idx) if idx else -1)


def parse(source: str) -> List[Kernel]:
    kernels = []
    inst = re.compile(r"template\s*\[\[\s*host_name\(\s*((?:\"[^\"]*\"\s*)+)\)\s*\]\]\s*kernel\s+void\s+"
                      r"(\w+)\s*<([^>]*)>\s*\((.*?)\)\s*;", re.S)
    for m in inst.finditer(source):
        host, fn, targs, params = m.groups()
        host = "".join(re.findall(r'"([^"]*)"', host))  # adjacent literals concatenate
        kernels.append(Kernel(host, f"{fn}<{targs.strip()}>",
                              [_param(p, host) for p in _split_params(params)]))
    plain = re.compile(r"(template\s*<[^>]*>\s*)?kernel\s+void\s+(\w+)\s*\((.*?)\)\s*\{", re.S)
    for m in plain.finditer(source):
        if m.group(1):
            continue  # a template definition: bound through its instantiations
        fn, params = m.group(2), m.group(3)
        kernels.append(Kernel(fn, fn, [_param(p, fn) for p in _split_params(params)]))
    for k in kernels:
        check(k)
    return kernels


def check(k: Kernel) -> None:
    """compile_shader binds Python argument i to buffer index i."""
    bound = [p for p in k.params if p.attr not in BUILTINS]
    for i, p in enumerate(bound):
        if p.attr != "buffer":
            raise BindError(f"{k.host_name}: parameter {p.name} has unsupported attribute [[{p.attr}]]")
        if p.index != i:
            raise BindError(f"{k.host_name}: parameter {p.name} is [[buffer({p.index})]] but is "
                            f"Python argument {i}; compile_shader binds argument i to buffer(i)")
        if not (p.type.endswith("*") or p.type.endswith("&")):
            raise BindError(f"{k.host_name}: buffer parameter {p.name} must be a pointer or reference")
        if p.type.split()[0] not in ("device", "constant"):
            raise BindError(f"{k.host_name}: buffer parameter {p.name} needs a device or constant "
                            f"address space")


def _base_type(t: str) -> str:
    words = [w for w in re.split(r"[\s*&]+", t) if w and w not in ("device", "constant", "const")]
    return " ".join(words)


def glue(metal: Path, kernels: List[Kernel]) -> str:
    lines = [f'#include "{metal.resolve()}"', '#include "emu_glue.h"', "namespace {"]
    for k in kernels:
        args, infos, n = [], [], 0
        for p in k.params:
            if p.attr in BUILTINS:
                args.append(f"emu_builtin<{p.type}>(t.{p.attr})")
                continue
            if p.type.endswith("&"):
                args.append(f"*({p.type[:-1].strip()}*)a[{n}]")
                kind = "Reference"
            else:
                args.append(f"({p.type})a[{n}]")
                kind = "Pointer"
            space = p.type.split()[0]
            writable = kind == "Pointer" and space == "device" and "const" not in p.type.split()
            infos.append(f'{{emu::ArgKind::{kind}, "{space}", "{_base_type(p.type)}", '
                         f'{"true" if writable else "false"}, "{p.name}"}}')
            n += 1
        lines.append(f"void launch_{k.host_name}(void* const* a, const emu::ThreadIds& t) {{")
        lines.append(f"  (void)a;\n  ::{k.function}({', '.join(args)});\n}}")
        lines.append(f'emu::Registrar reg_{k.host_name}("{k.host_name}", launch_{k.host_name}, '
                     f'{{{", ".join(infos)}}});')
    lines.append("}  // namespace")
    return "\n".join(lines) + "\n"


def generate(metal: Path, out: Path) -> List[Kernel]:
    kernels = parse(preprocess(metal))
    out.write_text(glue(metal, kernels))
    return kernels
