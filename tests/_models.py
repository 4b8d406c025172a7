"""The tests' name for edgetam_kernels.testing.hosts (Meta's and HF's modules, offline)."""

from edgetam_kernels.testing.hosts import *  # noqa: F401,F403
