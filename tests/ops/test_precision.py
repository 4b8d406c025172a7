"""The precision policy (edgetam_kernels.precision): what compute_dtype resolves to per device.

Every CPU is played on this one: EDGETAM_KERNELS_CPU_ISA forces the ISA path the policy sees,
EDGETAM_KERNELS_GEMM_PROBE forces the GEMM probe's answer, and the pure functions take a
features record (NEON with and without FP16 / BF16, CUDA compute capabilities, MPS).
"""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import edgetam_kernels as ek
import edgetam_kernels.cpu  # noqa: F401  (before any test sets EDGETAM_KERNELS_CPU_ISA: the
# backend reads it at import and would run that path for the rest of the session)
from edgetam_kernels import _machine, precision
from edgetam_kernels._machine import CpuFeatures, isa_from_flags
from edgetam_kernels.precision import decide_cpu, decide_cuda, decide_mps

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
X86_ISAS = ("scalar", "avx2", "avx512", "avx512_bf16", "avx512_amx")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _policy(monkeypatch):
    """The default mode (conftest runs the other tests' reduced paths as asked), no forced
    inputs, and a fresh once-per-process warning."""
    monkeypatch.setenv(precision.ENV_MODE, "auto")
    monkeypatch.delenv(_machine.ENV_PROBE, raising=False)
    monkeypatch.delenv(_machine.ENV_ISA, raising=False)
    monkeypatch.setattr(precision, "_warned", False)


def _probe(answer):
    def gemm_fast(dtype):
        return answer, f"forced {answer}"
    return gemm_fast


def _never(dtype):
    raise AssertionError("the GEMM probe ran where the CPU lacks the arithmetic")


# ---------------------------------------------------------------------------------------------
# CPU, through the environment (what CI on any x86 machine covers)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["fast", "slow"])
@pytest.mark.parametrize("isa", X86_ISAS)
def test_cpu_policy_under_forced_isa(monkeypatch, isa, probe):
    monkeypatch.setenv(_machine.ENV_ISA, isa)
    monkeypatch.setenv(_machine.ENV_PROBE, probe)
    bf16_fast = isa in ("avx512_bf16", "avx512_amx") and probe == "fast"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.PrecisionFallbackWarning)
        assert precision.resolve("auto") == (BF16 if bf16_fast else FP32)
        assert precision.resolve(BF16) == (BF16 if bf16_fast else FP32)
        assert precision.resolve("bf16", "cpu") == (BF16 if bf16_fast else FP32)
        # fp16: only AVX512_FP16 (an OS flag) with a fast fp16 GEMM; never chosen by "auto"
        fp16_fast = (isa.startswith("avx512") and "avx512_fp16" in _machine._os_flags()
                     and probe == "fast")
        assert precision.resolve(FP16) == (FP16 if fp16_fast else FP32)
    d = precision.decide(BF16)
    assert d.fallback == (not bf16_fast)
    assert isa in d.reason and _machine.ENV_ISA in d.reason
    if not bf16_fast:
        assert ("no bf16 arithmetic" in d.reason) or ("forced slow" in d.reason)


@pytest.mark.parametrize("isa", X86_ISAS)
def test_explicit_fp32_and_none_are_never_changed(monkeypatch, isa):
    monkeypatch.setenv(_machine.ENV_ISA, isa)
    for probe in ("fast", "slow"):
        monkeypatch.setenv(_machine.ENV_PROBE, probe)
        for req in (FP32, "fp32", "float32", "torch.float32"):
            assert precision.resolve(req) == FP32
            assert precision.resolve(req, "cuda") == FP32  # no CUDA needed to say so
            assert precision.resolve(req, "mps") == FP32
        assert precision.resolve(None) is None
    feats = CpuFeatures("aarch64", "neon_bf16")
    assert decide_cpu(FP32, feats, _never).dtype == FP32
    assert decide_cuda(FP32, (6, 1)).dtype == FP32 and decide_mps(FP32, False).dtype == FP32
    assert decide_cuda(None, (9, 0)).dtype is None


