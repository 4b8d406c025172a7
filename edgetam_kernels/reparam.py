"""Inference-time re-parameterisation of conv / BatchNorm networks (RepViT, EdgeTAM's encoder).

Pure functions on weight tensors, shared by `edgetam/repvit.py` (which fuses its own model in
place) and `patch()` (which keeps fused copies beside Meta's and Hugging Face's untouched
weights, `repvit.py`):

- `fold_batchnorm`: a conv or linear layer (output channels first) followed by an eval-mode
  BatchNorm -> one layer with bias. BN(y) = scale * y + shift with scale = gamma / sqrt(var +
  eps), shift = beta - mean * scale, so W' = scale * W and b' = scale * b + shift.
- `fold_batchnorm_into_linear`: an eval-mode BatchNorm followed by a linear layer
  (timm's NormLinear classifier head): W' = W * scale, b' = W @ shift + b.
- `merge_dw_branches`: RepVGG-style depth-wise token mixer, k x k branch + 1 x 1 branch +
  identity -> one k x k depth-wise conv (the 1 x 1 kernel and the identity sit on the centre tap).
- `fold_value_into_output`: a one-head attention's value projection folded into its output
  projection (patch()'s memory-attention cross-attention, `layers.folds_value`).

Everything is computed in float64 (float32 on devices without it, e.g. MPS) and returned in the
weight's dtype (or `out_dtype`: chained folds pass `work_dtype(weight)` to round only once).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

WeightBias = Tuple[Tensor, Tensor]


def work_dtype(t: Tensor) -> torch.dtype:
    """float64 where the device has it: pass as `out_dtype` to chain folds without rounding."""
    return torch.float64 if t.device.type in ("cpu", "cuda") else torch.float32


def _work(t: Tensor) -> Tensor:
    return t.detach().to(work_dtype(t))


def bn_scale_shift(bn) -> WeightBias:
    """(scale, shift) of an eval-mode BatchNorm with running statistics, in the work dtype."""
    var = _work(bn.running_var)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * _work(bn.weight)
    shift = -_work(bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + _work(bn.bias)
    return scale, shift


@torch.no_grad()
def fold_batchnorm(weight: Tensor, bias: Optional[Tensor], bn,
                   out_dtype: Optional[torch.dtype] = None) -> WeightBias:
    """Layer (weight (out, ...), optional bias) then `bn` -> (weight, bias) of one layer,
    in `out_dtype` (default: the weight's)."""
    scale, shift = bn_scale_shift(bn)
    w = _work(weight) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else _work(bias) * scale + shift
    out_dtype = out_dtype or weight.dtype
    return w.to(out_dtype), b.to(out_dtype)


@torch.no_grad()
def fold_batchnorm_into_linear(bn, weight: Tensor, bias: Optional[Tensor],
                               out_dtype: Optional[torch.dtype] = None) -> WeightBias:
    """`bn` then a linear layer (weight (out, in), optional bias) -> (weight, bias) of one."""
    scale, shift = bn_scale_shift(bn)
    w = _work(weight)
    b = w @ shift
    if bias is not None:
        b = b + _work(bias)
    out_dtype = out_dtype or weight.dtype
    return (w * scale).to(out_dtype), b.to(out_dtype)


@torch.no_grad()
def merge_dw_branches(weight: Tensor, bias: Optional[Tensor], weight_1x1: Tensor,
                      bias_1x1: Optional[Tensor], identity: bool = True,
                      out_dtype: Optional[torch.dtype] = None) -> WeightBias:
    """Depth-wise k x k conv + depth-wise 1 x 1 conv (+ identity), same input, outputs summed,
    both 'same' padded with stride 1 -> one depth-wise k x k conv. weight: (C, 1, k, k),
    weight_1x1: (C, 1, 1, 1)."""
    c, _, kh, kw = weight.shape
    w = _work(weight).clone()
    centre = w[:, :, kh // 2, kw // 2]
    centre += _work(weight_1x1)[:, :, 0, 0]
    if identity:
        centre += 1.0
    b = torch.zeros(c, dtype=w.dtype, device=w.device)
    for extra in (bias, bias_1x1):
        if extra is not None:
            b = b + _work(extra)
    out_dtype = out_dtype or weight.dtype
    return w.to(out_dtype), b.to(out_dtype)


def compose_linear(w_1: Tensor, b_1: Optional[Tensor], w_2: Tensor, b_2: Optional[Tensor],
                   out_dtype: torch.dtype) -> Tuple[Tensor, Optional[Tensor]]:
    """Two linear maps in a row, y = W_2 (W_1 x + b_1) + b_2, as one: (W_2 W_1, W_2 b_1 + b_2).
    Weights are (out, in); either bias may be None. Computed in the work dtype, rounded once.
    Differentiable (no detach): callers that want gradients for the weights compute it under
    autograd."""
    with torch.autocast(w_2.device.type, enabled=False):  # the fold itself at full precision
        w2 = w_2.to(work_dtype(w_2))
        w = w2 @ w_1.to(w2.dtype)
        b = None if b_2 is None else b_2.to(w2.dtype)
        if b_1 is not None:
            b1 = w2 @ b_1.to(w2.dtype)
            b = b1 if b is None else b + b1
    return w.to(out_dtype), None if b is None else b.to(out_dtype)


def fold_value_into_output(w_v: Tensor, b_v: Optional[Tensor], w_o: Tensor,
                           b_o: Optional[Tensor], out_dtype: torch.dtype
                           ) -> Tuple[Tensor, Optional[Tensor]]:
    """(W_o W_v, W_o b_v + b_o) of a one-head attention: softmax rows sum to 1, so
    softmax(S) (v W_v^T + b_v) W_o^T + b_o = (softmax(S) v) (W_o W_v)^T + (W_o b_v + b_o)."""
    return compose_linear(w_v, b_v, w_o, b_o, out_dtype)
