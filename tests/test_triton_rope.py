"""Triton RoPE attention vs the float64 reference (TRITON_INTERPRET=1 without a GPU, see conftest).

Small odd shapes: the interpreter runs every program in Python/numpy.
"""

import math

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import _registry, reference
from edgetam_kernels.testing import (TOLERANCE, assert_close, check_key_mask,
                                     masked_cross_attention_inputs, rel_l2, to64)

pytestmark = pytest.mark.skipif(
    _registry.why_unavailable("triton") is not None,
    reason=f"triton backend unavailable: {_registry.why_unavailable('triton')}",
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _no_autotune(monkeypatch):
    """On a GPU, tuning every small test shape would only cost compile time."""
    monkeypatch.setenv("EDGETAM_TRITON_AUTOTUNE", "0")


def _kernel():
    from edgetam_kernels.triton.rope_attention import rope_attention

    return rope_attention


def make(b, h, q_grid, k_grid, frames, front, n_ptr, d, dv=None, dtype=torch.float32):
    """q, k, v for queries on q_grid and `frames` key frames of `front` unrotated tokens plus a
    k_grid of rotated ones, then n_ptr object-pointer tokens."""
    dv = d if dv is None else dv
    n_q = q_grid[0] * q_grid[1]
    n_k = frames * (front + k_grid[0] * k_grid[1]) + n_ptr
    q = torch.randn(b, h, n_q, d, device=DEV, dtype=dtype)
    k = torch.randn(b, h, n_k, d, device=DEV, dtype=dtype)
    v = torch.randn(b, h, n_k, dv, device=DEV, dtype=dtype)
    return q, k, v, dict(q_grid=list(q_grid), k_grid=list(k_grid), k_repeat=frames,
                         num_k_exclude_rope=n_ptr)


def ref64(q, k, v, kw, scale=None, compute=False):
    return reference.rope_attention(
        *to64((q, k, v)), kw["q_grid"], kw["k_grid"], kw["k_repeat"], kw["num_k_exclude_rope"],
        10000.0, scale, torch.float64 if compute else None,
    )


def run(q, k, v, kw, **extra):
    return ek.rope_attention(q, k, v, backend="triton", **kw, **extra)


# (batch, heads, q grid, k grid, frames, unrotated front tokens per frame, pointer tokens, D, Dv)
CASES = [
    (2, 2, (5, 7), (2, 2), 3, 2, 5, 32, 32),   # EdgeTAM cross rules, odd sizes
    (1, 2, (4, 4), (2, 2), 1, 4, 0, 16, 16),   # one frame, no pointers, D 16 (padded to 32)
    (2, 1, (8, 8), (8, 8), 1, 0, 0, 64, 64),   # SAM 2 self-attention: k = q grid
    (1, 1, (4, 4), (3, 2), 2, 0, 4, 64, 40),   # SAM 2 cross rule (no front tokens), Dv != D
    (2, 2, (5, 7), (2, 3), 3, 1, 1, 48, 48),   # D 48: padded head dim, pairs masked
    (1, 1, (4, 4), (2, 2), 2, 2, 3, 20, 12),   # D 20: D/4 = 5 column pairs
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}h{}q{}x{}k{}x{}f{}p{}d{}v{}".format(
    c[0], c[1], *c[2], *c[3], c[4], c[6], c[7], c[8]))
def test_fp32_matches_reference(case):
    b, h, qg, kg, frames, front, n_ptr, d, dv = case
    q, k, v, kw = make(b, h, qg, kg, frames, front, n_ptr, d, dv)
    out = run(q, k, v, kw)
    assert out.dtype == q.dtype and out.shape == (b, h, q.shape[2], dv)
    assert_close(out, ref64(q, k, v, kw), torch.float32, "fp32")


@pytest.mark.parametrize("q_grid", [(4, 4), (8, 8)])   # 8x8: keys rotated by the pre-pass
def test_head_dim_256(q_grid):
    q, k, v, kw = make(1, 1, q_grid, (4, 4), 2, 16, 4, 256)
    assert_close(run(q, k, v, kw), ref64(q, k, v, kw), torch.float32, "D 256")


