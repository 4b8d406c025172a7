"""Triton perceiver kernels vs the float64 reference (TRITON_INTERPRET=1 without a GPU)."""

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import _registry, reference
from edgetam_kernels.testing import TOLERANCE, assert_close, rel_l2, to64
from edgetam_kernels.testing.cases import (
    SPATIAL_PERCEIVER_CASES, TRITON_SPATIAL_PERCEIVER, PerceiverAttentionCase, SpatialPerceiverCase,
    perceiver_attention_inputs, perceiver_weights, spatial_perceiver_inputs,
)

pytestmark = pytest.mark.skipif(
    _registry.why_unavailable("triton") is not None,
    reason=f"triton backend unavailable: {_registry.why_unavailable('triton')}",
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _no_autotune(monkeypatch):
    """On a GPU, tuning every small test shape would only cost compile time."""
    monkeypatch.setenv("EDGETAM_TRITON_AUTOTUNE", "0")


def layer_weights(c, inner, hidden, self_attn, dtype, inner_s=None):
    return perceiver_weights(c, inner, hidden, 1, self_attn, inner_s, dtype=dtype, device=DEV,
                             seed=None)


def perceiver_inputs(b=2, c=16, grid=8, l1=8, l2=4, depth=2, self_attn=True, with_pos=True,
                     dtype=torch.float32, hidden=None, inner=None):
    return case_inputs(SpatialPerceiverCase(b, c, (grid, grid), l1, l2, depth, 1, self_attn,
                                            "batch" if with_pos else None, inner, hidden), dtype)


def case_inputs(case, dtype=torch.float32):
    """Arguments and the kwargs other than heads (the tests pass their own)."""
    args, kw = spatial_perceiver_inputs(case, dtype, DEV, seed=None)
    return args, dict(depth=kw["depth"], use_self_attn=kw["use_self_attn"])


def sp_ref(args, kw, heads=1):
    return reference.spatial_perceiver(*to64(args), kw["depth"], heads, kw["use_self_attn"])


def sp_run(args, kw, heads=1):
    return ek.spatial_perceiver(*args, heads=heads, backend="triton", **kw)


# ---------------------------------------------------------------------------------------------
# perceiver_attention
# ---------------------------------------------------------------------------------------------


def pa_inputs(b=2, l=20, n=37, c=16, inner=32, pos_batch=1, dtype=torch.float32):
    pos = {0: None, 1: "shared"}.get(pos_batch, "batch")
    args, _ = perceiver_attention_inputs(PerceiverAttentionCase(b, l, n, c, 1, inner, pos), dtype,
                                         DEV, seed=None)
    return tuple(args)


@pytest.mark.parametrize("heads,pos_batch", [(1, 1), (2, 2), (1, 0), (4, 1)])
def test_perceiver_attention_fp32(heads, pos_batch):
    args = pa_inputs(pos_batch=pos_batch)
    out = ek.perceiver_attention(*args, heads=heads, backend="triton")
    assert out.shape == args[0].shape and out.dtype == torch.float32
    assert_close(out, reference.perceiver_attention(*to64(args), heads=heads), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_perceiver_attention_half(dtype):
    args = pa_inputs(dtype=dtype)
    out = ek.perceiver_attention(*args, backend="triton")
    ref = reference.perceiver_attention(*to64(args))
    err = assert_close(out, ref, dtype)
    own = rel_l2(reference.perceiver_attention(*args), ref)
    assert err < 1.5 * own + 1e-4


def test_perceiver_attention_non_contiguous():
    lat, x, pos, *ws = pa_inputs(n=30, c=16)
    x = x.transpose(1, 2).contiguous().transpose(1, 2)      # (B, N, C) with channel stride N
    lat = torch.randn(2, 16, 20, device=DEV).transpose(1, 2)  # (B, L, C) strided
    w_kv = ws[5].t().contiguous().t()                         # a transposed weight
    args = (lat, x, pos, *ws[:5], w_kv, ws[6])
    out = ek.perceiver_attention(*args, backend="triton")
    assert_close(out, reference.perceiver_attention(*to64(args)), torch.float32)


# ---------------------------------------------------------------------------------------------
# spatial_perceiver
# ---------------------------------------------------------------------------------------------

SP_CASES = {name: SPATIAL_PERCEIVER_CASES[name] for name in TRITON_SPATIAL_PERCEIVER}


@pytest.mark.parametrize("case", list(SP_CASES))
def test_spatial_perceiver_fp32(case):
    c = SP_CASES[case]
    args, kw = case_inputs(c)
    out = sp_run(args, kw)
    assert out.shape == (c.batch, c.global_latents + c.patch_latents, c.dim)
    assert out.dtype == torch.float32
    assert_close(out, sp_ref(args, kw), torch.float32, str(case))


@pytest.mark.parametrize("splits", [1, 3, 8])
def test_global_key_splits(monkeypatch, splits):
    """The global latents' keys split over 1, 3 or (capped at the key blocks) more programs."""
    from edgetam_kernels.triton import perceiver

    tiles = dict(perceiver._tiles(torch.device(DEV)), SPLITS_G=splits, BLOCK_N=16)
    monkeypatch.setattr(perceiver, "_tiles", lambda device: tiles)
    args, kw = perceiver_inputs(c=16, grid=8, l1=20, l2=4)
    assert_close(sp_run(args, kw, heads=2), sp_ref(args, kw, heads=2), torch.float32)
    pa = pa_inputs(n=37)
    assert_close(ek.perceiver_attention(*pa, backend="triton"),
                 reference.perceiver_attention(*to64(pa)), torch.float32)


def test_gpu_tiles(monkeypatch):
    """The GPU tile sizes (64-token blocks) on a small memory, in the interpreter."""
    from edgetam_kernels.triton import perceiver

    tiles = dict(BLOCK_L=16, BLOCK_N=64, BLOCK_T=64, num_warps=4, SPLITS_G=None)
    monkeypatch.setattr(perceiver, "_tiles", lambda device: tiles)
    args, kw = perceiver_inputs(c=32, grid=12, l1=20, l2=16)
    assert_close(sp_run(args, kw), sp_ref(args, kw), torch.float32)


def test_pos_needs_inner_equal_channels():
    args, kw = perceiver_inputs(c=16, grid=8, l1=8, l2=4, inner=32)
    with pytest.raises(ek.BackendUnavailable, match="pos"):
        sp_run(args, kw)


def test_spatial_perceiver_two_heads():
    args, kw = perceiver_inputs(c=32, grid=8, l1=8, l2=4)
    assert_close(sp_run(args, kw, heads=2), sp_ref(args, kw, heads=2), torch.float32)


def test_spatial_perceiver_edgetam_widths():
    """EdgeTAM's channel widths (64, hidden 256) on a 16x16 memory with 4x4 windows."""
    args, kw = perceiver_inputs(b=1, c=64, grid=16, l1=16, l2=16)
    assert_close(sp_run(args, kw), sp_ref(args, kw), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_spatial_perceiver_half(dtype):
    args, kw = perceiver_inputs(c=32, grid=8, l1=16, l2=16, dtype=dtype)
    out = sp_run(args, kw)
    assert out.dtype == dtype
    ref = sp_ref(args, kw)
    err = assert_close(out, ref, dtype)
    own = rel_l2(reference.spatial_perceiver(*args, 2, 1, True), ref)
    assert err < 1.5 * own + 1e-4


def test_spatial_perceiver_strided_memory():
    """x and pos in channels-last storage and pos broadcast over the batch."""
    args, kw = perceiver_inputs(c=16, grid=8, l1=8, l2=4)
    x = args[0].to(memory_format=torch.channels_last)
    pos = args[1][:1].to(memory_format=torch.channels_last)
    args = (x, pos, *args[2:])
    assert_close(sp_run(args, kw), sp_ref(args, kw), torch.float32)


def test_every_buffer_poisoned(monkeypatch):
    """All buffers the launchers allocate start as NaN: any element not written (or read
    before it is written) would show up in the output."""
    args, kw = perceiver_inputs(c=16, grid=12, l1=20, l2=16)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like",
                        lambda t, **k: real_empty(t.shape, dtype=t.dtype, device=t.device)
                        .fill_(float("nan")))
    out = sp_run(args, kw)
    assert not torch.isnan(out).any()
    assert_close(out, sp_ref(args, kw), torch.float32)
    pa = pa_inputs()
    assert_close(ek.perceiver_attention(*pa, backend="triton"),
                 reference.perceiver_attention(*to64(pa)), torch.float32)


def test_nan_propagates():
    """A NaN memory token poisons every global latent and only the patch latent whose window
    holds it."""
    args, kw = perceiver_inputs(b=1, c=16, grid=8, l1=8, l2=4, depth=1)
    args[0][0, 3, 1, 6] = float("nan")   # window (0, 1) of the 2x2 window grid
    out = sp_run(args, kw)
    ref = sp_ref(args, kw)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[0, :8]).all()
    assert torch.isnan(out[0, 9]).all()
    assert not torch.isnan(out[0, [8, 10, 11]]).any()


def test_wrong_window_would_fail():
    """The tolerance separates right from wrong: column-major windows are far outside it."""
    args, kw = perceiver_inputs(b=1, c=16, grid=8, l1=0, l2=4, with_pos=False)
    out = sp_run(args, kw)
    wrong = sp_ref((args[0].transpose(2, 3), *args[1:]), kw)
    assert rel_l2(out, wrong) > 100 * TOLERANCE[torch.float32]


def test_compute_dtype_keeps_the_input_dtype():
    """compute_dtype permits lower precision for the global latents' cross-attention; these
    kernels take every product's operands in the input dtype whatever it says (docs/triton.md)."""
    args, kw = perceiver_inputs(b=1, c=16, grid=8, l1=8, l2=4, depth=1)
    out = ek.spatial_perceiver(*args, **kw, compute_dtype=torch.bfloat16, backend="triton")
    assert torch.equal(out, sp_run(args, kw))


def test_refusals():
    args, kw = perceiver_inputs(c=16, grid=8, l1=8, l2=4, dtype=torch.float64)
    with pytest.raises(ek.BackendUnavailable, match="float64"):
        sp_run(args, kw)


def test_opcheck_and_compile():
    args, kw = perceiver_inputs(b=1, c=16, grid=8, l1=8, l2=4, depth=1)
    x, pos, l1, l2, ws, nw, nb = args
    torch.library.opcheck(
        torch.ops.edgetam.spatial_perceiver.default,
        (x, pos, l1, l2, ws, nw, nb, 1, 1, True, 1e-5, torch.bfloat16, "triton"),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    pa = pa_inputs(b=1, l=16, n=24)
    torch.library.opcheck(torch.ops.edgetam.perceiver_attention.default,
                          (*pa, 1, 1e-5, "triton"),
                          test_utils=("test_schema", "test_faketensor"))

    def f(x, pos):
        return ek.spatial_perceiver(x * 1.0, pos, l1, l2, ws, nw, nb, depth=1,
                                    backend="triton") + 1.0

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, pos)
    assert_close(out - 1.0, sp_ref(args, kw), torch.float32, "compiled")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_capture():
    args, kw = perceiver_inputs(c=32, grid=8, l1=16, l2=16, dtype=torch.bfloat16)
    eager = sp_run(args, kw)  # compiles outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static = sp_run(args, kw)
    args[0].copy_(torch.randn_like(args[0]))
    g.replay()
    torch.cuda.synchronize()
    assert not torch.equal(static, eager)
    assert_close(static, sp_ref(args, kw), torch.bfloat16, "graph replay")
