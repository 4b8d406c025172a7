"""Host (Python) time per call of the perceiver's paths, with the kernels stubbed out.

On a GPU an eager call costs whatever the host spends issuing it whenever that exceeds the
kernels' time: EdgeTAM's perceiver on an H200 ran 0.628 ms eagerly against 0.103 ms in a CUDA
graph (bench/results/triton_h200.md). This measures that host time on any machine, no GPU:
the C++ kernel is replaced by a constant-time stub and the Triton launches by no-ops (CPU tensors
under TRITON_INTERPRET=1), so what is left is our own Python (argument checks, backend choice,
torch's custom-op dispatch, the Triton launcher's bookkeeping, the patched modules' weight
gathering). Not included: Triton's own launch path and CUDA allocations, which need a GPU.

    python bench/host_overhead.py [--rounds 15] [--calls 200]
    python bench/host_overhead.py --frame [...]   # per tracked frame instead: bench/host_frame.py
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys

os.environ["TRITON_INTERPRET"] = "1"  # the triton backend accepts CPU tensors (launches stubbed)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch  # noqa: E402

import edgetam_kernels as ek  # noqa: E402
from edgetam_kernels.harness import race  # noqa: E402
from edgetam_kernels.testing import hosts as M  # noqa: E402


class _NoLaunch:
    """Stands in for a @triton.jit kernel: kernel[grid](...) does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main(argv=None):
    if "--frame" in (sys.argv[1:] if argv is None else argv):  # per tracked frame, no stubs
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import host_frame

        return host_frame.main(argv)

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from edgetam_kernels import cpu
    from edgetam_kernels.patch import perceiver_weights
    from edgetam_kernels.triton import perceiver as tp

    x, pos = M.perceiver_inputs(64, 1, seed=1)
    meta = M.meta_perceiver(seed=1).eval()
    hf = M.hf_perceiver_like(meta).eval()
    out = torch.empty(1, 512, 64)
    stub = lambda *args: out.clone()  # noqa: E731 - a fresh output, as a kernel returns
    cpu.BACKEND.kernels["spatial_perceiver"] = stub
    for name in ("_ln_kv", "_cross", "_cross_merge", "_self"):
        setattr(tp, name, _NoLaunch())
    ws = [w.detach() for w in perceiver_weights(meta)]
    args = (x, pos, meta.latents.detach(), meta.latents_2d.detach(), ws,
            meta.norm.weight.detach(), meta.norm.bias.detach())
    patched_meta = ek.patch(copy.deepcopy(meta), backend="cpu")
    patched_hf = ek.patch(copy.deepcopy(hf), backend="cpu")
    rows = {
        "stub alone (a clone of the 512 x 64 output)": stub,
        "spatial_perceiver op, cpu backend": lambda: ek.spatial_perceiver(*args, depth=2,
                                                                          backend="cpu"),
        "Triton launcher alone (6 launches stubbed)": lambda: tp.spatial_perceiver(
            *args, 2, 1, True, 1e-5),
        "spatial_perceiver op, triton backend": lambda: ek.spatial_perceiver(*args, depth=2,
                                                                             backend="triton"),
        "patched Meta PerceiverResampler (cpu)": lambda: patched_meta(x, pos),
        "patched HF EdgeTamVideoPerceiverResampler (cpu)": lambda: patched_hf(x, pos),
    }
    print(f"# Host time per call, kernels stubbed: {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, torch {torch.__version__}, 1 thread, "
          f"min of {a.rounds} interleaved rounds x {a.calls} calls\n")
    print("| path (EdgeTAM perceiver, 64x64x64 memory, eval, no_grad) | us per call |")
    print("|---|---|")
    with torch.no_grad():  # a candidate is a.calls calls in a row; rows interleaved by round
        t = race({name: (lambda f=f: [f() for _ in range(a.calls)]) for name, f in rows.items()},
                 a.rounds, warmup=1)
    for name, samples in t.items():
        print(f"| {name} | {min(samples) / a.calls * 1e6:.0f} |")


if __name__ == "__main__":
    main()