def _gpu_configs(d, esize):
    from edgetam_kernels.triton.rope_attention import candidate_configs

    seen, out = set(), []
    for c in candidate_configs(1, 4096, 3648, d, d, torch.device("cpu"), esize):
        if c.get("SDPA"):
            continue  # the rotate-then-SDPA strategy: its own tests below
        key = (c["BLOCK_M"], c["BLOCK_N"], c["PRE_ROT"], c["SPLITS"] > 1)
        if key not in seen and c["SPLITS"] <= 2:
            seen.add(key)
            out.append(c)
    return out


@pytest.mark.parametrize("cfg", _gpu_configs(64, 2) + _gpu_configs(64, 4),
                         ids=lambda c: "m{BLOCK_M}n{BLOCK_N}s{SPLITS}p{PRE_ROT:d}".format(**c))
def test_gpu_tile_configs(cfg):
    """The tiles the GPU tuner tries, run here on small shapes (masking of big tiles)."""
    q, k, v, kw = make(1, 2, (8, 9), (2, 2), 3, 2, 5, 64)
    out = _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                    kw["num_k_exclude_rope"], 10000.0, None, None, config=cfg)
    assert_close(out, ref64(q, k, v, kw), torch.float32, str(cfg))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    q, k, v, kw = make(2, 2, (5, 7), (2, 2), 3, 2, 5, 32, dtype=dtype)
    out = run(q, k, v, kw)
    assert out.dtype == dtype
    err = assert_close(out, ref64(q, k, v, kw), dtype, str(dtype))
    # and about what the reference itself achieves in that dtype (a truncating instead of
    # rounding cast, as the interpreter does for bf16 by default, lands at ~3x)
    own = rel_l2(reference.rope_attention(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                                          kw["num_k_exclude_rope"]), ref64(q, k, v, kw))
    assert err < 1.5 * own + 1e-4


@pytest.mark.parametrize("cdt", [torch.float16, torch.bfloat16, torch.float32])
def test_compute_dtype(cdt):
    q, k, v, kw = make(1, 2, (4, 4), (2, 2), 2, 2, 2, 32)
    out = run(q, k, v, kw, compute_dtype=cdt)
    assert out.dtype == torch.float32
    assert_close(out, ref64(q, k, v, kw), cdt, f"compute {cdt}")


def test_fp16_inputs_fp32_compute():
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 2, 2, 2, 32, dtype=torch.float16)
    out = run(q, k, v, kw, compute_dtype=torch.float32)
    assert out.dtype == torch.float16
    assert_close(out, ref64(q, k, v, kw), torch.float16)


@pytest.mark.parametrize("cfg", [
    dict(BLOCK_M=16, BLOCK_N=16, SPLITS=1),
    dict(BLOCK_M=32, BLOCK_N=16, SPLITS=3),
    dict(BLOCK_M=16, BLOCK_N=32, SPLITS=4),   # 4 asked, fewer non-empty splits exist
    dict(BLOCK_M=64, BLOCK_N=64, SPLITS=1),   # one key block: single pass
    dict(BLOCK_M=16, BLOCK_N=16, SPLITS=1, PRE_ROT=True),   # keys rotated by the pre-pass
    dict(BLOCK_M=16, BLOCK_N=32, SPLITS=2, PRE_ROT=True),
])
def test_tiles_and_key_splits(cfg):
    q, k, v, kw = make(2, 1, (5, 7), (2, 2), 3, 2, 5, 32)   # 23 keys, 35 queries
    cfg = dict(cfg, num_warps=4, num_stages=1)
    out = _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                    kw["num_k_exclude_rope"], 10000.0, None, None, config=cfg)
    assert_close(out, ref64(q, k, v, kw), torch.float32, str(cfg))


