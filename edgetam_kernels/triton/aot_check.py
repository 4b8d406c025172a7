"""Compile every Triton kernel for a GPU target without a GPU (Triton front end + ptxas).

Catches what the interpreter cannot: code that does not lower for real hardware, shared memory
above the target's limit, register spills. It runs the public launchers on CPU tensors with each
kernel launch replaced by an ahead-of-time compile of the same arguments.

    python -m edgetam_kernels.triton.aot_check [--arch 90] [--quick]   (TRITON_INTERPRET unset)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("unset TRITON_INTERPRET: this compiles the kernels for real hardware")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from edgetam_kernels.triton import perceiver  # noqa: E402
from edgetam_kernels.triton import rope_attention as ra  # noqa: E402

PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
RESULTS = []
SMEM_LIMIT = {90: 232448, 80: 166912, 89: 101376, 86: 101376}


def ptxas_info(kernel, arch: int) -> str:
    """Registers and spills per thread (ptxas -v on the kernel's PTX) and the tensor-core
    instructions it uses (wgmma: Hopper's asynchronous warpgroup MMA; mma.sync: the older
    synchronous one). Static facts, no GPU needed: 255 registers means one CTA per SM."""
    import re
    import subprocess
    import tempfile

    ptx = kernel.asm.get("ptx", "")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    regs = "?"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        try:
            r = subprocess.run([ptxas, "-v", "--gpu-name", gpu, path, "-o", os.devnull],
                               capture_output=True, text=True, timeout=300)
            m = re.search(r"Used (\d+) registers", r.stderr)
            spill = re.search(r"(\d+) bytes spill stores", r.stderr)
            regs = f"{m.group(1) if m else '?'} regs, {spill.group(1) if spill else '?'} B spilled"
        except (OSError, subprocess.SubprocessError) as e:
            regs = f"ptxas -v failed: {e}"[:80]
    mma = ptx.count("wgmma.mma_async")
    return f"{regs}, {mma} wgmma" if mma else f"{regs}, {ptx.count('mma.sync')} mma.sync"


class AotKernel:
    def __init__(self, fn, target):
        self.fn, self.target = fn, target

    def __getitem__(self, grid):
        def launch(*args, num_warps=4, num_stages=3, **kw):
            names = self.fn.arg_names
            values = dict(zip(names, args))
            values.update(kw)
            sig, consts = {}, {}
            for name in names:
                v = values[name]
                p = self.fn.params[names.index(name)]
                if p.is_constexpr:
                    sig[name] = "constexpr"
                    consts[name] = v
                elif isinstance(v, torch.Tensor):
                    sig[name] = PTR[v.dtype]
                elif isinstance(v, bool):
                    sig[name] = "i1"
                elif isinstance(v, int):
                    sig[name] = "i64" if abs(v) >= 2**31 else "i32"
                else:
                    sig[name] = "fp32"
            t = time.time()
            src = ASTSource(fn=self.fn, signature=sig, constexprs=consts)
            shown = {k: (str(v) if not isinstance(v, (int, bool, str)) else v)
                     for k, v in consts.items() if k.isupper() and k != "INTERP"}
            try:
                k = triton.compile(src, target=self.target,
                                   options=dict(num_warps=num_warps, num_stages=num_stages))
                smem = k.metadata.shared
                limit = SMEM_LIMIT.get(self.target.arch, 101376)
                status = "ok" if smem <= limit else f"SMEM {smem} > {limit}"
                RESULTS.append((self.fn.__name__, shown, num_warps, num_stages, status, smem,
                                ptxas_info(k, self.target.arch), time.time() - t))
            except Exception as e:  # noqa: BLE001
                RESULTS.append((self.fn.__name__, shown, num_warps, num_stages,
                                f"FAIL {type(e).__name__}: {str(e)[:300]}", 0, "", time.time() - t))
            print(*RESULTS[-1], flush=True)

        return launch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true", help="two configs per kernel and dtype")
    ap.add_argument("--fp32-only", action="store_true", help="only the fp32 attention configs")
    ap.add_argument("--perceiver-only", action="store_true")
    ap.add_argument("--report", help="also write a markdown table of the compiles here")
    a = ap.parse_args()
    target = GPUTarget("cuda", a.arch, 32)
    ra._rope_attn_fwd = AotKernel(ra._rope_attn_fwd, target)
    ra._merge_splits = AotKernel(ra._merge_splits, target)
    ra._rope_keys = AotKernel(ra._rope_keys, target)
    for name in ("_ln_kv", "_cross", "_cross_merge", "_self"):
        setattr(perceiver, name, AotKernel(getattr(perceiver, name), target))
    perceiver._tiles = lambda device: dict(BLOCK_L=16, BLOCK_N=64, BLOCK_T=64, num_warps=4,
                                           SPLITS_G=4)

    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    for dt in (() if a.perceiver_only else dtypes):
        for d in ((256,) if a.quick else (256, 64)):
            q = torch.empty(1, 1, 4096, d, dtype=dt)
            k = torch.empty(1, 1, 3648, d, dtype=dt)
            tab = ra.rope_table(64, d, 10000.0, q.device)
            out = torch.empty(1, 1, 4096, d, dtype=dt)
            geo = dict(q_w=64, k_w=16, frame=512, n_front=256, n_rope=3584, key_mask=None)
            cfgs = ra.candidate_configs(1, 4096, 3648, d, d, torch.device("cpu"),
                                        torch.empty((), dtype=dt).element_size())
            seen = set()
            for cfg in cfgs:
                if cfg.get("SDPA"):
                    continue  # its only Triton kernel is the key pre-pass, compiled below
                key = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"],
                       cfg["SPLITS"] > 1, cfg.get("PRE_ROT", False))
                skip = (a.quick and len(seen) >= 3) or (a.fp32_only and dt != torch.float32)
                if key in seen or skip:
                    continue
                seen.add(key)
                ra._launch(q, k, k, out, tab, geo, 0.09, dt, cfg)
    # perceiver at EdgeTAM widths
    for dt in (() if a.fp32_only else dtypes):
        g = dict(dtype=dt)
        x = torch.randn(1, 64, 64, 64, **g)
        ws = []
        for _ in range(2):
            ws += [torch.ones(64, **g), torch.zeros(64, **g)] * 2
            ws += [torch.randn(64, 64, **g), torch.randn(128, 64, **g), torch.randn(64, 64, **g)]
            ws += [torch.ones(64, **g), torch.zeros(64, **g), torch.randn(256, 64, **g),
                   torch.randn(64, 256, **g)]
            ws += [torch.ones(64, **g), torch.zeros(64, **g)]
            ws += [torch.randn(64, 64, **g), torch.randn(128, 64, **g), torch.randn(64, 64, **g)]
            ws += [torch.ones(64, **g), torch.zeros(64, **g), torch.randn(256, 64, **g),
                   torch.randn(64, 256, **g)]
        lat = torch.randn(256, 64, **g)
        perceiver.spatial_perceiver(x, x, lat, lat, ws, ws[0], ws[1], 2, 1, True, 1e-5)
        perceiver.perceiver_attention(lat[None], x.flatten(2).transpose(1, 2), None, *ws[:7])
        if a.quick:
            break
    if a.report:
        import triton as _t

        lines = [f"# Triton kernels compiled for sm_{a.arch} without a GPU", "",
                 f"triton {_t.__version__}, torch {torch.__version__}; "
                 "`python -m edgetam_kernels.triton.aot_check` (front end + ptxas, no launch)."
                 " Shared memory per CTA against the target's limit, registers and spills per"
                 " thread from `ptxas -v`, tensor-core instructions in the PTX; no timings.", "",
                 "| kernel | constexprs | warps | stages | status | smem bytes | registers, "
                 "tensor cores |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} |"
                  for r in RESULTS]
        with open(a.report, "w") as f:
            f.write("\n".join(lines) + "\n")
    bad = [r for r in RESULTS if r[4] != "ok"]
    print(f"\n{len(RESULTS)} compiles, {len(bad)} problems, sm_{a.arch}")
    for r in bad:
        print("  ", r)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
