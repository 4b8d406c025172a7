"""Model-independent fused forwards shared by the Meta (`_adapters_sam2`) and Hugging Face
(`_adapters_hf`) adapters.

The adapters only translate a module's attributes (weights, RoPE grids, calling convention)
into the small records below; the computation itself is written once here:

- `attend`: q/k/v projections (one GEMM with stacked weights when q, k and v come from the same
  tensor), the `rope_attention` op (RoPE + softmax attention, any backend), output projection.
- `memory_attention_layer`: pre-LN self-attention, cross-attention to memory, pre-LN MLP.
- `perceiver_layer`: one perceiver encoder layer through the `perceiver_attention` op.

All functions take (B, N, C) activations and leave dtype handling to the ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .derived import cached
from .reparam import fold_value_into_output


@dataclass
class Projections:
    """Weights of an attention with input projections q/k/v and an output projection."""

    wq: Tensor
    bq: Optional[Tensor]
    wk: Tensor
    bk: Optional[Tensor]
    wv: Tensor
    bv: Optional[Tensor]
    wo: Tensor
    bo: Optional[Tensor]
    heads: int

    @classmethod
    def of(cls, q, k, v, o, heads: int) -> "Projections":
        """From four nn.Linear modules."""
        return cls(q.weight, q.bias, k.weight, k.bias, v.weight, v.bias, o.weight, o.bias, heads)


@dataclass
class Rope:
    """The RoPE rule of one attention call, in `edgetam_kernels.rope_attention`'s terms."""

    q_grid: Tuple[int, int]
    k_grid: Tuple[int, int]
    k_repeat: int
    num_k_exclude_rope: int = 0
    theta: float = 10000.0


@dataclass
class Norm:
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float

    @classmethod
    def of(cls, ln) -> "Norm":
        return cls(ln.weight, ln.bias, ln.eps)

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


