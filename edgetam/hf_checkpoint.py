"""Hugging Face's EdgeTAM checkpoint (transformers' `EdgeTamVideoModel`) as edgetam weights.

A checkpoint is a folder with `config.json` + `model.safetensors` (what
`EdgeTamVideoModel.save_pretrained` writes; sharded safetensors with an index also work) or its
hub id, `yonigozlan/EdgeTAM-hf`, fetched once and cached by `huggingface_hub`. Its parameters
are renamed to Meta's layout (which `edgetam.EdgeTAM` uses) and then loaded strictly by
`edgetam.loading`, so every tensor of the model comes from the checkpoint.

HF tensors that are not loaded, on purpose:
- `memory_attention.position_ids`, `.position_ids_k`, `.rotary_emb.inv_freq`,
  `.rotary_emb.original_inv_freq`: RoPE index and frequency tables derived from the config
  (rope_theta, feature sizes); edgetam computes its own from the input size.
- `prompt_encoder.shared_embedding.positional_embedding`: a second copy of
  `shared_image_embedding.positional_embedding` (Meta's model has one table for both uses, and
  transformers' conversion of Meta's checkpoint writes it twice); a checkpoint where the two
  differ is refused (a freshly initialised EdgeTamVideoModel draws them independently).
Needs `safetensors`, and `huggingface_hub` for hub ids only; transformers is not needed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Mapping, Tuple

import torch

from .loading import CheckpointError  # loading imports this module only when it is called

HUB_ID = "yonigozlan/EdgeTAM-hf"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"

# derived tables, recomputed by edgetam (module docstring)
_DERIVED = ("memory_attention.position_ids", "memory_attention.position_ids_k",
            "memory_attention.rotary_emb.inv_freq", "memory_attention.rotary_emb.original_inv_freq")
_PE = "shared_image_embedding.positional_embedding"
_PE_COPY = "prompt_encoder.shared_embedding.positional_embedding"

# config.json values that change what the model computes without changing any tensor's shape:
# edgetam implements EdgeTAM's (the shapes are checked when the weights load)
_EDGETAM_CONFIG = {
    "num_maskmem": 7,
    "max_object_pointers_in_encoder": 16,
    "sigmoid_scale_for_mem_enc": 20.0,
    "sigmoid_bias_for_mem_enc": -10.0,
    "multimask_min_pt_num": 0,
    "multimask_max_pt_num": 1,
    "multimask_output_in_sam": True,
    "multimask_output_for_tracking": True,
    "enable_temporal_pos_encoding_for_object_pointers": False,
    "enable_occlusion_spatial_embedding": False,
    "max_cond_frame_num": -1,
    "memory_attention_mlp_hidden_act": "relu",
    "memory_attention_num_attention_heads": 1,
    "perceiver_resampler_num_attention_heads": 1,
}


def _by_hand(why: str, repo_id: str = HUB_ID) -> str:
    return (f"{why}. Download config.json and {WEIGHTS} by hand from "
            f"https://huggingface.co/{repo_id}/tree/main into one folder (e.g. "
            f"checkpoints/EdgeTAM-hf/) and pass that folder: edgetam.load('checkpoints/EdgeTAM-hf')"
            f" or --checkpoint checkpoints/EdgeTAM-hf (or use Meta's edgetam.pt from "
            f"github.com/facebookresearch/EdgeTAM)")


# ---------------------------------------------------------------------------------------------
# Where the checkpoint is
# ---------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json")


def is_hf_checkpoint(checkpoint) -> bool:
    """True for a folder (Meta's checkpoint is one file) or an `owner/name` hub id that is not
    a local path."""
    if isinstance(checkpoint, Mapping):
        return False
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        return True
    return (not os.path.exists(path) and bool(_HUB_ID.match(path))
            and not path.lower().endswith(_FILE_SUFFIXES))


def download_from_hub(repo_id: str) -> str:
    """The local folder of `repo_id`'s config and weights: downloaded on first use, then from
    huggingface_hub's cache (also offline). Tests replace this function."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise CheckpointError(_by_hand(f"loading {repo_id} from the Hugging Face hub needs "
                              f"huggingface_hub (pip install huggingface_hub)", repo_id)) from e
    try:
        return snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors",
                                                          WEIGHTS_INDEX])
    except Exception as e:  # offline, not found, gated, HTTP errors: all end the same way
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        raise CheckpointError(_by_hand(f"cannot fetch {repo_id} from the Hugging Face hub ({reason})",
                              repo_id)) from e


