"""pytest-benchmark suites: `pytest bench/ --benchmark-only [--benchmark-json out.json]`.

EDGETAM_BENCH_GRID=32 runs the 512-input shapes (default 64: EdgeTAM's 1024 shapes);
EDGETAM_BENCH_DTYPE=bfloat16 / float16 changes the input dtype.
"""

from edgetam_kernels._compat import shim_torchvision

shim_torchvision()
