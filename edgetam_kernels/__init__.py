"""edgetam_kernels: fused kernels for EdgeTAM's perceiver and RoPE memory attention.

    import edgetam_kernels as ek
    ek.backends()                      # what is built and usable here, and why not
    ek.rope_attention(q, k, v, ...)    # also perceiver_attention, spatial_perceiver
    ek.patch(model)                    # run Meta's / Hugging Face's EdgeTAM on the kernels
"""

from ._registry import ENV_VAR, BackendUnavailable, backends
from .ops import perceiver_attention, rope_attention, spatial_perceiver
from .patch import patch, unpatch

__version__ = "0.1.0"

__all__ = [
    "ENV_VAR",
    "BackendUnavailable",
    "backends",
    "patch",
    "perceiver_attention",
    "rope_attention",
    "spatial_perceiver",
    "unpatch",
    "__version__",
]
