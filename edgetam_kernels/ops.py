"""The custom ops (namespace `edgetam`) and their public functional forms.

One path from the API to a kernel:

    edgetam_kernels.rope_attention(...)            public function: defaults, 3-D inputs
      -> torch.ops.edgetam.rope_attention(...)     torch.library op: opaque to torch.compile
           -> _checks.rope_attention(...)          every argument validated, errors name it
           -> _registry.resolve(...)               backend="auto" | "reference" | "cpu" | ...
           -> kernel(...)                          reference.py, cpu/, triton/ or metal/

Each op has a fake (meta) implementation for tracing and an autograd formula that recomputes
the reference in backward, so gradients are exact whichever kernel ran forward, and an `.out`
overload with the same arguments plus `*, Tensor(a!) out` for ExecuTorch (_out_variants.py).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from . import _checks, _registry, reference

# ---------------------------------------------------------------------------------------------
# Autograd: recompute the differentiable reference in backward
# ---------------------------------------------------------------------------------------------


def _register_reference_autograd(op, ref_fn, n_args: int) -> None:
    """Backward of `op` = vector-Jacobian product of `ref_fn` (same positional arguments, minus
    the trailing `backend`). Tensor and list-of-tensor arguments are differentiable."""

    def setup_context(ctx, inputs, output):
        flat, layout = [], []
        for a in inputs:
            if isinstance(a, Tensor):
                layout.append(("t", len(flat)))
                flat.append(a)
            elif isinstance(a, (list, tuple)) and a and all(isinstance(t, Tensor) for t in a):
                layout.append(("l", len(flat), len(a)))
                flat.extend(a)
            else:
                layout.append(("v", a))
        ctx.save_for_backward(*flat)
        ctx.layout = layout

    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            # Non-floating tensors (rope_attention's bool key_mask) are inputs, not leaves.
            leaves = [t.detach().requires_grad_() if t.is_floating_point() else t
                      for t in saved]
            args = []
            for entry in ctx.layout:
                if entry[0] == "t":
                    args.append(leaves[entry[1]])
                elif entry[0] == "l":
                    args.append(leaves[entry[1] : entry[1] + entry[2]])
                else:
                    args.append(entry[1])
            out = ref_fn(*args[:n_args])
            diff = [i for i, t in enumerate(leaves) if t.requires_grad]
            found = torch.autograd.grad(out, [leaves[i] for i in diff], grad_out,
                                        allow_unused=True)
            grads = [None] * len(leaves)
            for i, g in zip(diff, found):
                grads[i] = g
        result = []
        for entry in ctx.layout:
            if entry[0] == "t":
                result.append(grads[entry[1]])
            elif entry[0] == "l":
                result.append(list(grads[entry[1] : entry[1] + entry[2]]))
            else:
                result.append(None)
        return tuple(result)

    op.register_autograd(backward, setup_context=setup_context)


# ---------------------------------------------------------------------------------------------
# RoPE attention
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("edgetam::rope_attention", mutates_args=())
def _rope_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_grid: List[int],
    k_grid: List[int],
    k_repeat: int,
    num_k_exclude_rope: int,
    theta: float,
    scale: float,
    compute_dtype: Optional[torch.dtype],
    key_mask: Optional[Tensor],
    backend: str,
) -> Tensor:
    args = (q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope, theta, scale, compute_dtype,
            key_mask)
    _checks.rope_attention(*args)
    if q.numel() == 0 or v.shape[-1] == 0:  # nothing to compute; kernels never see empty work
        return q.new_empty((*q.shape[:3], v.shape[3]))
    kernel = _registry.resolve("rope_attention", backend, q.device.type, args)
    return kernel(*args)


@_rope_attention_op.register_fake
def _(q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope, theta, scale, compute_dtype,
      key_mask, backend):
    _checks.rope_attention(q, k, v, q_grid, k_grid, k_repeat, num_k_exclude_rope, theta, scale,
                           compute_dtype, key_mask)
    return q.new_empty((*q.shape[:3], v.shape[3]))


_register_reference_autograd(_rope_attention_op, reference.rope_attention, 11)


def rope_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    q_grid: Optional[Sequence[int]] = None,
    k_grid: Optional[Sequence[int]] = None,
    k_repeat: Optional[int] = None,
    num_k_exclude_rope: int = 0,
    theta: float = 10000.0,
    scale: Optional[float] = None,
    compute_dtype: Optional[torch.dtype] = None,
    key_mask: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    """Scaled dot-product attention with SAM 2 / EdgeTAM axial RoPE applied to q and k.

    q: (B, H, Nq, D) or (B, Nq, D); k: (B, H, Nk, D) or (B, Nk, D); v likewise with any Dv.
    - q_grid (rows, cols) of the queries; default: a square grid of Nq tokens.
    - The last `num_k_exclude_rope` keys (object pointers) are never rotated. The other keys form
      `k_repeat` equal frames; in each, the last k_grid[0] * k_grid[1] tokens are rotated on
      `k_grid` (default: q_grid) and any tokens before them are not.
      Default k_repeat: the rotated keys divided by the k grid size (they must divide exactly).
    - EdgeTAM cross-attention: k_grid=(16, 16), k_repeat=number of memory frames,
      num_k_exclude_rope=number of object-pointer tokens. SAM 2 self-attention: defaults.
    - scale: default 1/sqrt(D). compute_dtype: optional precision for the attention itself
      (e.g. torch.bfloat16 with fp32 inputs); the output has q's dtype.
    - key_mask: optional bool tensor (B, Nk) or (1, Nk) on q's device, shared by all heads;
      True = the key may be attended. Masked keys contribute exactly nothing: the result is
      attention over the valid keys alone, each keeping the RoPE position of its index in the
      full layout (a fixed-capacity memory bank's empty slots change no result). A batch row
      with no valid key gives zeros, not NaN. Masked keys may hold any finite values (zeros,
      stale memory); NaN or inf there is not guaranteed to be ignored (0 * NaN).
    - backend: "auto" (best available for the device; EDGETAM_KERNELS_BACKEND overrides),
      "reference", "cpu", "triton" or "metal" (raises if it cannot run these inputs).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.tensor(name, t)
    if key_mask is not None and not isinstance(key_mask, Tensor):  # the dispatcher's message
        raise TypeError(f"key_mask must be None or a bool torch.Tensor, got "  # would not say
                        f"{type(key_mask).__name__}")
    squeeze = q.dim() == 3
    if squeeze:
        if k.dim() != 3 or v.dim() != 3:
            raise ValueError("q is 3-D (B, N, D): k and v must be 3-D as well")
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    if q.dim() != 4:
        raise ValueError(f"q must be (B, H, N, D) or (B, N, D), got shape {tuple(q.shape)}")
    n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if q_grid is None:
        side = math.isqrt(n_q)
        if side * side != n_q:
            raise ValueError(f"q has {n_q} tokens, not a square grid: pass q_grid=(rows, cols)")
        q_grid = (side, side)
    q_grid = [int(s) for s in q_grid]
    k_grid = list(q_grid) if k_grid is None else [int(s) for s in k_grid]
    if k_repeat is None:
        n_rope = n_k - num_k_exclude_rope
        n_grid = k_grid[0] * k_grid[1]
        if n_rope <= 0:
            k_repeat = 0
        elif n_grid == 0 or n_rope % n_grid != 0:
            raise ValueError(
                f"cannot infer k_repeat: {n_rope} rotated keys are not a multiple of the k grid "
                f"({n_grid} tokens); pass k_repeat"
            )
        else:
            k_repeat = n_rope // n_grid
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    _registry.requested(backend)
    out = torch.ops.edgetam.rope_attention.default(
        q, k, v, q_grid, k_grid, int(k_repeat), int(num_k_exclude_rope), float(theta),
        float(scale), compute_dtype, key_mask, backend,
    )
    return out.squeeze(1) if squeeze else out


# ---------------------------------------------------------------------------------------------
# Perceiver cross-attention
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("edgetam::perceiver_attention", mutates_args=())
def _perceiver_attention_op(
    latents: Tensor,
    x: Tensor,
    pos: Optional[Tensor],
    ln_latents_w: Tensor,
    ln_latents_b: Tensor,
    ln_x_w: Tensor,
    ln_x_b: Tensor,
    w_q: Tensor,
    w_kv: Tensor,
    w_out: Tensor,
    heads: int,
    eps: float,
    backend: str,
) -> Tensor:
    args = (latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out,
            heads, eps)
    _checks.perceiver_attention(*args)
    if latents.numel() == 0:
        return torch.empty_like(latents)
    kernel = _registry.resolve("perceiver_attention", backend, latents.device.type, args)
    return kernel(*args)


@_perceiver_attention_op.register_fake
def _(latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out, heads, eps,
      backend):
    _checks.perceiver_attention(latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q,
                                w_kv, w_out, heads, eps)
    return torch.empty_like(latents)


_register_reference_autograd(_perceiver_attention_op, reference.perceiver_attention, 12)


def perceiver_attention(
    latents: Tensor,
    x: Tensor,
    pos: Optional[Tensor],
    ln_latents_w: Tensor,
    ln_latents_b: Tensor,
    ln_x_w: Tensor,
    ln_x_b: Tensor,
    w_q: Tensor,
    w_kv: Tensor,
    w_out: Tensor,
    *,
    heads: int = 1,
    eps: float = 1e-5,
    backend: str = "auto",
) -> Tensor:
    """EdgeTAM's perceiver cross-attention block, residual not included.

    latents (B, L, C) attend to tokens x (B, N, C):
    out = w_out softmax(q k^T / sqrt(C_head)) v, with q = w_q LN(latents),
    [k, v] = w_kv LN(x) (k first) and pos (B or 1, N, inner) added to both k and v.
    """
    _checks.tensor("latents", latents)
    _checks.tensor("x", x)
    _registry.requested(backend)
    return torch.ops.edgetam.perceiver_attention.default(
        latents, x, pos, ln_latents_w, ln_latents_b, ln_x_w, ln_x_b, w_q, w_kv, w_out,
        int(heads), float(eps), backend,
    )


# ---------------------------------------------------------------------------------------------
# Spatial perceiver (global + patch query pooling)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("edgetam::spatial_perceiver", mutates_args=())
def _spatial_perceiver_op(
    x: Tensor,
    pos: Optional[Tensor],
    latents_1d: Optional[Tensor],
    latents_2d: Optional[Tensor],
    weights: List[Tensor],
    norm_w: Tensor,
    norm_b: Tensor,
    depth: int,
    heads: int,
    use_self_attn: bool,
    eps: float,
    compute_dtype: Optional[torch.dtype],
    backend: str,
) -> Tensor:
    args = (x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth, heads, use_self_attn,
            eps, compute_dtype)
    _checks.spatial_perceiver(*args, reference.params_per_layer(use_self_attn))
    if x.shape[0] == 0 or x.shape[1] == 0:
        n = sum(t.shape[0] for t in (latents_1d, latents_2d) if t is not None)
        return x.new_empty((x.shape[0], n, x.shape[1]))
    kernel = _registry.resolve("spatial_perceiver", backend, x.device.type, args)
    return kernel(*args)


@_spatial_perceiver_op.register_fake
def _(x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth, heads, use_self_attn, eps,
      compute_dtype, backend):
    _checks.spatial_perceiver(x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, depth,
                              heads, use_self_attn, eps, compute_dtype,
                              reference.params_per_layer(use_self_attn))
    n = sum(t.shape[0] for t in (latents_1d, latents_2d) if t is not None)
    return x.new_empty((x.shape[0], n, x.shape[1]))


_register_reference_autograd(_spatial_perceiver_op, reference.spatial_perceiver, 12)


def spatial_perceiver(
    x: Tensor,
    pos: Optional[Tensor],
    latents_1d: Optional[Tensor],
    latents_2d: Optional[Tensor],
    weights: Sequence[Tensor],
    norm_w: Tensor,
    norm_b: Tensor,
    *,
    depth: int,
    heads: int = 1,
    use_self_attn: bool = True,
    eps: float = 1e-5,
    compute_dtype: Optional[torch.dtype] = None,
    backend: str = "auto",
) -> Tensor:
    """EdgeTAM's 2D Spatial Perceiver: memory features x (B, C, H, W) -> latents (B, L1+L2, C).

    `weights` is the flat per-layer list in `reference.PERCEIVER_LAYER_PARAMS` order
    (`edgetam_kernels.patch.perceiver_weights(module)` extracts it from Meta's or HF's module).
    Global latents (L1, C) attend to all tokens with `pos` (B, C, H, W) added to keys and
    values; patch latents (L2, C) each attend to their own window; one final LayerNorm.

    compute_dtype: None (the inputs' dtype), torch.float32, torch.bfloat16 or torch.float16:
    the precision of the global latents' cross-attention products only (q k^T and p v, about
    61 % of the FLOPs at EdgeTAM's shape). Accumulation, softmax, LayerNorms, projections,
    feed-forwards, the patch latents' window attention and the latent self-attention stay in
    the input precision; the output has x's dtype. It permits, and does not promise, lower
    precision: a backend without a faster path for it computes more precisely (cpu: bf16 on
    AMX where the CPU has it, else fp32; fp16 as fp32. triton and metal: the input dtype).
    """
    _checks.tensor("x", x)
    _checks.compute_dtype_in(compute_dtype, _checks.PERCEIVER_COMPUTE_DTYPES)
    weights = list(weights)
    for i, t in enumerate(weights):  # the dispatcher's own message would not name the index
        if not isinstance(t, Tensor):
            _checks.tensor(f"weights[{i}]", t)
    _registry.requested(backend)
    return torch.ops.edgetam.spatial_perceiver.default(
        x, pos, latents_1d, latents_2d, weights, norm_w, norm_b, int(depth), int(heads),
        bool(use_self_attn), float(eps), compute_dtype, backend,
    )


# ---------------------------------------------------------------------------------------------
# Autocast: mixed-precision regions (torch.autocast) run the ops in the region's dtype
# ---------------------------------------------------------------------------------------------
# Without a rule, autocast hands an op whatever dtypes its producers left (bf16 activations from
# autocast's linears beside fp32 LayerNorm weights) and the dtype checks reject the mix. The rule
# is the one torch applies to its own attention and linear ops: floating inputs of the region's
# device are cast to the region's dtype (read at call time, so fp16 and bf16 regions both work),
# the op runs with autocast off, and the result has that dtype. The kernels still accumulate,
# normalise and take softmax in fp32.


def _cast_for_autocast(value, device_type: str, dtype: torch.dtype):
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.device.type == device_type and \
                value.dtype != torch.float64:
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_for_autocast(v, device_type, dtype) for v in value)
    return value


def _autocast_kernel(op, device_type: str, dispatch_key):
    def kernel(_keyset, *args):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(dispatch_key)):
            return op(*_cast_for_autocast(args, device_type, dtype))

    return kernel


_AUTOCAST_LIB = torch.library.Library("edgetam", "IMPL")  # lives as long as the module


def _register_autocast() -> None:
    ops = {"rope_attention": torch.ops.edgetam.rope_attention.default,
           "perceiver_attention": torch.ops.edgetam.perceiver_attention.default,
           "spatial_perceiver": torch.ops.edgetam.spatial_perceiver.default}
    for device_type in ("cpu", "cuda", "mps"):
        if not torch.amp.is_autocast_available(device_type):
            continue
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        for name, op in ops.items():
            _AUTOCAST_LIB.impl(name, _autocast_kernel(op, device_type,
                                                      getattr(torch._C.DispatchKey, key)),
                               key, with_keyset=True)


_register_autocast()

# The ops' `.out` overloads (ExecuTorch runs those); defined once the functional ops exist.
from . import _out_variants  # noqa: E402,F401