# ---------------------------------------------------------------------------------------------
# Pure functions: ARM, CUDA, MPS, flags
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("isa", ["neon", "neon_fp16", "neon_bf16"])
def test_neon_policy(isa, fast):
    feats = CpuFeatures("aarch64", isa, "test")
    probe = _probe(fast) if isa != "neon" else _never  # no arithmetic: no probe either
    bf16_ok = isa == "neon_bf16" and fast
    fp16_ok = isa in ("neon_fp16", "neon_bf16") and fast
    assert decide_cpu("auto", feats, probe).dtype == (BF16 if bf16_ok else FP32)
    assert decide_cpu(BF16, feats, probe).dtype == (BF16 if bf16_ok else FP32)
    assert decide_cpu(FP16, feats, probe).dtype == (FP16 if fp16_ok else FP32)
    assert decide_cpu("auto", feats, probe).dtype != FP16  # no kernel of ours is faster in fp16


def test_cpu_without_known_features_stays_fp32():
    feats = CpuFeatures("riscv64", None, "unknown")
    for req in ("auto", BF16, FP16):
        assert decide_cpu(req, feats, _never).dtype == FP32


def test_x86_fp16_needs_avx512_fp16():
    with_flag = CpuFeatures("x86_64", "avx512_amx", "test", frozenset({"avx512_fp16"}))
    without = CpuFeatures("x86_64", "avx512_amx", "test")
    assert decide_cpu(FP16, with_flag, _probe(True)).dtype == FP16
    assert decide_cpu(FP16, with_flag, _probe(False)).dtype == FP32
    assert decide_cpu(FP16, without, _never).dtype == FP32
    forced_lower = CpuFeatures("x86_64", "avx2", "test", frozenset({"avx512_fp16"}))
    assert decide_cpu(FP16, forced_lower, _never).dtype == FP32


def test_isa_from_os_flags():
    zen3 = "fpu sse2 avx avx2 fma f16c bmi2".split()
    skylake_x = zen3 + "avx512f avx512bw avx512dq avx512vl".split()
    zen4 = skylake_x + ["avx512_bf16"]
    sapphire = zen4 + "amx_tile amx_bf16 avx512_fp16".split()
    assert [isa_from_flags("x86_64", f) for f in ([], zen3, skylake_x, zen4, sapphire)] == \
        ["scalar", "avx2", "avx512", "avx512_bf16", "avx512_amx"]
    pi5 = "fp asimd evtstrm aes pmull crc32 atomics fphp asimdhp cpuid asimdrdm asimddp".split()
    graviton3 = pi5 + "asimdfhm sve bf16 i8mm".split()
    assert isa_from_flags("aarch64", pi5) == "neon"  # FP16 without FHM: our kernels emulate
    assert isa_from_flags("aarch64", pi5 + ["asimdfhm"]) == "neon_fp16"
    assert isa_from_flags("aarch64", graviton3) == "neon_bf16"


@pytest.mark.parametrize("cc, auto, bf16, fp16", [
    ((9, 0), BF16, BF16, FP16), ((8, 0), BF16, BF16, FP16), ((8, 6), BF16, BF16, FP16),
    ((7, 5), FP16, FP32, FP16), ((7, 0), FP16, FP32, FP16),
    ((6, 0), FP32, FP32, FP16), ((6, 1), FP32, FP32, FP32), ((5, 2), FP32, FP32, FP32),
])
def test_cuda_policy(cc, auto, bf16, fp16):
    assert decide_cuda("auto", cc).dtype == auto
    assert decide_cuda(BF16, cc).dtype == bf16
    assert decide_cuda(FP16, cc).dtype == fp16
    assert decide_cuda(BF16, cc).fallback == (bf16 == FP32)


def test_mps_policy():
    assert decide_mps("auto", True).dtype == FP32
    assert decide_mps(FP16, False).dtype == FP16
    assert decide_mps(BF16, True).dtype == BF16
    assert decide_mps(BF16, False).dtype == FP32


# ---------------------------------------------------------------------------------------------
# Requests, errors, modes, the warning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [torch.float64, torch.int32, "int8", "bf17", 16, 1.0, ""])
def test_bad_values_name_compute_dtype(bad):
    with pytest.raises(ValueError, match="compute_dtype"):
        precision.resolve(bad)
    with pytest.raises(ValueError, match="compute_dtype"):
        ek.patch(torch.nn.Linear(2, 2), compute_dtype=bad)


def test_bad_environment_values_name_the_variable(monkeypatch):
    monkeypatch.setenv(_machine.ENV_ISA, "avx512_amx")
    monkeypatch.setenv(_machine.ENV_PROBE, "maybe")
    with pytest.raises(ValueError, match=_machine.ENV_PROBE):
        precision.resolve(BF16)
    monkeypatch.setenv(_machine.ENV_PROBE, "fast")
    monkeypatch.setenv(precision.ENV_MODE, "sometimes")
    with pytest.raises(ValueError, match=precision.ENV_MODE):
        precision.resolve(BF16)


