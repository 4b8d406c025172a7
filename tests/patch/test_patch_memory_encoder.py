"""patch(..., fuse_memory_encoder=True): the memory encoder channels-last on CPU
(edgetam_kernels/patch/memory_encoder.py).

Meta's MemoryEncoder, HF's EdgeTamVideoMemoryEncoder and ours, and their mask downsampler,
fuser and ConvNeXt block patched alone, with random weights (LayerNorm affines, layer scales
and biases all non-trivial, so every fold is exercised). Checked: against a float64 run of the
unpatched module (relative L2 within the fp32 bound), position encodings bit for bit; folds
that drop a term fail that by far; declines (hooks, instance forwards, other structure,
training, gradients, autocast, other dtypes) run the original bit for bit; unpatch; the option;
weight edits after patching; batch 2 and odd sizes.
"""

import contextlib
import copy
import functools

import pytest
import torch
from torch import nn

import edgetam_kernels as ek
from edgetam_kernels.patch import memory_encoder as A
from edgetam_kernels.patch import is_patched, patched_modules
from edgetam_kernels.testing import rel_l2

from edgetam_kernels.testing import hosts as M

FP32_REL_L2 = 1e-5
KINDS = ["meta", "hf", "ours"]


@functools.lru_cache(maxsize=None)
def _built(kind: str) -> nn.Module:
    if kind == "meta":
        from hydra.utils import instantiate

        module = instantiate(M.meta_config(512).model.memory_encoder, _recursive_=True)
    elif kind == "hf":
        from transformers.models.edgetam_video.modeling_edgetam_video import (
            EdgeTamVideoMemoryEncoder,
        )

        module = EdgeTamVideoMemoryEncoder(M.hf_config(512))
    else:
        from edgetam.memory import MemoryEncoder

        module = MemoryEncoder()
    M.randomize_(module, seed=3)
    with torch.no_grad():  # layer scales of either sign, around 0.5 (not 1e-6, not ~0.1)
        g = torch.Generator().manual_seed(4)
        for name, p in module.named_parameters():
            if name.endswith(("gamma", "scale")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return module.eval()


def _encoder(kind: str) -> nn.Module:
    return copy.deepcopy(_built(kind))


def _parts(kind: str, enc: nn.Module) -> dict:
    if kind == "hf":
        return {"downsampler": enc.mask_downsampler, "fuser": enc.memory_fuser,
                "block": enc.memory_fuser.layers[1]}
    return {"downsampler": enc.mask_downsampler, "fuser": enc.fuser, "block": enc.fuser.layers[1]}


def _inputs(size: int, batch: int = 1, seed: int = 0):
    """(image features (B, 256, g, g), mask logits (B, 1, size, size)), g the downsampled
    size (16x, rounding up at every stride-2 stage)."""
    g = size
    for _ in range(4):
        g = (g + 1) // 2
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 256, g, g, generator=gen),
            4 * torch.randn(batch, 1, size, size, generator=gen))


def _call(kind: str, enc: nn.Module, pix, mask):
    """(features, position encoding) whichever host; Meta's mask goes through the sigmoid in
    the module, HF and ours take it already scaled."""
    if kind == "meta":
        out = enc(pix, mask)
        return out["vision_features"], out["vision_pos_enc"][0]
    return tuple(enc(pix, torch.sigmoid(mask)))


def _run(kind, enc, pix, mask):
    with torch.no_grad():
        return _call(kind, enc, pix, mask)


