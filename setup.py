"""Build script. Install with `pip install -e . --no-build-isolation` so the build sees the
installed torch (a bare `torch` requirement would otherwise pull a multi-GB CUDA build)."""

from setuptools import setup

setup()