def test_string_aliases():
    assert [precision.parse(s) for s in ("fp32", "BF16", "float16", "torch.bfloat16", " auto")] \
        == [FP32, BF16, FP16, BF16, "auto"]


def test_warning_once_per_process_and_modes(monkeypatch):
    monkeypatch.setenv(_machine.ENV_ISA, "avx2")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert precision.resolve(BF16) == FP32
        assert precision.resolve(FP16) == FP32
        assert precision.resolve("bf16") == FP32
        assert precision.resolve("auto") == FP32  # auto never warns: nothing was refused
    ours = [w for w in seen if issubclass(w.category, precision.PrecisionFallbackWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "compute_dtype=bf16" in text and "avx2" in text
    assert f"{precision.ENV_MODE}=quiet" in text and "torch.float32" in text

    monkeypatch.setattr(precision, "_warned", False)
    monkeypatch.setenv(precision.ENV_MODE, "quiet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve(BF16) == FP32
    monkeypatch.setenv(precision.ENV_MODE, "force")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve(BF16) == BF16 and precision.resolve(FP16) == FP16
        assert precision.resolve("auto") == FP32  # force honours requests, it does not pick


def test_warning_once_in_a_fresh_process():
    code = (
        "import warnings, torch\n"
        "from edgetam_kernels import precision\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3):\n"
        "        assert precision.resolve(torch.bfloat16) == torch.float32\n"
        "        assert precision.resolve('fp16', 'cpu') == torch.float32\n"
        "print(sum(issubclass(w.category, precision.PrecisionFallbackWarning) for w in seen))\n")
    env = dict(os.environ, **{_machine.ENV_ISA: "scalar", precision.ENV_MODE: "auto"})
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


# ---------------------------------------------------------------------------------------------
# The probe, and "auto" on this machine
# ---------------------------------------------------------------------------------------------


def test_probe_measures_once_and_caches(monkeypatch):
    calls = []

    def ratio(dtype):
        calls.append(dtype)
        return 0.5 if dtype == BF16 else 1.3

    monkeypatch.setattr(_machine, "_PROBED", {})
    monkeypatch.setattr(_machine, "_probe_ratio", ratio)
    assert _machine.gemm_fast(BF16)[0] and _machine.gemm_fast(BF16)[0]
    assert not _machine.gemm_fast(FP16)[0]
    assert calls == [BF16, FP16]
    assert "0.50x" in _machine.gemm_fast(BF16)[1]


def test_probe_runs_and_restores_threads():
    threads = torch.get_num_threads()
    ratio = _machine._probe_ratio(BF16)
    assert 0 < ratio < float("inf")
    assert torch.get_num_threads() == threads


def test_auto_on_this_machine(capsys):
    feats = _machine.cpu_features()
    d = precision.decide("auto")
    has = precision.cpu_has_arithmetic(feats, BF16)
    expected = BF16 if has and _machine.gemm_fast(BF16)[0] else FP32
    assert precision.resolve("auto") == d.dtype == expected
    if feats.isa == "avx512_amx":  # AMX: torch's bf16 GEMM measured 0.3x fp32's time here
        assert d.dtype == BF16, d.reason
    if feats.isa in ("scalar", "avx2", "avx512", "neon"):
        assert d.dtype == FP32, d.reason
    from edgetam_kernels.__main__ import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "compute_dtype policy" in out and feats.isa_source in out
    assert f"cpu    auto -> {precision._short(expected)}: {d.reason}" in out


# ---------------------------------------------------------------------------------------------
# Entry points: ops, patch(), edgetam.load, the CLI
# ---------------------------------------------------------------------------------------------


def _rope_inputs():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 1, 36, 16, generator=g) for _ in range(3))
    return q, k, v


@pytest.mark.parametrize("probe", ["fast", "slow"])
def test_ops_take_auto(monkeypatch, probe):
    monkeypatch.setenv(_machine.ENV_ISA, "avx512_amx")
    monkeypatch.setenv(_machine.ENV_PROBE, probe)
    q, k, v = _rope_inputs()
    want = BF16 if probe == "fast" else FP32
    auto = ek.rope_attention(q, k, v, compute_dtype="auto", backend="reference")
    assert torch.equal(auto, ek.rope_attention(q, k, v, compute_dtype=want, backend="reference"))
    other = BF16 if want == FP32 else FP32
    assert not torch.equal(auto, ek.rope_attention(q, k, v, compute_dtype=other,
                                                   backend="reference"))


def test_op_auto_under_compile(monkeypatch):
    """"auto" is resolved as a constant of the graph: fullgraph compiles, same result."""
    monkeypatch.setenv(_machine.ENV_PROBE, "slow")
    q, k, v = _rope_inputs()

    def fn(q, k, v):
        return ek.rope_attention(q, k, v, compute_dtype="auto", backend="reference")

    torch._dynamo.reset()
    assert torch.equal(torch.compile(fn, fullgraph=True)(q, k, v), fn(q, k, v))


class _DtypesSeen(TorchDispatchMode):
    """Every floating dtype that reaches an op (aten's and ours), and our ops' compute_dtype."""

    def __init__(self):
        super().__init__()
        self.dtypes, self.compute = set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else [a]):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    self.dtypes.add(t.dtype)
        if func.namespace == "edgetam" and "rope_attention" in func.name():
            self.compute.append(args[9])
        return func(*args, **kwargs)


