"""The C++ CPU spatial perceiver against the float64 reference, on every ISA path."""

import os

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import cpu, reference
from edgetam_kernels.testing import PERCEIVER_BF16_COMPUTE, TOLERANCE, assert_close, rel_l2, to64

NO_EXT = os.environ.get("EDGETAM_KERNELS_NO_EXT", "") not in ("", "0")
pytestmark = pytest.mark.skipif(NO_EXT, reason="EDGETAM_KERNELS_NO_EXT=1: C++ extension not built")
ISAS = cpu.available_isas() or ("scalar",)


def make(b=1, c=64, h=64, l1=256, l2=256, depth=2, inner=64, hidden=256, sa=True, heads=1,
         pos=True, inner_s=None, hidden_s=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inner_s, hidden_s = inner_s or inner, hidden_s or hidden
    ln = lambda: [1 + 0.1 * r(c), 0.1 * r(c)]  # noqa: E731
    ws = []
    for _ in range(depth):
        ws += ln() + ln() + [r(inner, c) / c**0.5, r(2 * inner, c) / c**0.5, r(c, inner) / inner**0.5]
        ws += ln() + [r(hidden, c) / c**0.5, r(c, hidden) / hidden**0.5]
        if sa:
            ws += ln() + [r(inner_s, c) / c**0.5, r(2 * inner_s, c) / c**0.5, r(c, inner_s) / inner_s**0.5]
            ws += ln() + [r(hidden_s, c) / c**0.5, r(c, hidden_s) / hidden_s**0.5]
    x = r(b, c, h, h)
    p = r(b if pos != "shared" else 1, c, h, h) if pos else None
    args = [x, p, r(l1, c) if l1 else None, r(l2, c) if l2 else None, ws, *ln()]
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    args = [cast(a) if not isinstance(a, list) else [cast(w) for w in a] for a in args]
    return args, dict(depth=depth, heads=heads, use_self_attn=sa)


CASES = {
    "odd_heads3_no_pos": dict(b=2, c=20, h=12, l1=7, l2=9, inner=24, hidden=40, pos=False, heads=3,
                              inner_s=18, hidden_s=33),
    "heads2_batch2": dict(b=2, c=36, h=8, l1=5, l2=16, inner=36, hidden=50, heads=2),
    "patch_only": dict(c=32, h=16, l1=0, l2=16, inner=32, hidden=64),
    "global_only_no_self_attn": dict(c=32, h=10, l1=9, l2=0, inner=32, hidden=48, sa=False,
                                     pos="shared", depth=3),
    "edgetam_32x32": dict(h=32),
    # several token chunks (the global attention's partial results are merged), the last one
    # short, and 70 global latents (a partial query block)
    "global_only_two_chunks": dict(b=2, c=16, h=20, l1=70, l2=0, inner=16, hidden=24),
    # 2 x 10 token window rows (not a multiple of any vector width); 21 global latents, so a
    # vector of global columns reaches into the patch columns
    "windows_2x2_on_10x10": dict(c=24, h=10, l1=21, l2=25, inner=24, hidden=40, heads=2),
    # a 13 x 13 window grid on 52 x 52: 7 token work items of two window rows each (as at
    # EdgeTAM's shape), the last one a single row
    "window_row_chunks_13x13": dict(c=16, h=52, l1=20, l2=169, inner=16, hidden=24),
}


def ref64(args, kw):
    return reference.spatial_perceiver(*to64(args), kw["depth"], kw["heads"], kw["use_self_attn"], 1e-5)


def check_written(out, ref, budget):
    """Finite, and every element within 40x the budget of the reference's largest magnitude
    (an unwritten or misplaced row fails)."""
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().amax() <= 40 * budget * ref.abs().amax()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(isa, case):
    args, kw = make(**CASES[case])
    with cpu.force_isa(isa):
        out = ek.spatial_perceiver(*args, **kw, backend="cpu")
    ref = ref64(args, kw)
    assert_close(out, ref, torch.float32, f"{case} {isa}")
    check_written(out, ref, TOLERANCE[torch.float32])


def test_edgetam_shape_best_isa():
    """EdgeTAM at 1024: 64x64 memory, 256 global + 256 patch latents, 2 layers, batch 2."""
    args, kw = make(b=2)
    out = ek.spatial_perceiver(*args, **kw, backend="cpu")
    assert_close(out, ref64(args, kw), torch.float32, "edgetam 64x64")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_inputs(dtype):
    args, kw = make(c=32, h=16, l1=16, l2=16, inner=32, hidden=64, dtype=dtype)
    out = ek.spatial_perceiver(*args, **kw, backend="cpu")
    assert out.dtype == dtype
    assert_close(out, ref64(args, kw), dtype)


def test_nan_input_no_crash():
    args, kw = make(c=32, h=8, l1=4, l2=16, inner=32, hidden=64)
    args[0][0, 3, 2, 5] = float("nan")
    out = ek.spatial_perceiver(*args, **kw, backend="cpu")
    ref = ref64(args, kw)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))


