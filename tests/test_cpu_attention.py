"""The C++ CPU backend's RoPE attention against the float64 reference, on every ISA path.

Tests that need the extension fail (not skip) when it is missing, unless the build was skipped
on purpose (EDGETAM_KERNELS_NO_EXT=1).
"""

import os
import subprocess
import sys

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import _registry, cpu, reference
from edgetam_kernels.testing import (TOLERANCE, assert_close, check_key_mask,
                                     masked_cross_attention_inputs, rel_l2, to64)

NO_EXT = os.environ.get("EDGETAM_KERNELS_NO_EXT", "") not in ("", "0")
needs_ext = pytest.mark.skipif(NO_EXT, reason="EDGETAM_KERNELS_NO_EXT=1: C++ extension not built")


def test_extension_available():
    info = ek.backends()["cpu"]
    if NO_EXT:
        assert not info["available"] and "not built" in info["reason"]
        return
    assert info["available"], f"C++ CPU extension missing: {info['reason']}"
    assert "rope_attention" in info["ops"]
    assert cpu.isa() in cpu.available_isas() and "scalar" in cpu.available_isas()


ISAS = cpu.available_isas() or ("scalar",)


def make(b, h, q_grid, d, frames, k_grid, lead, n_ptr, dv=None, dtype=torch.float32, seed=0):
    """q on q_grid; keys: `frames` frames of `lead` unrotated + k_grid rotated, then n_ptr."""
    g = torch.Generator().manual_seed(seed)
    n_q = q_grid[0] * q_grid[1]
    n_k = frames * (lead + k_grid[0] * k_grid[1]) + n_ptr
    q = torch.randn(b, h, n_q, d, generator=g).to(dtype)
    k = torch.randn(b, h, n_k, d, generator=g).to(dtype)
    v = torch.randn(b, h, n_k, dv or d, generator=g).to(dtype)
    return q, k, v, list(q_grid), list(k_grid), frames, n_ptr


# (batch, heads, q grid, head dim, frames, k grid, unrotated tokens per frame, object pointers, dv)
CASES = {
    "sam2_self_8x8": (1, 1, (8, 8), 64, 1, (8, 8), 0, 0, None),
    "odd_5x7_heads_batch": (2, 3, (5, 7), 36, 3, (2, 3), 4, 16, 20),
    "edgetam_cross_small": (1, 1, (8, 8), 256, 7, (4, 4), 16, 16, None),
    "one_frame_no_ptr": (2, 1, (4, 6), 64, 1, (3, 3), 5, 0, None),
    "all_pointers": (1, 2, (3, 3), 16, 0, (1, 1), 0, 13, 8),
    "keys_not_tile_multiple": (1, 1, (8, 8), 128, 5, (4, 5), 3, 7, None),  # 122 keys
    "self_32x32": (1, 1, (32, 32), 64, 1, (32, 32), 0, 0, None),
    # several query blocks (keys and fp32 values prepared once per head), dv 23: a short last
    # channel panel on every path, a short last query strip, 43 keys
    "blocks_odd_dv": (1, 2, (12, 20), 32, 2, (4, 4), 3, 5, 23),
}
DTYPES = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp32_compute_bf16": (torch.float32, torch.bfloat16),
    "fp16": (torch.float16, None),
}


def run(args, compute_dtype=None, backend="cpu"):
    q, k, v, qg, kg, rep, n_ptr = args
    return ek.rope_attention(q, k, v, q_grid=qg, k_grid=kg, k_repeat=rep, num_k_exclude_rope=n_ptr,
                             compute_dtype=compute_dtype, backend=backend)


def reference64(args, compute_dtype=None):
    q, k, v, qg, kg, rep, n_ptr = to64(args)
    return reference.rope_attention(q, k, v, qg, kg, rep, n_ptr, 10000.0, q.shape[-1] ** -0.5)


def check_all_written(out, ref, tol):
    """Every element finite and near the reference: a kernel that skips writes fails here."""
    assert torch.isfinite(out).all(), "non-finite output"
    worst = (out.double() - ref).abs().amax().item()
    assert worst <= 40 * tol * ref.abs().amax().item(), f"max abs error {worst:.3e}"


# Every ISA x dtype x shape, except the reduced-precision 32x32 self-attention on the scalar
# path: the other paths cover that shape and scalar covers the others (keeps the run short).
MATRIX = [(isa, dt, case) for isa in ISAS for dt in DTYPES for case in CASES
          if not (isa == "scalar" and dt != "fp32" and case == "self_32x32")]


