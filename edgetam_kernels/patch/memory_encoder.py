"""The memory encoder, channels-last on CPU (patch option `fuse_memory_encoder`).

EdgeTAM's (and SAM 2's) memory encoder turns the frame's mask (B, 1, S, S) and image features
(B, 256, S/16, S/16) into the memory features (B, 64, S/16, S/16). Meta's `sam2`, Hugging Face's
`transformers` and our own `edgetam/` all write it the same way, in NCHW:

- mask downsampler: k x [3x3 stride-2 conv, channels-first LayerNorm, GELU], then a 1x1 conv;
- pix_feat_proj (1x1 conv) of the image features, plus the downsampled mask;
- fuser: ConvNeXt blocks `x + gamma * pw2(gelu(pw1(LN(dwconv7x7(x)))))`, the LayerNorm and the
  two "1x1 convs" (Linears) done on a permuted copy, permuted back;
- out_proj (1x1 conv, 256 -> 64), sine position encoding.

On a CPU most of that is memory traffic: the channels-first LayerNorms are eight elementwise
passes each (Meta's `LayerNorm2d`: mean, subtract, square, mean, add, sqrt, divide, scale) or two
permuted copies (HF's), at 512x512x4 ... 64x64x256, and every block permutes twice. Patched, the
activations stay channels-last (NHWC) from the first conv to the last GEMM:

- each LayerNorm is one `F.layer_norm` over the last dimension, each GELU runs in place;
- the downsampler's convs and the depth-wise 7x7 convs run on NHWC tensors (oneDNN's layout);
- 1x1 convs and Linears are row GEMMs: the downsampler's last conv and pix_feat_proj one GEMM
  pair into one output (biases summed), the image features read transposed by the GEMM itself,
  out_proj writing NCHW directly, so no layout conversion is ever materialised;
- in each block the LayerNorm's affine is folded into pw1 (W1 diag(w), b1 + W1 b) and the layer
  scale gamma into pw2 (diag(gamma) W2, gamma b2), in float64, rounded once; the MLP runs in
  row chunks whose 1024-wide hidden activation stays in cache, the residual added by the second
  GEMM (`addmm_` into residual + bias).

The same function in exact arithmetic; in fp32 the rounding differs at the 1e-7 level
(tests/patch/test_patch_memory_encoder.py compares with the float64 module).

Patched classes (each can also be patched alone): the memory encoder, the mask downsampler,
the fuser and the ConvNeXt block, for Meta (`sam2.modeling.memory_encoder`), HF
(`EdgeTamVideoMemoryEncoder`, `...MaskDownSampler`, `...MemoryFuser`, `...MemoryFuserCXBlock`)
and any model that registers its classes with `register_classes` (edgetam/ does, for
`edgetam.memory`). The fused path runs only where it computes what the original
would: CPU float32 tensors, eval mode, no gradient wanted (for the inputs or any weight), no CPU
autocast, not under torch.compile, and every bypassed submodule of a known class with the
expected structure, without hooks (module or global) and without an instance forward (other
than this library's own patch). Anything else runs the original forward, checked per call.
Folded weights are copies kept in the patch state (the module's parameters and state dict are
untouched), recomputed when a source tensor is replaced or edited in place (`cached`).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..derived import cached
from ._core import class_key, has_own_forward, register_adapter
from ..reparam import work_dtype

_OPTION = "fuse_memory_encoder"
_META = "sam2.modeling.memory_encoder"
_HF = "transformers.models.edgetam_video.modeling_edgetam_video"

# Channels-first LayerNorms with `weight`, `bias`, `eps` over dim 1 (other models add theirs)
LAYER_NORMS_2D = {"sam2.modeling.sam2_utils.LayerNorm2d"}
_HF_LN = f"{_HF}.EdgeTamVideoLayerNorm"
_HF_GELU = "transformers.activations.GELUActivation"
_META_DROP_PATH = "sam2.modeling.sam2_utils.DropPath"

# Hidden activation of the blocks' MLP per row chunk: 2 MB (512 rows of 1024 fp32) is reused heap
# memory that stays in cache between the two GEMMs (the whole one is 16 MB at 64 x 64 and
# batch 1; from 32 MB on, every fresh buffer would be an mmap faulting its pages in per call).
# 512 to 4096 rows measured alike on the 2-core machine at batch 1.
_MLP_CHUNK_BYTES = 2 << 20

_gelu_ = torch.ops.aten.gelu_


# ---------------------------------------------------------------------------------------------
# Structure: the host's modules -> small records (None where anything differs)
# ---------------------------------------------------------------------------------------------


class _Norm(NamedTuple):
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float


class _Stage(NamedTuple):  # downsampler: conv, LayerNorm, GELU
    conv: nn.Conv2d
    norm: _Norm
    approximate: str


class _Block(NamedTuple):  # ConvNeXt block
    dwconv: nn.Conv2d
    norm: _Norm
    pw1: nn.Linear
    approximate: str
    pw2: nn.Linear
    gamma: Optional[Tensor]


class _Downsampler(NamedTuple):
    stages: Tuple[_Stage, ...]
    final: nn.Conv2d


class _Fuser(NamedTuple):
    proj: Optional[nn.Conv2d]  # Meta's optional input projection
    blocks: Tuple[_Block, ...]


class _Encoder(NamedTuple):
    downsampler: _Downsampler
    proj: nn.Conv2d  # of the image features
    fuser: _Fuser
    out_proj: Optional[nn.Conv2d]


class _Walk:
    """Collects the modules a fused forward bypasses (their hooks would not run)."""

    def __init__(self):
        self.modules: List[nn.Module] = []

    def add(self, m):
        if isinstance(m, nn.Module):
            self.modules.append(m)
        return m


def _conv(m) -> bool:
    return type(m) is nn.Conv2d and m.padding_mode == "zeros"


def _pointwise(m, cin: int, cout: Optional[int] = None) -> bool:
    return (_conv(m) and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.padding in ((0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1
            and m.in_channels == cin and (cout is None or m.out_channels == cout))


def _linear(m, cin: int, cout: Optional[int] = None) -> bool:
    return type(m) is nn.Linear and m.in_features == cin and (cout is None
                                                              or m.out_features == cout)


def _vector(t, n: int) -> bool:
    return t is None or (isinstance(t, Tensor) and t.shape == (n,))


def _norm(m, channels: int, w: _Walk) -> Optional[_Norm]:
    """A channels-first LayerNorm over `channels` (Meta's and our LayerNorm2d, HF's
    EdgeTamVideoLayerNorm with data_format="channels_first")."""
    key = class_key(m)
    if key in LAYER_NORMS_2D:
        ok = isinstance(m.weight, Tensor) and isinstance(m.bias, Tensor)
    elif key == _HF_LN:
        ok = m.data_format == "channels_first" and tuple(m.normalized_shape) == (channels,)
    else:
        return None
    if not (ok and _vector(m.weight, channels) and _vector(m.bias, channels)):
        return None
    w.add(m)
    return _Norm(m.weight, m.bias, float(m.eps))


def _gelu(m, w: _Walk) -> Optional[str]:
    """GELU's `approximate` for nn.GELU or transformers' GELUActivation (F.gelu); else None."""
    if type(m) is nn.GELU:
        w.add(m)
        return m.approximate
    if class_key(m) == _HF_GELU and m.__dict__.get("act") is F.gelu:
        w.add(m)
        return "none"
    return None


def _same_size(c: nn.Conv2d) -> bool:
    """Stride-1 conv whose output has its input's size (a block's depth-wise conv)."""
    if c.stride != (1, 1) or c.in_channels != c.out_channels:
        return False
    if c.padding == "same":
        return True
    return (isinstance(c.padding, tuple)
            and all(2 * p == d * (k - 1) for p, d, k in zip(c.padding, c.dilation, c.kernel_size)))


# ConvNeXt block class -> its (depth-wise conv, LayerNorm, Linear 1, GELU or None for a
# functional exact GELU, Linear 2, layer scale) attribute names
BLOCKS = {
    f"{_META}.CXBlock": ("dwconv", "norm", "pwconv1", "act", "pwconv2", "gamma"),
    f"{_HF}.EdgeTamVideoMemoryFuserCXBlock": ("depthwise_conv", "layer_norm", "pointwise_conv1",
                                              "activation", "pointwise_conv2", "scale"),
}
# fuser class -> the attribute name of its input projection (None: it has none)
FUSERS = {f"{_META}.Fuser": "proj", f"{_HF}.EdgeTamVideoMemoryFuser": None}
# mask downsamplers written as an nn.Sequential `encoder` of [conv, LayerNorm, GELU] x k + conv
SEQUENTIAL_DOWNSAMPLERS = {f"{_META}.MaskDownSampler"}


def _block(m, w: _Walk) -> Optional[_Block]:
    key = class_key(m)
    names = BLOCKS.get(key)
    if names is None:
        return None
    if key == f"{_META}.CXBlock":
        drop = m._modules.get("drop_path")
        if not (type(drop) is nn.Identity or class_key(drop) == _META_DROP_PATH):
            return None
        w.add(drop)
    dw = getattr(m, names[0], None)
    if not (_conv(dw) and _same_size(dw)):
        return None
    c = dw.out_channels
    norm = _norm(getattr(m, names[1], None), c, w)
    approximate = "none" if names[3] is None else _gelu(getattr(m, names[3], None), w)
    pw1, pw2 = getattr(m, names[2], None), getattr(m, names[4], None)
    gamma = getattr(m, names[5], None)
    if (norm is None or approximate is None or not _linear(pw1, c)
            or not _linear(pw2, pw1.out_features, c) or not _vector(gamma, c)):
        return None
    for sub in (m, dw, pw1, pw2):
        w.add(sub)
    return _Block(dw, norm, pw1, approximate, pw2, gamma)


def _fuser(m, w: _Walk) -> Optional[_Fuser]:
    key = class_key(m)
    if key not in FUSERS:
        return None
    layers = m._modules.get("layers")
    if type(layers) is not nn.ModuleList or len(layers) == 0:
        return None
    blocks = tuple(_block(b, w) for b in layers)
    if any(b is None for b in blocks):
        return None
    c = blocks[0].dwconv.in_channels
    if any(b.dwconv.in_channels != c for b in blocks):
        return None
    proj = m._modules.get(FUSERS[key]) if FUSERS[key] is not None else None
    if type(proj) is nn.Identity:
        w.add(proj)
        proj = None
    elif proj is not None and not _pointwise(proj, c, c):
        return None
    w.add(m)
    w.add(layers)
    w.add(proj)
    return _Fuser(proj, blocks)


def _downsampler(m, w: _Walk) -> Optional[_Downsampler]:
    key = class_key(m)
    if key in SEQUENTIAL_DOWNSAMPLERS:
        seq = m._modules.get("encoder")
        if type(seq) is not nn.Sequential or len(seq) < 4 or len(seq) % 3 != 1:
            return None
        mods = list(seq)
        triples = [mods[i:i + 3] for i in range(0, len(mods) - 1, 3)]
        final = mods[-1]
        w.add(seq)
    elif key == f"{_HF}.EdgeTamVideoMaskDownSampler":
        layers = m._modules.get("layers")
        if type(layers) is not nn.ModuleList or len(layers) == 0:
            return None
        triples = []
        for layer in layers:
            if class_key(layer) != f"{_HF}.EdgeTamVideoMaskDownSamplerLayer":
                return None
            triples.append([layer._modules.get(n) for n in ("conv", "layer_norm", "activation")])
            w.add(layer)
        final = m._modules.get("final_conv")
        w.add(layers)
    else:
        return None
    stages, cin = [], 1
    for conv, norm, act in triples:
        if not (_conv(conv) and conv.in_channels == cin):
            return None
        cin = conv.out_channels
        n, a = _norm(norm, cin, w), _gelu(act, w)
        if n is None or a is None:
            return None
        w.add(conv)
        stages.append(_Stage(conv, n, a))
    if not _pointwise(final, cin):
        return None
    w.add(final)
    w.add(m)
    return _Downsampler(tuple(stages), final)


ENCODERS = {  # class -> (downsampler, image-feature projection, fuser, output projection)
    f"{_META}.MemoryEncoder": ("mask_downsampler", "pix_feat_proj", "fuser", "out_proj"),
    f"{_HF}.EdgeTamVideoMemoryEncoder": ("mask_downsampler", "feature_projection",
                                         "memory_fuser", "projection"),
}


def _encoder(m, w: _Walk) -> Optional[_Encoder]:
    names = ENCODERS.get(class_key(m))
    if names is None:
        return None
    ds = _downsampler(m._modules.get(names[0]), w)
    fuser = _fuser(m._modules.get(names[2]), w)
    if ds is None or fuser is None:
        return None
    c = fuser.blocks[0].dwconv.in_channels
    proj, out = m._modules.get(names[1]), m._modules.get(names[3])
    if ds.final.out_channels != c or not (_conv(proj) and _pointwise(proj, proj.in_channels, c)):
        return None
    if type(out) is nn.Identity:
        w.add(out)
        out = None
    elif not _pointwise(out, c):
        return None
    w.add(proj)
    w.add(out)
    return _Encoder(ds, proj, fuser, out)


def _global_hooks() -> bool:
    from torch.nn.modules import module as mm

    return bool(mm._global_forward_hooks or mm._global_forward_pre_hooks
                or getattr(mm, "_global_forward_hooks_always_called", None))


def _untouched(modules: Sequence[nn.Module], root: nn.Module) -> bool:
    """No hooks, no training mode and no foreign instance forward on the bypassed modules.
    `root` is the patched module itself: its hooks run around the patched forward anyway."""
    for m in modules:
        if m.training:
            return False
        if m is root:
            continue
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        # this library's own patch of a submodule computes the same function; anything
        # else the user put there might not
        if has_own_forward(m):
            return False
    return True


def _plan(kind, module):
    """The module's record and the list of its bypassed submodules, or None (run the original)."""
    if _global_hooks():
        return None
    w = _Walk()
    rec = kind(module, w)
    if rec is None or not _untouched(w.modules, module):
        return None
    return rec


