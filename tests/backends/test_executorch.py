"""ExecuTorch: a small module calling all three ops, exported to a .pte (XNNPACK lowering), keeps
them as edgetam::*.out operators and runs them on our C++ kernels, through the Python runtime,
the C++ runner natively and (slow) the cross-built aarch64 runner under qemu.

Needs the `executorch` extra (scripts/setup.sh installs it) and cmake >= 3.28; the kernel library
is built once into the cache (edgetam_kernels.executorch.build)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import reference
from edgetam_kernels.testing import assert_close, random_perceiver_weights, to64

if os.environ.get("CI"):  # CI installs the extra (scripts/setup.sh): a missing one is a failure
    import executorch.exir  # noqa: F401
pytest.importorskip("executorch.exir", reason="the executorch extra is not installed")
from edgetam_kernels import executorch as ket  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OPS = ("rope_attention", "perceiver_attention", "spatial_perceiver")


class SmallOps(torch.nn.Module):
    """Each op once at a small, odd shape (batch 2, a key frame with unrotated tokens, object
    pointers, 2 heads), between ordinary layers that XNNPACK takes."""

    def __init__(self, c=32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Linear(c, c)
        ws, lat1, lat2, (nw, nb) = random_perceiver_weights(c=c, inner=c, hidden=64, depth=1,
                                                            l1=5, l2=4)
        self.sp_w = torch.nn.ParameterList(ws)
        self.lat1, self.lat2 = torch.nn.Parameter(lat1), torch.nn.Parameter(lat2)
        self.norm_w, self.norm_b = torch.nn.Parameter(nw), torch.nn.Parameter(nb)
        pa = [1 + 0.1 * torch.randn(c, generator=g), 0.1 * torch.randn(c, generator=g)] * 2
        pa += [torch.randn(o, c, generator=g) / c**0.5 for o in (c, 2 * c)]
        pa += [torch.randn(c, c, generator=g) / c**0.5]
        self.pa_w = torch.nn.ParameterList(pa)

    def forward(self, q, k, v, latents, x, feat, key_mask):
        att = ek.rope_attention(self.proj(q), k, v, q_grid=(3, 4), k_grid=(2, 3), k_repeat=2,
                                num_k_exclude_rope=3, key_mask=key_mask)
        pa = ek.perceiver_attention(latents, x, None, *self.pa_w, heads=2)
        sp = ek.spatial_perceiver(feat, None, self.lat1, self.lat2, list(self.sp_w), self.norm_w,
                                  self.norm_b, depth=1, heads=2)
        return att.relu(), pa + latents, sp

    def reference64(self, q, k, v, latents, x, feat, key_mask):
        p = to64(self.proj.weight), to64(self.proj.bias)
        att = reference.rope_attention(torch.nn.functional.linear(to64(q), *p), *to64((k, v)),
                                       (3, 4), (2, 3), 2, 3, key_mask=key_mask)
        pa = reference.perceiver_attention(*to64((latents, x)), None, *to64(list(self.pa_w)),
                                           heads=2)
        sp = reference.spatial_perceiver(to64(feat), None, to64(self.lat1), to64(self.lat2),
                                         to64(list(self.sp_w)), to64(self.norm_w),
                                         to64(self.norm_b), depth=1, heads=2)
        return att.relu(), pa + to64(latents), sp


def _inputs(seed=1, c=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    # k: 2 frames of 7 tokens (1 unrotated + a 2x3 grid) and 3 object-pointer tokens; the key
    # mask drops a frame of batch row 0 and two pointers of row 1.
    key_mask = torch.ones(2, 17, dtype=torch.bool)
    key_mask[0, 7:14] = False
    key_mask[1, 15:] = False
    return (r(2, 2, 12, c), r(2, 2, 17, c), r(2, 2, 17, 24), r(2, 5, c), r(2, 9, c),
            r(2, c, 4, 4), key_mask)


def _export(tmp_path_factory, dtype):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = SmallOps().to(dtype).eval()
    args = _inputs(dtype=dtype)
    ep = torch.export.export(model, args)
    et = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp_path_factory.mktemp("pte") / f"small_ops_{str(dtype)[6:]}.pte"
    path.write_bytes(et.buffer)
    plan = et.executorch_program.execution_plan[0]
    ops = [f"{o.name}.{o.overload}" for o in plan.operators] + [d.id for d in plan.delegates]
    return model, args, path, ops


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return _export(tmp_path_factory, torch.float32)


def test_program_keeps_our_ops(program):
    _, _, _, ops = program
    for op in OPS:
        assert f"edgetam::{op}.out" in ops, f"{op} was decomposed or dropped: {ops}"
    assert "XnnpackBackend" in ops, f"nothing was lowered to XNNPACK: {ops}"


def test_python_runtime_matches_eager(program):
    model, args, path, _ = program
    rt = ket.runtime()
    outs = rt.load_program(path).load_method("forward").execute(list(args))
    with torch.no_grad():
        eager = model(*args)
        ref = model.reference64(*args)
    assert len(outs) == 3
    for name, o, e, r in zip(OPS, outs, eager, ref):
        assert_close(o, e, torch.float32, f"{name}: .pte vs eager")
        assert_close(o, r, torch.float32, f"{name}: .pte vs float64 reference")


def test_bf16_program(tmp_path_factory):
    """A model exported in bf16: rope_attention runs bf16, the perceivers convert to fp32."""
    model, args, path, ops = _export(tmp_path_factory, torch.bfloat16)
    assert all(f"edgetam::{op}.out" in ops for op in OPS), ops
    outs = ket.runtime().load_program(path).load_method("forward").execute(list(args))
    with torch.no_grad():
        eager = model(*args)
        ref = model.reference64(*args)
    for name, o, e, r in zip(OPS, outs, eager, ref):
        assert o.dtype == torch.bfloat16
        assert_close(o, e, torch.bfloat16, f"{name}: bf16 .pte vs eager")
        assert_close(o, r, torch.bfloat16, f"{name}: bf16 .pte vs float64 reference")


def test_load_kernels_once():
    lib = ket.load_kernels()
    assert ket.load_kernels() == lib  # a second call is a no-op, not a second registration
    with pytest.raises(RuntimeError, match="already loaded"):
        ket.load_kernels(lib.parent / "other" / ket.LIB_NAME)
    assert ket.kernels_isa() != "unknown"


def _run_runner(cmd, path, args, tmp_path, env=None):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    for i, a in enumerate(args):
        a.contiguous().reshape(-1).view(torch.uint8).numpy().tofile(in_dir / f"input_{i}.bin")
    r = subprocess.run([*cmd, str(path), str(in_dir), str(out_dir)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step 0:" in r.stdout
    return [np.fromfile(out_dir / f"output_{j}.bin", np.float32) for j in range(3)], r.stdout


def test_cpp_runner_matches_eager(program, tmp_path):
    model, args, path, _ = program
    outs, _ = _run_runner([str(ket.runner_path())], path, args, tmp_path)
    with torch.no_grad():
        eager = model(*args)
    for name, o, e in zip(OPS, outs, eager):
        assert_close(torch.from_numpy(o).view(e.shape), e, torch.float32, f"{name}: runner")


@pytest.fixture(scope="module")
def aarch64_build(tmp_path_factory):
    if shutil.which("qemu-aarch64-static") is None or shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs g++-aarch64-linux-gnu and qemu-user-static (scripts/setup.sh)")
    build = tmp_path_factory.mktemp("arm")
    subprocess.run(["bash", str(ROOT / "scripts" / "build_executorch.sh"), "aarch64", str(build)],
                   check=True, capture_output=True, timeout=1200)
    return build


# (CPU qemu emulates, ISA path forced or None for the run-time choice, the path that must run):
# every NEON path of the kernel library, on a core with and without FEAT_BF16 / FP16.
AARCH64_RUNS = [("max", None, "neon_bf16"), ("max", "neon_fp16", "neon_fp16"),
                ("max", "neon", "neon path"), ("neoverse-n1", None, "neon"),
                ("max", "scalar", "scalar")]


@pytest.mark.slow
@pytest.mark.parametrize("cpu,isa,path_line", AARCH64_RUNS)
def test_aarch64_runner_under_qemu(program, aarch64_build, tmp_path, cpu, isa, path_line):
    model, args, path, _ = program
    env = dict(os.environ, QEMU_CPU=cpu)
    env.pop("EDGETAM_KERNELS_CPU_ISA", None)
    if isa:
        env["EDGETAM_KERNELS_CPU_ISA"] = isa
    cmd = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu",
           str(aarch64_build / "edgetam_runner")]
    outs, log = _run_runner(cmd, path, args, tmp_path, env)
    assert f"edgetam kernels: {path_line}" in log, log
    with torch.no_grad():
        eager = model(*args)
    for name, o, e in zip(OPS, outs, eager):
        assert_close(torch.from_numpy(o).view(e.shape), e, torch.float32, f"{name}: aarch64")



def test_cli_refuses_what_it_cannot_use(program, tmp_path, capsys):
    from edgetam.cli import main

    assert main(["export", "--pte", str(tmp_path / "no" / "step.pte"), "--image-size", "256"]) == 2
    assert "folder of --pte does not exist" in capsys.readouterr().err
    # a program that is not a tracking step (7 inputs, not image + 8 state tensors)
    assert main(["track", "--out", str(tmp_path / "out"), "--frames", "2", "--image-size", "256",
                 "--pte", str(program[2]), "--no-progress"]) == 2
    assert "not a step of this tracker" in capsys.readouterr().err
    assert main(["track", "--out", str(tmp_path / "out2"), "--frames", "2", "--pte",
                 str(program[2]), "--device", "meta"]) == 2
    assert "--pte runs on the CPU" in capsys.readouterr().err
