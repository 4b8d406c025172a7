"""What tests/, bench/ and edgetam/'s comparisons share.

- `numerics`: the error metric (relative L2 against float64) and the tolerances (re-exported here,
  so `from edgetam_kernels.testing import rel_l2, TOLERANCE` keeps working).
- `hosts`: Meta's and Hugging Face's EdgeTAM modules and predictors, built offline with random
  weights (imported on demand: it needs sam2 / transformers only when a builder is called).
"""

from .numerics import (
    EDGETAM,
    PERCEIVER_BF16_COMPUTE,
    TOLERANCE,
    assert_close,
    check_key_mask,
    edgetam_cross_attention_inputs,
    key_mask_cases,
    masked_cross_attention_inputs,
    masked_rope_attention_oracle,
    random_perceiver_weights,
    rel_l2,
    to64,
)

__all__ = [
    "EDGETAM",
    "PERCEIVER_BF16_COMPUTE",
    "TOLERANCE",
    "assert_close",
    "check_key_mask",
    "edgetam_cross_attention_inputs",
    "key_mask_cases",
    "masked_cross_attention_inputs",
    "masked_rope_attention_oracle",
    "random_perceiver_weights",
    "rel_l2",
    "to64",
]
