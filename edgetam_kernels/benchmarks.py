"""Benchmark cases on EdgeTAM's real shapes, shared by `python -m edgetam_kernels bench` and the
pytest-benchmark suites in bench/.

A case is one op (or module) on one shape with several providers: the reference, every built
backend that supports it, torch's SDPA without RoPE (the ceiling a fused kernel is held to),
Meta's and Hugging Face's module code, and torch.compile of the reference. Every provider of a
case gets the same inputs and weights; FLOPs and bytes are counted per call so timings turn into
GFLOP/s and a fraction of the machine's measured matmul ceiling.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from . import _registry, ops, reference


@dataclass
class Case:
    name: str
    op: str
    flops: float
    bytes: float
    providers: Dict[str, Callable[[], object]] = field(default_factory=dict)


def _sync(device):
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable, device="cpu", warmup: int = 1, reps: int = 5,
              min_time: float = 0.0) -> List[float]:
    """Seconds per call, `reps` samples after `warmup` calls; GPU work is synchronised inside."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    start_all = time.perf_counter()
    while len(samples) < reps or (time.perf_counter() - start_all) < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 200:
            break
    return samples


def ceilings(device="cpu", dtype=torch.float32) -> Dict[str, float]:
    """Measured here, now: a large matmul (GFLOP/s) and a large copy (GB/s)."""
    n = 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = min(time_call(lambda: torch.mm(a, b), device, warmup=2, reps=5))
    src = torch.randn(64 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    tc = min(time_call(lambda: dst.copy_(src), device, warmup=2, reps=5))
    return {"matmul_gflops": 2 * n**3 / t / 1e9, "copy_gbps": 2 * src.numel() * 4 / tc / 1e9}


def machine() -> Dict[str, object]:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    cpu = _registry.backends()["cpu"]
    info["cpu_backend"] = cpu["detail"] if cpu["available"] else cpu["reason"]
    return info


# ---------------------------------------------------------------------------------------------
# Meta's / HF's modules, when installed
# ---------------------------------------------------------------------------------------------


def _sam2():
    from ._compat import shim_torchvision

    shim_torchvision()
    try:
        import sam2.modeling.sam.transformer as tr  # noqa: F401
        return tr
    except Exception:  # noqa: BLE001 - not installed or not importable here
        return None


def meta_memory_attention(grid: int = 64):
    """Meta's MemoryAttention with EdgeTAM's configuration (configs/edgetam.yaml), eval mode."""
    if _sam2() is None:
        return None
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.sam.transformer import RoPEAttention, RoPEAttentionv2

    layer = MemoryAttentionLayer(
        activation="relu", d_model=256, dim_feedforward=2048, dropout=0.1,
        pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(rope_theta=10000.0, feat_sizes=(grid, grid),
                                     embedding_dim=256, num_heads=1, downsample_rate=1,
                                     dropout=0.1),
        cross_attention=RoPEAttentionv2(rope_theta=10000.0, q_sizes=(grid, grid),
                                        k_sizes=(16, 16), embedding_dim=256, num_heads=1,
                                        downsample_rate=1, dropout=0.1, kv_in_dim=64),
    )
    return MemoryAttention(d_model=256, pos_enc_at_input=True, layer=layer, num_layers=2).eval()


def meta_perceiver():
    if _sam2() is None:
        return None
    from sam2.modeling.perceiver import PerceiverResampler
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    return PerceiverResampler(
        depth=2, dim=64, dim_head=64, heads=1, ff_mult=4, hidden_dropout_p=0.0,
        attention_dropout_p=0.0, pos_enc_at_key_value=True, concat_kv_latents=False,
        num_latents=256, num_latents_2d=256, use_self_attn=True,
        position_encoding=PositionEmbeddingSine(num_pos_feats=64, normalize=True, scale=None,
                                                temperature=10000),
    ).eval()


def hf_perceiver():
    from ._compat import shim_torchvision

    shim_torchvision()
    try:
        from transformers.models.edgetam_video import modeling_edgetam_video as hf
        from transformers.models.edgetam_video import EdgeTamVideoConfig
    except Exception:  # noqa: BLE001
        return None
    return hf.EdgeTamVideoPerceiverResampler(EdgeTamVideoConfig()).eval()


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def _backend_providers(op: str, device_type: str, args: tuple, call: Callable[[str], object]):
    out = {}
    for name in _registry.NAMES[1:]:
        if _registry._can_run(name, op, device_type, args) is None:
            out[name] = lambda name=name: call(name)
    return out


def rope_attention_case(kind: str, device="cpu", dtype=torch.float32, grid: int = 64,
                        frames: int = 7, ptr_tokens: int = 64, compile_ref: bool = True) -> Case:
    """kind "self": 4096 x 4096 x 256, both rotated on the 64x64 grid (SAM 2 rule);
    kind "cross": 4096 x (7 * 512 + 64) x 256, EdgeTAM's frame-repeated key rule."""
    d, n_q = 256, grid * grid
    g = dict(device=device, dtype=dtype)
    if kind == "self":
        n_k, kw = n_q, dict(q_grid=[grid, grid], k_grid=[grid, grid], k_repeat=1,
                            num_k_exclude_rope=0)
    else:
        n_k = frames * 512 + ptr_tokens
        kw = dict(q_grid=[grid, grid], k_grid=[16, 16], k_repeat=frames,
                  num_k_exclude_rope=ptr_tokens)
    q, k, v = (torch.randn(1, 1, n, d, **g) for n in (n_q, n_k, n_k))
    el = q.element_size()
    case = Case(f"rope_attention {kind} {n_q}x{n_k}x{d} {str(dtype)[6:]}", "rope_attention",
                flops=4.0 * n_q * n_k * d, bytes=el * (2 * n_q * d + 2 * n_k * d))
    args = (q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"], kw["num_k_exclude_rope"],
            10000.0, 1 / 16, None, None)
    case.providers["reference"] = lambda: ops.rope_attention(q, k, v, backend="reference", **kw)
    case.providers.update(_backend_providers(
        "rope_attention", torch.device(device).type, args,
        lambda b: ops.rope_attention(q, k, v, backend=b, **kw)))
    bf16_args = args[:9] + (torch.bfloat16, None)
    if dtype == torch.float32 and "cpu" in case.providers and \
            _registry._can_run("cpu", "rope_attention", "cpu", bf16_args) is None:
        case.providers["cpu bf16 compute"] = lambda: ops.rope_attention(
            q, k, v, backend="cpu", compute_dtype=torch.bfloat16, **kw)
    case.providers["sdpa (no RoPE)"] = lambda: F.scaled_dot_product_attention(q, k, v)
    tr = _sam2()
    if tr is not None:
        case.providers["meta module path"] = _meta_rope_core(tr, kind, q, k, v, grid, frames,
                                                             ptr_tokens)
    if compile_ref:
        compiled = torch.compile(reference.rope_attention, dynamic=False)
        case.providers["compile(reference)"] = lambda: compiled(q, k, v, **kw)
    return case


def _meta_rope_core(tr, kind, q, k, v, grid, frames, ptr_tokens):
    """Meta's RoPE + attention as its RoPEAttention(v2).forward runs them (projections aside):
    complex-number RoPE, then SDPA inside its kernel-forcing context (math path on CPU)."""
    from sam2.modeling.position_encoding import apply_rotary_enc, apply_rotary_enc_v2, compute_axial_cis

    d = q.shape[-1]
    cis_q = compute_axial_cis(dim=d, end_x=grid, end_y=grid).to(q.device)
    cis_k = compute_axial_cis(dim=d, end_x=16, end_y=16).to(q.device)

    def run():
        if kind == "self":
            qr, kr = apply_rotary_enc(q, k.clone(), freqs_cis=cis_q)
        else:
            qr = apply_rotary_enc_v2(q, cis_q, repeat_freqs=1)
            kr = k.clone()
            n_rope = k.shape[-2] - ptr_tokens
            kr[:, :, :n_rope] = apply_rotary_enc_v2(kr[:, :, :n_rope], cis_k, repeat_freqs=frames)
        with tr.sdp_kernel_context(0.0):
            return F.scaled_dot_product_attention(qr, kr, v)

    return run


def perceiver_attention_case(device="cpu", dtype=torch.float32, grid: int = 64,
                             compile_ref: bool = True) -> Case:
    """One perceiver cross-attention block: 256 latents over a grid x grid memory frame, dim 64,
    one head, the position encoding added to keys and values (EdgeTAM's global latents)."""
    b, l, n, c = 1, 256, grid * grid, 64
    g = dict(device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(0)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, **g) * scale

    lat, x, pos = r(b, l, c), r(b, n, c), r(b, n, c)
    lw, lb, xw, xb = 1 + r(c, scale=0.1), r(c, scale=0.1), 1 + r(c, scale=0.1), r(c, scale=0.1)
    wq, wkv, wo = r(c, c, scale=c ** -0.5), r(2 * c, c, scale=c ** -0.5), r(c, c, scale=c ** -0.5)
    args = (lat, x, pos, lw, lb, xw, xb, wq, wkv, wo, 1, 1e-5)
    case = Case(f"perceiver_attention {l}x{n}x{c} B{b} {str(dtype)[6:]}", "perceiver_attention",
                # q k^T and p v; LN(x) w_kv; q and output projections
                flops=4.0 * l * n * c + 4.0 * n * c * c + 4.0 * l * c * c,
                bytes=x.element_size() * (2 * n * c + 2 * l * c))
    case.providers["reference"] = lambda: ops.perceiver_attention(*args[:10],
                                                                  backend="reference")
    case.providers.update(_backend_providers(
        "perceiver_attention", torch.device(device).type, args,
        lambda name: ops.perceiver_attention(*args[:10], backend=name)))

    def sdpa_eager():  # what a module written with SDPA runs: LN, linear, SDPA, linear
        q = F.linear(F.layer_norm(lat, (c,), lw, lb, 1e-5), wq)
        k, v = F.linear(F.layer_norm(x, (c,), xw, xb, 1e-5), wkv).chunk(2, dim=-1)
        o = F.scaled_dot_product_attention(q[:, None], (k + pos)[:, None], (v + pos)[:, None])
        return F.linear(o[:, 0], wo)

    case.providers["sdpa eager (LN + linear + SDPA + linear)"] = sdpa_eager
    if compile_ref:
        compiled = torch.compile(reference.perceiver_attention, dynamic=False)
        case.providers["compile(reference)"] = lambda: compiled(*args)
    return case


def perceiver_flops(n, c, l1, l2, window_tokens, depth=2, self_attn=True, ff=4):
    lat = l1 + l2
    per = 4 * n * c * c  # LN(x) Wkv, shared by both groups
    per += 2 * lat * c * c * 2  # Wq, Wout
    per += 4 * l1 * n * c + 4 * l2 * window_tokens * c  # attention
    per += 4 * lat * c * ff * c  # feed-forward
    if self_attn:
        per += 2 * lat * c * c * 4 + 4 * l1 * l1 * c + 4 * l2 * c + 4 * lat * c * ff * c
    return depth * per


def spatial_perceiver_case(device="cpu", dtype=torch.float32, grid=64, batch=1,
                           compile_ref=True) -> Optional[Case]:
    """EdgeTAM's perceiver on one memory frame: (B, 64, 64, 64) -> 256 global + 256 patch."""
    meta = meta_perceiver()
    if meta is None:
        from .testing import random_perceiver_weights
        weights, lat1, lat2, norm = random_perceiver_weights()
    else:
        from ._adapters_sam2 import perceiver_weights
        meta = meta.to(device=device, dtype=dtype)
        weights, lat1, lat2 = perceiver_weights(meta), meta.latents, meta.latents_2d
        norm = (meta.norm.weight, meta.norm.bias)
    g = dict(device=device, dtype=dtype)
    x, pos = torch.randn(batch, 64, grid, grid, **g), torch.randn(batch, 64, grid, grid, **g)
    ws = [w.detach() for w in weights]
    lat1, lat2 = lat1.detach(), lat2.detach()
    nw, nb = norm[0].detach(), norm[1].detach()
    n = grid * grid
    case = Case(f"spatial_perceiver {grid}x{grid} 256+256 B{batch} {str(dtype)[6:]}",
                "spatial_perceiver",
                flops=batch * perceiver_flops(n, 64, 256, 256, (grid // 16) ** 2),
                bytes=x.element_size() * (2 * x.numel() + batch * 512 * 64))
    kw = dict(depth=2, use_self_attn=True)
    args = (x, pos, lat1, lat2, ws, nw, nb, 2, 1, True, 1e-5, None)  # the op's, minus backend
    case.providers["reference"] = lambda: ops.spatial_perceiver(
        x, pos, lat1, lat2, ws, nw, nb, backend="reference", **kw)
    case.providers.update(_backend_providers(
        "spatial_perceiver", torch.device(device).type, args,
        lambda b: ops.spatial_perceiver(x, pos, lat1, lat2, ws, nw, nb, backend=b, **kw)))
    if meta is not None and batch == 1:  # Meta's forward_2d fails for batch > 1 (a .view bug)
        case.providers["meta module"] = lambda: meta(x, pos)
    hf = hf_perceiver()
    if hf is not None:
        hf = hf.to(device=device, dtype=dtype)
        case.providers["hf module"] = lambda: hf(x, pos)
    if compile_ref:
        compiled = torch.compile(reference.spatial_perceiver, dynamic=False)
        case.providers["compile(reference)"] = lambda: compiled(x, pos, lat1, lat2, ws, nw, nb,
                                                                **kw)
    return case


def memory_attention_flops(n_q, n_mem, d=256, kv_dim=64, hidden=2048, layers=2):
    per = 8 * n_q * d * d + 4 * n_q * n_q * d  # self: q, k, v, out projections + attention
    per += 4 * n_q * d * d + 4 * n_mem * kv_dim * d + 4 * n_q * n_mem * d  # cross
    per += 4 * n_q * d * hidden  # feed-forward
    return layers * per


def memory_attention_case(device="cpu", dtype=torch.float32, grid=64, frames=7,
                          ptr_tokens=64) -> Optional[Case]:
    """Meta's whole MemoryAttention module (2 layers), unpatched vs patched per backend."""
    from .patch import patch, unpatch

    mod = meta_memory_attention(grid)
    if mod is None:
        return None
    mod = mod.to(device=device, dtype=dtype)
    g = dict(device=device, dtype=dtype)
    n_q, n_mem = grid * grid, frames * 512 + ptr_tokens
    curr, curr_pos = torch.randn(n_q, 1, 256, **g), torch.randn(n_q, 1, 256, **g)
    mem, mem_pos = torch.randn(n_mem, 1, 64, **g), torch.randn(n_mem, 1, 64, **g)
    call = dict(curr=curr, memory=mem, curr_pos=curr_pos, memory_pos=mem_pos,
                num_obj_ptr_tokens=ptr_tokens, num_spatial_mem=frames)
    case = Case(f"memory_attention module {n_q}x{n_mem} {str(dtype)[6:]}", "memory_attention",
                flops=memory_attention_flops(n_q, n_mem), bytes=0.0)

    def run(backend, compute_dtype=None):
        if backend is None:
            unpatch(mod)
        else:
            patch(mod, backend=backend, compute_dtype=compute_dtype)
        with torch.no_grad():
            return mod(**call)

    case.providers["meta module"] = lambda: run(None)
    case.providers["patched reference"] = lambda: run("reference")
    probe = (torch.empty(1, 1, 4, 256), torch.empty(1, 1, 4, 256), torch.empty(1, 1, 4, 256),
             [2, 2], [2, 2], 1, 0, 1e4, 0.0625, None, None)
    for name in _registry.NAMES[1:]:
        if _registry._can_run(name, "rope_attention", torch.device(device).type, probe) is None:
            case.providers[f"patched {name}"] = lambda name=name: run(name)
            if name == "cpu" and dtype == torch.float32:
                case.providers["patched cpu bf16 compute"] = lambda: run("cpu", torch.bfloat16)
    return case


def all_cases(device="cpu", dtype=torch.float32, compile_ref=True, quick=False) -> List[Case]:
    grid = 32 if quick else 64
    cases = [rope_attention_case("self", device, dtype, grid=grid, compile_ref=compile_ref),
             rope_attention_case("cross", device, dtype, grid=grid, compile_ref=compile_ref),
             perceiver_attention_case(device, dtype, grid=grid, compile_ref=compile_ref)]
    for c in (spatial_perceiver_case(device, dtype, grid=grid, compile_ref=compile_ref),
              memory_attention_case(device, dtype, grid=grid)):
        if c is not None:
            cases.append(c)
    return cases


def summarize(case: Case, provider: str, samples: List[float], ceiling: Dict[str, float],
              baseline: Dict[str, float]) -> Dict[str, object]:
    best, med = min(samples), statistics.median(samples)
    row = {"case": case.name, "provider": provider, "median_ms": med * 1e3, "min_ms": best * 1e3,
           "reps": len(samples), "gflops": case.flops / best / 1e9}
    row["ceiling_frac"] = row["gflops"] / ceiling["matmul_gflops"]
    for ref_name in ("reference", "meta module", "meta module path"):
        if ref_name in baseline:
            row[f"x_vs_{ref_name}"] = baseline[ref_name] / best
    sdpa = [t for name, t in baseline.items() if name.startswith("sdpa")]  # the case's one
    if sdpa:
        row["x_vs_sdpa"] = min(sdpa) / best
    return row


def fmt_table(rows: List[Dict[str, object]]) -> str:
    head = ("case", "provider", "median ms", "GFLOP/s", "% ceiling", "x ref", "x meta", "x sdpa")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        meta = r.get("x_vs_meta module", r.get("x_vs_meta module path"))
        cells = (r["case"], r["provider"], f"{r['median_ms']:.1f}", f"{r['gflops']:.1f}",
                 f"{100 * r['ceiling_frac']:.0f}%", _x(r.get("x_vs_reference")), _x(meta),
                 _x(r.get("x_vs_sdpa")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _x(v):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}x"
