import os

import pytest
import torch

# No GPU: Triton kernels run (and are tested) in Triton's interpreter. It must be switched on
# before any @triton.jit function is defined, hence here, before edgetam_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _shim_torchvision():
    """PyPI's torchvision is a CUDA build whose C ops do not load beside a CPU torch; timm and
    Meta's sam2 only need its Python parts, which import once these schemas exist."""
    if torch.cuda.is_available():
        return
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in ("nms", "qnms"):
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _shim_torchvision.lib = lib  # keep the fragment alive
    except RuntimeError:
        pass  # the real ops are already registered


_shim_torchvision()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
