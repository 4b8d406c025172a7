"""One short GPU session for the Triton backend: parity, sanitizers, CUDA graphs, benchmarks.

    bash bench/gpu_check.sh                 # everything, an estimated 6-8 minutes on an H100, not yet run on a GPU
    python bench/gpu_check.py --skip-sanitizer --skip-compile   # parity + kernel timings only
    python bench/gpu_check.py --cpu-dry-run # tiny shapes in Triton's interpreter: tests the script

Writes bench/results/triton_<gpu>_<utc time>.json and .md (GPU, driver, CUDA, torch, triton).
Sections run in order of importance; each is guarded, and once --budget seconds are spent the
remaining ones are recorded as skipped.

1. parity at EdgeTAM 1024 shapes in fp32 (IEEE and TF32), fp16, bf16 vs a float64 reference
   on the GPU: RoPE self (4096 x 4096 x 256) and cross (4096 x 3648 x 256, batch 1 and 3),
   perceiver cross-attention (256 x 4096 x 64) and the whole spatial perceiver (64x64 memory).
2. CUDA-graph capture + replay and torch.compile(fullgraph=True) of the ops on the Triton path.
3. benchmarks, bf16 (and fp16 for attention): ceilings (bf16 matmul, copy bandwidth), the RoPE
   kernel vs SDPA's flash / efficient / cuDNN / math backends *without* RoPE, vs the reference
   (eager and torch.compile, with RoPE); the spatial perceiver (eager launches and in a CUDA
   graph) vs the reference eager (the same ops as Meta's module) and torch.compile.
4. compute-sanitizer memcheck and racecheck on small shapes of every kernel (child processes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=420.0, help="seconds before skipping")
    ap.add_argument("--skip-sanitizer", action="store_true")
    ap.add_argument("--skip-compile", action="store_true", help="no torch.compile baselines")
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--sanitizer-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    return ap.parse_args()


ARGS = _args()
if ARGS.cpu_dry_run:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import edgetam_kernels as ek  # noqa: E402
from edgetam_kernels import reference  # noqa: E402
from edgetam_kernels.testing import TOLERANCE, rel_l2, to64  # noqa: E402

DEV = "cpu" if ARGS.cpu_dry_run else "cuda"
T0 = time.time()
REPORT = {"sections": {}, "skipped": [], "errors": []}


def budget_left():
    return ARGS.budget - (time.time() - T0)


def section(name):
    def wrap(fn):
        def run(*a, **k):
            if budget_left() <= 0:
                REPORT["skipped"].append(name)
                print(f"[skip] {name}: budget spent", flush=True)
                return None
            t = time.time()
            print(f"[run ] {name}", flush=True)
            try:
                out = fn(*a, **k)
            except Exception as e:  # noqa: BLE001 - keep going, record the failure
                REPORT["errors"].append({"section": name, "error": f"{type(e).__name__}: {e}",
                                         "trace": traceback.format_exc()[-2000:]})
                print(f"[FAIL] {name}: {type(e).__name__}: {e}", flush=True)
                out = None
            REPORT["sections"][name] = round(time.time() - t, 1)
            return out
        return run
    return wrap


# ---------------------------------------------------------------------------------------------
# Inputs at EdgeTAM shapes (or tiny ones for the dry run)
# ---------------------------------------------------------------------------------------------

S = dict(grid=64, frames=7, ptr=64, d=256, c=64, mem=64, lat=256) if not ARGS.cpu_dry_run else \
    dict(grid=8, frames=2, ptr=4, d=32, c=16, mem=8, lat=16)


def rope_inputs(kind, dtype, batch=1):
    g = dict(device=DEV, dtype=dtype)
    n_q = S["grid"] ** 2
    if kind == "self":
        n_k, kw = n_q, dict(q_grid=(S["grid"],) * 2, k_grid=(S["grid"],) * 2, k_repeat=1,
                            num_k_exclude_rope=0)
    else:
        side = 16 if not ARGS.cpu_dry_run else 2
        frame = 2 * side * side
        n_k = S["frames"] * frame + S["ptr"]
        kw = dict(q_grid=(S["grid"],) * 2, k_grid=(side, side), k_repeat=S["frames"],
                  num_k_exclude_rope=S["ptr"])
    q = torch.randn(batch, 1, n_q, S["d"], **g)
    k = torch.randn(batch, 1, n_k, S["d"], **g)
    v = torch.randn(batch, 1, n_k, S["d"], **g)
    return q, k, v, kw


def perceiver_inputs(dtype):
    g = dict(device=DEV, dtype=dtype)
    c = S["c"]

    def ln():
        return [1 + 0.1 * torch.randn(c, **g), 0.1 * torch.randn(c, **g)]

    def lin(o, i):
        return torch.randn(o, i, **g) / i ** 0.5

    ws = []
    for _ in range(2):
        ws += ln() + ln() + [lin(c, c), lin(2 * c, c), lin(c, c)] + ln() + [lin(4 * c, c),
                                                                            lin(c, 4 * c)]
        ws += ln() + [lin(c, c), lin(2 * c, c), lin(c, c)] + ln() + [lin(4 * c, c), lin(c, 4 * c)]
    x = torch.randn(1, c, S["mem"], S["mem"], **g)
    pos = torch.randn(1, c, S["mem"], S["mem"], **g)
    lat1 = torch.randn(S["lat"], c, **g)
    lat2 = torch.randn(S["lat"], c, **g)
    norm = ln()
    return (x, pos, lat1, lat2, ws, *norm), dict(depth=2, heads=1, use_self_attn=True)


def rope_ref64(q, k, v, kw):
    return reference.rope_attention(*to64((q, k, v)), kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                                    kw["num_k_exclude_rope"], 10000.0, None, None)


def set_precision(p):
    from edgetam_kernels.triton import set_fp32_precision

    set_fp32_precision(p)


# ---------------------------------------------------------------------------------------------
# 0. environment
# ---------------------------------------------------------------------------------------------


def environment():
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda,
           "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if DEV == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}",
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except Exception as e:  # noqa: BLE001
            env["driver"] = f"unknown ({e})"
    else:
        env.update(gpu="none (CPU dry run in Triton's interpreter)", driver="n/a")
    env["triton_backend"] = ek.backends()["triton"]
    return env


# ---------------------------------------------------------------------------------------------
# 1. parity
# ---------------------------------------------------------------------------------------------


@section("parity")
def parity():
    rows = []
    # Tuning costs compiles; tune only bf16 here (what the benchmarks use), heuristics elsewhere.
    runs = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, None),
            (torch.bfloat16, None)]
    for dtype, prec in runs:
        os.environ["EDGETAM_TRITON_AUTOTUNE"] = "1" if dtype == torch.bfloat16 else "0"
        set_precision(prec or "ieee")
        tol = TOLERANCE[dtype] if prec != "tf32" else 5e-3
        name = str(dtype).replace("torch.", "") + (f"/{prec}" if prec else "")
        for kind, batch in (("self", 1), ("cross", 1), ("cross", 3)):
            if batch > 1 and dtype != torch.bfloat16:
                continue
            q, k, v, kw = rope_inputs(kind, dtype, batch)
            out = ek.rope_attention(q, k, v, backend="triton", **kw)
            err = rel_l2(out, rope_ref64(q, k, v, kw))
            rows.append(dict(op=f"rope_attention {kind} B{batch}", dtype=name, err=err, tol=tol,
                             ok=err <= tol, shape=f"{q.shape[2]}x{k.shape[2]}x{q.shape[3]}"))
            print("   ", rows[-1], flush=True)
            del q, k, v, out
        args, kw = perceiver_inputs(dtype)
        out = ek.spatial_perceiver(*args, backend="triton", **kw)
        ref = reference.spatial_perceiver(*to64(args), kw["depth"], kw["heads"],
                                          kw["use_self_attn"])
        err = rel_l2(out, ref)
        rows.append(dict(op="spatial_perceiver", dtype=name, err=err, tol=tol, ok=err <= tol,
                         shape=f"{S['mem']}x{S['mem']}x{S['c']}, {S['lat']}+{S['lat']} latents"))
        x, pos, lat1 = args[0], args[1], args[2]
        tokens = x.flatten(2).transpose(1, 2)
        p = pos.flatten(2).transpose(1, 2)
        pa = (lat1[None], tokens, p, *args[4][:7])
        out = ek.perceiver_attention(*pa, backend="triton")
        err = rel_l2(out, reference.perceiver_attention(*to64(pa)))
        rows.append(dict(op="perceiver_attention", dtype=name, err=err, tol=tol, ok=err <= tol,
                         shape=f"{S['lat']}x{tokens.shape[1]}x{S['c']}"))
        print("   ", rows[-2], "\n   ", rows[-1], flush=True)
    set_precision(None)
    os.environ.pop("EDGETAM_TRITON_AUTOTUNE", None)
    REPORT["parity"] = rows
    return rows


# ---------------------------------------------------------------------------------------------
# 2. CUDA graphs and torch.compile
# ---------------------------------------------------------------------------------------------


@section("graphs_and_compile")
def graphs_and_compile():
    res = {}
    q, k, v, kw = rope_inputs("cross", torch.bfloat16)
    args, pkw = perceiver_inputs(torch.bfloat16)
    f_rope = lambda: ek.rope_attention(q, k, v, backend="triton", **kw)  # noqa: E731
    f_perc = lambda: ek.spatial_perceiver(*args, backend="triton", **pkw)  # noqa: E731
    if DEV == "cuda":
        for name, f in (("rope_attention", f_rope), ("spatial_perceiver", f_perc)):
            eager = f()  # warm: compile + tune outside the capture
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                f()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static = f()
            g.replay()
            torch.cuda.synchronize()
            res[f"cuda_graph_{name}_max_abs_diff"] = (static.float() - eager.float()).abs().max().item()
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: ek.rope_attention(q, k, v, backend="triton", **kw),
                             fullgraph=True)
    res["compile_fullgraph_rope_max_abs_diff"] = (compiled(q, k, v).float() - f_rope().float()).abs().max().item()
    REPORT["graphs_and_compile"] = res
    print("   ", res, flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# 3. benchmarks
# ---------------------------------------------------------------------------------------------


def bench_ms(fn):
    if DEV != "cuda":
        t = time.time()
        fn()
        return (time.time() - t) * 1e3
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=60, return_mode="median")


@section("ceilings")
def ceilings():
    res = {}
    n = 8192 if DEV == "cuda" else 256
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ a)
    res["bf16_matmul_tflops"] = 2 * n**3 / ms / 1e9
    x = torch.empty(2**28 if DEV == "cuda" else 2**20, device=DEV, dtype=torch.uint8)
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    res["copy_gb_s"] = 2 * x.numel() / ms / 1e6
    REPORT["ceilings"] = res
    print("   ", res, flush=True)
    return res


def sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"sdpa_flash": SDPBackend.FLASH_ATTENTION,
            "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
            "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_math": SDPBackend.MATH}


@section("bench_rope")
def bench_rope():
    from torch.nn.attention import sdpa_kernel

    from edgetam_kernels.triton import rope_attention as tr

    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        os.environ["EDGETAM_TRITON_AUTOTUNE"] = "1" if dtype == torch.bfloat16 else "0"
        for kind in ("self", "cross"):
            q, k, v, kw = rope_inputs(kind, dtype)
            flops = 4 * q.shape[2] * k.shape[2] * q.shape[3]
            times = {}
            times["triton_rope"] = bench_ms(lambda: ek.rope_attention(q, k, v, backend="triton",
                                                                      **kw))
            tuned = tr._TUNED.get(tr.tuning_key(q.device, q.shape[0] * q.shape[1], q.shape[2],
                                                k.shape[2], q.shape[3], v.shape[3], dtype, dtype))
            # Both strategies side by side: the fused kernel (first tile of the candidate set,
            # keys pre-rotated) and rotate-then-SDPA; whichever the tuner picked is triton_rope.
            fused = next(c for c in tr.candidate_configs(1, q.shape[2], k.shape[2], q.shape[3],
                                                         v.shape[3], q.device) if "BLOCK_M" in c)
            for name, cfg in (("triton_fused_kernel", fused),
                              ("triton_rotate_then_sdpa", dict(SDPA=True))):
                times[name] = bench_ms(lambda: tr.rope_attention(
                    q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],
                    kw["num_k_exclude_rope"], 10000.0, None, None, config=cfg))
            for name, backend in sdpa_backends().items():
                if budget_left() < 60 and name == "sdpa_math":
                    continue
                try:
                    with sdpa_kernel([backend]):
                        F.scaled_dot_product_attention(q, k, v)
                        times[name] = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v))
                except Exception as e:  # noqa: BLE001 - backend not available for this shape
                    times[name] = None
                    REPORT.setdefault("notes", []).append(f"{name} {kind} {dtype}: {e}"[:300])
            ref = lambda: reference.rope_attention(q, k, v, kw["q_grid"], kw["k_grid"],  # noqa
                                                   kw["k_repeat"], kw["num_k_exclude_rope"])
            times["reference_eager"] = bench_ms(ref)
            if not ARGS.skip_compile and dtype == torch.bfloat16 and budget_left() > 120:
                torch._dynamo.reset()
                cref = torch.compile(reference.rope_attention)
                c = lambda: cref(q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"],  # noqa
                                 kw["num_k_exclude_rope"])
                c()
                times["reference_compiled"] = bench_ms(c)
            best_sdpa = min((t for n_, t in times.items() if n_.startswith("sdpa") and t), default=None)
            row = dict(op=f"rope {kind}", dtype=str(dtype).replace("torch.", ""),
                       shape=f"{q.shape[2]}x{k.shape[2]}x{q.shape[3]}",
                       ms={n_: (round(t, 4) if t else None) for n_, t in times.items()},
                       triton_tflops=flops / times["triton_rope"] / 1e9,
                       speedup_vs_best_sdpa=(best_sdpa / times["triton_rope"]) if best_sdpa else None,
                       tuned_config=tuned)
            ceil = REPORT.get("ceilings", {}).get("bf16_matmul_tflops")
            if ceil:
                row["fraction_of_bf16_matmul_ceiling"] = row["triton_tflops"] / ceil
            rows.append(row)
            print("   ", row, flush=True)
            del q, k, v
    os.environ.pop("EDGETAM_TRITON_AUTOTUNE", None)
    REPORT["bench_rope"] = rows
    return rows


@section("bench_perceiver")
def bench_perceiver():
    args, kw = perceiver_inputs(torch.bfloat16)
    times = {}
    f = lambda: ek.spatial_perceiver(*args, backend="triton", **kw)  # noqa: E731
    times["triton_eager"] = bench_ms(f)
    ref = lambda: reference.spatial_perceiver(*args, kw["depth"], kw["heads"],  # noqa: E731
                                              kw["use_self_attn"])
    times["reference_eager"] = bench_ms(ref)
    if DEV == "cuda":
        for name, fn in (("triton_cuda_graph", f), ("reference_cuda_graph", ref)):
            fn()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            times[name] = bench_ms(g.replay)
    if not ARGS.skip_compile and budget_left() > 90:
        torch._dynamo.reset()
        cref = torch.compile(reference.spatial_perceiver)
        c = lambda: cref(*args, kw["depth"], kw["heads"], kw["use_self_attn"])  # noqa: E731
        c()
        times["reference_compiled"] = bench_ms(c)
    row = dict(op="spatial_perceiver (global + patch, depth 2)", dtype="bfloat16",
               ms={k_: round(t, 4) for k_, t in times.items()},
               speedup_vs_reference_eager=times["reference_eager"] / times["triton_eager"])
    if "triton_cuda_graph" in times:
        row["graph_speedup_vs_reference_eager"] = times["reference_eager"] / times["triton_cuda_graph"]
    REPORT["bench_perceiver"] = row
    print("   ", row, flush=True)
    return row


# ---------------------------------------------------------------------------------------------
# 4. compute-sanitizer
# ---------------------------------------------------------------------------------------------


def sanitizer_child():
    """Small shapes of every kernel and code path (split and unsplit attention, both groups)."""
    from edgetam_kernels.triton.rope_attention import rope_attention as kern

    g = dict(device="cuda")
    for dtype in (torch.bfloat16, torch.float32):
        q = torch.randn(1, 2, 35, 64, dtype=dtype, **g)
        k = torch.randn(1, 2, 23, 64, dtype=dtype, **g)
        v = torch.randn(1, 2, 23, 64, dtype=dtype, **g)
        for splits in (1, 2):
            cfg = dict(BLOCK_M=64, BLOCK_N=16, SPLITS=splits, num_warps=4, num_stages=2)
            kern(q, k, v, [5, 7], [2, 2], 3, 5, 10000.0, None, None, config=cfg)
    for dtype in (torch.bfloat16, torch.float32):
        c = 16
        x = torch.randn(1, c, 8, 8, dtype=dtype, **g)
        ws = []
        for _ in range(2):
            ws += [torch.ones(c, dtype=dtype, **g), torch.zeros(c, dtype=dtype, **g)] * 2
            ws += [torch.randn(o, i, dtype=dtype, **g) for o, i in ((c, c), (2 * c, c), (c, c))]
            ws += [torch.ones(c, dtype=dtype, **g), torch.zeros(c, dtype=dtype, **g)]
            ws += [torch.randn(o, i, dtype=dtype, **g) for o, i in ((4 * c, c), (c, 4 * c))]
            ws += [torch.ones(c, dtype=dtype, **g), torch.zeros(c, dtype=dtype, **g)]
            ws += [torch.randn(o, i, dtype=dtype, **g) for o, i in ((c, c), (2 * c, c), (c, c))]
            ws += [torch.ones(c, dtype=dtype, **g), torch.zeros(c, dtype=dtype, **g)]
            ws += [torch.randn(o, i, dtype=dtype, **g) for o, i in ((4 * c, c), (c, 4 * c))]
        lat1 = torch.randn(20, c, dtype=dtype, **g)
        lat2 = torch.randn(4, c, dtype=dtype, **g)
        ek.spatial_perceiver(x, x, lat1, lat2, ws, ws[0], ws[1], depth=2, backend="triton")
    torch.cuda.synchronize()
    print("sanitizer child done")


@section("sanitizer")
def sanitizer():
    res = {}
    tool = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",
                     "/usr/local/cuda/compute-sanitizer/compute-sanitizer") if os.path.exists(p)),
        None)
    if tool is None or DEV != "cuda":
        res["status"] = "compute-sanitizer not found" if DEV == "cuda" else "skipped (no GPU)"
        REPORT["sanitizer"] = res
        return res
    env = dict(os.environ, EDGETAM_TRITON_AUTOTUNE="0", PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    for t in ("memcheck", "racecheck"):
        left = budget_left()
        if left < 30:
            res[t] = "skipped (budget)"
            continue
        cmd = [tool, f"--tool={t}", "--error-exitcode=9", "--target-processes=all",
               sys.executable, os.path.abspath(__file__), "--sanitizer-child"]
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                               timeout=min(180, left))
            summary = [ln for ln in (p.stdout + p.stderr).splitlines()
                       if "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln]
            res[t] = {"returncode": p.returncode, "summary": summary,
                      "tail": (p.stdout + p.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            res[t] = "timed out"
        print("   ", t, res[t] if isinstance(res[t], str) else (res[t]["returncode"],
                                                             res[t]["summary"]), flush=True)
    REPORT["sanitizer"] = res
    return res


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


_BASE = []


def write_report(quiet=False):
    """(Re)written after every section, so a run cut short by a time limit still leaves one."""
    env = REPORT["env"]
    if not _BASE:
        slug = "".join(ch if ch.isalnum() else "_" for ch in env.get("gpu", "gpu"))[:40].strip("_")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        os.makedirs(ARGS.out, exist_ok=True)
        _BASE.append(os.path.join(
            ARGS.out, f"triton_{'dryrun_' if ARGS.cpu_dry_run else ''}{slug}_{stamp}"))
    base = _BASE[0]
    with open(base + ".json", "w") as f:
        json.dump(REPORT, f, indent=1, default=str)
    md = [f"# Triton backend on {env.get('gpu')}", "",
          f"driver {env.get('driver')}, CUDA {env.get('cuda')}, torch {env.get('torch')}, "
          f"triton {env.get('triton')}, {env.get('utc')}", ""]
    if REPORT.get("parity"):
        md += ["## Parity vs float64 reference (relative L2)", "", "| op | shape | dtype | error | budget | ok |",
               "|---|---|---|---|---|---|"]
        md += [f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['err']:.2e} | {r['tol']:.0e} | "
               f"{'yes' if r['ok'] else '**NO**'} |" for r in REPORT["parity"]]
    if REPORT.get("ceilings"):
        c = REPORT["ceilings"]
        md += ["", f"Ceilings: bf16 matmul {c['bf16_matmul_tflops']:.0f} TFLOP/s, copy "
               f"{c['copy_gb_s']:.0f} GB/s.", ""]
    if REPORT.get("bench_rope"):
        md += ["## RoPE attention (ms, median; SDPA rows run without RoPE)", ""]
        names = sorted({n for r in REPORT["bench_rope"] for n in r["ms"]})
        md += ["| op | dtype | shape | " + " | ".join(names) + " | x best SDPA | TFLOP/s | of ceiling |",
               "|---" * (len(names) + 6) + "|"]
        for r in REPORT["bench_rope"]:
            cells = [f"{r['ms'].get(n):.3f}" if r["ms"].get(n) else "-" for n in names]
            sp = f"{r['speedup_vs_best_sdpa']:.2f}" if r.get("speedup_vs_best_sdpa") else "-"
            fr = f"{r['fraction_of_bf16_matmul_ceiling']:.0%}" if r.get("fraction_of_bf16_matmul_ceiling") else "-"
            md.append(f"| {r['op']} | {r['dtype']} | {r['shape']} | " + " | ".join(cells)
                      + f" | {sp} | {r['triton_tflops']:.0f} | {fr} |")
    if REPORT.get("bench_perceiver"):
        r = REPORT["bench_perceiver"]
        md += ["", "## Spatial perceiver (bf16, ms)", "", "| " + " | ".join(r["ms"]) + " |",
               "|---" * len(r["ms"]) + "|", "| " + " | ".join(f"{t:.3f}" for t in r["ms"].values()) + " |",
               "", f"Speed-up vs reference eager: {r['speedup_vs_reference_eager']:.1f}x"
               + (f" (CUDA graph: {r['graph_speedup_vs_reference_eager']:.1f}x)"
                  if "graph_speedup_vs_reference_eager" in r else "")]
    if REPORT.get("graphs_and_compile"):
        md += ["", "## CUDA graph / torch.compile", "", "```", json.dumps(REPORT["graphs_and_compile"], indent=1), "```"]
    if REPORT.get("sanitizer"):
        md += ["", "## compute-sanitizer", "", "```", json.dumps(
            {k: (v if isinstance(v, str) else {"rc": v["returncode"], "summary": v["summary"]})
             for k, v in REPORT["sanitizer"].items()}, indent=1), "```"]
    md += ["", f"Sections (s): {REPORT['sections']}; skipped: {REPORT['skipped']}; "
           f"errors: {[e['section'] + ': ' + e['error'] for e in REPORT['errors']]}", ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md))
    if not quiet:
        print(f"wrote {base}.json and .md", flush=True)


def main():
    if ARGS.sanitizer_child:
        sanitizer_child()
        return 0
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --cpu-dry-run to test this script", file=sys.stderr)
        return 2
    REPORT["env"] = environment()
    print(json.dumps(REPORT["env"], default=str), flush=True)
    steps = [ceilings, parity, bench_rope, bench_perceiver, graphs_and_compile]
    if not ARGS.skip_sanitizer:
        steps.append(sanitizer)
    for step in steps:
        step()
        write_report(quiet=True)
    write_report()
    bad = [r for r in REPORT.get("parity", []) if not r["ok"]]
    return 1 if (bad or REPORT["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())
