"""The Metal backend on Linux: the .metal sources compiled by g++ under a shim and executed by a
C++ emulation of Metal's execution model (tests/metal_emu), against the float64 reference.

What this proves and what it cannot is in docs/metal.md. The emulator is tested first (ids,
simdgroup functions, threadgroup memory, compile_shader's binding rules, the faults it must
report), then every kernel family through the same host code the MPS backend runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgetam_kernels import reference, testing
from edgetam_kernels.metal import _launch, _source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metal_emu import bindgen, cases, emu  # noqa: E402

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", emu.CXX], capture_output=True).returncode != 0,
    reason=f"no C++ compiler ({emu.CXX}) to build the Metal emulator")


@pytest.fixture(scope="session")
def lib():
    return emu.EmuLibrary("release")


@pytest.fixture
def poison(monkeypatch):
    """Every buffer the launchers allocate starts as NaN: an unwritten element fails the test."""
    monkeypatch.setattr(_launch, "POISON", True)


def _check(out, args, fn, dtype, tol=None, what=""):
    ref = fn(*testing.to64(args))
    assert not torch.isnan(out).any(), f"{what}: NaN in the output (an element never written?)"
    return testing.assert_close(out, ref, dtype, what, tol)


# ---------------------------------------------------------------------------------------------
# The sources: what compile_shader receives compiles under the shim; bindings follow its rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metal_version,bfloat", [(310, True), (300, True), (310, False)],
                         ids=["msl3.1", "msl3.0", "msl3.1-no-bfloat"])
def test_metal_source_compiles_under_shim(metal_version, bfloat, tmp_path):
    """The exact string handed to torch.mps.compile_shader: as MSL 3.1, as MSL 3.0 (no bfloat
    type) and as the backend's fallback without bf16; without bfloat the bf16 kernels must
    vanish, not break the build."""
    src = tmp_path / "all.metal"
    src.write_text(_source.source(bfloat=bfloat))
    cmd = [emu.CXX, *emu.BASE_FLAGS, f"-D__METAL_VERSION__={metal_version}", "-fsyntax-only",
           "-x", "c++", str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    names = {k.host_name for k in bindgen.parse(bindgen.preprocess(src, metal_version))}
    for op in ("rope_attention", "layer_norm", "linear", "window_attention"):
        assert {f"{op}_float", f"{op}_half"} <= names
        assert (f"{op}_bfloat" in names) == (metal_version >= 310 and bfloat)


def test_metal_every_kernel_is_in_the_emulator(lib):
    expected = set()
    for f in emu.metal_files():
        expected |= {k.host_name for k in bindgen.parse(bindgen.preprocess(f))}
    assert set(dir(lib)) == expected
    assert len(expected) >= 12


def test_metal_bindgen_enforces_compile_shader_binding_order():
    ok = "kernel void f(device float* a [[buffer(0)]], constant long& n [[buffer(1)]], uint i [[thread_position_in_grid]]) {}"
    assert [p.name for p in bindgen.parse(ok)[0].params] == ["a", "n", "i"]
    bad = ok.replace("buffer(1)", "buffer(2)")
    with pytest.raises(bindgen.BindError, match="binds argument i to buffer"):
        bindgen.parse(bad)
    with pytest.raises(bindgen.BindError, match="no Metal attribute"):
        bindgen.parse("kernel void f(device float* a) {}")


# ---------------------------------------------------------------------------------------------
# The emulator models Metal's execution model
# ---------------------------------------------------------------------------------------------


def test_metal_emulator_thread_ids_nonuniform_grid(lib):
    out = torch.full((100, 6), -1, dtype=torch.int64)
    lib.emu_ids(out, threads=[100], group_size=[64])
    gid = torch.arange(100)
    assert torch.equal(out[:, 0], gid)
    assert torch.equal(out[:, 1], gid // 64)
    assert torch.equal(out[:, 2], gid % 64)
    assert torch.equal(out[:, 3], gid % 64 // 32)
    assert torch.equal(out[:, 4], gid % 32)
    assert torch.equal(out[:, 5], torch.where(gid < 64, 64, 36))  # the edge group is partial


def test_metal_emulator_simdgroup_functions(lib):
    x = torch.randn(48)
    out = torch.full((48, 6), float("nan"))
    lib.emu_simd(x, out, threads=[48], group_size=[48])  # one full and one 16-lane simdgroup
    for s0, n in ((0, 32), (32, 16)):
        xs, o = x[s0 : s0 + n], out[s0 : s0 + n]
        lane = torch.arange(n)
        torch.testing.assert_close(o[:, 0], xs.sum().expand(n))
        assert torch.equal(o[:, 1], xs.max().expand(n))
        assert torch.equal(o[:, 2], xs[lane ^ 1])
        torch.testing.assert_close(o[:, 3], torch.cumsum(xs, 0) - xs)
        assert torch.equal(o[:, 4], xs[3].expand(n))
        down = torch.where(lane + 2 < n, xs[(lane + 2).clamp(max=n - 1)], xs)
        assert torch.equal(o[:, 5], down)


def test_metal_emulator_threadgroup_memory_is_shared(lib):
    x = torch.randn(3 * 128)
    out = torch.full_like(x, float("nan"))
    lib.emu_tg_reverse(x, out, 1, threads=[3 * 128], group_size=[128])
    assert torch.equal(out, x.view(3, 128).flip(1).flatten())


def test_metal_emulator_binds_like_compile_shader(lib):
    out = torch.zeros(4)
    lib.emu_scalars(out, 7, 2.5, [3, 4, 5], threads=[1], group_size=[1])
    assert out.tolist() == [7.0, 2.5, 3.0, 5.0]
    with pytest.raises(emu.EmuError, match="a Python float binds as constant float&, the kernel declares constant long"):
        lib.emu_scalars(out, 7.0, 2.5, [3, 4, 5], threads=[1], group_size=[1])
    with pytest.raises(emu.EmuError, match="tensor of half bound to device float"):
        lib.emu_scalars(out.half(), 7, 2.5, [3, 4, 5], threads=[1], group_size=[1])
    with pytest.raises(emu.EmuError, match="at most 1024"):
        lib.emu_scalars(out, 7, 2.5, [3], threads=[2048], group_size=[2048])


def test_metal_emulator_reports_divergent_barrier(lib):
    with pytest.raises(emu.EmuError, match="divergent barrier"):
        lib.emu_divergent_barrier(torch.zeros(32), threads=[32], group_size=[32])


def test_metal_emulator_reports_out_of_bounds_write(lib):
    with pytest.raises(emu.EmuError, match="wrote past the end"):
        lib.emu_out_of_bounds(torch.zeros(16), 16, threads=[16], group_size=[16])


# ---------------------------------------------------------------------------------------------
# The kernels, through the launch code of the MPS backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", cases.ROPE, ids=[c[0] for c in cases.ROPE])
def test_metal_rope_attention_fp32(lib, poison, name, kw):
    args = cases.rope_case(**kw)
    out = _launch.rope_attention(lib, *args)
    _check(out, args, reference.rope_attention, torch.float32, what=name)
    # The check can fail: the same inputs with a different RoPE base land far outside the budget.
    other = reference.rope_attention(*testing.to64(args[:7]), 20000.0, *args[8:])
    assert testing.rel_l2(out, other) > 100 * testing.TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_metal_rope_attention_low_precision(lib, poison, dtype):
    args = cases.rope_case(**cases.ROPE[1][1], dtype=dtype)
    out = _launch.rope_attention(lib, *args)
    assert out.dtype == dtype
    _check(out, args, reference.rope_attention, dtype, what="edgetam_cross")


def test_metal_rope_attention_compute_dtype_rounds(lib, poison):
    """compute_dtype=bf16 on fp32 inputs: within bf16's budget, and measurably not fp32 (the
    rounding is really applied)."""
    args = cases.rope_case(**cases.ROPE[1][1], compute_dtype=torch.bfloat16)
    out = _launch.rope_attention(lib, *args)
    exact = reference.rope_attention(*testing.to64(args[:9]), None)
    err = testing.assert_close(out, exact, torch.bfloat16, "compute_dtype=bf16")
    assert err > 1e-4, f"error {err:.1e}: compute_dtype was ignored"


# key_mask: the scaled-down EdgeTAM cross-attention layout (4 frames of 16 global + 8x8 patch
# tokens, 8 pointers: whole 32-key tiles masked) against the valid-keys-only oracle.
KEY_MASK_SHAPE = dict(q_grid=(2, 5), frames=4, lead=16, k_grid=(8, 8))


@pytest.mark.parametrize("dtype,compute", [(torch.float32, None), (torch.float16, None),
                                           (torch.float32, torch.bfloat16)],
                         ids=["fp32", "fp16", "fp32_compute_bf16"])
def test_metal_rope_attention_key_mask(lib, poison, dtype, compute):
    def run(q, k, v, kw, mask):
        return _launch.rope_attention(lib, q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                                      kw["num_k_exclude_rope"], 10000.0, None, compute, mask)

    testing.check_key_mask(run, dtype, compute, **KEY_MASK_SHAPE)


def test_metal_rope_attention_key_mask_ignores_masked_contents(lib):
    q, k, v, kw = testing.masked_cross_attention_inputs(batch=2, **KEY_MASK_SHAPE)
    mask = torch.rand(2, k.shape[2], generator=torch.Generator().manual_seed(3)) < 0.5
    args = (kw["q_grid"], kw["k_grid"], kw["k_repeat"], kw["num_k_exclude_rope"], 1e4, None,
            None, mask)
    k2, v2 = k.clone(), v.clone()
    hidden = ~mask[:, None, :].expand(-1, k.shape[1], -1)
    k2[hidden], v2[hidden] = float("nan"), 1e30
    assert torch.equal(_launch.rope_attention(lib, q, k2, v2, *args),
                       _launch.rope_attention(lib, q, k, v, *args))


def test_metal_rope_attention_non_contiguous(lib, poison):
    args = cases.rope_case(**cases.ROPE[1][1], transpose=True)
    assert not args[0].is_contiguous() and not args[2].is_contiguous()
    out = _launch.rope_attention(lib, *args)
    _check(out, args, reference.rope_attention, torch.float32, what="non-contiguous")


@pytest.mark.parametrize("pos", ["shared", "batched", None])
def test_metal_perceiver_attention_fp32(lib, poison, pos):
    args = cases.perceiver_case(pos=pos)
    out = _launch.perceiver_attention(lib, *args)
    _check(out, args, reference.perceiver_attention, torch.float32, what=f"pos={pos}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_metal_perceiver_attention_low_precision(lib, poison, dtype):
    args = cases.perceiver_case(dtype=dtype)
    out = _launch.perceiver_attention(lib, *args)
    assert out.dtype == dtype
    _check(out, args, reference.perceiver_attention, dtype)


@pytest.mark.parametrize("name,kw", cases.SPATIAL, ids=[c[0] for c in cases.SPATIAL])
def test_metal_spatial_perceiver_fp32(lib, poison, name, kw):
    args = cases.spatial_case(**kw)
    out = _launch.spatial_perceiver(lib, *args)
    _check(out, args, reference.spatial_perceiver, torch.float32, what=name)


def test_metal_spatial_perceiver_fp16(lib, poison):
    kw = dict(cases.SPATIAL[0][1], depth=1)
    args = cases.spatial_case(**kw, dtype=torch.float16)
    out = _launch.spatial_perceiver(lib, *args)
    assert out.dtype == torch.float16
    _check(out, args, reference.spatial_perceiver, torch.float16)


def test_metal_spatial_perceiver_compute_dtype_keeps_the_input_dtype(lib):
    """compute_dtype permits lower precision for the global latents' cross-attention; these
    kernels have no faster path for it and compute as without it (docs/metal.md)."""
    args = cases.spatial_case(**dict(cases.SPATIAL[0][1], depth=1))
    assert torch.equal(_launch.spatial_perceiver(lib, *args, torch.bfloat16),
                       _launch.spatial_perceiver(lib, *args))


def test_metal_spatial_perceiver_does_not_touch_inputs(lib):
    args = cases.spatial_case(**cases.SPATIAL[2][1])
    before = [t.clone() for t in (args[0], args[2])]
    _launch.spatial_perceiver(lib, *args)
    assert all(torch.equal(a, b) for a, b in zip(before, (args[0], args[2])))


def test_metal_supports():
    rope = cases.rope_case(**cases.ROPE[0][1])
    assert _launch.supports("rope_attention", rope, has_bfloat=True) is None
    r64 = tuple(t.double() if isinstance(t, torch.Tensor) else t for t in rope)
    assert "float64" in _launch.supports("rope_attention", r64, has_bfloat=True)
    rbf = tuple(t.bfloat16() if isinstance(t, torch.Tensor) else t for t in rope)
    assert "bfloat16" in _launch.supports("rope_attention", rbf, has_bfloat=False)
    assert _launch.supports("rope_attention", rbf, has_bfloat=True) is None
    big = cases.rope_case(b=1, h=1, q_grid=(1, 2), d=260, frames=0, latents=0, k_grid=(1, 1), ptr=3)
    assert "head dims" in _launch.supports("rope_attention", big, has_bfloat=True)
    c64 = rope[:9] + (torch.float64,)
    assert "float64" in _launch.supports("rope_attention", c64, has_bfloat=True)


# ---------------------------------------------------------------------------------------------
# ThreadSanitizer: real threads + real synchronization, so a missing barrier is a reported race
# ---------------------------------------------------------------------------------------------


TSAN_ENV = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0")


@pytest.fixture(scope="session")
def tsan_lib():
    try:
        lib = emu.EmuLibrary("tsan", env=TSAN_ENV)
    except emu.EmuError as e:
        pytest.skip(f"no ThreadSanitizer build: {e}")
    try:  # TSan's runtime refuses some kernels' address layouts (high mmap ASLR entropy)
        lib.emu_tg_reverse(torch.zeros(32), torch.zeros(32), 1, threads=[32], group_size=[32])
    except emu.EmuError as e:
        if "FATAL: ThreadSanitizer" in str(e):
            pytest.skip("ThreadSanitizer cannot start here (try `sysctl vm.mmap_rnd_bits=28` or "
                        f"`setarch -R`): {str(e)[-300:]}")
        raise
    return lib


def test_metal_tsan_detects_a_missing_barrier(tsan_lib):
    """Positive control: without this, 'no race found' below would prove nothing."""
    x = torch.randn(64)
    with pytest.raises(emu.EmuError, match="data race"):
        tsan_lib.emu_tg_reverse(x, torch.zeros(64), 0, threads=[64], group_size=[64])
    tsan_lib.emu_tg_reverse(x, torch.zeros(64), 1, threads=[64], group_size=[64])


@pytest.mark.parametrize("family", ["rope_attention", "perceiver_attention", "spatial_perceiver"])
def test_metal_tsan_finds_no_race(tsan_lib, family):
    if family == "rope_attention":
        args = cases.rope_case(b=1, h=1, q_grid=(3, 3), d=64, frames=1, latents=2, k_grid=(5, 7),
                               ptr=3)
        out = _launch.rope_attention(tsan_lib, *args)
        fn = reference.rope_attention
    elif family == "perceiver_attention":  # layer_norm, linear and the dense attention
        args = cases.perceiver_case(b=1, n_lat=3, n=20)
        out = _launch.perceiver_attention(tsan_lib, *args)
        fn = reference.perceiver_attention
    else:  # adds window_attention
        args = cases.spatial_case(b=1, grid=(4, 4), l1=0, nw=2, depth=1, heads=1,
                                  use_self_attn=False, pos=None)
        out = _launch.spatial_perceiver(tsan_lib, *args)
        fn = reference.spatial_perceiver
    assert not tsan_lib.reports, "\n".join(tsan_lib.reports)
    _check(out, args, fn, torch.float32, what=f"{family} under TSan")


def test_metal_tsan_catches_a_barrier_removed_from_attention(tsan_lib, tmp_path):
    """Mutation test: the attention kernel with the barrier between staging a key tile and
    reading it removed must be reported; the unmodified kernel passes above."""
    mutated = tmp_path / "kernels"
    shutil.copytree(emu.KERNEL_DIR, mutated)
    src = (mutated / "attention.metal").read_text()
    staged = "k_s[j][2 * (p - c0 / 2) + 1] = y1;\n      }\n"
    barrier = "      threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    assert src.count(staged + barrier) == 1
    (mutated / "attention.metal").write_text(src.replace(staged + barrier, staged))
    lib = emu.EmuLibrary("tsan", env=TSAN_ENV, kernel_dir=mutated)
    args = cases.rope_case(b=1, h=1, q_grid=(3, 3), d=64, frames=1, latents=2, k_grid=(5, 7),
                           ptr=3)
    with pytest.raises(emu.EmuError, match="data race"):
        _launch.rope_attention(lib, *args)
