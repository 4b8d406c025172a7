"""Build script. Install with `pip install -e . --no-build-isolation` so the build sees the
installed torch (a bare `torch` requirement would otherwise pull a multi-GB CUDA build).

Builds the C++ CPU extension `edgetam_kernels._C` (csrc/) against the LibTorch stable ABI
(torch >= 2.10) and the Python limited API (cp310). Without a working compiler the build warns
and the package still installs: `edgetam_kernels.backends()` then reports the cpu backend as
unavailable and every op runs the PyTorch reference. EDGETAM_KERNELS_NO_EXT=1 skips the build.
"""

import glob
import os
import platform
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
SKIP = os.environ.get("EDGETAM_KERNELS_NO_EXT", "") not in ("", "0")


def _sources(parts=("torch", "any")):
    """csrc/sources.txt's paths of these parts plus this machine's architecture."""
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        rows = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return [path for part, path in rows if part in parts or part == arch]


def _extensions():
    if SKIP:
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as e:  # noqa: BLE001 - no torch at build time: reference-only install
        print(f"WARNING: edgetam_kernels: torch not importable ({e}); skipping the C++ extension",
              file=sys.stderr)
        return [], {}

    class LenientBuild(BuildExtension):
        """A failed compile leaves a working reference-only package, loudly."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001
                msg = (f"edgetam_kernels: building the C++ CPU extension failed ({e}); the package "
                       "installs without it and runs the PyTorch reference on CPU")
                print("\n" + "!" * 78 + "\nWARNING: " + msg + "\n" + "!" * 78 + "\n",
                      file=sys.stderr)

    # Never -march=native: ISA flags live per file (csrc/isa/*), chosen at run time.
    cflags = ["-O3", "-std=c++17", "-DTORCH_TARGET_VERSION=0x020a000000000000",
              "-DPy_LIMITED_API=0x030a0000", "-fvisibility=hidden", "-Wno-unused-function"]
    ext = CppExtension(
        "edgetam_kernels._C",
        sources=_sources(),
        extra_compile_args={"cxx": cflags},
        py_limited_api=True,
    )
    return [ext], {"build_ext": LenientBuild.with_options(no_python_abi_suffix=True)}


exts, cmds = _extensions()
setup(
    ext_modules=exts,
    cmdclass=cmds,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if exts else {},
)
