"""Build and drive the Metal emulator from Python.

`build()` compiles the runner (the .metal sources under the shim, their generated bindings, the
runtime) once per source state, cached by a hash of everything that goes into it.
`EmuLibrary` stands in for the object torch.mps.compile_shader returns: `lib.kernel(*args,
threads=..., group_size=...)` with CPU tensors; each call writes the tensors' storages to files,
runs one dispatch in the runner, and reads the storages back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from . import bindgen

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]  # tests/backends/metal_emu -> the checkout
KERNEL_DIR = REPO / "edgetam_kernels" / "metal" / "kernels"
RUNTIME = [HERE / "emu_runtime.cpp", HERE / "emu_main.cpp"]
HEADERS = [HERE / "emu_runtime.h", HERE / "metal_shim.h", HERE / "metal_stdlib", HERE / "emu_glue.h"]
CXX = os.environ.get("CXX", "g++")
BASE_FLAGS = ["-std=c++20", "-pthread", "-Wall", "-Wno-attributes", "-Wno-unused-variable",
              "-Wno-unknown-pragmas", "-I", str(HERE)]
VARIANTS = {
    "release": ["-O1"],
    # ThreadSanitizer: every barrier and simdgroup exchange is a real synchronization, so a
    # missing threadgroup_barrier in a kernel shows up as a data race on threadgroup memory.
    "tsan": ["-O1", "-g", "-fsanitize=thread"],
}
DTYPE_NAMES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat",
               torch.int64: "long", torch.int32: "int"}


class EmuError(RuntimeError):
    pass


SELFTEST = HERE / "selftest.metal"  # kernels testing the emulator itself


def metal_files(kernel_dir: Path = KERNEL_DIR) -> List[Path]:
    """The shipped kernels (or a modified copy of them), and the emulator's self-test kernels."""
    return sorted(Path(kernel_dir).glob("*.metal")) + [SELFTEST]


def cache_root() -> Path:
    root = os.environ.get("EDGETAM_METAL_EMU_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgetam_kernels" / "metal_emu"


def _key(variant: str, kernel_dir: Path) -> str:
    h = hashlib.sha256()
    for p in [*metal_files(kernel_dir), *sorted(Path(kernel_dir).glob("*.h")), *RUNTIME, *HEADERS,
              HERE / "bindgen.py"]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join([CXX, *BASE_FLAGS, *VARIANTS[variant]]).encode())
    h.update(subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()[:16]


def compile_cmd(src: Path, obj: Path, variant: str) -> List[str]:
    return [CXX, *BASE_FLAGS, *VARIANTS[variant], "-c", str(src), "-o", str(obj)]


def build(variant: str = "release", kernel_dir: Path = KERNEL_DIR) -> Path:
    """Path of the runner binary, compiling it if this source state has not been built yet."""
    out = cache_root() / f"{variant}-{_key(variant, kernel_dir)}"
    runner = out / "runner"
    if runner.exists():
        return runner
    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=f".{variant}-"))
    try:
        srcs = list(RUNTIME)
        for m in metal_files(kernel_dir):
            glue = tmp / f"{m.stem}.emu.cpp"
            bindgen.generate(m, glue)
            srcs.append(glue)
        objs, procs = [], []
        for src in srcs:  # two at a time: the machines running CI have few cores
            obj = tmp / (src.stem + ".o")
            objs.append(obj)
            procs.append((src, subprocess.Popen(compile_cmd(src, obj, variant),
                                                stderr=subprocess.PIPE, text=True)))
            if len(procs) == 2:
                _wait(procs)
        _wait(procs)
        link = [CXX, *VARIANTS[variant], "-pthread", *map(str, objs), "-o", str(tmp / "runner")]
        r = subprocess.run(link, capture_output=True, text=True)
        if r.returncode:
            raise EmuError(f"link failed:\n{r.stderr}")
        try:
            tmp.rename(out)
        except OSError:  # built concurrently by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        _prune()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return runner