def _meta_memory_attention():
    pytest.importorskip("sam2")
    from edgetam_kernels.testing import hosts as M

    grid = 16
    inputs = M.memory_attention_inputs(grid, frames=1, ptrs=2, batch=1, seed=1)
    return M.meta_memory_attention(grid, seed=2), inputs


@pytest.mark.parametrize("probe", ["slow", "fast"])
def test_patch_bf16_under_slow_policy_runs_fp32(monkeypatch, probe):
    """patch(compute_dtype=bf16) where bf16 is slow: no bf16 tensor reaches any op (the
    Linears, the attention kernel), and the output is the fp32 patch's bit for bit. Where it is
    fast (control: the same check fails), bf16 reaches the Linears and the kernel."""
    module, inputs = _meta_memory_attention()
    monkeypatch.setenv(_machine.ENV_ISA, "avx512_amx")
    monkeypatch.setenv(_machine.ENV_PROBE, probe)
    with torch.no_grad():
        fp32 = ek.patch(module, backend="reference", compute_dtype=FP32)(**inputs)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ek.patch(module, backend="reference", compute_dtype=torch.bfloat16)
        with _DtypesSeen() as mode:
            out = module(**inputs)
    fell_back = [w for w in seen if issubclass(w.category, precision.PrecisionFallbackWarning)]
    assert mode.compute, "the attention op never ran"
    if probe == "slow":
        assert len(fell_back) == 1
        assert mode.dtypes == {FP32} and set(mode.compute) == {FP32}
        assert torch.equal(out, fp32)
    else:
        assert not fell_back
        assert BF16 in mode.dtypes and set(mode.compute) == {BF16}
        assert not torch.equal(out, fp32)
    ek.unpatch(module)


def test_edgetam_load_and_cli_dtype(monkeypatch):
    import edgetam
    from edgetam.cli import build_parser
    from edgetam.memory import RoPEAttention, SpatialPerceiver

    monkeypatch.setenv(_machine.ENV_ISA, "avx2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgetam.load(None, image_size=512, compute_dtype="bf16")
    seen = {m.compute_dtype for m in model.modules()
            if isinstance(m, (RoPEAttention, SpatialPerceiver))}
    assert seen == {FP32}
    monkeypatch.setenv(_machine.ENV_ISA, "avx512_amx")
    monkeypatch.setenv(_machine.ENV_PROBE, "fast")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        model = edgetam.load(None, image_size=512, compute_dtype="auto")
    ek.patch(model, backend="reference")  # patching without a compute_dtype keeps load's
    x = torch.randn(1, 64, 256)
    with torch.no_grad(), _DtypesSeen() as mode:
        model.memory_attention.layers[0].self_attn(x, x, x, q_grid=(8, 8))
    assert mode.compute == [BF16]
    with pytest.raises(ValueError, match="compute_dtype"):
        edgetam.load(None, image_size=512, compute_dtype="double")
    args = build_parser().parse_args(["track", "--out", "o"])
    assert args.dtype == "fp32"  # the default changes nothing on any machine
    assert build_parser().parse_args(["track", "--out", "o", "--dtype", "auto"]).dtype == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["track", "--out", "o", "--dtype", "fp64"])
