"""Builders for Meta's and Hugging Face's EdgeTAM models and modules, offline, random weights.

Used by the parity, patch and end-to-end tests, by edgetam/'s comparison with Meta, and by
bench/. Nothing here downloads: Meta's timm trunk is created with `pretrained=False` and HF's
models are built from configs. Every builder installs the torchvision schema shim
(`shim_torchvision`) before sam2, timm or transformers is imported, so callers need no setup.
Meta's builders need `sam2` (edgetam-dimos), hydra-core, iopath and timm; HF's need
transformers >= 5 and timm.

Conventions
- grid: the image-feature grid of memory attention (64, 48, 32 for 1024, 768, 512 inputs).
- `randomize_` draws every parameter afresh (LayerNorm weights around 1, biases non-zero) so a
  swapped or ignored weight shows up as a large error.
- Meta <-> HF state-dict maps let the tests give both implementations the same weights.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Dict, Optional
from unittest import mock

import torch
from torch import nn

from .._compat import shim_torchvision

EDGETAM_CONFIG = "configs/edgetam.yaml"


def grid_for(image_size: int) -> int:
    return image_size // 16


# ---------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh random values for every parameter of `module`, reproducible from `seed`.

    Matrices keep a fan-in scaled normal (so activations stay O(1) through the layers), 1-D
    parameters named like LayerNorm weights sit around 1, all other 1-D parameters around 0.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if p.dim() >= 2:
            fan_in = p[0].numel() if p.dim() == 2 else p.shape[-1]
            p.copy_(r / fan_in**0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * r)
        else:
            p.copy_(0.1 * r)
    return module


@torch.no_grad()
def randomize_batchnorm_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters for every BatchNorm in `module`.

    timm initialises running mean 0, variance 1, weight 1 (0 on the last conv of each RepViT
    MLP) and bias 0: BatchNorm is then nearly the identity and the MLP branches vanish, so a
    wrong BatchNorm fold would go unnoticed. Weights 0.5-1.1 keep activations O(1) through the
    residual stages."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.copy_(0.5 + 0.6 * torch.rand(n, generator=g))
            m.bias.copy_(0.2 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
    return module


# ---------------------------------------------------------------------------------------------
# Meta (package `sam2` from edgetam-dimos)
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def timm_offline():
    """Meta's TimmBackbone calls timm.create_model(..., pretrained=True): force False."""
    shim_torchvision()
    import sam2.modeling.backbones.timm as meta_timm

    original = meta_timm.create_model

    @functools.wraps(original)
    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    with mock.patch.object(meta_timm, "create_model", create_model):
        yield


def meta_overrides(image_size: int = 1024) -> list:
    """Hydra overrides for an EdgeTAM of the given input size: the cross-attention's query RoPE
    grid (RoPEAttentionv2.q_sizes) is fixed in the config and must match the feature grid."""
    g = grid_for(image_size)
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.cross_attention.q_sizes=[{g},{g}]",
    ]


def meta_config(image_size: int = 1024, config: str = EDGETAM_CONFIG, extra=()):
    shim_torchvision()
    import sam2  # noqa: F401  (initialises hydra's config module "sam2")
    from hydra import compose

    overrides = meta_overrides(image_size) if config == EDGETAM_CONFIG else []
    return compose(config_name=config, overrides=overrides + list(extra))


