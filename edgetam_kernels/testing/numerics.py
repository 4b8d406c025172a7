"""Shared by tests/ and bench/: error metric, tolerances, EdgeTAM shapes, sample inputs."""

from __future__ import annotations

import math
from typing import Optional

import torch

# Relative L2 error budgets against a float64 computation, per compute dtype. A wrong kernel
# (a missed RoPE rule, a wrong window, a dropped token) lands orders of magnitude above these.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.6e-2}

# spatial_perceiver(..., compute_dtype=torch.bfloat16) on fp32 inputs: only the global latents'
# cross-attention products are bf16, so the error is far below TOLERANCE[bf16]. Measured: the
# reference's own error against float64, seeds 0-2, depth 2, dim 64, FF 256, random weights as
# tests/backends/test_cpu_perceiver.py makes them: EdgeTAM's shape (64x64, 256 + 256 latents, 1 head)
# 4.3-4.6e-4; 32x32 with 64 + 64 latents, batch 2: 5.6-6.8e-4; the same with 2 heads:
# 6.8-7.2e-4. Meta's PerceiverResampler (testing/hosts.py weights) patched with the reference:
# 6.2-7.8e-4 at 64x64, 8.9-9.7e-4 at 32x32. A kernel keeping the attention output in fp32
# (the reference rounds it to bf16): 3.2-5.8e-4. The budget is 3.1x the largest of these, 6.5x
# EdgeTAM's shape. Outside it (EdgeTAM's shape): the global latents missing the last 64 of
# 4096 keys, 7.3e-3; the whole perceiver in bf16, not the global cross-attention alone, 7.8e-3.
PERCEIVER_BF16_COMPUTE = 3e-3


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in `out` (not in ref) gives inf."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape:
        raise AssertionError(f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if torch.isnan(out).any() and not torch.isnan(ref).any():
        return math.inf
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out, ref, dtype: torch.dtype, what: str = "", tol: Optional[float] = None):
    tol = TOLERANCE[dtype] if tol is None else tol
    err = rel_l2(out, ref)
    assert err <= tol, f"{what}: relative L2 error {err:.3e} exceeds {tol:.1e} ({dtype})"
    return err


def to64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().double() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(to64(t) for t in x)
    return x


# EdgeTAM at 1024x1024: 64x64 image grid (4096 queries, d_model 256), 16x16 patch latents,
# 7 memory frames of 512 latents (64 channels), 16 object pointers of 4 tokens each.
EDGETAM = dict(image_grid=64, d_model=256, mem_dim=64, latents=256, latent_grid=16,
               mem_frames=7, obj_ptr_tokens=64)


def edgetam_cross_attention_inputs(grid=64, frames=7, obj_ptr_tokens=64, batch=1, d=256,
                                   dtype=torch.float32, device="cpu", generator=None):
    """q, k, v (B, 1, N, D) for memory cross-attention plus its rope arguments."""
    n_q = grid * grid
    n_k = frames * 512 + obj_ptr_tokens
    g = dict(dtype=dtype, device=device, generator=generator)
    q = torch.randn(batch, 1, n_q, d, **g)
    k = torch.randn(batch, 1, n_k, d, **g)
    v = torch.randn(batch, 1, n_k, d, **g)
    kwargs = dict(q_grid=(grid, grid), k_grid=(16, 16), k_repeat=frames,
                  num_k_exclude_rope=obj_ptr_tokens)
    return (q, k, v), kwargs


def random_perceiver_weights(c=64, inner=64, hidden=256, depth=2, l1=256, l2=256, self_attn=True,
                             dtype=torch.float32, device="cpu"):
    """EdgeTAM-sized perceiver weights (flat list in reference.PERCEIVER_LAYER_PARAMS order, drawn
    by `cases.perceiver_weights` from torch's global generator), latents and final norm."""
    from .cases import perceiver_weights

    g = dict(dtype=dtype, device=device)

    def ln():
        return [1 + 0.1 * torch.randn(c, **g), 0.1 * torch.randn(c, **g)]

    ws = perceiver_weights(c, inner, hidden, depth, self_attn, dtype=dtype, device=device,
                           seed=None)
    lat1 = torch.randn(l1, c, **g) if l1 else None
    lat2 = torch.randn(l2, c, **g) if l2 else None
    return ws, lat1, lat2, tuple(ln())