def test_every_output_element_written(monkeypatch):
    """Poison a preallocated output; every element must be overwritten with the right value.
    Also poison every buffer the launcher allocates (split partials)."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty",
                        lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    q, k, v, kw = make(2, 2, (5, 7), (2, 2), 3, 2, 5, 32)
    for splits, pre_rot in ((1, False), (2, False), (2, True)):
        out = torch.full((2, 2, 35, 32), float("nan"), device=DEV)
        _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"], kw["num_k_exclude_rope"],
                  10000.0, None, None, out=out,
                  config=dict(BLOCK_M=16, BLOCK_N=16, SPLITS=splits, PRE_ROT=pre_rot,
                              num_warps=4, num_stages=1))
        assert not torch.isnan(out).any()
        ref = ref64(q, k, v, kw)
        assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# key_mask: the scaled-down EdgeTAM cross-attention layout against the valid-keys-only oracle,
# on the single-pass, split (masked splits get weight 0), pre-rotated and SDPA strategies
# ---------------------------------------------------------------------------------------------

MASK_CONFIGS = {
    "splits2": dict(BLOCK_M=16, BLOCK_N=16, SPLITS=2, num_warps=4, num_stages=1),
    "single_pass": dict(BLOCK_M=32, BLOCK_N=32, SPLITS=1, num_warps=4, num_stages=1),
    "pre_rot_splits3": dict(BLOCK_M=16, BLOCK_N=16, SPLITS=3, PRE_ROT=True, num_warps=4,
                            num_stages=1),
    "sdpa": dict(SDPA=True),
}


@pytest.mark.parametrize("name", MASK_CONFIGS)
def test_key_mask(name):
    def run(q, k, v, kw, mask):
        return _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                         kw["num_k_exclude_rope"], 10000.0, None, None, mask,
                         config=MASK_CONFIGS[name])

    check_key_mask(run, device=DEV)


@pytest.mark.parametrize("dtype,cdt", [(torch.bfloat16, None), (torch.float32, torch.float16)])
def test_key_mask_low_precision_through_the_op(dtype, cdt):
    check_key_mask(lambda q, k, v, kw, m: run(q, k, v, kw, key_mask=m, compute_dtype=cdt),
                   dtype, cdt, device=DEV)


def test_key_mask_ignores_masked_contents():
    q, k, v, kw = masked_cross_attention_inputs(batch=2, device=DEV)
    mask = torch.rand(2, k.shape[2], generator=torch.Generator().manual_seed(3)) < 0.5
    mask = mask.to(DEV)
    k2, v2 = k.clone(), v.clone()
    hidden = ~mask[:, None, :].expand(-1, k.shape[1], -1)
    k2[hidden], v2[hidden] = float("nan"), 1e30
    for cfg in ("splits2", "pre_rot_splits3"):
        a = _kernel()(q, k2, v2, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                      kw["num_k_exclude_rope"], 1e4, None, None, mask,
                      config=MASK_CONFIGS[cfg])
        b = _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                      kw["num_k_exclude_rope"], 1e4, None, None, mask,
                      config=MASK_CONFIGS[cfg])
        assert torch.equal(a, b), cfg


def test_key_mask_opcheck():
    q, k, v, kw = masked_cross_attention_inputs(batch=2, heads=1, device=DEV)
    mask = (torch.rand(2, k.shape[2]) < 0.5).to(DEV)
    mask[0] = False
    torch.library.opcheck(torch.ops.edgetam.rope_attention.default,
                          (q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                           kw["num_k_exclude_rope"], 1e4, 0.2, None, mask, "triton"),
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# The rotate-then-SDPA strategy (config SDPA=True): q and k rotated by the pre-pass, torch SDPA
# ---------------------------------------------------------------------------------------------

SDPA = dict(SDPA=True)


@pytest.mark.parametrize("case", [c for c in CASES if c[7] == c[8] and c[7] % 8 == 0],
                         ids=lambda c: "q{}x{}k{}x{}f{}p{}d{}".format(*c[2], *c[3], *c[4:8]))
def test_sdpa_strategy_matches_reference(case):
    b, h, qg, kg, frames, front, ptr, d, dv = case
    q, k, v, kw = make(b, h, qg, kg, frames, front, ptr, d, dv)
    out = _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                    kw["num_k_exclude_rope"], 10000.0, None, None, config=SDPA)
    assert_close(out, ref64(q, k, v, kw), torch.float32, str(case))
    # a strategy that forgot to rotate q (or k) would be far outside the budget
    plain = torch.nn.functional.scaled_dot_product_attention(*to64((q, k, v)))
    assert rel_l2(out, plain) > 100 * TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype,cdt", [(torch.bfloat16, None), (torch.float16, None),
                                       (torch.float32, torch.bfloat16),
                                       (torch.bfloat16, torch.float32)])
def test_sdpa_strategy_dtypes_scale_and_strides(dtype, cdt):
    q, k, v, kw = make(2, 2, (5, 7), (2, 2), 3, 2, 5, 32, dtype=dtype)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, H, D) storage
    out = torch.full(q.shape, float("nan"), device=DEV, dtype=dtype)
    _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"], kw["num_k_exclude_rope"],
              100.0, 0.3, cdt, config=SDPA, out=out)
    ref = reference.rope_attention(*to64((q, k, v)), kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                                   kw["num_k_exclude_rope"], 100.0, 0.3, None)
    assert out.dtype == dtype and not torch.isnan(out).any()
    worst = dtype if cdt is None or torch.finfo(cdt).bits >= torch.finfo(dtype).bits else cdt
    assert_close(out, ref, worst, f"{dtype} compute {cdt}")


def test_sdpa_strategy_candidates():
    """A tuning candidate for 16-bit compute and head dims SDPA's fused kernels take; the
    heuristic default only where flash applies (Dv == D)."""
    from edgetam_kernels.triton.rope_attention import candidate_configs, sdpa_candidate

    assert sdpa_candidate(256, 256, 2) and sdpa_candidate(64, 64, 2)
    assert sdpa_candidate(256, 256, 2, default=True)
    assert not sdpa_candidate(256, 256, 4)      # fp32 compute: the fused kernel
    assert not sdpa_candidate(20, 20, 2)        # head dim SDPA's fused kernels cannot take
    assert not sdpa_candidate(64, 20, 2)
    assert sdpa_candidate(256, 64, 2)           # patch's folded cross-attention: tuned ...
    assert not sdpa_candidate(256, 64, 2, default=True)  # ... never the untuned default
    cands = candidate_configs(1, 4096, 3648, 256, 256, torch.device("cpu"), 2)
    assert cands[0] == SDPA and all("BLOCK_M" in c for c in cands[1:])
    assert SDPA not in candidate_configs(1, 4096, 3648, 256, 256, torch.device("cpu"), 4)
    assert candidate_configs(1, 4096, 3648, 256, 64, torch.device("cpu"), 2)[0] == SDPA


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sdpa_strategy_narrow_values(dtype):
    """Dv < D (values of patch's folded cross-attention)."""
    q, k, v, kw = make(1, 1, (5, 7), (2, 2), 3, 2, 5, 32, dv=16, dtype=dtype)
    out = _kernel()(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                    kw["num_k_exclude_rope"], config=SDPA)
    assert out.shape == (1, 1, 35, 16) and out.dtype == dtype
    assert_close(out, ref64(q, k, v, kw), dtype)


def test_scale_and_theta():
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 2, 2, 2, 32)
    out = run(q, k, v, kw, scale=0.37, theta=100.0)
    ref = reference.rope_attention(*to64((q, k, v)), kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                                   kw["num_k_exclude_rope"], 100.0, 0.37, None)
    assert_close(out, ref, torch.float32)