def _cached(builder):
    """Build once per argument set (hydra composition is slow), hand out deep copies."""
    cache = functools.lru_cache(maxsize=None)(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        return clone(cache(*args, **kwargs))

    return build


@_cached
def meta_memory_attention(grid: int = 64, seed: int = 0) -> nn.Module:
    """sam2.modeling.memory_attention.MemoryAttention as configured in edgetam.yaml, eval mode."""
    from hydra.utils import instantiate

    cfg = meta_config(grid * 16)
    module = instantiate(cfg.model.memory_attention, _recursive_=True)
    return randomize_(module, seed).eval()


@_cached
def meta_perceiver(seed: int = 0) -> nn.Module:
    """sam2.modeling.perceiver.PerceiverResampler as configured in edgetam.yaml, eval mode."""
    from hydra.utils import instantiate

    module = instantiate(meta_config().model.spatial_perceiver, _recursive_=True)
    return randomize_(module, seed).eval()


SAM21_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@_cached
def meta_sam2_memory_attention(seed: int = 0) -> nn.Module:
    """SAM 2.1's memory attention (RoPEAttention self- and cross-attention, 4 layers,
    rope_k_repeat=True, 64-dim memory of whole 64x64 frames), random weights. Its RoPE tables
    follow the query length, so any square grid works."""
    from hydra.utils import instantiate

    module = instantiate(meta_config(config=SAM21_CONFIG).model.memory_attention, _recursive_=True)
    return randomize_(module, seed).eval()


def set_object_score_bias_(decoder_head: nn.Module, value: float = 10.0) -> None:
    """Random weights make the object-score head say "no object" (mask logits -1024 and no
    memory); a positive bias on its last layer lets masks flow into memory (RECIPES)."""
    # Meta's MLP ends with layers[-1]; HF's EdgeTamVideoFeedForward with proj_out
    last = getattr(decoder_head, "proj_out", None) or decoder_head.layers[-1]
    with torch.no_grad():
        last.bias.fill_(value)


def fix_meta_perceiver_batch_(model) -> None:
    """Give Meta's spatial perceiver an instance forward that runs one sample at a time.

    Upstream bug (edgetam-dimos 1.0.1): PerceiverResampler.forward_2d calls `.view` on latents
    expanded over the batch, which raises for batch > 1, so Meta's predictor cannot propagate
    several objects at once. Unpatched baselines with several objects need this workaround;
    patch() replaces it with the fused op (which handles any batch) and unpatch() restores it.
    """
    perceiver = getattr(model, "spatial_perceiver", None)
    if perceiver is None:
        return
    original = perceiver.forward
    perceiver.forward = lambda x, pos=None: perceiver_per_sample(original, x, pos)


def meta_video_predictor(image_size: int = 1024, seed: int = 0, config: str = EDGETAM_CONFIG,
                         device: str = "cpu", extra=(), object_score_bias: Optional[float] = 10.0):
    """Meta's SAM2VideoPredictor for EdgeTAM, random weights (seeded), eval. `extra`: more hydra
    overrides. object_score_bias: the object-score head's last bias (None keeps the random one)."""
    with timm_offline(), contextlib.redirect_stdout(None):
        from sam2.build_sam import build_sam2_video_predictor

        torch.manual_seed(seed)
        predictor = build_sam2_video_predictor(
            config, ckpt_path=None, device=device,
            hydra_overrides_extra=meta_overrides(image_size) + list(extra),
        )
    if object_score_bias is not None:
        set_object_score_bias_(predictor.sam_mask_decoder.pred_obj_score_head, object_score_bias)
    return predictor.eval()


def meta_init_state(predictor, frames: torch.Tensor):
    """Meta's init_state for an in-memory clip: frames (T, 3, S, S), already normalised, S the
    model's image size (so video resolution == model resolution)."""
    import sam2.sam2_video_predictor as svp

    size = frames.shape[-1]
    with mock.patch.object(svp, "load_video_frames", lambda **kw: (frames, size, size)):
        return predictor.init_state(video_path="<in-memory>")


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers (EdgeTamVideoModel)
# ---------------------------------------------------------------------------------------------


def hf_config(image_size: int = 1024):
    """EdgeTAM's real configuration (RepViT-M1 trunk through timm, no download)."""
    shim_torchvision()
    from transformers import TimmWrapperConfig
    from transformers.models.edgetam_video import EdgeTamVideoConfig
    from transformers.models.edgetam.configuration_edgetam import EdgeTamVisionConfig

    g = grid_for(image_size)
    vision = EdgeTamVisionConfig(
        backbone_config=TimmWrapperConfig(
            architecture="repvit_m1.dist_in1k",
            model_args={"in_chans": 3, "features_only": True, "out_indices": (0, 1, 2, 3)},
        ),
        backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]],
    )
    cfg = EdgeTamVideoConfig(
        vision_config=vision,
        enable_temporal_pos_encoding_for_object_pointers=False,
        enable_occlusion_spatial_embedding=False,
        image_size=image_size,
        memory_attention_rope_feat_sizes=[g, g],
    )
    cfg.prompt_encoder_config.image_size = image_size
    return cfg


def _standalone(cfg):
    """A module built outside EdgeTamVideoModel gets no attention implementation; pick SDPA,
    what the model itself uses."""
    cfg._attn_implementation = "sdpa"
    return cfg


