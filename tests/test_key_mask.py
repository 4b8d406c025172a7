"""rope_attention's key_mask at the op layer: the reference (the spec) against an independent
float64 oracle that concatenates only the valid keys, argument checks, autograd, autocast and
tracing. Each backend's kernel is tested against the same oracle in its own test file."""

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import reference
from edgetam_kernels.testing import (TOLERANCE, assert_close, key_mask_cases,
                                     masked_rope_attention_oracle, rel_l2, to64)

# EdgeTAM's cross-attention layout scaled down: k_grid (16, 16) -> (4, 4), each memory frame
# 4 global latents then the 4x4 rotated patch latents, then object-pointer tokens.
FRAMES, LEAD, K_GRID, PTR = 4, 4, (4, 4), 8
FRAME_LEN = LEAD + K_GRID[0] * K_GRID[1]


def cross_inputs(b=3, h=2, q_grid=(4, 6), d=16, dv=12, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_k = FRAMES * FRAME_LEN + PTR
    q = torch.randn(b, h, q_grid[0] * q_grid[1], d, generator=g).to(dtype)
    k = torch.randn(b, h, n_k, d, generator=g).to(dtype)
    v = torch.randn(b, h, n_k, dv, generator=g).to(dtype)
    kw = dict(q_grid=q_grid, k_grid=K_GRID, k_repeat=FRAMES, num_k_exclude_rope=PTR)
    return q, k, v, kw


def oracle(q, k, v, kw, mask, theta=10000.0):
    return masked_rope_attention_oracle(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                                        kw["num_k_exclude_rope"], theta, q.shape[-1] ** -0.5,
                                        mask)


MASKS = key_mask_cases(3, FRAMES, FRAME_LEN, PTR)


@pytest.mark.parametrize("name,mask", MASKS, ids=[m[0] for m in MASKS])
def test_reference_equals_valid_keys_only(name, mask):
    q, k, v, kw = cross_inputs()
    out = ek.rope_attention(q, k, v, key_mask=mask, backend="reference", **kw)
    assert_close(out, oracle(q, k, v, kw, mask), torch.float64, name)


def test_reference_fp32_and_bf16_compute():
    q, k, v, kw = cross_inputs(dtype=torch.float32)
    _, mask = MASKS[1]
    exact = oracle(q, k, v, kw, mask)
    out = ek.rope_attention(q, k, v, key_mask=mask, backend="reference", **kw)
    assert_close(out, exact, torch.float32, "fp32")
    out = ek.rope_attention(q, k, v, key_mask=mask, compute_dtype=torch.bfloat16,
                            backend="reference", **kw)
    assert out.dtype == torch.float32
    assert_close(out, exact, torch.bfloat16, "bf16 compute")


def test_all_masked_row_is_zero_and_others_unaffected():
    q, k, v, kw = cross_inputs()
    mask = torch.ones(3, k.shape[2], dtype=torch.bool)
    mask[1] = False
    out = ek.rope_attention(q, k, v, key_mask=mask, backend="reference", **kw)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    plain = ek.rope_attention(q, k, v, backend="reference", **kw)
    assert_close(out[0::2], plain[0::2], torch.float64, "rows with every key valid")


def test_ignoring_the_mask_fails():
    """The oracle comparison can fail: the same inputs without the mask land far from it."""
    q, k, v, kw = cross_inputs()
    for name, mask in MASKS[:3]:
        exact = oracle(q, k, v, kw, mask)
        ignored = ek.rope_attention(q, k, v, backend="reference", **kw)
        assert rel_l2(ignored, exact) > 1e-2, name


def test_3d_inputs_take_the_mask():
    q, k, v, kw = cross_inputs(h=1)
    _, mask = MASKS[0]
    out = ek.rope_attention(q[:, 0], k[:, 0], v[:, 0], key_mask=mask, backend="reference", **kw)
    assert_close(out, oracle(q, k, v, kw, mask)[:, 0], torch.float64, "3-D")


def test_gradients_with_an_all_masked_row():
    q, k, v, kw = cross_inputs(b=2, h=1, q_grid=(2, 3), d=8, dv=4)
    mask = key_mask_cases(2, FRAMES, FRAME_LEN, PTR)[2][1]
    assert not mask.any(dim=1).all()
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: ek.rope_attention(q, k, v, key_mask=mask, **kw), inputs)
    out = ek.rope_attention(*inputs, key_mask=mask, **kw)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)
    masked_keys = ~mask[:, None, :, None].expand_as(inputs[1])
    assert torch.equal(inputs[1].grad[masked_keys], torch.zeros_like(inputs[1].grad[masked_keys]))


def test_opcheck_broadcast_mask():
    q, k, v, kw = cross_inputs(b=2, h=1, dtype=torch.float32)
    mask = MASKS[4][1]
    torch.library.opcheck(torch.ops.edgetam.rope_attention.default,
                          (q, k, v, list(kw["q_grid"]), list(K_GRID), FRAMES, PTR, 1e4, 0.25,
                           None, mask, "reference"))


def test_autocast_leaves_the_mask_bool():
    q, k, v, kw = cross_inputs(dtype=torch.float32)
    _, mask = MASKS[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ek.rope_attention(q, k, v, key_mask=mask, backend="reference", **kw)
    assert out.dtype == torch.bfloat16
    assert_close(out, oracle(q, k, v, kw, mask), torch.bfloat16, "autocast")


def test_export_keeps_the_mask_input():
    q, k, v, kw = cross_inputs(b=2, h=1, dtype=torch.float32)
    _, mask = MASKS[1]

    class M(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return ek.rope_attention(q, k, v, key_mask=mask, **kw)

    ep = torch.export.export(M(), (q, k, v, mask[:2]))
    assert_close(ep.module()(q, k, v, mask[:2]), oracle(q, k, v, kw, mask[:2]), torch.float32,
                 "exported")


BAD = [
    ("dtype", lambda m: m.float(), TypeError, "key_mask must be a bool tensor"),
    ("rank", lambda m: m[:, None], ValueError, "key_mask must have 2 dimensions"),
    ("keys", lambda m: m[:, 1:], ValueError, r"key_mask must have shape \(3 or 1, 88\)"),
    ("batch", lambda m: m[:2], ValueError, r"key_mask must have shape \(3 or 1, 88\)"),
    ("device", lambda m: m.to("meta"), ValueError, "key_mask is on device meta"),
    ("type", lambda m: m.tolist(), TypeError, "key_mask must be None or a bool torch.Tensor"),
]


@pytest.mark.parametrize("what,bad,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_mask_is_named(what, bad, error, match):
    q, k, v, kw = cross_inputs(dtype=torch.float32)
    mask = MASKS[0][1]
    with pytest.raises(error, match=match):
        ek.rope_attention(q, k, v, key_mask=bad(mask), **kw)


def test_non_contiguous_mask_is_correct():
    q, k, v, kw = cross_inputs()
    mask = MASKS[1][1]
    strided = torch.stack([mask, ~mask], dim=2)[:, :, 0]
    assert not strided.is_contiguous()
    out = ek.rope_attention(q, k, v, key_mask=strided, **kw)
    assert_close(out, oracle(q, k, v, kw, mask), torch.float64, "non-contiguous mask")