@needs_ext
@pytest.mark.parametrize("isa,dt,case", MATRIX)
def test_matches_reference(isa, dt, case):
    dtype, compute = DTYPES[dt]
    b, h, qg, d, frames, kg, lead, n_ptr, dv = CASES[case]
    args = make(b, h, qg, d, frames, kg, lead, n_ptr, dv, dtype)
    ref = reference64(args)
    with cpu.force_isa(isa):
        out = run(args, compute)
    assert out.dtype == dtype and out.shape == ref.shape
    tol = TOLERANCE[compute or dtype]
    assert_close(out, ref, compute or dtype, f"{case} {isa} {dt}")
    check_all_written(out, ref, tol)


@needs_ext
@pytest.mark.parametrize("grid", [48, 64])
@pytest.mark.parametrize("dt", ["fp32", "fp32_compute_bf16"])
def test_edgetam_grids_best_isa(grid, dt):
    """Full EdgeTAM query grids (48x48: 768 input, 64x64: 1024) against 7 frames + 64 pointers."""
    dtype, compute = DTYPES[dt]
    args = make(1, 1, (grid, grid), 256 if grid == 48 else 64, 7, (16, 16), 256, 64, None, dtype)
    ref = reference64(args)
    out = run(args, compute)
    assert_close(out, ref, compute or dtype, f"{grid}x{grid} {dt}")
    check_all_written(out, ref, TOLERANCE[compute or dtype])


@needs_ext
def test_rope_rules_matter():
    """A kernel that skipped a RoPE rule would be far outside the budget: the test can fail."""
    args = make(1, 1, (8, 8), 64, 3, (4, 4), 8, 5)
    out = run(args)
    q, k, v, qg, kg, rep, n_ptr = to64(args)
    wrong = reference.rope_attention(q, k, v, qg, [2, 8], rep, n_ptr, 1e4, 0.125)  # 16 keys, other grid
    assert rel_l2(out, wrong) > 100 * TOLERANCE[torch.float32]
    assert_close(out, reference64(args), torch.float32)


@needs_ext
def test_noncontiguous_inputs():
    q, k, v, qg, kg, rep, n_ptr = make(2, 2, (4, 4), 32, 2, (2, 2), 3, 4)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not qt.is_contiguous()
    out = run((qt, k, v[..., ::1], qg, kg, rep, n_ptr))
    assert_close(out, reference64((q, k, v, qg, kg, rep, n_ptr)), torch.float32)


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
def test_nan_propagates(isa):
    q, k, v, qg, kg, rep, n_ptr = make(1, 1, (4, 4), 32, 1, (4, 4), 0, 3)
    q[0, 0, 5, 7] = float("nan")
    with cpu.force_isa(isa):
        out = run((q, k, v, qg, kg, rep, n_ptr))
    bad = torch.isnan(out).any(-1)[0, 0]
    assert bad[5] and not bad[torch.arange(16) != 5].any()
    k[0, 0, 2, 0] = float("nan")
    with cpu.force_isa(isa):
        out = run((q, k, v, qg, kg, rep, n_ptr))
    assert torch.isnan(out).all()