def hf_model(image_size: int = 1024, seed: int = 0):
    """HF's EdgeTamVideoModel with random weights, eval, object score forced on."""
    shim_torchvision()
    from transformers.models.edgetam_video import EdgeTamVideoModel

    torch.manual_seed(seed)
    model = EdgeTamVideoModel(hf_config(image_size)).eval()
    set_object_score_bias_(model.mask_decoder.pred_obj_score_head)
    return model


@_cached
def hf_memory_attention(grid: int = 64, seed: int = 0) -> nn.Module:
    shim_torchvision()
    from transformers.models.edgetam_video.modeling_edgetam_video import (
        EdgeTamVideoMemoryAttention,
    )

    module = EdgeTamVideoMemoryAttention(_standalone(hf_config(grid * 16)))
    return randomize_(module, seed).eval()


@_cached
def hf_perceiver(seed: int = 0) -> nn.Module:
    shim_torchvision()
    from transformers.models.edgetam_video.modeling_edgetam_video import (
        EdgeTamVideoPerceiverResampler,
    )

    return randomize_(EdgeTamVideoPerceiverResampler(_standalone(hf_config())), seed).eval()


def hf_session(frames: torch.Tensor):
    """An EdgeTamVideoInferenceSession over an in-memory clip (T, 3, S, S), video size == S."""
    from transformers.models.edgetam_video import EdgeTamVideoInferenceSession

    size = frames.shape[-1]
    # dtype must be given: the default, the string "float32", breaks `video.to(..., dtype=)`
    return EdgeTamVideoInferenceSession(video=frames, video_height=size, video_width=size,
                                        dtype=torch.float32)


def hf_add_prompt(session, frame_idx: int, obj_id: int, points=None, labels=None, box=None):
    """What Sam2VideoProcessor.add_inputs_to_inference_session does for one object, with
    coordinates already in model pixels (video size == model size, so no rescaling)."""
    coords, labs = [], []
    if box is not None:
        coords.append(torch.as_tensor(box, dtype=torch.float32).reshape(2, 2))
        labs.append(torch.tensor([2, 3], dtype=torch.int32))
    if points is not None:
        coords.append(torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2))
        labs.append(torch.as_tensor(labels, dtype=torch.int32).reshape(-1))
    obj_idx = session.obj_id_to_idx(obj_id)
    session.add_point_inputs(
        obj_idx,
        frame_idx,
        {"point_coords": torch.cat(coords)[None, None], "point_labels": torch.cat(labs)[None, None]},
    )
    session.remove_mask_inputs(obj_idx, frame_idx)
    if obj_id not in session.obj_with_new_inputs:
        session.obj_with_new_inputs.append(obj_id)


# ---------------------------------------------------------------------------------------------
# Meta <-> HF weight maps
# ---------------------------------------------------------------------------------------------

_MEMATTN_LAYER = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.k_proj",
    "self_attn.v_proj": "self_attn.v_proj",
    "self_attn.out_proj": "self_attn.o_proj",
    "cross_attn_image.q_proj": "cross_attn_image.q_proj",
    "cross_attn_image.k_proj": "cross_attn_image.k_proj",
    "cross_attn_image.v_proj": "cross_attn_image.v_proj",
    "cross_attn_image.out_proj": "cross_attn_image.o_proj",
    "linear1": "mlp.up_proj",
    "linear2": "mlp.down_proj",
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "norm3": "layer_norm3",
}


