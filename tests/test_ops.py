"""The op layer itself: schemas, opcheck, torch.compile, autograd, backend selection.

Backend kernels are compared with the reference in their own test files; here every op goes
through the reference so these tests hold on any machine.
"""

import math

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import reference
from edgetam_kernels.testing import TOLERANCE, assert_close, rel_l2, to64


def rope_inputs(b=2, h=1, grid=(4, 6), frames=2, frame_len=7, k_grid=(2, 3), ptr=3, d=16,
                dv=None, dtype=torch.float32):
    n_q = grid[0] * grid[1]
    n_k = frames * frame_len + ptr
    q = torch.randn(b, h, n_q, d, dtype=dtype)
    k = torch.randn(b, h, n_k, d, dtype=dtype)
    v = torch.randn(b, h, n_k, dv or d, dtype=dtype)
    kw = dict(q_grid=grid, k_grid=k_grid, k_repeat=frames, num_k_exclude_rope=ptr)
    return q, k, v, kw


def perceiver_params(c=16, inner=16, hidden=32, depth=2, self_attn=True, dtype=torch.float32):
    ws = []
    for _ in range(depth):
        layer = [1 + 0.1 * torch.randn(c), 0.1 * torch.randn(c), 1 + 0.1 * torch.randn(c),
                 0.1 * torch.randn(c), torch.randn(inner, c) / c**0.5,
                 torch.randn(2 * inner, c) / c**0.5, torch.randn(c, inner) / inner**0.5,
                 1 + 0.1 * torch.randn(c), 0.1 * torch.randn(c), torch.randn(hidden, c) / c**0.5,
                 torch.randn(c, hidden) / hidden**0.5]
        if self_attn:
            layer += [1 + 0.1 * torch.randn(c), 0.1 * torch.randn(c),
                      torch.randn(inner, c) / c**0.5, torch.randn(2 * inner, c) / c**0.5,
                      torch.randn(c, inner) / inner**0.5, 1 + 0.1 * torch.randn(c),
                      0.1 * torch.randn(c), torch.randn(hidden, c) / c**0.5,
                      torch.randn(c, hidden) / hidden**0.5]
        ws += layer
    return [w.to(dtype) for w in ws]


def perceiver_inputs(b=2, c=16, grid=8, l1=5, l2=4, depth=2, self_attn=True, dtype=torch.float32):
    x = torch.randn(b, c, grid, grid, dtype=dtype)
    pos = torch.randn(b, c, grid, grid, dtype=dtype)
    lat1 = torch.randn(l1, c, dtype=dtype) if l1 else None
    lat2 = torch.randn(l2, c, dtype=dtype) if l2 else None
    ws = perceiver_params(c, depth=depth, self_attn=self_attn, dtype=dtype)
    norm_w, norm_b = 1 + 0.1 * torch.randn(c, dtype=dtype), 0.1 * torch.randn(c, dtype=dtype)
    return (x, pos, lat1, lat2, ws, norm_w, norm_b), dict(depth=depth, use_self_attn=self_attn)


# ---------------------------------------------------------------------------------------------
# The reference against an independent, naive float64 formulation
# ---------------------------------------------------------------------------------------------