def _tensors(*xs) -> bool:
    """CPU float32 inputs, no autograd wanted for them, no CPU autocast or compile."""
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    grad = torch.is_grad_enabled()
    for x in xs:
        if not (isinstance(x, Tensor) and x.device.type == "cpu" and x.dtype == torch.float32
                and x.dim() == 4 and x.numel() > 0 and not (grad and x.requires_grad)):
            return False
    return True


def _weights_ok(rec, *extra) -> bool:
    """All weights float32 on the CPU; no gradient wanted for any of them."""
    grad = torch.is_grad_enabled()
    for t in _sources(rec) + extra:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype != torch.float32 or (grad and t.requires_grad):
            return False
    return True


def _sources(rec) -> tuple:
    if isinstance(rec, _Block):
        return (rec.dwconv.weight, rec.dwconv.bias, rec.norm.weight, rec.norm.bias,
                rec.pw1.weight, rec.pw1.bias, rec.pw2.weight, rec.pw2.bias, rec.gamma)
    if isinstance(rec, _Fuser):
        out = () if rec.proj is None else (rec.proj.weight, rec.proj.bias)
        return out + sum((_sources(b) for b in rec.blocks), ())
    if isinstance(rec, _Downsampler):
        out = (rec.final.weight, rec.final.bias)
        for s in rec.stages:
            out += (s.conv.weight, s.conv.bias, s.norm.weight, s.norm.bias)
        return out
    if isinstance(rec, _Encoder):
        out = (rec.proj.weight, rec.proj.bias)
        if rec.out_proj is not None:
            out += (rec.out_proj.weight, rec.out_proj.bias)
        return out + _sources(rec.downsampler) + _sources(rec.fuser)
    raise TypeError(type(rec))


