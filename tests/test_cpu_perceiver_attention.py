"""The C++ CPU perceiver_attention (one perceiver cross-attention block) against the float64
reference, on every ISA path."""

import os

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import _registry, cpu, reference
from edgetam_kernels.testing import TOLERANCE, assert_close, rel_l2, to64

NO_EXT = os.environ.get("EDGETAM_KERNELS_NO_EXT", "") not in ("", "0")
pytestmark = pytest.mark.skipif(NO_EXT, reason="EDGETAM_KERNELS_NO_EXT=1: C++ extension not built")
ISAS = cpu.available_isas() or ("scalar",)
FP32 = TOLERANCE[torch.float32]


def make(b=1, l=256, n=4096, c=64, heads=1, inner=None, pos="batch", dtype=torch.float32,
         seed=0):
    """latents, x, pos, the four LayerNorm vectors, w_q, w_kv, w_out; pos is "batch" (B, N,
    inner), "shared" (1, N, inner) or None."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inner = inner or c
    ln = lambda: [1 + 0.1 * r(c), 0.1 * r(c)]  # noqa: E731
    p = {"batch": lambda: r(b, n, inner), "shared": lambda: r(1, n, inner), None: lambda: None}
    args = [r(b, l, c), r(b, n, c), p[pos](), *ln(), *ln(), r(inner, c) / c**0.5,
            r(2 * inner, c) / c**0.5, r(c, inner) / inner**0.5]
    return [None if t is None else t.to(dtype) for t in args], heads


def run(args, heads, backend="cpu"):
    return ek.perceiver_attention(*args, heads=heads, backend=backend)


def ref64(args, heads):
    return reference.perceiver_attention(*to64(args), heads=heads)


def check_written(out, ref, budget):
    """Finite, and every element within 40x the budget of the reference's largest magnitude
    (an unwritten or misplaced row fails)."""
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().amax() <= 40 * budget * ref.abs().amax()


CASES = {
    # EdgeTAM's global latents over a 64 x 64 memory frame: 8 key chunks of 512
    "edgetam_shape": dict(),
    "one_latent_one_token": dict(l=1, n=1, pos="shared"),
    # 33 keys: one short chunk, one short key tile; 3 heads of 16
    "l7_n33_c48_heads3_batch3": dict(b=3, l=7, n=33, c=48, heads=3),
    # 1003 keys: 8 chunks of 128 (96 + 32 keys), the last 107 (96 + 11); 300 latents: five
    # latent column chunks and query blocks, the last 44 wide
    "l300_n1003_c96_heads2": dict(l=300, n=1003, c=96, heads=2, pos=None),
    # inner dim 48 != C 32 (pos has inner channels), shared pos
    "inner48_c32_heads2_batch2": dict(b=2, l=20, n=200, c=32, inner=48, heads=2, pos="shared"),
    # EdgeTAM's latent self-attention shape (the adapters call the op with x = latents)
    "self_attention_256": dict(l=256, n=256, pos=None),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(isa, case):
    args, heads = make(**CASES[case])
    with cpu.force_isa(isa):
        out = run(args, heads)
    ref = ref64(args, heads)
    assert out.dtype == torch.float32 and out.shape == args[0].shape
    assert_close(out, ref, torch.float32, f"{case} {isa}")
    check_written(out, ref, FP32)


def test_self_attention_with_latents_as_keys():
    """As the adapters call it: the latents are their own keys and values, one LayerNorm."""
    args, heads = make(b=2, l=64, n=64, c=32, heads=2, pos=None)
    args[1] = args[0]
    args[5:7] = args[3:5]
    assert_close(run(args, heads), ref64(args, heads), torch.float32, "self-attention")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reduced_precision_inputs(isa, dtype):
    args, heads = make(b=2, l=40, n=300, c=32, heads=2, dtype=dtype)
    with cpu.force_isa(isa):
        out = run(args, heads)
    assert out.dtype == dtype
    ref = ref64(args, heads)
    err = assert_close(out, ref, dtype, f"{dtype} {isa}")
    # computed in fp32 from the (same) rounded inputs: little more than the output's rounding
    assert err <= 1.5 * rel_l2(ref.to(dtype), ref), f"{dtype} {isa}: {err:.2e}"


@pytest.mark.parametrize("case", ["self_attention_256", "l300_n1003_c96_heads2"])
def test_threads_do_not_change_results(case):
    """Key chunks depend on the shape alone, and with few of them queries are split between
    items instead; neither may change a bit. Also the query split with one key chunk."""
    cases = [CASES[case], dict(l=300, n=64, c=32, heads=2)]
    before = torch.get_num_threads()
    try:
        for kw in cases:
            args, heads = make(**kw)
            outs = []
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                outs.append(run(args, heads))
            assert all(torch.equal(outs[0], o) for o in outs[1:])
            assert_close(outs[0], ref64(args, heads), torch.float32, str(kw))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("isa", ISAS)
def test_nan_propagates_like_reference(isa):
    args, heads = make(b=3, l=9, n=70, c=32, heads=2)
    args[1][1, 40, 5] = float("nan")  # a token of batch element 1: all of its outputs
    args[0][2, 4, 0] = float("nan")   # a latent of batch element 2: its own row only
    with cpu.force_isa(isa):
        out = run(args, heads)
    ref = ref64(args, heads)
    assert torch.isnan(ref[1]).all() and torch.isnan(ref[2, 4]).all() and torch.isfinite(ref[0]).all()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    finite = torch.isfinite(ref)
    assert rel_l2(out[finite], ref[finite]) <= FP32


def test_noncontiguous_inputs():
    args, heads = make(b=2, l=12, n=50, c=32, heads=2, pos="shared")
    lat, x, pos, *rest = args
    views = [lat.transpose(0, 1).contiguous().transpose(0, 1),   # same values, other strides
             x.transpose(1, 2).contiguous().transpose(1, 2),
             pos.expand(2, -1, -1)]                                # batch stride 0
    views += [t.t().contiguous().t() if t.dim() == 2 else t for t in rest]
    assert not any(v.is_contiguous() for v in views[:3] + views[7:])
    ref = ref64([lat, x, pos.expand(2, -1, -1).contiguous(), *rest], heads)
    assert_close(run(views, heads), ref, torch.float32, "non-contiguous")


def test_raw_op_rejects_what_the_wrapper_would_convert():
    """The raw op takes contiguous fp32 only and says which argument is wrong."""
    args, heads = make(b=1, l=4, n=8, c=16)
    raw = torch.ops.edgetam_cpu.perceiver_attention
    bad_x = args[1].transpose(1, 2).contiguous().transpose(1, 2)
    with pytest.raises(RuntimeError, match="x must be a contiguous float32"):
        raw(args[0], bad_x, *args[2:], heads, 1e-5)
    with pytest.raises(RuntimeError, match="w_kv must be a contiguous float32"):
        raw(*args[:8], args[8].double(), args[9], heads, 1e-5)
    with pytest.raises(RuntimeError, match="pos must be"):
        raw(args[0], args[1], args[2][:, :4], *args[3:], heads, 1e-5)
    with pytest.raises(RuntimeError, match="heads must divide"):
        raw(*args, 3, 1e-5)


def test_resolve_picks_the_cpu_kernel():
    args, heads = make(b=1, l=4, n=8, c=16)
    full = (*args, heads, 1e-5)
    for backend in ("cpu", "auto"):
        assert _registry.resolve("perceiver_attention", backend, "cpu", full) is cpu.perceiver_attention
    assert cpu.supports("perceiver_attention", full) is None
    assert "perceiver_attention" in ek.backends()["cpu"]["ops"]


def test_float64_declined():
    args, heads = make(b=1, l=4, n=8, c=16, dtype=torch.float64)
    assert "float64" in cpu.supports("perceiver_attention", (*args, heads, 1e-5))
    with pytest.raises(_registry.BackendUnavailable, match="float64"):
        run(args, heads)
    assert_close(run(args, heads, backend="auto"), ref64(args, heads), torch.float64)


def test_budget_catches_wrong_kernels():
    """The budget separates this kernel from plausible wrong ones at the tested shapes: pos
    missing from v (or k), the last key skipped, LN_x's bias dropped."""
    for kw in (CASES["edgetam_shape"], CASES["l7_n33_c48_heads3_batch3"]):
        args, heads = make(**kw)
        a64 = to64(args)
        ref = ref64(args, heads)
        lat, x, pos, lw, lb, xw, xb, wq, wkv, wout = a64
        c, inner = x.shape[-1], wq.shape[0]
        xn = torch.nn.functional.layer_norm(x, (c,), xw, xb, 1e-5)
        q = torch.nn.functional.linear(torch.nn.functional.layer_norm(lat, (c,), lw, lb, 1e-5), wq)
        k, v = torch.nn.functional.linear(xn, wkv).chunk(2, dim=-1)

        def attend(k, v):
            h = lambda t: t.unflatten(-1, (heads, inner // heads)).transpose(1, 2)  # noqa: E731
            o = torch.nn.functional.scaled_dot_product_attention(h(q), h(k), h(v))
            return torch.nn.functional.linear(o.transpose(1, 2).flatten(-2), wout)

        assert rel_l2(attend(k + pos, v + pos), ref) < 1e-12  # the spelled-out spec is right
        wrong = {"no pos in v": attend(k + pos, v), "no pos in k": attend(k, v + pos),
                 "last key skipped": attend((k + pos)[:, :-1], (v + pos)[:, :-1]),
                 "LN_x bias dropped": reference.perceiver_attention(
                     *a64[:6], torch.zeros_like(xb), *a64[7:], heads=heads)}
        for what, w in wrong.items():
            assert rel_l2(w, ref) > 10 * FP32, f"{what} would pass at {kw}"


def test_opcheck_and_compile():
    args, heads = make(b=2, l=5, n=9, c=16, heads=2)
    torch.library.opcheck(torch.ops.edgetam.perceiver_attention.default, (*args, heads, 1e-5, "cpu"))
    torch.library.opcheck(torch.ops.edgetam_cpu.perceiver_attention, (*args, heads, 1e-5),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))

    def f(x):
        return ek.perceiver_attention(args[0], x * 1.5, *args[2:], heads=heads, backend="cpu") - 1

    torch._dynamo.reset()
    assert_close(torch.compile(f, fullgraph=True)(args[1]), f(args[1]), torch.float32)