def naive_rope(x, rows, cols, theta):
    """Rotate each token of x (N, D) by its own (row, col): the textbook formula, no tables."""
    n, d = x.shape
    out = x.clone()
    for t in range(n):
        for j in range(d // 2):
            f = theta ** (-4.0 * (j % (d // 4)) / d)
            angle = (cols[t] if j < d // 4 else rows[t]) * f
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[t, 2 * j].item(), x[t, 2 * j + 1].item()
            out[t, 2 * j], out[t, 2 * j + 1] = a * c - b * s, a * s + b * c
    return out


def test_reference_rope_attention_matches_textbook_formula():
    grid, k_grid, frames, frame_len, ptr, theta = (3, 4), (2, 2), 2, 6, 2, 100.0
    q, k, v, kw = rope_inputs(b=1, grid=grid, frames=frames, frame_len=frame_len,
                              k_grid=k_grid, ptr=ptr, d=8, dtype=torch.float64)
    qn = torch.arange(12)
    q_rot = naive_rope(q[0, 0], qn // grid[1], qn % grid[1], theta)
    k_rot = k[0, 0].clone()
    for f in range(frames):
        start = f * frame_len + frame_len - 4  # the last k_h*k_w tokens of each frame
        kn = torch.arange(4)
        k_rot[start:start + 4] = naive_rope(k[0, 0, start:start + 4], kn // 2, kn % 2, theta)
    att = torch.softmax(q_rot @ k_rot.T * 0.3, dim=-1) @ v[0, 0]
    out = ek.rope_attention(q, k, v, theta=theta, scale=0.3, backend="reference", **kw)
    # The spec computes RoPE angles in fp32 (as Meta does), so agreement stops near 1e-8; a
    # wrong rule (rotated pointer, swapped row/col, wrong frame offset) gives errors near 1.
    assert rel_l2(out[0, 0], att) < 1e-6


def test_reference_spatial_perceiver_windows_match_explicit_loop():
    """Patch latent j must see exactly window (j // nw, j % nw), tokens row-major."""
    args, kw = perceiver_inputs(b=1, grid=8, l1=0, l2=4, depth=1, dtype=torch.float64)
    x, pos, _, lat2, ws, nw_, nb_ = args
    out = ek.spatial_perceiver(x, None, None, lat2, ws, nw_, nb_, backend="reference", **kw)
    for j in range(4):
        r, c = divmod(j, 2)
        win = x[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].flatten(1).T.unsqueeze(0)
        lat = reference.perceiver_layer(lat2[j].view(1, 1, -1), win, None, ws, 1, True, 1e-5)
        lat = torch.nn.functional.layer_norm(lat, (16,), nw_, nb_, 1e-5)
        assert rel_l2(out[0, j], lat[0, 0]) < 1e-12


# ---------------------------------------------------------------------------------------------
# spatial_perceiver's compute_dtype in the reference (budgets per backend: test_cpu_perceiver.py)
# ---------------------------------------------------------------------------------------------


def _sp_ref(args, kw, *compute_dtype):
    return reference.spatial_perceiver(*args, kw["depth"], 1, kw["use_self_attn"], 1e-5,
                                       *compute_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_reference_perceiver_compute_dtype_none_is_the_input_dtype(dtype):
    """None casts nothing, so it is bit-identical to asking for the inputs' own dtype."""
    args, kw = perceiver_inputs(dtype=dtype)
    none = _sp_ref(args, kw)
    assert torch.equal(none, _sp_ref(args, kw, None))
    assert torch.equal(none, _sp_ref(args, kw, dtype))


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reference_perceiver_compute_dtype_reaches_only_global_cross_attention(compute_dtype):
    args, kw = perceiver_inputs(l1=5, l2=4)
    base = _sp_ref(args, kw)
    low = _sp_ref(args, kw, compute_dtype)
    assert low.dtype == torch.float32
    assert torch.equal(low[:, 5:], base[:, 5:])  # the patch latents never see it
    assert 1e-6 < rel_l2(low[:, :5], base[:, :5]) < TOLERANCE[compute_dtype]
    (x, pos, l1, l2, ws, nw_, nb_) = args
    op = ek.spatial_perceiver(x, pos, l1, l2, ws, nw_, nb_, **kw, compute_dtype=compute_dtype,
                              backend="reference")
    assert torch.equal(op, low)


# ---------------------------------------------------------------------------------------------
# opcheck and torch.compile for every op
# ---------------------------------------------------------------------------------------------


def _op_cases():
    q, k, v, kw = rope_inputs()
    yield "rope_attention", torch.ops.edgetam.rope_attention.default, (
        q, k, v, list(kw["q_grid"]), list(kw["k_grid"]), kw["k_repeat"],
        kw["num_k_exclude_rope"], 10000.0, 0.25, None, None, "reference")
    mask = torch.rand(q.shape[0], k.shape[2]) < 0.7
    mask[0] = False  # a batch row with no valid key: zeros, finite gradients
    yield "rope_attention key_mask", torch.ops.edgetam.rope_attention.default, (
        q, k, v, list(kw["q_grid"]), list(kw["k_grid"]), kw["k_repeat"],
        kw["num_k_exclude_rope"], 10000.0, 0.25, None, mask, "reference")
    lat, x = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    p = perceiver_params(depth=1, self_attn=False)
    yield "perceiver_attention", torch.ops.edgetam.perceiver_attention.default, (
        lat, x, torch.randn(2, 9, 16), *p[:7], 1, 1e-5, "reference")
    args, pkw = perceiver_inputs()
    for compute_dtype in (None, torch.bfloat16):
        yield f"spatial_perceiver compute_dtype={compute_dtype}", \
            torch.ops.edgetam.spatial_perceiver.default, \
            (*args, pkw["depth"], 1, pkw["use_self_attn"], 1e-5, compute_dtype, "reference")


@pytest.mark.parametrize("case", list(_op_cases()), ids=lambda c: c[0])
def test_opcheck(case):
    _, op, args = case
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("case", list(_op_cases()), ids=lambda c: c[0])
def test_opcheck_with_grad(case):
    _, op, args = case
    args = tuple(
        a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else
        [t.clone().requires_grad_() for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
        else a for a in args)
    torch.library.opcheck(op, args)


def test_compile_fullgraph_all_ops():
    q, k, v, kw = rope_inputs()
    (x, pos, l1, l2, ws, nw_, nb_), pkw = perceiver_inputs()
    lat, tokens = torch.randn(2, 5, 16), torch.randn(2, 9, 16)

    def f(q, k, v, x, pos, lat, tokens):
        a = ek.rope_attention(q, k, v, **kw)
        b = ek.spatial_perceiver(x, pos, l1, l2, ws, nw_, nb_, **pkw)
        c = ek.perceiver_attention(lat, tokens, None, *ws[:7])
        return a.sum() + b.sum() + c.sum(), a, b, c

    eager = f(q, k, v, x, pos, lat, tokens)
    compiled = torch.compile(f, fullgraph=True)(q, k, v, x, pos, lat, tokens)
    for e, c in zip(eager[1:], compiled[1:]):
        assert torch.equal(e, c)


# ---------------------------------------------------------------------------------------------
# Autograd: gradients through any backend are the reference's
# ---------------------------------------------------------------------------------------------


def test_gradcheck_rope_attention():
    q, k, v, kw = rope_inputs(b=1, grid=(2, 3), frames=2, frame_len=3, k_grid=(1, 2), ptr=1,
                              d=8, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: ek.rope_attention(q, k, v, **kw), inputs)


def test_gradcheck_spatial_perceiver():
    (x, pos, l1, l2, ws, nw_, nb_), pkw = perceiver_inputs(b=1, c=8, grid=4, l1=2, l2=4, depth=1,
                                                           dtype=torch.float64)
    ws = [w[:] for w in perceiver_params(8, 8, 8, depth=1, dtype=torch.float64)]
    x.requires_grad_()
    l1.requires_grad_()
    ws[5].requires_grad_()
    f = lambda x, l1, w5: ek.spatial_perceiver(x, pos, l1, l2, ws[:5] + [w5] + ws[6:], nw_, nb_, **pkw)
    assert torch.autograd.gradcheck(f, (x, l1, ws[5]))


# ---------------------------------------------------------------------------------------------
# Backend selection
# ---------------------------------------------------------------------------------------------


def test_backends_report_every_backend_with_a_reason():
    info = ek.backends()
    assert set(info) == {"reference", "cpu", "triton", "metal"}
    assert info["reference"]["available"]
    for name, entry in info.items():
        assert entry["available"] or entry["reason"], f"{name} unavailable without a reason"


def test_unavailable_explicit_backend_raises_clearly():
    q, k, v, kw = rope_inputs()
    with pytest.raises(ek.BackendUnavailable, match="metal"):
        ek.rope_attention(q, k, v, backend="metal", **kw)
    with pytest.raises(ValueError, match="unknown backend"):
        ek.rope_attention(q, k, v, backend="cuda", **kw)


def test_env_var_forces_backend(monkeypatch):
    q, k, v, kw = rope_inputs()
    monkeypatch.setenv(ek.ENV_VAR, "metal")
    with pytest.raises(ek.BackendUnavailable, match="metal"):
        ek.rope_attention(q, k, v, **kw)
    monkeypatch.setenv(ek.ENV_VAR, "reference")
    out = ek.rope_attention(q, k, v, **kw)
    assert torch.equal(out, reference.rope_attention(q, k, v, **kw, scale=None))
    monkeypatch.setenv(ek.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ek.ENV_VAR):
        ek.rope_attention(q, k, v, **kw)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_auto_and_reference_agree_on_3d_inputs(backend):
    q, k, v, kw = rope_inputs(h=1)
    out3 = ek.rope_attention(q[:, 0], k[:, 0], v[:, 0], backend=backend, **kw)
    ref = reference.rope_attention(*to64((q, k, v)), **kw)
    assert out3.shape == (2, 24, 16)
    assert_close(out3, ref[:, 0], torch.float32, "3-D rope_attention")


def test_default_grid_rules_are_sam2_self_attention():
    """Defaults: square q grid, keys rotated on the same grid (SAM 2's self-attention)."""
    q, k, v = (torch.randn(1, 1, 16, 8) for _ in range(3))
    a = ek.rope_attention(q, k, v)
    b = ek.rope_attention(q, k, v, q_grid=(4, 4), k_grid=(4, 4), k_repeat=1)
    assert torch.equal(a, b)