def resolve(checkpoint) -> str:
    """The folder holding the checkpoint (a hub id is fetched first)."""
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        return path
    try:
        return download_from_hub(path)
    except CheckpointError as e:
        raise CheckpointError(f"{path!r} is no local file or folder, so it was taken as a "
                              f"Hugging Face hub id: {e}") from e


# ---------------------------------------------------------------------------------------------
# Config and weights
# ---------------------------------------------------------------------------------------------


def check_config(folder: str) -> dict:
    """config.json of the folder, checked to describe EdgeTAM's video model."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder} is a folder but holds no config.json: expected a Hugging Face "
                     f"EdgeTAM checkpoint (config.json + {WEIGHTS}, as "
                     f"EdgeTamVideoModel.save_pretrained writes) or give Meta's edgetam.pt file")
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind == "edgetam":
        raise CheckpointError(f"{path}: an EdgeTamModel (single-image) checkpoint has no memory modules; "
                     f"video tracking needs EdgeTAM's video checkpoint ({HUB_ID})")
    if kind != "edgetam_video":
        hint = " (a SAM 2 checkpoint, not EdgeTAM?)" if str(kind).startswith("sam2") else ""
        raise CheckpointError(f"{path}: model_type is {kind!r}, expected 'edgetam_video' "
                     f"(transformers' EdgeTamVideoModel){hint}")
    backbone = (cfg.get("vision_config") or {}).get("backbone_config") or {}
    arch = backbone.get("architecture") or backbone.get("model_type") or "?"
    if backbone.get("model_type") != "timm_wrapper" or not str(arch).startswith("repvit_m1"):
        raise CheckpointError(f"{path}: the image backbone is {arch!r}, not EdgeTAM's RepViT-M1 "
                     f"('repvit_m1.dist_in1k' through timm); edgetam implements EdgeTAM only "
                     f"(a Hiera backbone is SAM 2's)")
    bad = [f"{k}={cfg[k]!r} (EdgeTAM: {v!r})" for k, v in _EDGETAM_CONFIG.items()
           if k in cfg and cfg[k] != v]
    rope = (cfg.get("rope_parameters") or {}).get(
        "rope_theta", cfg.get("memory_attention_rope_theta", 10000.0))
    if rope != 10000.0:
        bad.append(f"rope_theta={rope!r} (EdgeTAM: 10000.0)")
    if bad:
        raise CheckpointError(f"{path} describes a model edgetam does not implement: {'; '.join(bad)}")
    return cfg


def read_weights(folder: str) -> Dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), on the CPU."""
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError("reading a Hugging Face checkpoint needs safetensors "
                     "(pip install safetensors)") from e
    index = os.path.join(folder, WEIGHTS_INDEX)
    if os.path.isfile(index):
        with open(index) as fh:
            files = sorted(set(json.load(fh).get("weight_map", {}).values()))
    else:
        files = [WEIGHTS]
    sd: Dict[str, torch.Tensor] = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise CheckpointError(_by_hand(f"{folder} has config.json but no {name}"))
        try:
            sd.update(load_file(path, device="cpu"))
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {str(e)[:200]} "
                         f"(is the file complete?)") from e
    return sd


# ---------------------------------------------------------------------------------------------
# HF names -> Meta's names
# ---------------------------------------------------------------------------------------------