def memory_attention_meta_to_hf(meta_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in meta_sd.items():
        if key.startswith("norm."):
            out["layer_norm." + key[len("norm."):]] = value
            continue
        _, i, rest = key.split(".", 2)  # layers.{i}.{module}.{param}
        module, param = rest.rsplit(".", 1)
        out[f"layers.{i}.{_MEMATTN_LAYER[module]}.{param}"] = value
    return out


_PERCEIVER_LAYER = {
    "attn.norm_latents": "layer_norm_latents",
    "attn.norm_x": "layer_norm_input",
    "attn.to_q": "cross_attention.q_proj",
    "attn.to_out": "cross_attention.o_proj",
    "ff.0": "mlp.layer_norm",
    "ff.1": "mlp.up_proj",
    "ff.3": "mlp.down_proj",
    "self_attn.norm": "layer_norm_self",
    "self_attn.to_q": "self_attention.q_proj",
    "self_attn.to_out": "self_attention.o_proj",
    "self_ff.0": "self_mlp.layer_norm",
    "self_ff.1": "self_mlp.up_proj",
    "self_ff.3": "self_mlp.down_proj",
}
_PERCEIVER_KV = {"attn.to_kv": "cross_attention", "self_attn.to_kv": "self_attention"}


def perceiver_meta_to_hf(meta_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in meta_sd.items():
        if key in ("latents", "latents_2d"):
            out["latents_1d" if key == "latents" else key] = value
            continue
        if key.startswith("norm."):
            out["layer_norm." + key[len("norm."):]] = value
            continue
        _, i, rest = key.split(".", 2)
        module, param = rest.rsplit(".", 1)
        if module in _PERCEIVER_KV:  # Meta's to_kv is [k; v] stacked, HF has k_proj, v_proj
            k, v = value.chunk(2, dim=0)
            out[f"layers.{i}.{_PERCEIVER_KV[module]}.k_proj.{param}"] = k
            out[f"layers.{i}.{_PERCEIVER_KV[module]}.v_proj.{param}"] = v
        else:
            out[f"layers.{i}.{_PERCEIVER_LAYER[module]}.{param}"] = value
    return out


def load_strict(module: nn.Module, state: Dict[str, torch.Tensor]) -> nn.Module:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AssertionError(f"state-dict map incomplete: missing {missing}, unexpected {unexpected}")
    return module


def hf_memory_attention_like(meta: nn.Module, grid: int) -> nn.Module:
    """HF's EdgeTamVideoMemoryAttention carrying the weights of Meta's `meta`."""
    return load_strict(hf_memory_attention(grid), memory_attention_meta_to_hf(meta.state_dict()))


def hf_perceiver_like(meta: nn.Module) -> nn.Module:
    return load_strict(hf_perceiver(), perceiver_meta_to_hf(meta.state_dict()))


# ---------------------------------------------------------------------------------------------
# Sample inputs
# ---------------------------------------------------------------------------------------------


def memory_attention_inputs(grid: int, frames: int, ptrs: int, batch: int = 1, seed: int = 0,
                            dtype=torch.float32, mem_dim: int = 64, frame_tokens: int = 512,
                            d_model: int = 256):
    """Seq-first inputs of Meta's MemoryAttention.forward: curr (HW, B, 256), memory
    (frames * 512 + 4 * ptrs, B, 64), their pos encodings, and the two counts."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    n_mem = frames * frame_tokens + 4 * ptrs
    return dict(
        curr=r(grid * grid, batch, d_model),
        memory=r(n_mem, batch, mem_dim),
        curr_pos=r(grid * grid, batch, d_model),
        memory_pos=r(n_mem, batch, mem_dim),
        num_obj_ptr_tokens=4 * ptrs,
        num_spatial_mem=frames,
    )


def hf_memory_attention_kwargs(inputs: dict) -> dict:
    """The same inputs under HF's EdgeTamVideoMemoryAttention.forward argument names."""
    return dict(
        current_vision_features=inputs["curr"],
        memory=inputs["memory"],
        current_vision_position_embeddings=inputs["curr_pos"],
        memory_posision_embeddings=inputs["memory_pos"],
        num_object_pointer_tokens=inputs["num_obj_ptr_tokens"],
        num_spatial_memory_tokens=inputs["num_spatial_mem"],
    )


def perceiver_inputs(grid: int = 64, batch: int = 1, seed: int = 0, dtype=torch.float32,
                     dim: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, grid, grid, generator=g, dtype=torch.float64).to(dtype)
    pos = torch.randn(batch, dim, grid, grid, generator=g, dtype=torch.float64).to(dtype)
    return x, pos


def perceiver_per_sample(module, x: torch.Tensor, pos: Optional[torch.Tensor]):
    """Run a perceiver resampler one sample at a time and concatenate.

    Upstream bug (Meta's PerceiverResampler.forward_2d and HF's copy,
    EdgeTamVideoPerceiverResampler._forward_2d): `latents_2d.unsqueeze(0).expand(B, -1, -1)
    .view(-1, 1, C)` raises for batch > 1 (an expanded tensor is not viewable; `reshape` would
    do). Oracles for batch 2 therefore run the upstream module per sample."""
    outs = [module(x[i : i + 1], None if pos is None else pos[i : i + 1])
            for i in range(x.shape[0])]
    lat = torch.cat([o[0] for o in outs])
    return lat, (None if pos is None else torch.cat([o[1] for o in outs]))


def _content_key(t: torch.Tensor):
    import hashlib

    return (tuple(t.shape), str(t.dtype), hashlib.sha1(t.detach().contiguous().numpy()).hexdigest())


def _clone_tree(x):
    if torch.is_tensor(x):
        return x.clone()
    if isinstance(x, dict):
        return type(x)({k: _clone_tree(v) for k, v in x.items()}) if type(x) is dict else x.__class__(
            **{k: _clone_tree(v) for k, v in x.items()})
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tree(v) for v in x)
    return x


def memoize_image_encoder(model) -> None:
    """Remember the image encoder's output per input image (by content) and per patch state of
    the encoder on this model instance: e2e tests run each clip unpatched and patched, and each
    encoder state computes a frame once. (With patch(..., fuse_encoder=False) the encoder is
    untouched and unpatched outputs are reused, which halves those tests' CPU time.) Outputs are
    handed out as fresh copies so no run can alter another's. Meta: `forward_image`; HF:
    `get_image_features`."""
    from edgetam_kernels.patch import is_patched

    name = "forward_image" if hasattr(model, "forward_image") else "get_image_features"
    encoder = model.image_encoder if hasattr(model, "image_encoder") else model.vision_encoder
    original = getattr(model, name)
    memo = {}

    @functools.wraps(original)
    def cached(pixels, *args, **kwargs):
        fused = any(is_patched(m) for m in encoder.modules())
        key = (fused, _content_key(pixels), args, tuple(sorted(kwargs.items())))
        if key not in memo:
            memo[key] = original(pixels, *args, **kwargs)
        return _clone_tree(memo[key])

    setattr(model, name, cached)


def random_clip(num_frames: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Random frames, normalised like the models' inputs (ImageNet mean/std of uniform noise)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(num_frames, 3, image_size, image_size, generator=g)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (img - mean) / std


def to64(inputs: dict) -> dict:
    return {k: v.double() if torch.is_tensor(v) else v for k, v in inputs.items()}


def clone(module: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    import copy

    m = copy.deepcopy(module)
    return m.to(dtype) if dtype is not None else m


# ---------------------------------------------------------------------------------------------
# EdgeTAM memory attention composed from the public functional ops (the spec of DESIGN.md)
# ---------------------------------------------------------------------------------------------


def functional_memory_attention(sd: Dict[str, torch.Tensor], inputs: dict, grid: int,
                                backend: str = "reference", k_grid=(16, 16),
                                compute_dtype=None) -> torch.Tensor:
    """Meta-named state dict `sd` + Meta's MemoryAttention inputs -> its (HW, B, 256) output,
    written directly from the math with edgetam_kernels.rope_attention for both attentions."""
    import torch.nn.functional as F

    import edgetam_kernels as ek

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    x = (inputs["curr"] + 0.1 * inputs["curr_pos"]).transpose(0, 1)
    mem = inputs["memory"].transpose(0, 1)
    mem_pos = inputs["memory_pos"].transpose(0, 1)
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    rope = dict(backend=backend, compute_dtype=compute_dtype)
    for i in range(n_layers):
        p = f"layers.{i}."
        h = ln(x, p + "norm1")
        sa = ek.rope_attention(lin(h, p + "self_attn.q_proj"), lin(h, p + "self_attn.k_proj"),
                               lin(h, p + "self_attn.v_proj"), q_grid=(grid, grid), **rope)
        x = x + lin(sa, p + "self_attn.out_proj")
        h = ln(x, p + "norm2")
        ca = ek.rope_attention(
            lin(h, p + "cross_attn_image.q_proj"), lin(mem + mem_pos, p + "cross_attn_image.k_proj"),
            lin(mem, p + "cross_attn_image.v_proj"), q_grid=(grid, grid), k_grid=k_grid,
            k_repeat=inputs["num_spatial_mem"], num_k_exclude_rope=inputs["num_obj_ptr_tokens"],
            **rope,
        )
        x = x + lin(ca, p + "cross_attn_image.out_proj")
        x = x + lin(torch.relu(lin(ln(x, p + "norm3"), p + "linear1")), p + "linear2")
    return ln(x, "norm").transpose(0, 1)