@needs_ext
def test_threads_do_not_change_results():
    args = make(1, 2, (16, 16), 64, 2, (8, 8), 0, 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(args)
        torch.set_num_threads(2)
        two = run(args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_ext
def test_unsupported_inputs():
    args = make(1, 1, (4, 4), 32, 1, (4, 4), 0, 0, dtype=torch.float64)
    with pytest.raises(_registry.BackendUnavailable, match="float64"):
        run(args)
    out = run(args, backend="auto")  # falls back to the reference
    assert_close(out, reference64(args), torch.float64)


@needs_ext
def test_opcheck():
    q, k, v, qg, kg, rep, n_ptr = make(1, 2, (4, 5), 32, 2, (2, 2), 3, 4)
    torch.library.opcheck(torch.ops.edgetam.rope_attention.default,
                          (q, k, v, qg, kg, rep, n_ptr, 1e4, 32 ** -0.5, None, None, "cpu"))
    torch.library.opcheck(torch.ops.edgetam_cpu.rope_attention,
                          (q, k, v, 4, 5, 2, 2, rep, n_ptr, 1e4, 32 ** -0.5, 0),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@needs_ext
def test_torch_compile():
    args = make(1, 1, (4, 4), 32, 2, (2, 2), 3, 4)
    q, k, v, qg, kg, rep, n_ptr = args

    def f(q, k, v):
        return ek.rope_attention(q * 2, k, v, q_grid=qg, k_grid=kg, k_repeat=rep,
                                 num_k_exclude_rope=n_ptr, backend="cpu") + 1

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True)(q, k, v)
    assert_close(out, f(q, k, v), torch.float32)


@needs_ext
def test_isa_env_var():
    code = "from edgetam_kernels import cpu, backends; print(cpu.isa(), backends()['cpu']['available'])"
    env = dict(os.environ, EDGETAM_KERNELS_CPU_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["scalar", "True"], out.stderr
    env["EDGETAM_KERNELS_CPU_ISA"] = "no_such_isa"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[-1] == "False", out.stderr


# key_mask: one key tile (4x6 queries, 68 keys) and several query blocks sharing pre-rotated keys
# with whole 96-key tiles masked (12x12 queries, 4 frames of 16 + 8x8 tokens, 8 pointers).
MASK_SHAPES = {"one_tile": {}, "blocks_and_tiles": dict(q_grid=(12, 12), frames=4, lead=16,
                                                         k_grid=(8, 8))}


def run_masked(q, k, v, kw, key_mask, compute_dtype=None, scale=None):
    return ek.rope_attention(q, k, v, **kw, key_mask=key_mask, compute_dtype=compute_dtype,
                             scale=scale, backend="cpu")


@needs_ext
@pytest.mark.parametrize("shape", MASK_SHAPES)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_key_mask(isa, dt, shape):
    dtype, compute = DTYPES[dt]
    with cpu.force_isa(isa):
        check_key_mask(lambda q, k, v, kw, m: run_masked(q, k, v, kw, m, compute), dtype,
                       compute, **MASK_SHAPES[shape])


@needs_ext
@pytest.mark.parametrize("scale", [-0.3, 0.0])
@pytest.mark.parametrize("dt", ["fp32", "fp32_compute_bf16"])
def test_key_mask_scale_not_positive(dt, scale):
    """Masked scores are -inf before scaling: scale < 0 and scale 0 are rewritten (dispatch)."""
    dtype, compute = DTYPES[dt]
    q, k, v, kw = masked_cross_attention_inputs(dtype=dtype, q_grid=(12, 12))
    mask = torch.rand(q.shape[0], k.shape[2], generator=torch.Generator().manual_seed(1)) < 0.5
    mask[1] = False
    q0 = q.clone()
    out = run_masked(q, k, v, kw, mask, compute, scale)
    assert torch.equal(q, q0)  # the negated copy is the kernel's own
    ref = reference.rope_attention(*to64((q, k, v)), kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                                   kw["num_k_exclude_rope"], 10000.0, scale, None, mask)
    assert_close(out, ref, compute or dtype, f"scale {scale}")


@needs_ext
def test_key_mask_ignores_masked_keys_contents():
    """Masked keys holding NaN or huge values change nothing (values must be finite: api.h)."""
    q, k, v, kw = masked_cross_attention_inputs(q_grid=(12, 12))
    mask = torch.rand(q.shape[0], k.shape[2], generator=torch.Generator().manual_seed(2)) < 0.5
    clean = run_masked(q, k, v, kw, mask)
    k2, v2 = k.clone(), v.clone()
    hidden = ~mask[:, None, :].expand(-1, k.shape[1], -1)
    k2[hidden] = float("nan")
    v2[hidden] = 1e30
    for isa in ISAS:
        with cpu.force_isa(isa):
            assert torch.equal(run_masked(q, k2, v2, kw, mask), run_masked(q, k, v, kw, mask))
    assert_close(clean, run_masked(q, k, v, kw, mask), torch.float32)


@needs_ext
def test_key_mask_opcheck():
    q, k, v, kw = masked_cross_attention_inputs(batch=2, heads=1)
    mask = torch.rand(2, k.shape[2]) < 0.5
    mask[0] = False
    torch.library.opcheck(torch.ops.edgetam.rope_attention.default,
                          (q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                           kw["num_k_exclude_rope"], 1e4, 0.2, None, mask, "cpu"))
    torch.library.opcheck(torch.ops.edgetam_cpu.rope_attention,
                          (q, k, v, 4, 6, 4, 4, kw["k_repeat"], kw["num_k_exclude_rope"], 1e4,
                           0.2, 0, mask),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
