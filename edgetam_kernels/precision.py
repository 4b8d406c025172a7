"""The precision policy: which compute dtype runs where. The one place that decides.

Requests (`compute_dtype` of `patch()`, `edgetam.load()`, the CLI's `--dtype`; the ops take
"auto" too):

- None: the inputs' dtype (nothing changes; the default everywhere).
- torch.float32 / "fp32": fp32, always, on every device.
- "auto": the fastest dtype within the ops' documented accuracy budget (bf16 / fp16 compute:
  about 1e-2 relative L2) on this device:
  CPU: bf16 where the CPU has bf16 arithmetic (x86 AVX512_BF16 or AMX, ARM FEAT_BF16) and
  torch's bf16 GEMM is faster than its fp32 GEMM here (a one-time probe), else fp32. Never
  fp16: no kernel of ours computes fp16 faster than fp32 on a CPU (NEON's FMLAL does as many
  products per instruction as an fp32 FMA; x86 kernels emulate fp16).
  CUDA: bf16 from sm80 (Ampere) on, fp16 on sm70-sm7x (tensor cores), else fp32.
  MPS: fp32 (no measurement shows a faster reduced-precision path on Apple GPUs yet).
- torch.bfloat16 / "bf16", torch.float16 / "fp16": that dtype where this device runs it fast
  (CPU: the arithmetic exists and torch's GEMM in it beats fp32; CUDA: bf16 from sm80, fp16
  from sm70 and on sm53/sm60/sm62; MPS: fp16 always, bf16 where the MPS device has it). Else
  fp32 for every product the adapters route (attention, the Linears they fuse), with one
  warning per process saying why. EDGETAM_KERNELS_REDUCED_PRECISION: "auto" (default), "quiet"
  (the same, no warning), "force" (honour reduced dtypes as asked, however slow: what the
  accuracy tests of the bf16 / fp16 paths use).

Inputs of the decision (`_machine.py`): the C++ backend's ISA path (EDGETAM_KERNELS_CPU_ISA
forces one), the OS's CPU flags, torch's CPU capability, the GEMM probe
(EDGETAM_KERNELS_GEMM_PROBE=fast|slow forces its answer). `decide_cpu`, `decide_cuda` and
`decide_mps` are pure functions of those, for tests and for reading.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch

from . import _machine
from ._machine import CpuFeatures

ENV_MODE = "EDGETAM_KERNELS_REDUCED_PRECISION"
MODES = ("auto", "quiet", "force")
REDUCED = (torch.bfloat16, torch.float16)
_ALIASES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
            "half": torch.float16}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

Request = Union[None, str, torch.dtype]


class PrecisionFallbackWarning(UserWarning):
    """A reduced compute dtype was asked for where this hardware cannot run it fast."""


@dataclass(frozen=True)
class Decision:
    requested: Union[None, str, torch.dtype]  # parsed: None, "auto" or a dtype
    dtype: Optional[torch.dtype]  # what runs; None: the inputs' dtype
    reason: str

    @property
    def fallback(self) -> bool:
        """An explicit reduced dtype replaced by fp32."""
        return self.requested in REDUCED and self.dtype == torch.float32


def parse(value: Request) -> Union[None, str, torch.dtype]:
    """None, "auto" or a float dtype; strings "fp32" / "bf16" / "fp16" (and torch's names)."""
    if value is None or (isinstance(value, torch.dtype) and value in _FLOATS):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("torch.", "")
        if key == "auto":
            return "auto"
        if key in _ALIASES:
            return _ALIASES[key]
    raise ValueError(
        f"compute_dtype must be None, 'auto', torch.float32 / 'fp32', torch.bfloat16 / 'bf16' or "
        f"torch.float16 / 'fp16', got {value!r}")


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# ---------------------------------------------------------------------------------------------
# Pure decisions
# ---------------------------------------------------------------------------------------------

BF16_ISAS = ("avx512_bf16", "avx512_amx", "neon_bf16")
FP16_ISAS = ("neon_fp16", "neon_bf16")
_AVX512_ISAS = ("avx512", "avx512_bf16", "avx512_amx")
_NEEDS = {torch.bfloat16: "AVX512_BF16 or AMX on x86, FEAT_BF16 (with FP16 + FHM) on ARM",
          torch.float16: "AVX512_FP16 on x86, FEAT_FP16 + FEAT_FHM on ARM"}


def cpu_has_arithmetic(features: CpuFeatures, dtype: torch.dtype) -> bool:
    """Whether the CPU computes in `dtype` natively (a forced lower ISA hides what it lacks)."""
    if dtype == torch.bfloat16:
        return features.isa in BF16_ISAS
    return features.isa in FP16_ISAS or (features.isa in _AVX512_ISAS
                                         and "avx512_fp16" in features.flags)


GemmProbe = Callable[[torch.dtype], Tuple[bool, str]]


def _cpu_fast(features: CpuFeatures, dtype: torch.dtype, gemm_fast: GemmProbe) -> Tuple[bool, str]:
    name = _short(dtype)
    if features.isa is None:
        return False, f"the CPU's features are unknown ({features.isa_source})"
    where = f"ISA path {features.isa}, {features.isa_source}"
    if not cpu_has_arithmetic(features, dtype):
        return False, (f"this CPU has no {name} arithmetic ({where}; {name} needs "
                       f"{_NEEDS[dtype]}): {name} products would be emulated, slower than fp32")
    fast, how = gemm_fast(dtype)
    if not fast:
        return False, f"{name} arithmetic present ({where}), but {how}"
    return True, f"{name} arithmetic ({where}); {how}"


def decide_cpu(request: Request, features: CpuFeatures, gemm_fast: GemmProbe) -> Decision:
    """The CPU policy, from `features` and `gemm_fast(dtype) -> (fast, how)` (called only when
    the arithmetic exists)."""
    req = parse(request)
    if req is None or req == torch.float32:
        return _as_asked(req)
    if req == "auto":
        ok, why = _cpu_fast(features, torch.bfloat16, gemm_fast)
        if ok:
            return Decision(req, torch.bfloat16, why)
        return Decision(req, torch.float32,
                        f"bf16 is not fast here ({why}); fp16 is never chosen automatically on a "
                        f"CPU: no kernel of ours computes fp16 faster than fp32")
    ok, why = _cpu_fast(features, req, gemm_fast)
    return Decision(req, req if ok else torch.float32, why)


# Pre-Volta GPUs with double-rate fp16 arithmetic (Jetson TX1 / Nano, P100, Jetson TX2).
_FAST_FP16_PRE_VOLTA = ((5, 3), (6, 0), (6, 2))


def decide_cuda(request: Request, capability: Tuple[int, int]) -> Decision:
    """The CUDA policy from the device's compute capability."""
    req = parse(request)
    if req is None or req == torch.float32:
        return _as_asked(req)
    sm = f"sm{capability[0]}{capability[1]}"
    bf16 = tuple(capability) >= (8, 0)
    fp16 = tuple(capability) >= (7, 0) or tuple(capability) in _FAST_FP16_PRE_VOLTA
    if req == "auto":
        if bf16:
            return Decision(req, torch.bfloat16, f"{sm}: bf16 tensor cores (sm80 and later)")
        if tuple(capability) >= (7, 0):
            return Decision(req, torch.float16, f"{sm}: fp16 tensor cores, no bf16 (before sm80)")
        return Decision(req, torch.float32, f"{sm}: no tensor cores (before sm70)")
    if req == torch.bfloat16:
        if bf16:
            return Decision(req, req, f"{sm}: bf16 tensor cores")
        hint = "; fp16 is fast here" if fp16 else ""
        return Decision(req, torch.float32, f"{sm}: no bf16 arithmetic before sm80{hint}")
    if fp16:
        return Decision(req, req, f"{sm}: fast fp16 arithmetic")
    return Decision(req, torch.float32, f"{sm}: fp16 runs at a fraction of fp32's rate here")


def decide_mps(request: Request, bf16_supported: bool) -> Decision:
    """The Apple GPU policy: reduced dtypes as asked where the device has them; "auto" fp32."""
    req = parse(request)
    if req is None or req == torch.float32:
        return _as_asked(req)
    if req == "auto":
        return Decision(req, torch.float32, "mps: no measurement shows fp16 / bf16 faster yet")
    if req == torch.bfloat16 and not bf16_supported:
        return Decision(req, torch.float32, "mps: this device / macOS has no bf16 (macOS 14+)")
    return Decision(req, req, f"mps: {_short(req)} on the GPU")


def _as_asked(req) -> Decision:
    if req is None:
        return Decision(None, None, "None: the inputs' dtype")
    return Decision(req, req, "fp32 as asked")


# ---------------------------------------------------------------------------------------------
# This machine
# ---------------------------------------------------------------------------------------------


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def mode() -> str:
    value = os.environ.get(ENV_MODE, "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV_MODE} must be one of {MODES}, got {value!r}")
    return value


def decide(compute_dtype: Request, device=None) -> Decision:
    """The policy's decision for `compute_dtype` on `device` (default: CPU), with its reason."""
    req = parse(compute_dtype)
    if req is None or req == torch.float32:
        return _as_asked(req)  # never changed, on any device
    dev = _device(device)
    if req in REDUCED and mode() == "force":
        return Decision(req, req, f"as asked ({ENV_MODE}=force)")
    if dev.type == "cpu":
        return decide_cpu(req, _machine.cpu_features(), _machine.gemm_fast)
    if dev.type == "cuda":
        return decide_cuda(req, torch.cuda.get_device_capability(dev))
    if dev.type == "mps":
        return decide_mps(req, _machine.mps_bf16_supported())
    if req == "auto":
        return Decision(req, torch.float32, f"{dev.type}: no rule for this device; fp32")
    return Decision(req, req, f"{dev.type}: no rule for this device; as asked")


_warned = False


def resolve(compute_dtype: Request, device=None) -> Optional[torch.dtype]:
    """The dtype to compute in for the request on `device` (None: the inputs' dtype). An
    explicit reduced dtype this hardware cannot run fast becomes torch.float32, with one
    PrecisionFallbackWarning per process (unless EDGETAM_KERNELS_REDUCED_PRECISION=quiet)."""
    global _warned
    d = decide(compute_dtype, device)
    if d.fallback and not _warned and mode() == "auto":
        _warned = True
        name = _short(d.requested)
        warnings.warn(
            f"compute_dtype={name} asked for, but {_device(device).type} cannot run it fast here: "
            f"{d.reason}. Running attention and the Linears in fp32 instead (faster here). To "
            f"silence this: pass compute_dtype='auto' or torch.float32, or set {ENV_MODE}=quiet "
            f"({ENV_MODE}=force runs {name} anyway). Said once per process.",
            PrecisionFallbackWarning, stacklevel=3)
    return d.dtype


@torch.compiler.assume_constant_result  # torch.compile: a constant of the graph, not traced
def _auto_for(device: str) -> Optional[torch.dtype]:
    return resolve("auto", device)


def for_op(compute_dtype, like) -> Request:
    """An op's compute_dtype with "auto" resolved for the device of tensor `like`; anything else
    unchanged (the op's own checks judge it)."""
    if isinstance(compute_dtype, str) and compute_dtype.strip().lower() == "auto":
        return _auto_for(str(like.device) if isinstance(like, torch.Tensor) else "cpu")
    return compute_dtype


def device_of(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: its first parameter's (or buffer's) device, else the CPU."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def describe() -> List[str]:
    """Lines for `python -m edgetam_kernels info`: the policy per available device, and why."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    lines = [f"compute_dtype policy ({ENV_MODE}={mode()}):"]
    f = _machine.cpu_features()
    lines.append(f"  cpu: {f.arch}, ISA path {f.isa} ({f.isa_source}), torch capability "
                 f"{f.torch_capability}" + (f", flags {sorted(f.flags)}" if f.flags else ""))
    for dev in devices:
        for req in ("auto", "bf16", "fp16"):
            d = decide(req, dev)
            to = "inputs' dtype" if d.dtype is None else _short(d.dtype)
            lines.append(f"  {dev:<6} {req:<4} -> {to}: {d.reason}")
    return lines