def _to(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None else t.to(dtype)


@dataclass
class MLP:
    w1: Tensor
    b1: Optional[Tensor]
    w2: Tensor
    b2: Optional[Tensor]
    activation: Callable[[Tensor], Tensor]

    def __call__(self, x: Tensor, compute_dtype: Optional[torch.dtype] = None) -> Tensor:
        cd = compute_dtype
        w1, b1, w2, b2 = (_to(t, cd) for t in (self.w1, self.b1, self.w2, self.b2))
        xc = _to(x, cd)
        rows = _row_chunk(xc, w1.shape[0], (w1, b1, w2, b2))
        if rows is None:
            return F.linear(self.activation(F.linear(xc, w1, b1)), w2, b2).to(x.dtype)
        # On a CPU in rows: the hidden activation of memory attention's MLP is 4096 x 2048
        # (32 MB in fp32), and a fresh buffer that size is an mmap whose pages fault in on
        # every call (about as slow as the GEMM writing it); chunks of it stay in the
        # allocator's reused memory and in cache, and the activation reads them there.
        flat = xc.reshape(-1, xc.shape[-1])
        out = torch.empty(flat.shape[0], w2.shape[0], dtype=flat.dtype, device=flat.device)
        for start in range(0, flat.shape[0], rows):
            part = flat[start:start + rows]
            h = self.activation(F.linear(part, w1, b1))
            if b2 is None:
                torch.mm(h, w2.t(), out=out[start:start + rows])
            else:
                torch.addmm(b2, h, w2.t(), out=out[start:start + rows])
        return out.view(*xc.shape[:-1], w2.shape[0]).to(x.dtype)


_CHUNK_BYTES = 2 << 20  # hidden activation per chunk: reused heap memory, stays in L2 + LLC
_WHOLE_BYTES = 32 << 20  # from this size on every fresh buffer is an mmap (glibc's maximum)


def _row_chunk(x: Tensor, hidden: int, weights) -> Optional[int]:
    """Rows per chunk for MLP.__call__, or None to run it whole (not on CPU, small, under
    torch.compile or autograd)."""
    if (x.device.type != "cpu" or x.dim() < 2 or torch.compiler.is_compiling()
            or (torch.is_grad_enabled()
                and any(t is not None and t.requires_grad for t in (x, *weights)))):
        return None
    n = x.numel() // x.shape[-1]
    if n * hidden * x.element_size() < _WHOLE_BYTES:
        return None  # below glibc's largest mmap threshold: reused memory already (bf16's
        # 16 MB at EdgeTAM's shape, where AMX GEMMs also prefer the whole tensor)
    rows = max(64, _CHUNK_BYTES // (hidden * x.element_size()))
    return rows if n > rows else None


def latent_rope(q_grid, k_grid, theta: float, n_q: int, n_k: int, num_k_exclude_rope: int,
                k_repeat: int) -> Optional[Rope]:
    """EdgeTAM's cross-attention rule (Meta's RoPEAttentionv2, HF's RoPECrossAttention): q on
    q_grid; the keys before the last `num_k_exclude_rope` (object pointers, never rotated) are
    `k_repeat` equal frames whose trailing k_grid tokens are rotated and leading ones (global
    latents) are not. None when the call does not follow that structure (the caller then runs
    the original module, which raises its own error)."""
    n_rope = n_k - num_k_exclude_rope
    if q_grid[0] * q_grid[1] != n_q or not 0 <= num_k_exclude_rope <= n_k:
        return None
    if n_rope == 0:
        return Rope(tuple(q_grid), tuple(k_grid), 0, num_k_exclude_rope, theta)
    if k_repeat < 1 or n_rope % k_repeat != 0 or n_rope // k_repeat < k_grid[0] * k_grid[1]:
        return None
    return Rope(tuple(q_grid), tuple(k_grid), k_repeat, num_k_exclude_rope, theta)


def _cat_bias(*biases):
    """Stacked bias of a fused projection; callers ensure all or none are None."""
    return None if biases[0] is None else torch.cat(biases)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def lookup(module: torch.nn.Module, path: Sequence[str]):
    """module's submodule or parameter at `path` (names), read from the modules' own dicts.
    A patched forward reads the 40-odd weights of a perceiver on every call; get_parameter /
    attribute access cost 1-6 us each through nn.Module.__getattr__, this ~0.2 us. Anything
    not a plain submodule or parameter goes the slow, general way."""
    m = module
    try:
        for name in path[:-1]:
            m = m._modules[name]
        last = path[-1]
        hit = m._parameters.get(last)
        return hit if hit is not None else m._modules[last]
    except (KeyError, AttributeError):
        out = module
        for name in path:
            out = getattr(out, name)
        return out


def common_eps(norms) -> float:
    """The one eps of these LayerNorms (the perceiver op takes one), NaN if they differ."""
    eps = {n.eps for n in norms}
    return eps.pop() if len(eps) == 1 else float("nan")


def folds_value(p: Projections, value_dim: int) -> bool:
    """Whether `attend` folds the value projection into the output projection: with one head,

        softmax(S) (v W_v^T + b_v) W_o^T + b_o  =  (softmax(S) v) (W_o W_v)^T + (W_o b_v + b_o)

    (softmax rows sum to 1). It pays when the values come in narrower than the attention:
    memory attention's cross-attention reads 64-dim memory against 256-dim queries, so the
    attention's second product (probabilities x values) does a quarter of the work and the
    value and output projections become one 64 -> 256 GEMM. Exact in exact arithmetic; in
    floating point it rounds differently at the level of one fp32 ulp per operation."""
    return p.heads == 1 and value_dim < p.wv.shape[0]


def attend(q_in: Tensor, k_in: Tensor, v_in: Tensor, p: Projections, rope: Rope,
           options: dict, cache: Optional[dict] = None,
           key_mask: Optional[Tensor] = None) -> Tensor:
    """out_proj(rope_attention(q_proj(q_in), k_proj(k_in), v_proj(v_in))), (B, N, C) in/out.

    When q_in, k_in and v_in are the same tensor (memory attention's self-attention), the three
    projections run as one GEMM against the stacked weight [Wq; Wk; Wv]. With one head and
    values narrower than the attention, the value projection is folded into the output
    projection (`folds_value`); the folded weights are kept in `cache` (see `cached`).
    options["compute_dtype"] (e.g. torch.bfloat16) runs the projections and the attention in
    that dtype; the result comes back in q_in's dtype. key_mask: rope_attention's (B or 1, Nk)
    bool key validity (None: every key), passed through only when given.
    """
    out_dtype, cd = q_in.dtype, options.get("compute_dtype")
    fold = folds_value(p, v_in.shape[-1])
    if fold:
        dt = cd if cd is not None else p.wo.dtype
        w_ov, b_ov = cached(cache, ("value_fold", id(p.wo)), (p.wv, p.bv, p.wo, p.bo),
                            lambda: fold_value_into_output(p.wv, p.bv, p.wo, p.bo, dt), (dt,))
    if cd is not None and cd != out_dtype:
        same_kv, same_qk = k_in is v_in, q_in is k_in
        q_in = q_in.to(cd)
        k_in = q_in if same_qk else k_in.to(cd)
        v_in = k_in if same_kv else v_in.to(cd)
        p = Projections(*(_to(w, cd) for w in (p.wq, p.bq, p.wk, p.bk, p.wv, p.bv, p.wo, p.bo)),
                        heads=p.heads)
    if fold:
        q = F.linear(q_in, p.wq, p.bq)
        k = F.linear(k_in, p.wk, p.bk)
        v = v_in
    elif q_in is k_in and k_in is v_in and (p.bq is None) == (p.bk is None) == (p.bv is None):
        qkv = F.linear(q_in, torch.cat([p.wq, p.wk, p.wv]), _cat_bias(p.bq, p.bk, p.bv))
        q, k, v = qkv.split([p.wq.shape[0], p.wk.shape[0], p.wv.shape[0]], dim=-1)
    else:
        q = F.linear(q_in, p.wq, p.bq)
        if k_in is v_in and (p.bk is None) == (p.bv is None):
            kv = F.linear(k_in, torch.cat([p.wk, p.wv]), _cat_bias(p.bk, p.bv))
            k, v = kv.split([p.wk.shape[0], p.wv.shape[0]], dim=-1)
        else:
            k = F.linear(k_in, p.wk, p.bk)
            v = F.linear(v_in, p.wv, p.bv)
    q = _split_heads(q.contiguous(), p.heads)
    k = _split_heads(k.contiguous(), p.heads)
    v = _split_heads(v.contiguous(), p.heads)
    out = ops.rope_attention(
        q, k, v, q_grid=rope.q_grid, k_grid=rope.k_grid, k_repeat=rope.k_repeat,
        num_k_exclude_rope=rope.num_k_exclude_rope, theta=rope.theta,
        compute_dtype=cd, backend=options["backend"],
        **({} if key_mask is None else {"key_mask": key_mask}),
    )
    b, h, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, h * d)
    if fold:
        return F.linear(out, w_ov, b_ov).to(out_dtype)
    return F.linear(out, p.wo, p.bo).to(out_dtype)


def memory_attention_layer(
    x: Tensor,
    memory: Tensor,
    memory_pos: Optional[Tensor],
    norms: Sequence[Norm],
    self_attn: Tuple[Projections, Rope],
    cross_attn: Tuple[Projections, Rope],
    mlp: MLP,
    options: dict,
    query_pos: Optional[Tensor] = None,
    pos_at_self_attn: bool = False,
    pos_at_cross_queries: bool = False,
    cache: Optional[dict] = None,
) -> Tensor:
    """One memory-attention layer (SAM 2 / EdgeTAM), (B, N, C) queries, (B, M, Cm) memory:

        x = x + SA(LN1(x));  x = x + CA(LN2(x), memory + memory_pos, memory);  x = x + MLP(LN3(x))

    `pos_at_*` add `query_pos` where Meta's MemoryAttentionLayer options say so (both off in
    EdgeTAM and SAM 2.1). `cache`: where the cross-attention keeps its folded weights.
    Dropout is not applied: callers use this in eval mode only.
    options["compute_dtype"] runs the projections, attentions and MLP in that dtype; the
    LayerNorms and the residual stream stay in x's dtype.
    """
    h = norms[0](x)
    qk = h + query_pos if pos_at_self_attn else h
    x = x + attend(qk, qk, h, *self_attn, options)
    h = norms[1](x)
    q = h + query_pos if pos_at_cross_queries else h
    k = memory + memory_pos if memory_pos is not None else memory
    x = x + attend(q, k, memory, *cross_attn, options, cache)
    return x + mlp(norms[2](x), options.get("compute_dtype"))


def perceiver_layer(latents: Tensor, x: Tensor, pos: Optional[Tensor], w: Sequence[Tensor],
                    heads: int, use_self_attn: bool, eps: float, options: dict) -> Tensor:
    """One perceiver encoder layer; `w` in reference.PERCEIVER_LAYER_PARAMS order. The latent
    self-attention is the perceiver_attention op with the latents as their own keys/values."""
    backend = options["backend"]
    latents = latents + ops.perceiver_attention(latents, x, pos, *w[0:7], heads=heads, eps=eps,
                                                backend=backend)
    ff = Norm(w[7], w[8], eps)
    latents = latents + F.linear(F.gelu(F.linear(ff(latents), w[9])), w[10])
    if use_self_attn:
        ln_w, ln_b = w[11], w[12]
        latents = latents + ops.perceiver_attention(
            latents, latents, None, ln_w, ln_b, ln_w, ln_b, *w[13:16], heads=heads, eps=eps,
            backend=backend,
        )
        ff = Norm(w[16], w[17], eps)
        latents = latents + F.linear(F.gelu(F.linear(ff(latents), w[18])), w[19])
    return latents