def test_all_keys_unrotated():
    """Only object-pointer tokens: k_repeat 0, no key is rotated."""
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 0, 0, 7, 32)
    assert_close(run(q, k, v, kw), ref64(q, k, v, kw), torch.float32)


def test_non_contiguous_and_3d():
    b, n_q, n_k, d = 2, 20, 27, 32
    # (B, N, H, D) storage viewed as (B, H, N, D); v with a strided head dim
    q = torch.randn(b, n_q, 2, d, device=DEV).transpose(1, 2)
    k = torch.randn(b, n_k, 2, d, device=DEV).transpose(1, 2)
    v = torch.randn(b, 2, n_k, 2 * d, device=DEV)[..., ::2]
    kw = dict(q_grid=[4, 5], k_grid=[2, 2], k_repeat=3, num_k_exclude_rope=3)
    assert not q.is_contiguous() and not v.is_contiguous()
    assert_close(run(q, k, v, kw), ref64(q, k, v, kw), torch.float32, "strided")
    out3 = ek.rope_attention(q[:, 0], k[:, 0], v[:, 0], backend="triton", **kw)
    assert_close(out3, ref64(q, k, v, kw)[:, 0], torch.float32, "3-D")


def test_nan_propagates():
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 2, 2, 2, 32)
    q[0, 0, 3, 5] = float("nan")
    out = run(q, k, v, kw)
    ref = ref64(q, k, v, kw)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[0, 0, 3]).all() and not torch.isnan(out[0, 0, 4]).any()
    v[0, 0, 1, 0] = float("nan")
    assert torch.isnan(run(q, k, v, kw)[..., 0]).all()


