import os

import pytest
import torch

# No GPU: Triton kernels run (and are tested) in Triton's interpreter. It must be switched on
# before any @triton.jit function is defined, hence here, before edgetam_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# The accuracy tests of the bf16 / fp16 compute paths run those paths on every machine, fast
# or not; the precision policy's fallback to fp32 is tested on its own (test_precision.py).
os.environ.setdefault("EDGETAM_KERNELS_REDUCED_PRECISION", "force")

from edgetam_kernels._compat import shim_torchvision  # noqa: E402

shim_torchvision()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