@contextlib.contextmanager
def _one_thread():
    """For float64 runs: ATen runs a float64 depth-wise conv group by group, one parallel
    region each, which on a busy 2-core machine costs seconds per conv with 2 threads (3 ms
    with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _exact(kind, enc, pix, mask):
    """The unpatched module in float64."""
    plain = copy.deepcopy(enc).double()
    ek.unpatch(plain)
    with _one_thread():
        return _run(kind, plain, pix.double(), mask.double())


def _spy(monkeypatch) -> list:
    """Counts the fused encoder's calls."""
    calls = []
    real = A._encode

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(A, "_encode", counting)
    return calls


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size,batch", [(128, 1), (200, 2), (1024, 1)])
def test_matches_float64(kind, size, batch, monkeypatch):
    """Odd sizes (200: 100, 50, 25, 13), batch 2 and EdgeTAM's 1024 (64 x 64 features)."""
    enc = _encoder(kind)
    pix, mask = _inputs(size, batch)
    plain = _run(kind, enc, pix, mask)
    exact = _exact(kind, enc, pix, mask)
    calls = _spy(monkeypatch)
    ek.patch(enc)
    got = _run(kind, enc, pix, mask)
    assert calls == [1]
    assert got[0].shape == plain[0].shape and got[0].is_contiguous()
    err, err_plain = rel_l2(got[0], exact[0]), rel_l2(plain[0], exact[0])
    assert err < FP32_REL_L2, (err, err_plain)
    assert torch.equal(got[1], plain[1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("part", ["downsampler", "fuser", "block"])
def test_parts_patched_alone(kind, part):
    enc = _encoder(kind)
    module = _parts(kind, enc)[part]
    pix, mask = _inputs(200, batch=2)
    x = torch.sigmoid(mask) if part == "downsampler" else pix
    with torch.no_grad():
        plain = module(x)
        with _one_thread():
            exact = copy.deepcopy(module).double()(x.double())
        ek.patch(module)
        assert is_patched(module)
        got = module(x)
    assert got.shape == plain.shape and got.is_contiguous()
    assert rel_l2(got, exact) < FP32_REL_L2, (rel_l2(got, exact), rel_l2(plain, exact))
    assert not torch.equal(got, plain)  # really the other path


def _wrong(monkeypatch, what: str):
    real = A._fold_block_wide

    def wrong(b):
        w1, b1, w2, b2 = real(b)
        if what == "gamma":  # layer scale not applied
            g = b.gamma.double()
            return w1, b1, w2 / g[:, None], b2 / g
        return w1, b1 - 0.1, w2, b2  # a LayerNorm shift off by 0.1 / sqrt-ish

    monkeypatch.setattr(A, "_fold_block_wide", wrong)


@pytest.mark.parametrize("kind", ["meta", "hf"])
@pytest.mark.parametrize("what", ["gamma", "ln_bias"])
def test_a_wrong_fold_fails(kind, what, monkeypatch):
    """The bound above can fail: a fold that forgets the layer scale (or shifts pw1's bias)
    lands far outside it, for the encoder and for the fuser alone."""
    enc = _encoder(kind)
    pix, mask = _inputs(128)
    exact = _exact(kind, enc, pix, mask)
    fuser = _parts(kind, enc)["fuser"]
    with torch.no_grad():
        with _one_thread():
            fuser_exact = copy.deepcopy(fuser).double()(pix.double())
    _wrong(monkeypatch, what)
    ek.patch(enc)
    assert rel_l2(_run(kind, enc, pix, mask)[0], exact[0]) > 100 * FP32_REL_L2
    with torch.no_grad():
        assert rel_l2(fuser(pix), fuser_exact) > 100 * FP32_REL_L2


def test_a_wrong_out_proj_fold_fails(monkeypatch):
    enc = _encoder("meta")
    pix, mask = _inputs(128)
    exact = _exact("meta", enc, pix, mask)
    real = A._fold_last_block
    monkeypatch.setattr(A, "_fold_last_block",
                        lambda b, proj: real(b, proj)[:3] + (torch.zeros_like(proj.bias),))
    ek.patch(enc)
    assert rel_l2(_run("meta", enc, pix, mask)[0], exact[0]) > 100 * FP32_REL_L2


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_features_in_the_trackers_layout(kind):
    """The trackers hand over the features as a permuted view of (HW, B, C) tokens
    (channels-last memory): read as they are."""
    enc = _encoder(kind)
    pix, mask = _inputs(128, batch=2)
    b, c, h, w = pix.shape
    tokens = pix.flatten(2).permute(2, 0, 1).contiguous()  # (HW, B, C)
    view = tokens.permute(1, 2, 0).view(b, c, h, w)
    exact = _exact(kind, enc, pix, mask)
    ek.patch(enc)
    assert rel_l2(_run(kind, enc, view, mask)[0], exact[0]) < FP32_REL_L2


def test_skip_mask_sigmoid():
    enc = _encoder("meta")
    pix, mask = _inputs(128)
    probs = torch.sigmoid(mask)
    with torch.no_grad():
        with _one_thread():
            exact = copy.deepcopy(enc).double()(pix.double(), probs.double(),
                                                skip_mask_sigmoid=True)
        ek.patch(enc)
        got = enc(pix, probs, skip_mask_sigmoid=True)
    assert rel_l2(got["vision_features"], exact["vision_features"]) < FP32_REL_L2


# ---------------------------------------------------------------------------------------------
# Declines: the original, bit for bit
# ---------------------------------------------------------------------------------------------


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_hooks_and_instance_forwards_run_the_original(kind, monkeypatch):
    """A hook on a module the fused encoder bypasses: that module's original runs (with its
    hook), the parts that can still be fused alone are (so the result stays within the bound,
    not bit-identical). A global module hook: everything original, bit for bit."""
    enc = _encoder(kind)
    pix, mask = _inputs(128)
    plain = _run(kind, enc, pix, mask)
    exact = _exact(kind, enc, pix, mask)
    ek.patch(enc)
    calls = _spy(monkeypatch)
    parts = _parts(kind, enc)
    seen = []
    pw1 = parts["block"].pwconv1 if kind == "meta" else parts["block"].pointwise_conv1
    for target in (pw1, parts["downsampler"], parts["block"]):
        handle = target.register_forward_hook(lambda m, i, o: seen.append(1))
        assert rel_l2(_run(kind, enc, pix, mask)[0], exact[0]) < FP32_REL_L2
        handle.remove()
    assert seen == [1, 1, 1] and calls == []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert _same(_run(kind, enc, pix, mask), plain) and calls == []
    finally:
        handle.remove()
    # an instance forward of the user's on a bypassed module (here: the same computation)
    conv = parts["downsampler"].final_conv if kind == "hf" else parts["downsampler"].encoder[-1]
    conv.forward = functools.partial(nn.Conv2d.forward, conv)
    assert rel_l2(_run(kind, enc, pix, mask)[0], exact[0]) < FP32_REL_L2
    assert calls == []
    del conv.forward
    _run(kind, enc, pix, mask)
    assert calls == [1]


def test_other_structure_runs_the_original(monkeypatch):
    """Another activation in a block: declined at call time for a module patched before the
    change (the other block is still fused by itself). An unknown layer in the downsampler:
    declined at patch time."""
    enc = _encoder("meta")
    pix, mask = _inputs(128)
    ek.patch(enc)
    calls = _spy(monkeypatch)
    enc.fuser.layers[0].act = nn.ReLU()
    changed = copy.deepcopy(enc)
    ek.unpatch(changed)
    exact = _exact("meta", changed, pix, mask)
    got = _run("meta", enc, pix, mask)
    assert calls == []
    assert rel_l2(got[0], exact[0]) < FP32_REL_L2

    enc2 = _encoder("meta")
    enc2.mask_downsampler.encoder.insert(0, nn.Identity())
    names = patched_modules(ek.patch(enc2))
    assert "" not in names and "mask_downsampler" not in names and "fuser" in names
    plain = copy.deepcopy(enc2.mask_downsampler)
    ek.unpatch(plain)
    with torch.no_grad():
        probs = torch.sigmoid(mask)
        assert torch.equal(enc2.mask_downsampler(probs), plain(probs))


def test_training_gradients_autocast_dtype_run_the_original(monkeypatch):
    enc = _encoder("hf")
    pix, mask = _inputs(128)
    ref = _encoder("hf")
    ek.patch(enc)
    calls = _spy(monkeypatch)
    # gradients wanted for the weights (plain eval call, no no_grad): the original, grads flow
    out = _call("hf", enc, pix, mask)[0]
    out_ref = _call("hf", ref, pix, mask)[0]
    assert torch.equal(out, out_ref)
    w = enc.memory_fuser.layers[0].scale
    g = torch.autograd.grad(out.square().sum(), w)[0]
    g_ref = torch.autograd.grad(out_ref.square().sum(), ref.memory_fuser.layers[0].scale)[0]
    assert torch.equal(g, g_ref)
    # gradients for the input only (weights frozen): the original too
    enc.requires_grad_(False)
    ref.requires_grad_(False)
    xg, mg = pix.clone().requires_grad_(True), mask.clone().requires_grad_(True)
    assert torch.equal(_call("hf", enc, xg, mg)[0], _call("hf", ref, xg, mg)[0])
    assert calls == []
    # training mode
    enc.train()
    ref.train()
    assert _same(_run("hf", enc, pix, mask), _run("hf", ref, pix, mask)) and calls == []
    enc.eval()
    ref.eval()
    # CPU autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _same(_run("hf", enc, pix, mask), _run("hf", ref, pix, mask))
    assert calls == []
    # another dtype
    with _one_thread():
        assert _same(_run("hf", enc.double(), pix.double(), mask.double()),
                     _run("hf", ref.double(), pix.double(), mask.double()))
    assert calls == []
    enc.float()
    _run("hf", enc, pix, mask)
    assert calls == [1]


def test_mismatched_inputs_raise_the_hosts_error():
    enc = _encoder("meta")
    pix, mask = _inputs(128)
    ek.patch(enc)
    with pytest.raises(RuntimeError):
        _run("meta", enc, pix[..., :7, :7], mask)


# ---------------------------------------------------------------------------------------------
# Lifecycle: unpatch, option, weight edits, whole models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unpatch_bit_identical_and_state_dict_untouched(kind):
    enc = _encoder(kind)
    pix, mask = _inputs(128)
    snap = {k: v.clone() for k, v in enc.state_dict().items()}
    plain = _run(kind, enc, pix, mask)
    ek.patch(enc, fuse_encoder=False)  # (Meta's and HF's position encodings: the FPN's)
    parts = _parts(kind, enc)
    names = {name for name, m in enc.named_modules()
             if m is enc or any(m is p for p in parts.values())}
    assert set(patched_modules(enc)) >= names | {n.rsplit(".", 1)[0] + ".0" for n in names
                                                  if n.endswith(".1")}
    assert len(patched_modules(enc)) == 5
    _run(kind, enc, pix, mask)
    assert enc.state_dict().keys() == snap.keys()
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in snap.items())
    ek.unpatch(enc)
    assert patched_modules(enc) == []
    assert all("forward" not in m.__dict__ for m in enc.modules())
    assert _same(_run(kind, enc, pix, mask), plain)


def test_option():
    enc = _encoder("meta")
    pix, mask = _inputs(128)
    plain = _run("meta", enc, pix, mask)
    with pytest.raises(TypeError, match="fuse_memory_encoder=False"):
        ek.patch(enc, fuse_encoder=False, fuse_memory_encoder=False)
    ek.patch(enc, fuse_encoder=False)
    fused = _run("meta", enc, pix, mask)
    assert not _same(fused, plain)
    ek.patch(enc, fuse_memory_encoder=False)  # switches it off again (the FPN's sine stays)
    assert patched_modules(enc) == ["position_encoding"]
    assert _same(_run("meta", enc, pix, mask), plain)
    ek.patch(enc, fuse_encoder=False)
    assert _same(_run("meta", enc, pix, mask), fused)


@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_weight_edits_after_patching(kind):
    enc = _encoder(kind)
    other = _encoder(kind)
    M.randomize_(other, seed=11)
    pix, mask = _inputs(128)
    ek.patch(enc)
    _run(kind, enc, pix, mask)  # folds cached
    enc.load_state_dict(other.state_dict())
    exact = _exact(kind, other, pix, mask)
    assert rel_l2(_run(kind, enc, pix, mask)[0], exact[0]) < FP32_REL_L2
    block = _parts(kind, enc)["block"]
    norm = block.norm if kind == "meta" else block.layer_norm
    gamma = "gamma" if kind == "meta" else "scale"
    with torch.no_grad():  # in place: layer scale, LayerNorm weight, out_proj bias
        getattr(block, gamma).mul_(-2.0)
        norm.weight.add_(0.5)
        (enc.out_proj if kind == "meta" else enc.projection).bias.add_(1.0)
    exact = _exact(kind, enc, pix, mask)
    assert rel_l2(_run(kind, enc, pix, mask)[0], exact[0]) < FP32_REL_L2
    setattr(block, gamma, nn.Parameter(torch.ones_like(getattr(block, gamma))))  # replaced
    exact = _exact(kind, enc, pix, mask)
    assert rel_l2(_run(kind, enc, pix, mask)[0], exact[0]) < FP32_REL_L2


def test_copies_and_inference_mode():
    enc = _encoder("ours")
    pix, mask = _inputs(128)
    ek.patch(enc)
    with torch.inference_mode():
        first = _call("ours", enc, pix, mask)  # folds made in inference mode
    again = _run("ours", enc, pix, mask)  # reused outside it
    assert _same(first, again)
    twin = copy.deepcopy(enc)
    assert _same(_run("ours", twin, pix, mask), first)


def test_whole_models_patch_their_memory_encoder():
    predictor = M.meta_video_predictor(256)
    names = patched_modules(ek.patch(predictor, fuse_encoder=False))
    assert {"memory_encoder", "memory_encoder.mask_downsampler", "memory_encoder.fuser",
            "memory_encoder.fuser.layers.0"} <= set(names)
    model = M.hf_model(256)
    names = patched_modules(ek.patch(model, fuse_encoder=False))
    assert {"memory_encoder", "memory_encoder.memory_fuser.layers.1"} <= set(names)
