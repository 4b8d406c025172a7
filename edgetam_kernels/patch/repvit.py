"""Re-parameterised forwards for the RepViT image encoder (patch option `fuse_encoder`).

Meta's EdgeTAM (sam2.modeling.backbones.timm.TimmBackbone) and Hugging Face's (timm_wrapper)
both run timm's `repvit_m1` as a `features_only` FeatureListNet; our own edgetam/ model has the
same blocks in `edgetam/repvit.py` (registered by edgetam/ itself, `register_like` of the
timm class each mirrors). Patched here:

- ConvNorm (conv without bias + BatchNorm2d): one conv with the BatchNorm folded in.
- RepVggDw / DwMixer (the token mixer: 3x3 depth-wise ConvNorm + 1x1 depth-wise branch +
  identity, timm's non-legacy variant with a BatchNorm after the sum): one 3x3 depth-wise conv.
- NormLinear (timm's classifier head, BatchNorm1d then Linear): one linear layer.
- RepVitMlp / RepVitStem / ConvMlp / Stem (conv, GELU, conv): on channels-last tensors the GELU
  runs on the NHWC view (oneDNN's kernel, as for the NCHW original; see `_gelu`).
- The network itself (FeatureListNet holding a RepViT, timm's RepVit, our RepViT): on CPU the
  input is made channels-last, so every conv runs on NHWC (oneDNN's native layout: no reorders
  per conv); outputs are handed back contiguous, as the host code expects (except to the FPN
  fold of `fpn`, inside `trunk_layout_kept()`).

The math is `edgetam_kernels.reparam` (shared with `edgetam.repvit.fuse_`). The module's own
parameters are never touched: the fused weights live in the patch state (not in the state
dict, not among the module's buffers) and are recomputed whenever a source tensor changed
(identity, in-place version, dtype or device), e.g. after `load_state_dict` or `.to()`. The
original forward runs in training mode (BatchNorm then uses batch statistics) and when
gradients are wanted for any of the weights (the fused copies are not differentiable views of
them), so the result is never silently different from the host's.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..derived import cached
from ._core import class_key, register_adapter
from ..reparam import fold_batchnorm, fold_batchnorm_into_linear, merge_dw_branches, work_dtype

_OPTION = "fuse_encoder"
_TIMM = "timm.models.repvit"
# Devices whose convs get channels-last inputs: measured faster on x86-64 CPUs (oneDNN);
# elsewhere the layout is left as the host has it.
CHANNELS_LAST_DEVICES = ("cpu",)


def _is_bn(m, cls=nn.BatchNorm2d) -> bool:
    return isinstance(m, cls) and m.running_mean is not None and m.running_var is not None


def _bn_sources(bn) -> tuple:
    return (bn.weight, bn.bias, bn.running_mean, bn.running_var)


def _usable(modules, sources) -> bool:
    """Eval mode everywhere, running statistics present, and no gradient wanted for a weight."""
    if any(m.training for m in modules):
        return False
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not _is_bn(m, type(m))
           for m in modules):
        return False
    return not (torch.is_grad_enabled()
                and any(t is not None and t.requires_grad for t in sources))


def _plain_conv(c) -> bool:
    return isinstance(c, nn.Conv2d) and c.padding_mode == "zeros"


# ---------------------------------------------------------------------------------------------
# Conv + BatchNorm
# ---------------------------------------------------------------------------------------------


def _conv_norm(module, state, original):
    if not (_plain_conv(module.c) and _is_bn(module.bn)):
        return None

    def forward(self, x):
        c, bn = self.c, self.bn
        sources = (c.weight, c.bias) + _bn_sources(bn)
        if not _usable((self, c, bn), sources):
            return original(x)
        w, b = cached(state, "fused", sources, lambda: fold_batchnorm(c.weight, c.bias, bn),
                      (bn.eps,))
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    return forward


register_adapter(f"{_TIMM}.ConvNorm", _OPTION)(_conv_norm)


# ---------------------------------------------------------------------------------------------
# Token mixer: 3x3 dw + 1x1 dw + identity (+ BatchNorm) -> one 3x3 dw conv
# ---------------------------------------------------------------------------------------------


def _branch(m):
    """(conv, bn or None) of a ConvNorm or a plain conv; None if neither."""
    if _plain_conv(getattr(m, "c", None)) and _is_bn(getattr(m, "bn", None)):
        return m.c, m.bn
    if _plain_conv(m):
        return m, None
    return None


def _post_bn(module):
    """The BatchNorm after the branch sum (timm's non-legacy RepVggDw), None if none."""
    bn = getattr(module, "bn", None)
    if bn is None or isinstance(bn, nn.Identity):
        return None
    return bn if _is_bn(bn) else False


def _mergeable(module) -> bool:
    big, small = _branch(module.conv), _branch(module.conv1)
    if big is None or small is None or _post_bn(module) is False:
        return False
    c, c1 = big[0], small[0]
    ch = c.out_channels
    kh, kw = c.kernel_size
    return (
        c.in_channels == ch == c.groups and c1.in_channels == ch == c1.out_channels == c1.groups
        and kh % 2 == 1 and kw % 2 == 1 and c.padding == (kh // 2, kw // 2)
        and c.stride == (1, 1) and c.dilation == (1, 1)
        and c1.kernel_size == (1, 1) and c1.stride == (1, 1) and c1.padding == (0, 0)
    )


def _merged_weights(module):
    (c, bn), (c1, bn1), post = _branch(module.conv), _branch(module.conv1), _post_bn(module)
    wide = work_dtype(c.weight)  # chain the folds in float64, round once
    w3, b3 = fold_batchnorm(c.weight, c.bias, bn, out_dtype=wide)
    if bn1 is not None:
        w1, b1 = fold_batchnorm(c1.weight, c1.bias, bn1, out_dtype=wide)
    else:
        w1, b1 = c1.weight, c1.bias
    w, b = merge_dw_branches(w3, b3, w1, b1, identity=True, out_dtype=wide)
    if post is not None:
        w, b = fold_batchnorm(w, b, post, out_dtype=wide)
    return w.to(c.weight.dtype), b.to(c.weight.dtype)


def _token_mixer(module, state, original):
    if not _mergeable(module):
        return None  # its ConvNorms still get patched one by one

    def forward(self, x):
        (c, bn), (c1, bn1), post = _branch(self.conv), _branch(self.conv1), _post_bn(self)
        norms = tuple(n for n in (bn, bn1, post) if n is not None)
        sources = (c.weight, c.bias, c1.weight, c1.bias) + sum(map(_bn_sources, norms), ())
        if not _usable((self, c, c1) + norms, sources):
            return original(x)
        eps = tuple(n.eps for n in norms)
        w, b = cached(state, "fused", sources, lambda: _merged_weights(self), eps)
        return F.conv2d(x, w, b, 1, c.padding, 1, c.groups)

    return forward


register_adapter(f"{_TIMM}.RepVggDw", _OPTION)(_token_mixer)


# ---------------------------------------------------------------------------------------------
# conv, GELU, conv (the MLPs and the stem): GELU on channels-last tensors as NHWC
# ---------------------------------------------------------------------------------------------


def _nhwc(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last)


def _gelu(y: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU of a channels-last tensor through its contiguous NHWC view: for such tensors
    ATen's own (value-dependent, several times slower) kernel runs instead of oneDNN's, which
    the NCHW original gets. Elementwise, so the same function."""
    if _nhwc(y):
        return F.gelu(y.permute(0, 2, 3, 1), approximate=approximate).permute(0, 3, 1, 2)
    return F.gelu(y, approximate=approximate)


def _activation(module):
    """The module's GELU, or "F.gelu" where it calls it directly (ours), or None (other)."""
    act = module._modules.get("act", module._modules.get("act1", "F.gelu"))
    return act if act == "F.gelu" or type(act) is nn.GELU else None


def _approximate(act) -> str:
    return "none" if act == "F.gelu" else act.approximate


# oneDNN convolutions with fused post-ops (what inductor emits for conv + GELU and conv + add):
# the GELU and the residual add happen while each output tile is still in cache, instead of
# two more passes over a 256 x 256 x 96 activation.
_CONV_POINTWISE = None


def _probe_conv_pointwise() -> bool:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    w1, w2 = torch.randn(16, 8, 1, 1, generator=g), torch.randn(8, 16, 1, 1, generator=g)
    b1, b2 = torch.randn(16, generator=g), torch.randn(8, generator=g)
    want = x + F.conv2d(F.gelu(F.conv2d(x, w1, b1)), w2, b2)
    one, pad = [1, 1], [0, 0]
    y = torch.ops.mkldnn._convolution_pointwise(x, w1, b1, pad, one, one, 1, "gelu", [], "none")
    got = torch.ops.mkldnn._convolution_pointwise.binary(y, x, w2, b2, pad, one, one, 1, "add",
                                                         1.0, None, [], None)
    return bool(torch.allclose(got, want, rtol=1e-5, atol=1e-5))


def _conv_pointwise_works() -> bool:
    """Whether this torch has oneDNN's fused-conv ops and they agree with the plain ops (probed
    once per process on a tiny input, in plain fp32 whatever the caller's autocast: builds
    without oneDNN, or where a post-op is not implemented, keep the plain path)."""
    global _CONV_POINTWISE
    if _CONV_POINTWISE is None:
        try:
            with torch.autocast("cpu", enabled=False), torch.no_grad():
                _CONV_POINTWISE = _probe_conv_pointwise()
        except Exception:  # noqa: BLE001  (any failure: no fused path)
            _CONV_POINTWISE = False
    return _CONV_POINTWISE


def _conv_weights(state: dict, slot: str, m):
    """(conv, weight, bias) of a ConvNorm (BatchNorm folded, cached) or a plain conv; None if
    neither or not usable now (training, gradients wanted)."""
    if _plain_conv(getattr(m, "c", None)) and _is_bn(getattr(m, "bn", None)):
        c, bn = m.c, m.bn
        sources = (c.weight, c.bias) + _bn_sources(bn)
        if not _usable((m, c, bn), sources):
            return None
        w, b = cached(state, slot, sources, lambda: fold_batchnorm(c.weight, c.bias, bn),
                      (bn.eps,))
        return c, w, b
    if _plain_conv(m) and _usable((m,), (m.weight, m.bias)):
        return m, m.weight, m.bias
    return None


def _onednn_mlp(state: dict, mlp, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
    """conv2(gelu(conv1(x))) (+ residual) as two oneDNN convolutions with fused post-ops, or
    None where that path does not apply (not a CPU fp32 channels-last tensor, gradients,
    torch.compile, CPU autocast (the plain convs follow it), hooks, no oneDNN). Same
    operations in the same order as the plain path."""
    act = _activation(mlp)
    if (act is None or x.device.type != "cpu" or x.dtype != torch.float32 or not _nhwc(x)
            or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu")
            or (torch.is_grad_enabled() and x.requires_grad)
            or mlp._forward_hooks or mlp._forward_pre_hooks or not _conv_pointwise_works()):
        return None
    first = _conv_weights(state, "conv1", mlp.conv1)
    second = _conv_weights(state, "conv2", mlp.conv2)
    if first is None or second is None:
        return None
    ops = torch.ops.mkldnn._convolution_pointwise
    (c1, w1, b1), (c2, w2, b2) = first, second
    if not all(isinstance(c.padding, tuple) for c in (c1, c2)):
        return None
    y = ops(x, w1, b1, c1.padding, c1.stride, c1.dilation, c1.groups, "gelu", [],
            _approximate(act))
    if residual is None:
        return ops(y, w2, b2, c2.padding, c2.stride, c2.dilation, c2.groups, "none", [], None)
    return ops.binary(y, residual, w2, b2, c2.padding, c2.stride, c2.dilation, c2.groups, "add",
                      1.0, None, [], None)


def _conv_gelu_conv(module, state, original):
    if _activation(module) is None:
        return None

    def forward(self, x):
        act = _activation(self)
        if act is None or not _nhwc(x):
            return original(x)
        fused = _onednn_mlp(state, self, x)
        if fused is not None:
            return fused
        y = self.conv1(x)
        return self.conv2(_gelu(y, _approximate(act)))

    return forward


register_adapter(f"{_TIMM}.RepVitMlp", _OPTION)(_conv_gelu_conv)
register_adapter(f"{_TIMM}.RepVitStem", _OPTION)(_conv_gelu_conv)


def _residual_mlp(module, state, original, head, mlp_name: str):
    """A block ending in `x + mlp(x)` (after `head`, the block's other layers): the residual
    add fused into the MLP's second conv."""
    mlp = getattr(module, mlp_name, None)
    if mlp is None or _activation(mlp) is None:
        return None

    def forward(self, x):
        x = head(self, x)
        fused = _onednn_mlp(state, getattr(self, mlp_name), x, residual=x)
        return fused if fused is not None else x + getattr(self, mlp_name)(x)

    return forward


def _block_head(self, x):
    return self.se(self.token_mixer(x))


def _downsample_head(self, x):
    return self.channel_downsample(self.spatial_downsample(self.pre_block(x)))


_block = functools.partial(_residual_mlp, head=_block_head, mlp_name="channel_mixer")
_downsample = functools.partial(_residual_mlp, head=_downsample_head, mlp_name="ffn")
register_adapter(f"{_TIMM}.RepViTBlock", _OPTION)(_block)
register_adapter(f"{_TIMM}.RepVitDownsample", _OPTION)(_downsample)


# ---------------------------------------------------------------------------------------------
# BatchNorm1d + Linear (timm's classifier head)
# ---------------------------------------------------------------------------------------------


@register_adapter(f"{_TIMM}.NormLinear", _OPTION)
def _norm_linear(module, state, original):
    if not (_is_bn(module.bn, nn.BatchNorm1d) and isinstance(module.l, nn.Linear)):
        return None

    def forward(self, x):
        bn, lin = self.bn, self.l
        sources = _bn_sources(bn) + (lin.weight, lin.bias)
        if x.dim() != 2 or not _usable((self, bn, lin), sources):
            return original(x)
        w, b = cached(state, "fused", sources,
                      lambda: fold_batchnorm_into_linear(bn, lin.weight, lin.bias), (bn.eps,))
        return F.linear(x, w, b)

    return forward


# ---------------------------------------------------------------------------------------------
# The whole network: channels-last on CPU
# ---------------------------------------------------------------------------------------------


def _contiguous(out):
    if isinstance(out, torch.Tensor):
        return out.contiguous()
    if isinstance(out, (list, tuple)) and not hasattr(out, "_fields"):
        return type(out)(_contiguous(o) for o in out)
    if isinstance(out, dict):
        return type(out)((k, _contiguous(v)) for k, v in out.items())
    return out


# True while a caller that reads the trunk's outputs as they are (the FPN fold in
# `fpn`, whose 1 x 1 convs are faster on channels-last) runs the trunk
_KEEP_LAYOUT = contextvars.ContextVar("edgetam_kernels_keep_trunk_layout", default=False)


@contextlib.contextmanager
def trunk_layout_kept():
    """Within this block a patched trunk hands back its channels-last outputs as they are
    (same shapes and values) instead of contiguous copies. Not for use under torch.compile."""
    token = _KEEP_LAYOUT.set(True)
    try:
        yield
    finally:
        _KEEP_LAYOUT.reset(token)


def _channels_last(module, state, original):
    def forward(self, x, *args, **kwargs):
        if (self.training or not isinstance(x, torch.Tensor) or x.dim() != 4
                or x.device.type not in CHANNELS_LAST_DEVICES
                or (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))):
            return original(x, *args, **kwargs)  # where the fused layers fall back too
        out = original(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)
        if not torch.compiler.is_compiling() and _KEEP_LAYOUT.get():
            return out
        return _contiguous(out)

    return forward


register_adapter(f"{_TIMM}.RepVit", _OPTION)(_channels_last)


@register_adapter("timm.models._features.FeatureListNet", _OPTION)
def _feature_list_net(module, state, original):
    """timm's `features_only` wrapper: only where it wraps a RepViT (EdgeTAM's trunk)."""
    if not any(class_key(m).startswith(_TIMM + ".") for m in module.modules()):
        return None
    return _channels_last(module, state, original)