# Applied in order to every name (after the feed-forward renumbering below); each rule rewrites
# a part of the name, later rules see the result.
_RULES: Tuple[Tuple[str, str], ...] = (
    # image encoder: timm's RepViT under Meta's trunk.body, FPN convs one level deeper
    (r"^vision_encoder\.backbone\.timm_model\.", "image_encoder.trunk.body."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv."),
    # mask decoder
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.",
     r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.",
     "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.", "sam_mask_decoder."),
    # prompt encoder (point_embed is split in hf_to_meta)
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.", "sam_prompt_encoder."),
    (r"^shared_image_embedding\.positional_embedding$",
     "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    # memory attention
    (r"^memory_attention\.layer_norm\.", "memory_attention.norm."),
    (r"^memory_attention\.layers\.(\d+)\.layer_norm(\d)\.", r"memory_attention.layers.\1.norm\2."),
    (r"^memory_attention\.layers\.(\d+)\.mlp\.up_proj\.", r"memory_attention.layers.\1.linear1."),
    (r"^memory_attention\.layers\.(\d+)\.mlp\.down_proj\.",
     r"memory_attention.layers.\1.linear2."),
    (r"^(sam_mask_decoder|memory_attention)\.(.+)\.o_proj\.", r"\1.\2.out_proj."),
    # memory encoder (the mask downsampler's indices are set in hf_to_meta)
    (r"^memory_encoder\.feature_projection\.", "memory_encoder.pix_feat_proj."),
    (r"^memory_encoder\.projection\.", "memory_encoder.out_proj."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.depthwise_conv\.",
     r"memory_encoder.fuser.layers.\1.dwconv."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.layer_norm\.",
     r"memory_encoder.fuser.layers.\1.norm."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.pointwise_conv(\d)\.",
     r"memory_encoder.fuser.layers.\1.pwconv\2."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.scale$",
     r"memory_encoder.fuser.layers.\1.gamma"),
    # spatial perceiver (its k / v projections are stacked in hf_to_meta)
    (r"^spatial_perceiver\.latents_1d$", "spatial_perceiver.latents"),
    (r"^spatial_perceiver\.layer_norm\.", "spatial_perceiver.norm."),
    (r"^(spatial_perceiver\.layers\.\d+)\.layer_norm_latents\.", r"\1.attn.norm_latents."),
    (r"^(spatial_perceiver\.layers\.\d+)\.layer_norm_input\.", r"\1.attn.norm_x."),
    (r"^(spatial_perceiver\.layers\.\d+)\.cross_attention\.q_proj\.", r"\1.attn.to_q."),
    (r"^(spatial_perceiver\.layers\.\d+)\.cross_attention\.o_proj\.", r"\1.attn.to_out."),
    (r"^(spatial_perceiver\.layers\.\d+)\.layer_norm_self\.", r"\1.self_attn.norm."),
    (r"^(spatial_perceiver\.layers\.\d+)\.self_attention\.q_proj\.", r"\1.self_attn.to_q."),
    (r"^(spatial_perceiver\.layers\.\d+)\.self_attention\.o_proj\.", r"\1.self_attn.to_out."),
    (r"^(spatial_perceiver\.layers\.\d+)\.mlp\.layer_norm\.", r"\1.ff.0."),
    (r"^(spatial_perceiver\.layers\.\d+)\.mlp\.up_proj\.", r"\1.ff.1."),
    (r"^(spatial_perceiver\.layers\.\d+)\.mlp\.down_proj\.", r"\1.ff.3."),
    (r"^(spatial_perceiver\.layers\.\d+)\.self_mlp\.layer_norm\.", r"\1.self_ff.0."),
    (r"^(spatial_perceiver\.layers\.\d+)\.self_mlp\.up_proj\.", r"\1.self_ff.1."),
    (r"^(spatial_perceiver\.layers\.\d+)\.self_mlp\.down_proj\.", r"\1.self_ff.3."),
    # top-level tensors and the object-pointer MLP
    (r"^object_pointer_proj\.", "obj_ptr_proj."),
    (r"^memory_temporal_positional_encoding$", "maskmem_tpos_enc"),
    (r"^no_memory_embedding$", "no_mem_embed"),
    (r"^no_memory_positional_encoding$", "no_mem_pos_enc"),
    (r"^no_object_pointer$", "no_obj_ptr"),
)
_COMPILED = tuple((re.compile(p), r) for p, r in _RULES)


def _rename(name: str) -> str:
    for pattern, repl in _COMPILED:
        name = pattern.sub(repl, name)
    return name


def _feed_forward_names(names) -> Dict[str, str]:
    """HF's feed-forward heads are proj_in, layers.0 .. layers.{n-3}, proj_out; Meta's MLP is
    layers.0 .. layers.{n-1}: renumber (HF name -> HF name in Meta's numbering)."""
    out = {}
    heads = {m.group(1) for m in map(re.compile(r"^(.+)\.proj_in\.weight$").match, names) if m}
    for head in heads:
        mid = re.compile(re.escape(head) + r"\.layers\.(\d+)\.(weight|bias)$")
        n_mid = len({m.group(1) for m in map(mid.match, names) if m})
        for name in names:
            if name.startswith(head + ".proj_in."):
                out[name] = f"{head}.layers.0.{name.rsplit('.', 1)[1]}"
            elif name.startswith(head + ".proj_out."):
                out[name] = f"{head}.layers.{n_mid + 1}.{name.rsplit('.', 1)[1]}"
            elif mid.match(name):
                i, param = mid.match(name).groups()
                out[name] = f"{head}.layers.{int(i) + 1}.{param}"
    return out


def hf_to_meta(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF EdgeTamVideoModel state dict -> Meta's names and layout (a new dict)."""
    sd = dict(sd)
    for name in _DERIVED:
        sd.pop(name, None)
    if _PE_COPY in sd:
        copy = sd.pop(_PE_COPY)
        if _PE in sd and not torch.equal(copy, sd[_PE]):
            raise CheckpointError(f"checkpoint has two different positional tables, {_PE} and "
                         f"{_PE_COPY}; EdgeTAM uses one for both")
    out: Dict[str, torch.Tensor] = {}
    # point embeddings: one (4, C) table in HF, four (1, C) embeddings in Meta's model
    points = sd.pop("prompt_encoder.point_embed.weight", None)
    if points is not None:
        for i, row in enumerate(points):
            out[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = row[None].clone()
    # perceiver: HF's separate k and v projections are Meta's stacked to_kv
    for name in [n for n in sd if re.match(r"^spatial_perceiver\.layers\.\d+\.\w+\.k_proj\.", n)]:
        v_name = name.replace(".k_proj.", ".v_proj.")
        if v_name not in sd:
            continue  # reported as unexpected by the strict load
        layer, attn = re.match(r"^spatial_perceiver\.layers\.(\d+)\.(\w+)\.k_proj\.", name).groups()
        target = {"cross_attention": "attn", "self_attention": "self_attn"}.get(attn, attn)
        param = name.rsplit(".", 1)[1]
        out[f"spatial_perceiver.layers.{layer}.{target}.to_kv.{param}"] = torch.cat(
            [sd.pop(name), sd.pop(v_name)], dim=0)
    # memory encoder's mask downsampler: (conv, LayerNorm2d, GELU) per layer, then a 1x1 conv
    down = re.compile(
        r"^memory_encoder\.mask_downsampler\.layers\.(\d+)\.(conv|layer_norm)\.(\w+)$")
    n_down = len({m.group(1) for m in map(down.match, sd) if m})
    for name in list(sd):
        m = down.match(name)
        final = re.match(r"^memory_encoder\.mask_downsampler\.final_conv\.(\w+)$", name)
        if m:
            i, kind, param = m.groups()
            idx = 3 * int(i) + (0 if kind == "conv" else 1)
        elif final:
            idx, param = 3 * n_down, final.group(1)
        else:
            continue
        out[f"memory_encoder.mask_downsampler.encoder.{idx}.{param}"] = sd.pop(name)
    ff = _feed_forward_names(list(sd))
    for name, tensor in sd.items():
        out[_rename(ff.get(name, name))] = tensor
    return out


def looks_like_hf_state_dict(sd: Mapping) -> bool:
    return any(str(k).startswith(("vision_encoder.", "mask_decoder.", "memory_temporal_"))
               for k in sd)


def read_state_dict(checkpoint) -> Dict[str, torch.Tensor]:
    """A Hugging Face EdgeTAM checkpoint (folder or hub id) as a state dict in Meta's names."""
    folder = resolve(checkpoint)
    check_config(folder)
    return hf_to_meta(read_weights(folder))