def test_wrong_rule_would_fail():
    """The tolerance separates right from wrong: a kernel that rotated the pointer tokens, or
    the frames' front tokens, would be far outside it."""
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 2, 2, 3, 32)
    out = run(q, k, v, kw)
    wrong = reference.rope_attention(*to64((q, k, v)), kw["q_grid"], kw["k_grid"], 2, 1)
    assert rel_l2(out, wrong) > 100 * TOLERANCE[torch.float32]


def test_float64_is_refused():
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 1, 0, 0, 16, dtype=torch.float64)
    with pytest.raises(ek.BackendUnavailable, match="float64"):
        run(q, k, v, kw)


def test_backend_listed():
    info = ek.backends()["triton"]
    assert info["available"] and "rope_attention" in info["ops"]


def test_fp32_precision_setting(monkeypatch):
    from edgetam_kernels.triton import _common

    monkeypatch.setenv(_common.FP32_PRECISION_ENV, "tf32")
    assert _common.fp32_precision() == "tf32"
    _common.set_fp32_precision("ieee")
    try:
        assert _common.fp32_precision() == "ieee"
        with pytest.raises(ValueError):
            _common.set_fp32_precision("fast")
    finally:
        _common.set_fp32_precision(None)
    monkeypatch.setenv(_common.FP32_PRECISION_ENV, "bogus")
    with pytest.raises(ValueError, match="EDGETAM_TRITON_FP32_PRECISION"):
        _common.fp32_precision()


def test_opcheck():
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 2, 2, 2, 16)
    args = (q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"], kw["num_k_exclude_rope"],
            10000.0, 0.25, None, None, "triton")
    torch.library.opcheck(torch.ops.edgetam.rope_attention.default, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_compile_fullgraph():
    q, k, v, kw = make(1, 1, (4, 4), (2, 2), 2, 2, 2, 16)

    def f(q, k, v):
        return ek.rope_attention(q * 1.0, k, v, backend="triton", **kw) + 1.0

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    assert_close(out - 1.0, ref64(q, k, v, kw), torch.float32, "compiled")
    assert math.isfinite(out.sum().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_capture():
    q, k, v, kw = make(1, 1, (8, 8), (2, 2), 3, 2, 5, 64, dtype=torch.bfloat16)
    eager = run(q, k, v, kw)  # compiles outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static = run(q, k, v, kw)
    q.copy_(torch.randn_like(q))
    g.replay()
    torch.cuda.synchronize()
    assert not torch.equal(static, eager)
    assert_close(static, ref64(q, k, v, kw), torch.bfloat16, "graph replay")