# ---------------------------------------------------------------------------------------------
# Folded weights (float64, rounded once)
# ---------------------------------------------------------------------------------------------


def _wide(t: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    return None if t is None else t.detach().to(work_dtype(like))


def _fold_block_wide(b: _Block) -> tuple:
    """(W1', b1', W2', b2') in the work dtype, with the LayerNorm affine in pw1 and gamma in
    pw2: pw1(w * n + c) = (W1 diag(w)) n + (b1 + W1 c); gamma (W2 h + b2) = (diag(gamma) W2) h
    + gamma b2."""
    w1 = b.pw1.weight
    W1, B1 = _wide(w1, w1), _wide(b.pw1.bias, w1)
    if B1 is None:
        B1 = torch.zeros(W1.shape[0], dtype=W1.dtype, device=W1.device)
    lw, lb = _wide(b.norm.weight, w1), _wide(b.norm.bias, w1)
    if lb is not None:
        B1 = B1 + W1 @ lb
    if lw is not None:
        W1 = W1 * lw[None, :]
    W2, B2 = _wide(b.pw2.weight, w1), _wide(b.pw2.bias, w1)
    if B2 is None:
        B2 = torch.zeros(W2.shape[0], dtype=W2.dtype, device=W2.device)
    g = _wide(b.gamma, w1)
    if g is not None:
        W2, B2 = W2 * g[:, None], B2 * g
    return W1, B1, W2, B2


def _fold_block(b: _Block) -> tuple:
    """(W1', b1', W2', b2') of `_fold_block_wide`, rounded once to the weights' dtype."""
    dt = b.pw1.weight.dtype
    return tuple(t.to(dt) for t in _fold_block_wide(b))


def _fold_last_block(b: _Block, out_proj: nn.Conv2d) -> tuple:
    """The last block with the encoder's out_proj (1x1, W_o, b_o) after it: W_o (x + W2' h +
    b2') + b_o = W_o x + (W_o W2') h + (W_o b2' + b_o). (W1', b1', W_o W2', W_o b2' + b_o):
    the second GEMM makes 64 channels instead of 256 (at 64 x 64 about 1.6 of the encoder's
    10 GFLOP less), and the block's 256-channel output is never made."""
    W1, B1, W2, B2 = _fold_block_wide(b)
    wo = _wide(_weight2d(out_proj), W2)
    wc, bc = wo @ W2, wo @ B2
    if out_proj.bias is not None:
        bc = bc + _wide(out_proj.bias, W2)
    dt = b.pw1.weight.dtype
    return W1.to(dt), B1.to(dt), wc.to(dt), bc.to(dt)


def _sum_bias(*biases) -> Optional[Tensor]:
    present = [b for b in biases if b is not None]
    if not present:
        return None
    total = _wide(present[0], present[0])
    for b in present[1:]:
        total = total + _wide(b, b)
    return total.to(present[0].dtype)


# ---------------------------------------------------------------------------------------------
# Channels-last computation. NHWC tensors are (B, H, W, C) contiguous; `_cl` gives the
# (B, C, H, W) channels-last view convs take.
# ---------------------------------------------------------------------------------------------


def _cl(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _conv_nhwc(conv: nn.Conv2d, x_cl: Tensor) -> Tensor:
    """conv of a channels-last (B, C, H, W) tensor, as NHWC."""
    y = F.conv2d(x_cl, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                 conv.groups).permute(0, 2, 3, 1)
    return y if y.is_contiguous() else y.contiguous()


def _planar_layer_norm(y: Tensor, norm: _Norm) -> Tensor:
    """LayerNorm over the channels of a contiguous NCHW tensor with few channels, two-pass
    like the hosts' (mean, then the mean of squared deviations): for 4 or 16 channels
    `F.layer_norm` on NHWC rows spends its time per row (9 ms at 512 x 512 x 4 on one core,
    this 2.4 ms)."""
    d = y - y.mean(1, keepdim=True)
    rstd = d.square().mean(1, keepdim=True).add_(norm.eps).rsqrt_()
    d.mul_(rstd)
    if norm.weight is None:
        return d if norm.bias is None else d.add_(norm.bias[:, None, None])
    if norm.bias is None:
        return d.mul_(norm.weight[:, None, None])
    return torch.addcmul(norm.bias[:, None, None], d, norm.weight[:, None, None])


# Up to this many channels a downsampler stage stays NCHW (planar LayerNorm); wider ones run
# channels-last with F.layer_norm over the last dim.
_PLANAR_CHANNELS = 16


def _downsample(ds: _Downsampler, masks: Tensor) -> Tensor:
    """The stages (conv, LayerNorm, GELU) of the mask downsampler, NHWC out (before its final
    1x1 conv). The first, narrow stages (4 and 16 channels at 512^2 and 256^2 from a 1024
    mask) are NCHW, the rest channels-last."""
    x, y, nhwc = masks, None, False
    for s in ds.stages:
        if s.conv.out_channels <= _PLANAR_CHANNELS and not nhwc:
            y = F.conv2d(x, s.conv.weight, s.conv.bias, s.conv.stride, s.conv.padding,
                         s.conv.dilation, s.conv.groups).contiguous()
            y = _planar_layer_norm(y, s.norm)
            _gelu_(y, approximate=s.approximate)
            x = y
        else:
            if not nhwc:
                x, nhwc = x.contiguous(memory_format=torch.channels_last), True
            y = _conv_nhwc(s.conv, x)
            y = F.layer_norm(y, y.shape[-1:], s.norm.weight, s.norm.bias, s.norm.eps)
            _gelu_(y, approximate=s.approximate)
            x = _cl(y)
    return y if nhwc else y.permute(0, 2, 3, 1).contiguous()


def _rows(x: Tensor) -> Tensor:
    return x.view(-1, x.shape[-1])


def _weight2d(conv: nn.Conv2d) -> Tensor:
    return conv.weight.view(conv.out_channels, conv.in_channels)


def _block_nhwc(b: _Block, folded: tuple, x: Tensor,
                out_proj: Optional[nn.Conv2d] = None) -> Tensor:
    """One ConvNeXt block on an NHWC tensor: x + gamma * pw2(gelu(pw1(LN(dwconv(x))))), the
    MLP in row chunks, the residual added by the second GEMM. With `out_proj` (and `folded`
    from `_fold_last_block`): out_proj of that, as NHWC rows of its channels."""
    w1, b1, w2, b2 = folded
    y = _conv_nhwc(b.dwconv, _cl(x))
    y = _rows(F.layer_norm(y, y.shape[-1:], None, None, b.norm.eps))  # affine is in w1, b1
    xr = _rows(x)
    n = xr.shape[0]
    out = xr.new_empty(n, w2.shape[0])
    wo = None if out_proj is None else _weight2d(out_proj).t()
    rows = max(64, _MLP_CHUNK_BYTES // (w1.shape[0] * xr.element_size()))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        h = F.linear(y[start:stop], w1, b1)
        _gelu_(h, approximate=b.approximate)
        o = out[start:stop]
        if wo is None:
            torch.add(xr[start:stop], b2, out=o)
        else:
            torch.addmm(b2, xr[start:stop], wo, out=o)
        o.addmm_(h, w2.t())
    return out.view(*x.shape[:-1], w2.shape[0])


def _fuser_nhwc(state: dict, f: _Fuser, x: Tensor,
                out_proj: Optional[nn.Conv2d] = None) -> Tensor:
    """The fuser on an NHWC tensor; with `out_proj`, out_proj of its output (NHWC)."""
    if f.proj is not None:
        x = F.linear(x, _weight2d(f.proj), f.proj.bias)
    last = len(f.blocks) - 1
    for i, b in enumerate(f.blocks):
        if i == last and out_proj is not None:
            folded = cached(state, ("last", i), _sources(b) + (out_proj.weight, out_proj.bias),
                            lambda b=b: _fold_last_block(b, out_proj), (b.norm.eps,))
            return _block_nhwc(b, folded, x, out_proj)
        folded = cached(state, ("block", i), _sources(b), lambda b=b: _fold_block(b),
                        (b.norm.eps,))
        x = _block_nhwc(b, folded, x)
    return x


def _nhwc_to_nchw(x: Tensor, conv: Optional[nn.Conv2d]) -> Tensor:
    """conv(x) (1x1, or none) of an NHWC tensor as a contiguous NCHW tensor: per sample one
    GEMM W x^T, which writes the transposed layout directly."""
    bsz, h, w, c = x.shape
    if conv is None:
        return _cl(x).contiguous()
    co = conv.out_channels
    out = torch.empty(bsz, co, h, w, dtype=x.dtype, device=x.device)
    wt = _weight2d(conv)
    for i in range(bsz):
        xt = x[i].view(h * w, c).t()
        if conv.bias is None:
            torch.mm(wt, xt, out=out[i].view(co, h * w))
        else:
            torch.addmm(conv.bias[:, None], wt, xt, out=out[i].view(co, h * w))
    return out


def _encode(state: dict, e: _Encoder, pix: Tensor, masks: Tensor) -> Tensor:
    """out_proj(fuser(pix_feat_proj(pix) + downsampler(masks))), NCHW out."""
    d = _downsample(e.downsampler, masks)
    bsz, h, w, _ = d.shape
    c = e.proj.out_channels
    bias = cached(state, "bias", (e.downsampler.final.bias, e.proj.bias),
                  lambda: _sum_bias(e.downsampler.final.bias, e.proj.bias))
    x = F.linear(_rows(d), _weight2d(e.downsampler.final), bias)  # (B h w, C)
    wp = _weight2d(e.proj).t()
    cin = e.proj.in_channels
    for i in range(bsz):  # + pix_feat_proj(pix), the GEMM reading pix transposed
        x[i * h * w:(i + 1) * h * w].addmm_(pix[i].reshape(cin, h * w).t(), wp)
    x = _fuser_nhwc(state, e.fuser, x.view(bsz, h, w, c), e.out_proj)
    return _cl(x).contiguous()  # (B, 64, h, w): a 1 MB transposition at 64 x 64


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------


def _check(kind, make):
    """Factory: decline at patch time where the structure differs (nothing to speed up)."""
    def factory(module, state, original):
        if kind(module, _Walk()) is None:
            return None
        return make(module, state, original)

    return factory


def _nchw_blocks(kind):
    """Adapter for a fuser or a ConvNeXt block patched alone (a block runs as a one-block
    fuser): NCHW in and out, NHWC in between."""
    def adapter(module, state, original):
        def forward(self, x):
            rec = _plan(kind, self) if _tensors(x) else None
            if rec is None or not _weights_ok(rec):
                return original(x)
            fuser = rec if isinstance(rec, _Fuser) else _Fuser(None, (rec,))
            if x.shape[1] != fuser.blocks[0].dwconv.in_channels:
                return original(x)
            y = _fuser_nhwc(state, fuser, x.permute(0, 2, 3, 1).contiguous())
            return _cl(y).contiguous()

        return forward

    return adapter


def _downsampler_forward(module, state, original):
    def forward(self, x):
        rec = _plan(_downsampler, self) if _tensors(x) else None
        if rec is None or not _weights_ok(rec) or x.shape[1] != 1:
            return original(x)
        return _nhwc_to_nchw(_downsample(rec, x), rec.final)

    return forward


def _encoder_ready(rec, pix, masks) -> bool:
    return (rec is not None and _weights_ok(rec) and masks.shape[1] == 1
            and pix.shape[0] == masks.shape[0] and pix.shape[1] == rec.proj.in_channels)


def _fits(d_shape, pix) -> bool:
    return tuple(d_shape[1:3]) == tuple(pix.shape[2:])


def _meta_encoder(module, state, original):
    def forward(self, pix_feat, masks, skip_mask_sigmoid=False):
        rec = _plan(_encoder, self) if _tensors(pix_feat, masks) else None
        if not _encoder_ready(rec, pix_feat, masks) or not _fits(_out_grid(rec, masks), pix_feat):
            return original(pix_feat, masks, skip_mask_sigmoid)
        if not skip_mask_sigmoid:
            masks = F.sigmoid(masks)
        x = _encode(state, rec, pix_feat, masks)
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}

    return forward


def _hf_encoder(module, state, original):
    def forward(self, vision_features, masks):
        rec = _plan(_encoder, self) if _tensors(vision_features, masks) else None
        if (not _encoder_ready(rec, vision_features, masks)
                or not _fits(_out_grid(rec, masks), vision_features)):
            return original(vision_features, masks)
        x = _encode(state, rec, vision_features, masks)
        pos = self.position_encoding(x.shape, x.device, x.dtype)
        return x, pos

    return forward


def tuple_encoder(position):
    """Adapter factory for a memory encoder called as forward(pix_feat, masks) -> (features,
    pos) with pos = position(features) (for `register_classes`)."""
    def adapter(module, state, original):
        def forward(self, pix_feat, masks):
            rec = _plan(_encoder, self) if _tensors(pix_feat, masks) else None
            if (not _encoder_ready(rec, pix_feat, masks)
                    or not _fits(_out_grid(rec, masks), pix_feat)):
                return original(pix_feat, masks)
            x = _encode(state, rec, pix_feat, masks)
            return x, position(x)

        return forward

    return adapter


def _out_size(n: int, conv: nn.Conv2d, dim: int) -> int:
    k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
    p = conv.padding[dim] if isinstance(conv.padding, tuple) else None
    if p is None:  # "same" / "valid" strings
        return n if conv.padding == "same" else (n - d * (k - 1) - 1) // s + 1
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _out_grid(rec: _Encoder, masks: Tensor) -> Tuple[int, int, int]:
    """(C, H, W) the downsampler makes from `masks` (so a size mismatch with the image
    features goes to the original, which raises its own error)."""
    h, w = masks.shape[2], masks.shape[3]
    for s in rec.downsampler.stages:
        h, w = _out_size(h, s.conv, 0), _out_size(w, s.conv, 1)
    return (rec.downsampler.final.out_channels, h, w)


def _register(block: str, fuser: str, downsampler: str, encoder: str, encoder_adapter) -> None:
    for name, kind, fwd in ((block, _block, _nchw_blocks(_block)),
                            (fuser, _fuser, _nchw_blocks(_fuser)),
                            (downsampler, _downsampler, _downsampler_forward),
                            (encoder, _encoder, encoder_adapter)):
        register_adapter(name, _OPTION)(_check(kind, fwd))


def register_classes(*, block: str, block_parts: tuple, fuser: str, fuser_projection: Optional[str],
                     downsampler: str, encoder: str, encoder_parts: tuple, encoder_adapter,
                     layer_norm_2d: Optional[str] = None) -> None:
    """Let patch() run another model's memory encoder channels-last (edgetam/ uses this).

    Classes are "module.ClassName" strings, their structure as in Meta's: block_parts the
    ConvNeXt block's attribute names (see BLOCKS), fuser_projection the fuser's input
    projection or None, a downsampler with an nn.Sequential `encoder` (as Meta's), encoder_parts
    (see ENCODERS), encoder_adapter the encoder's forward factory (e.g. `tuple_encoder(pos)`),
    layer_norm_2d the class of its channels-first LayerNorm (weight, bias, eps)."""
    BLOCKS[block] = tuple(block_parts)
    FUSERS[fuser] = fuser_projection
    SEQUENTIAL_DOWNSAMPLERS.add(downsampler)
    ENCODERS[encoder] = tuple(encoder_parts)
    if layer_norm_2d is not None:
        LAYER_NORMS_2D.add(layer_norm_2d)
    _register(block, fuser, downsampler, encoder, encoder_adapter)


_register(f"{_META}.CXBlock", f"{_META}.Fuser", f"{_META}.MaskDownSampler",
          f"{_META}.MemoryEncoder", _meta_encoder)
_register(f"{_HF}.EdgeTamVideoMemoryFuserCXBlock", f"{_HF}.EdgeTamVideoMemoryFuser",
          f"{_HF}.EdgeTamVideoMaskDownSampler", f"{_HF}.EdgeTamVideoMemoryEncoder", _hf_encoder)
