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


def _sources():
    srcs = ["csrc/register.cpp", "csrc/dispatch.cpp", "csrc/isa/scalar.cpp"]
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        srcs += ["csrc/isa/x86_avx2.cpp", "csrc/isa/x86_avx512.cpp", "csrc/isa/x86_avx512bf16.cpp",
                 "csrc/isa/x86_amx.cpp"]
    elif machine in ("aarch64", "arm64"):
        srcs += ["csrc/isa/arm_neon.cpp", "csrc/isa/arm_neon_fp16.cpp", "csrc/isa/arm_neon_bf16.cpp"]
    return srcs


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
