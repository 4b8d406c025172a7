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
# tests/test_cpu_perceiver.py makes them: EdgeTAM's shape (64x64, 256 + 256 latents, 1 head)
# 4.3-4.6e-4; 32x32 with 64 + 64 latents, batch 2: 5.6-6.8e-4; the same with 2 heads:
# 6.8-7.2e-4. Meta's PerceiverResampler (tests/_models.py weights) patched with the reference:
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
    """EdgeTAM-sized perceiver weights (flat list in reference.PERCEIVER_LAYER_PARAMS order),
    latents and final norm, with LayerNorm weights near 1 so activations stay well scaled."""
    g = dict(dtype=dtype, device=device)

    def ln():
        return [1 + 0.1 * torch.randn(c, **g), 0.1 * torch.randn(c, **g)]

    def lin(o, i):
        return torch.randn(o, i, **g) / i**0.5

    ws = []
    for _ in range(depth):
        ws += ln() + ln() + [lin(inner, c), lin(2 * inner, c), lin(c, inner)]
        ws += ln() + [lin(hidden, c), lin(c, hidden)]
        if self_attn:
            ws += ln() + [lin(inner, c), lin(2 * inner, c), lin(c, inner)]
            ws += ln() + [lin(hidden, c), lin(c, hidden)]
    lat1 = torch.randn(l1, c, **g) if l1 else None
    lat2 = torch.randn(l2, c, **g) if l2 else None
    return ws, lat1, lat2, tuple(ln())


# ---------------------------------------------------------------------------------------------
# rope_attention's key_mask: an independent oracle and the masks every backend is tested with
# ---------------------------------------------------------------------------------------------


def masked_rope_attention_oracle(q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope, theta,
                                 scale, key_mask) -> torch.Tensor:
    """float64 attention over only the valid keys, concatenated: each batch row rotates its
    keys in the full layout, keeps the True ones and runs a plain softmax over them; a row with
    none gives zeros. Shares no masking code with the ops (reference.rotate_keys gives the
    RoPE, itself checked against the textbook formula)."""
    from . import reference

    q, k, v = (t.detach().double() for t in (q, k, v))
    cos, sin = reference.rope_cos_sin(q_grid[0], q_grid[1], q.shape[-1], theta, q.device)
    q = reference.apply_rope(q, cos, sin)
    k = reference.rotate_keys(k, k_grid, k_repeat, num_k_exclude_rope, theta)
    mask = key_mask.expand(q.shape[0], -1)
    out = q.new_zeros((*q.shape[:3], v.shape[-1]))
    for b in range(q.shape[0]):
        keep = mask[b].nonzero().flatten()
        if keep.numel() == 0:
            continue
        kb, vb = k[b][:, keep], v[b][:, keep]
        weights = torch.softmax(q[b] @ kb.transpose(-1, -2) * scale, dim=-1)
        out[b] = weights @ vb
    return out


def key_mask_cases(batch: int, frames: int, frame_len: int, n_ptr: int, seed: int = 0,
                   device="cpu"):
    """(name, mask) pairs for keys laid out as `frames` frames of `frame_len` tokens then n_ptr
    object-pointer tokens (EdgeTAM's cross-attention): a random mask; whole memory frames and
    some pointer tokens removed, differently per batch row (a fixed-capacity bank with empty
    slots); one batch row with no valid key; all True; a (1, Nk) mask broadcast over the
    batch."""
    g = torch.Generator().manual_seed(seed)
    n_k = frames * frame_len + n_ptr
    random = torch.rand(batch, n_k, generator=g) < 0.6
    random[:, 0] = True  # at least one valid key per row
    slots = torch.ones(batch, n_k, dtype=torch.bool)
    for b in range(batch):
        for f in range(frames):
            if (f + b) % 3 == 1 or f >= frames - b:  # row b: its last b frames are empty slots
                slots[b, f * frame_len:(f + 1) * frame_len] = False
        ptr = slots[b, frames * frame_len:]
        ptr[(torch.arange(n_ptr) + b) % 4 == 0] = False  # some objects' pointer tokens
        if not slots[b].any():
            slots[b, -1] = True
    one_empty = random.clone()
    one_empty[batch // 2] = False
    broadcast = torch.rand(1, n_k, generator=g) < 0.5
    broadcast[0, -1] = True
    cases = [("random", random), ("frames_and_pointers", slots), ("row_all_masked", one_empty),
             ("all_true", torch.ones(batch, n_k, dtype=torch.bool)), ("broadcast", broadcast)]
    return [(name, m.to(device)) for name, m in cases]


def masked_cross_attention_inputs(batch=3, heads=2, q_grid=(4, 6), frames=3, lead=4,
                                  k_grid=(4, 4), n_ptr=8, d=32, dv=24, dtype=torch.float32,
                                  device="cpu", seed=0):
    """EdgeTAM's memory cross-attention layout scaled down (k_grid (16, 16) -> (4, 4)): `frames`
    memory frames of `lead` unrotated global latents then k_grid rotated patch latents, then
    n_ptr object-pointer tokens. Returns q, k, v (B, H, N, D) and the rope keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    n_k = frames * (lead + k_grid[0] * k_grid[1]) + n_ptr
    q = torch.randn(batch, heads, q_grid[0] * q_grid[1], d, generator=g)
    k = torch.randn(batch, heads, n_k, d, generator=g)
    v = torch.randn(batch, heads, n_k, dv, generator=g)
    q, k, v = (t.to(dtype=dtype, device=device) for t in (q, k, v))
    return q, k, v, dict(q_grid=list(q_grid), k_grid=list(k_grid), k_repeat=frames,
                         num_k_exclude_rope=n_ptr)


def check_key_mask(run, dtype=torch.float32, compute_dtype=None, device="cpu", **shape):
    """A backend's masked rope_attention against the valid-keys-only oracle on every mask of
    key_mask_cases. `run(q, k, v, kw, key_mask)` calls the backend (key_mask may be None).
    Also: rows whose keys are all masked are exactly zero; all True equals no mask; and the
    same comparison fails for the unmasked result (a kernel that ignored the mask)."""
    q, k, v, kw = masked_cross_attention_inputs(dtype=dtype, device=device, **shape)
    lead = shape.get("lead", 4)
    frame_len = lead + kw["k_grid"][0] * kw["k_grid"][1]
    tol = TOLERANCE[compute_dtype or dtype]
    plain = run(q, k, v, kw, None)
    for name, mask in key_mask_cases(q.shape[0], kw["k_repeat"], frame_len,
                                     kw["num_k_exclude_rope"], device=device):
        out = run(q, k, v, kw, mask)
        exact = masked_rope_attention_oracle(q, k, v, kw["q_grid"], kw["k_grid"],
                                             kw["k_repeat"], kw["num_k_exclude_rope"], 10000.0,
                                             q.shape[-1] ** -0.5, mask)
        assert_close(out, exact, compute_dtype or dtype, f"key_mask {name}")
        empty = ~mask.expand(q.shape[0], -1).any(dim=1)
        assert torch.equal(out[empty].cpu(), torch.zeros_like(out[empty]).cpu()), name
        if bool(mask.all()):
            assert_close(out, plain, compute_dtype or dtype, "all True vs no mask", tol)
        else:
            assert rel_l2(plain, exact) > 20 * tol, f"{name}: the mask would not be noticed"