def _prune(keep: int = 8) -> None:
    """Builds of older source states pile up while kernels are edited: keep the newest few."""
    builds = sorted((p for p in cache_root().iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _wait(procs):
    for src, p in procs:
        err = p.communicate()[1]
        if p.returncode:
            raise EmuError(f"compiling {src.name} failed:\n{err}")
    procs.clear()


def _u8(storage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _triple(v, default) -> List[int]:
    if v is None:
        v = default
    v = [int(v)] if isinstance(v, int) else [int(e) for e in v]
    if not 1 <= len(v) <= 3:
        raise EmuError(f"threads/group_size must have 1 to 3 dimensions, got {v}")
    return v + [1] * (3 - len(v))


class EmuKernel:
    def __init__(self, lib: "EmuLibrary", name: str):
        self.lib, self.name = lib, name

    def __call__(self, *args, threads=None, group_size=None):
        lib = self.lib
        with tempfile.TemporaryDirectory(dir=lib.workdir) as d:
            d = Path(d)
            storages: Dict[int, tuple] = {}
            lines = [f"kernel {self.name}"]
            arg_lines = []
            first_numel = None
            for a in args:
                if isinstance(a, torch.Tensor):
                    if a.device.type != "cpu":
                        raise EmuError("the emulator runs on CPU tensors")
                    if a.dtype not in DTYPE_NAMES:
                        raise EmuError(f"unsupported tensor dtype {a.dtype}")
                    st = a.untyped_storage()
                    key = st.data_ptr()
                    if key not in storages:
                        storages[key] = (len(storages), st)
                    sid = storages[key][0]
                    arg_lines.append(f"arg tensor {sid} {a.storage_offset() * a.element_size()} "
                                     f"{DTYPE_NAMES[a.dtype]}")
                    first_numel = a.numel() if first_numel is None else first_numel
                elif isinstance(a, bool) or isinstance(a, int):
                    arg_lines.append(f"arg long {int(a)}")
                elif isinstance(a, float):
                    arg_lines.append(f"arg float {a.hex()}")
                elif isinstance(a, (list, tuple)) and a and all(isinstance(e, int) for e in a):
                    arg_lines.append(f"arg longs {len(a)} " + " ".join(str(int(e)) for e in a))
                elif isinstance(a, (list, tuple)) and a and all(isinstance(e, float) for e in a):
                    arg_lines.append(f"arg floats {len(a)} " + " ".join(e.hex() for e in a))
                else:
                    raise EmuError(f"argument of type {type(a).__name__} cannot be bound")
            t = _triple(threads, first_numel)
            # compile_shader without group_size lets Metal pick; the emulator picks the largest
            # legal 1-D size.
            g = _triple(group_size, [min(t[0], 1024)])
            lines += [f"threads {t[0]} {t[1]} {t[2]}", f"group {g[0]} {g[1]} {g[2]}"]
            for sid, st in storages.values():
                path = d / f"s{sid}.bin"
                _u8(st).numpy().tofile(path)
                lines.append(f"storage {sid} {path} {st.nbytes()}")
            lines += arg_lines
            (d / "manifest").write_text("\n".join(lines) + "\n")
            r = subprocess.run([str(lib.runner), str(d / "manifest")], capture_output=True,
                               text=True, timeout=lib.timeout, env=lib.env)
            if r.returncode:
                raise EmuError(f"{self.name}: runner exited {r.returncode}\n{r.stderr[-4000:]}")
            if r.stderr.strip():
                lib.reports.append(f"{self.name}: {r.stderr}")
            for sid, st in storages.values():
                data = np.fromfile(d / f"s{sid}.bin", dtype=np.uint8)
                _u8(st).copy_(torch.from_numpy(data))


class EmuLibrary:
    """Quacks like torch.mps.compile_shader's library, executing on the emulator."""

    def __init__(self, variant: str = "release", timeout: float = 900.0, env=None,
                 kernel_dir: Path = KERNEL_DIR):
        self.runner = build(variant, kernel_dir)
        self.timeout = timeout
        self.env = env
        self.workdir = None
        self.reports: List[str] = []  # anything a runner printed (e.g. TSan warnings)
        listing = subprocess.run([str(self.runner), "--list"], capture_output=True, text=True,
                                 check=True).stdout
        self.params = {line.split()[0]: line.split()[1:] for line in listing.splitlines() if line}

    def __dir__(self):
        return sorted(self.params)

    def __getattr__(self, name):
        if name.startswith("_") or name not in self.__dict__.get("params", {}):
            raise AttributeError(name)
        return EmuKernel(self, name)
