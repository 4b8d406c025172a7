"""ExecuTorch support: the edgetam::*.out kernels for exported programs (.pte).

A program exported from a model that calls our ops holds `edgetam::<op>.out` operators (the out
variants in ops.py). ExecuTorch runs them with the C++ kernels in csrc/executorch/kernels.cpp,
built as a shared library against the installed executorch wheel:

    from edgetam_kernels import executorch as ek_et
    ek_et.load_kernels()                  # builds on first use (cached), loads once per process
    program = ek_et.runtime().load_program("model.pte")
    outputs = program.load_method("forward").execute(inputs)

How it ships: the library is not in the wheel (it must match the executorch version in use and
executorch is an optional extra); it is built on demand from the source checkout into a cache
folder (EDGETAM_KERNELS_CACHE, default ~/.cache/edgetam_kernels) keyed by executorch version,
machine and a hash of the sources. Needs `pip install executorch==1.5.1 cmake` and a C++17
compiler. EDGETAM_EXECUTORCH_LIB=/path/libedgetam_executorch.so uses a prebuilt library instead.
`python -m edgetam_kernels.executorch build` builds it and prints the path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

ENV_LIB = "EDGETAM_EXECUTORCH_LIB"
ENV_CACHE = "EDGETAM_KERNELS_CACHE"
LIB_NAME = "libedgetam_executorch.so"
MIN_CMAKE = (3, 28)  # executorch's imported CMake targets need it

_lock = threading.Lock()
_loaded: Optional[Path] = None


class ExecuTorchUnavailable(RuntimeError):
    """What is missing to build or load the ExecuTorch kernels, and how to get it."""


def executorch_dir() -> Path:
    """The installed executorch package folder (headers, libs, CMake config)."""
    try:
        import executorch
    except ImportError as e:
        raise ExecuTorchUnavailable(
            "executorch is not installed: pip install executorch==1.5.1 (after torch 2.13.0; "
            "or `pip install edgetam-kernels[executorch]`)") from e
    root = Path(list(executorch.__path__)[0])
    if not (root / "share" / "cmake" / "executorch-config.cmake").exists():
        raise ExecuTorchUnavailable(f"the executorch package at {root} ships no CMake config "
                                    "(a source install?); use the executorch==1.5.1 wheel")
    return root


def executorch_version() -> str:
    from importlib.metadata import version
    return version("executorch")


def source_dir() -> Path:
    """csrc/ of the source checkout this package runs from."""
    src = Path(__file__).resolve().parent.parent / "csrc"
    if not (src / "executorch" / "kernels.cpp").exists():
        raise ExecuTorchUnavailable(
            f"the kernel sources are not at {src}: building the ExecuTorch kernels needs the "
            "edgetam_kernels source checkout; or set "
            f"{ENV_LIB} to a library built with scripts/build_executorch.sh")
    return src


def _cmake() -> str:
    exe = shutil.which("cmake")
    if exe is None:
        raise ExecuTorchUnavailable("cmake not found: pip install cmake (>= 3.28)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_CMAKE:
        raise ExecuTorchUnavailable(f"{exe} is too old ({out.splitlines()[0] if out else '?'}); "
                                    "executorch's CMake targets need >= 3.28: pip install cmake")
    return exe


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise ExecuTorchUnavailable("no C++ compiler found (set CXX, or install g++ / clang++)")
    return cxx


def _sources_hash(src: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in src.rglob("*") if p.suffix in (".cpp", ".h", ".txt"))
    for p in files:
        h.update(str(p.relative_to(src)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    base = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "edgetam_kernels")
    return Path(base) / "executorch"


def _build_dir(src: Path) -> Path:
    return cache_dir() / f"et{executorch_version()}-{platform.machine()}-{_sources_hash(src)}"


def build(force: bool = False, verbose: bool = False) -> Path:
    """Builds libedgetam_executorch.so (and the edgetam_runner program) for this machine and
    returns the library's path; a cached build of the same sources is reused."""
    et, src = executorch_dir(), source_dir()
    out = _build_dir(src)
    key = out.name
    lib = out / LIB_NAME
    if lib.exists() and not force:
        return lib
    cmake, cxx = _cmake(), _compiler()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build in a fresh folder and rename it into place: concurrent builds never see half a library.
    tmp = Path(tempfile.mkdtemp(prefix=key + ".", dir=out.parent))
    try:
        steps = [
            [cmake, "-S", str(src / "executorch"), "-B", str(tmp), f"-DCMAKE_PREFIX_PATH={et}",
             f"-DCMAKE_CXX_COMPILER={cxx}", "-DCMAKE_BUILD_TYPE=Release"],
            [cmake, "--build", str(tmp), "-j", str(max(1, min(os.cpu_count() or 1, 8)))],
        ]
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=not verbose, text=True)
            if r.returncode != 0:
                log = ((r.stdout or "") + (r.stderr or ""))[-4000:]
                raise ExecuTorchUnavailable(f"building the ExecuTorch kernels failed: "
                                            f"{' '.join(cmd)}\n{log}")
        if out.exists() and force:
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same build first
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return lib


def library_path(build_if_missing: bool = True) -> Path:
    """The kernel library to load: EDGETAM_EXECUTORCH_LIB, else the cached build."""
    env = os.environ.get(ENV_LIB)
    if env:
        p = Path(env)
        if not p.exists():
            raise ExecuTorchUnavailable(f"{ENV_LIB}={env} does not exist")
        return p
    if not build_if_missing:
        lib = _build_dir(source_dir()) / LIB_NAME
        if not lib.exists():
            raise ExecuTorchUnavailable("the ExecuTorch kernels are not built: "
                                        "python -m edgetam_kernels.executorch build")
        return lib
    return build()


def runner_path() -> Path:
    """The edgetam_runner program built next to the library (see csrc/executorch/runner.cpp)."""
    p = library_path().parent / "edgetam_runner"
    if not p.exists():
        raise ExecuTorchUnavailable(f"no edgetam_runner next to {library_path()}")
    return p


def runtime():
    """executorch.runtime.Runtime with our kernels registered."""
    load_kernels()
    from executorch.runtime import Runtime
    return Runtime.get()


def load_kernels(path: Optional[os.PathLike] = None) -> Path:
    """Registers the edgetam::*.out kernels with ExecuTorch's runtime in this process, once.

    ExecuTorch aborts the process when an operator is registered twice, so a second call is a
    no-op and a second, different library is refused."""
    global _loaded
    with _lock:
        want = Path(path) if path is not None else None
        if _loaded is not None:
            if want is not None and want.resolve() != _loaded.resolve():
                raise RuntimeError(f"ExecuTorch kernels already loaded from {_loaded}; a second "
                                   f"library ({want}) would register the same operators twice")
            return _loaded
        lib = want if want is not None else library_path()
        # The runtime (libexecutorch, which holds the kernel registry) must be loaded first:
        # our library registers into it when loaded.
        from executorch.runtime import Runtime
        Runtime.get()
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        _loaded = lib
        return lib


def kernels_isa() -> str:
    """The ISA path our kernels take in this process (after load_kernels)."""
    lib = ctypes.CDLL(str(load_kernels()))
    fn = lib.edgetam_executorch_isa
    fn.restype = ctypes.c_char_p
    return fn().decode()


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m edgetam_kernels.executorch",
                                 description="Build the ExecuTorch kernel library for this machine.")
    ap.add_argument("command", choices=["build", "path"])
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = ap.parse_args(argv)
    try:
        lib = build(force=args.force, verbose=True) if args.command == "build" else library_path(False)
    except ExecuTorchUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