# ---------------------------------------------------------------------------------------------
# compute_dtype on fp32 inputs: the global latents' cross-attention products (q k^T, p v) only
# ---------------------------------------------------------------------------------------------

# The shapes PERCEIVER_BF16_COMPUTE was measured at (edgetam_kernels/testing.py).
COMPUTE_SHAPES = {
    "edgetam_shape": dict(),
    "grid32_64+64_batch2": dict(b=2, h=32, l1=64, l2=64),
    "grid32_64+64_heads2": dict(h=32, l1=64, l2=64, heads=2),
}
# What the cpu backend runs: bf16 on AMX where the CPU has it (else fp32); fp16 as fp32.
CPU_COMPUTE_BUDGET = {None: TOLERANCE[torch.float32], torch.float32: TOLERANCE[torch.float32],
                      torch.float16: TOLERANCE[torch.float32],
                      torch.bfloat16: PERCEIVER_BF16_COMPUTE}
_REF64 = {}


def compute_case(shape):
    args, kw = make(**COMPUTE_SHAPES[shape])
    if shape not in _REF64:
        _REF64[shape] = ref64(args, kw)
    return args, kw, _REF64[shape]


@pytest.mark.parametrize("compute_dtype", list(CPU_COMPUTE_BUDGET), ids=str)
@pytest.mark.parametrize("shape", list(COMPUTE_SHAPES))
@pytest.mark.parametrize("isa", ISAS)
def test_compute_dtype(isa, shape, compute_dtype):
    args, kw, ref = compute_case(shape)
    with cpu.force_isa(isa):
        out = ek.spatial_perceiver(*args, **kw, compute_dtype=compute_dtype, backend="cpu")
    assert out.dtype == torch.float32
    budget = CPU_COMPUTE_BUDGET[compute_dtype]
    assert_close(out, ref, torch.float32, f"{shape} {isa} compute_dtype={compute_dtype}", budget)
    check_written(out, ref, budget)


def test_bf16_compute_budget_separates_right_from_wrong(monkeypatch):
    """At EdgeTAM's shape the reference with bf16 compute sits well inside the budget, and
    plausible wrong bf16 kernels land outside it (numbers: edgetam_kernels/testing.py)."""
    args, kw, ref = compute_case("edgetam_shape")
    run = lambda a: reference.spatial_perceiver(*a, kw["depth"], kw["heads"],  # noqa: E731
                                                kw["use_self_attn"], 1e-5, torch.bfloat16)
    assert rel_l2(run(args), ref) < PERCEIVER_BF16_COMPUTE / 5
    # the whole perceiver in bf16 instead of the global cross-attention alone
    as_bf16 = lambda t: t.to(torch.bfloat16) if isinstance(t, torch.Tensor) else t  # noqa: E731
    every = [[as_bf16(w) for w in a] if isinstance(a, list) else as_bf16(a) for a in args]
    assert rel_l2(run(every), ref) > 2 * PERCEIVER_BF16_COMPUTE
    # the global latents' attention missing its last 64 of 4096 keys
    attention = reference.attention

    def short(q, k, v, scale=None, compute_dtype=None):
        if compute_dtype is not None:
            k, v = k[..., :-64, :], v[..., :-64, :]
        return attention(q, k, v, scale, compute_dtype)

    monkeypatch.setattr(reference, "attention", short)
    assert rel_l2(run(args), ref) > 2 * PERCEIVER_BF16_COMPUTE


@pytest.mark.parametrize("compute_dtype", [None, torch.bfloat16], ids=str)
def test_opcheck_and_compile(compute_dtype):
    args, kw = make(c=16, h=8, l1=4, l2=4, inner=16, hidden=32)
    x, pos, l1, l2, ws, nw, nb = args
    torch.library.opcheck(torch.ops.edgetam.spatial_perceiver.default,
                          (x, pos, l1, l2, ws, nw, nb, kw["depth"], 1, True, 1e-5, compute_dtype,
                           "cpu"))

    def f(x):
        return ek.spatial_perceiver(x * 1.5, pos, l1, l2, ws, nw, nb, **kw,
                                    compute_dtype=compute_dtype, backend="cpu") - 1

    torch._dynamo.reset()
    assert_close(torch.compile(f, fullgraph=True)(x), f(x), torch.float32)


def test_threads_do_not_change_results():
    """Work is split by columns and token chunks whatever the thread count, and latent column
    chunks prefer an owner thread: every thread count and schedule must give the same bits."""
    args, kw = make(c=32, h=16, l1=70, l2=16, inner=32, hidden=48, heads=2)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            outs.append(ek.spatial_perceiver(*args, **kw, backend="cpu"))
    finally:
        torch.set_num_threads(before)
    for o in outs[1:]:
        assert torch.equal(outs[0], o)
