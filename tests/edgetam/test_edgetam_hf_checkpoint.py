"""edgetam.load() on Hugging Face's EdgeTAM checkpoint (transformers' EdgeTamVideoModel).

A random EdgeTamVideoModel (EdgeTAM's real config, RepViT-M1 through timm, no download) is
saved with `save_pretrained` into a temporary folder, as the hub's `yonigozlan/EdgeTAM-hf` is
laid out, and loaded into edgetam's model:
- every tensor of ours comes from the checkpoint (ours is filled with NaN first) and ours holds
  exactly the checkpoint's values, bar the tensors edgetam.hf_checkpoint documents as unused;
- ours tracks a 6-frame clip (one click, 256 input) with the same masks as HF's own model;
- the hub id goes through huggingface_hub (replaced here by a function that hands back the
  folder: no network in tests), offline gives an error naming what to download and where;
- configs that are not EdgeTAM's (SAM 2's Hiera backbone, an image-only model, other memory
  settings), a folder without config or weights are refused with a clear error.

Random weights: HF's initialisation leaves LayerNorms at 1, biases and several embeddings at 0,
so that a swapped or dropped tensor could go unnoticed; every tensor outside the backbone is
redrawn (matrices fan-in scaled, norms around 1, biases small), the BatchNorms get random
statistics, the mask heads' outputs are scaled so logits reach about +-15 and the object-score
bias is positive so masks flow into memory (RECIPES). The two positional tables are made equal,
as in every checkpoint converted from Meta's (see edgetam/hf_checkpoint.py).
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

import edgetam
from edgetam import hf_checkpoint, video_io
from edgetam.cli import main
from edgetam.predictor import Frames
from edgetam_kernels.testing import rel_l2

from edgetam_kernels.testing import hosts as M

pytest.importorskip("transformers.models.edgetam_video")
pytest.importorskip("timm")
pytest.importorskip("safetensors")

SIZE = 256
NUM_FRAMES = 6
# Ours stores memory features in bfloat16 (as Meta's predictor does), HF keeps float32: the
# test rounds HF's through bfloat16 too (else 4e-4 relative). A swapped pair of tensors anywhere
# on the tracking path gives 1e-2 or more (measured for 12 kinds of swap).
REL_L2 = 1e-4
AGREEMENT = 0.999
LOGIT_SCALE = 10.0
# HF tensors that edgetam does not load (documented in edgetam/hf_checkpoint.py); the RoPE
# tables are non-persistent buffers in transformers 5 (not saved), the second positional table is
UNUSED = {
    "memory_attention.position_ids", "memory_attention.position_ids_k",
    "memory_attention.rotary_emb.inv_freq", "memory_attention.rotary_emb.original_inv_freq",
    "prompt_encoder.shared_embedding.positional_embedding",
}


@torch.no_grad()
def randomize_hf_(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        return torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.dtype) * (hi - lo) + lo

    for name, t in model.state_dict().items():
        if not t.is_floating_point() or name.endswith("positional_embedding"):
            continue
        if name.endswith("running_mean"):
            t.copy_(uniform(t, -0.1, 0.1))
        elif name.endswith("running_var"):
            t.copy_(uniform(t, 0.5, 1.5))
        elif t.dim() == 1 and name.endswith((".weight", ".scale")):  # norms, layer scales
            t.copy_(uniform(t, 0.7, 1.3))
        elif t.dim() == 1:
            t.copy_(uniform(t, -0.1, 0.1))
        elif not name.startswith("vision_encoder.backbone."):  # timm's init is kept there
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) / t[0].numel() ** 0.5)
        if "output_hypernetworks_mlps" in name and name.endswith("proj_out.weight"):
            t.mul_(LOGIT_SCALE)
    model.prompt_encoder.shared_embedding.positional_embedding.copy_(
        model.shared_image_embedding.positional_embedding)
    M.set_object_score_bias_(model.mask_decoder.pred_obj_score_head, 5.0)
    return model


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """(HF's model, the folder it was saved to)."""
    from transformers.models.edgetam_video import EdgeTamVideoModel

    torch.manual_seed(0)
    model = randomize_hf_(EdgeTamVideoModel(M.hf_config(SIZE)).eval())
    folder = tmp_path_factory.mktemp("EdgeTAM-hf")
    model.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    return model, str(folder)


def test_every_tensor_comes_from_the_checkpoint(hf_saved):
    from safetensors.torch import load_file

    hf, folder = hf_saved
    ours = edgetam.EdgeTAM(SIZE)
    with torch.no_grad():
        for t in ours.state_dict().values():
            t.fill_(float("nan") if t.is_floating_point() else -1)
    edgetam.load_weights(ours, folder)
    own = ours.state_dict()
    left = [k for k, t in own.items() if (t.isnan() if t.is_floating_point() else t < 0).any()]
    assert not left, f"not set from the checkpoint: {left}"

    # ours holds exactly the checkpoint's values (a permutation: renamed, split, stacked), and
    # every checkpoint tensor is used except the documented ones
    saved = load_file(os.path.join(folder, "model.safetensors"))
    assert "prompt_encoder.shared_embedding.positional_embedding" in saved
    used = [t for k, t in saved.items() if k not in UNUSED]
    assert sum(t.numel() for t in used) == sum(t.numel() for t in own.values())
    values = lambda ts: torch.sort(torch.cat([t.double().flatten() for t in ts])).values  # noqa
    assert torch.equal(values(used), values(own.values()))

    # tensors the tracking test below cannot see (used for mask prompts and absent objects)
    assert torch.equal(ours.no_obj_ptr, hf.no_object_pointer)
    assert torch.equal(ours.mask_downsample.weight, hf.mask_downsample.weight)
    assert torch.equal(ours.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
                       hf.shared_image_embedding.positional_embedding)


def _memory_stored_in_bf16(hf, monkeypatch):
    encode = hf._encode_new_memory

    def encode_and_round(*args, **kwargs):
        features, pos = encode(*args, **kwargs)
        return features.to(torch.bfloat16).to(features.dtype), pos

    monkeypatch.setattr(hf, "_encode_new_memory", encode_and_round)


@torch.no_grad()
def test_tracks_like_hf(hf_saved, monkeypatch):
    hf, folder = hf_saved
    _memory_stored_in_bf16(hf, monkeypatch)
    ours = edgetam.load(folder, image_size=SIZE)
    frames, centre = video_io.synthetic_clip(NUM_FRAMES, height=SIZE, width=SIZE)
    click = dict(points=[list(centre)], labels=[1])

    # HF without hole filling, so ours runs without it too; frames are the model's size, so
    # clicks and masks need no rescaling and both models see the same normalised images
    predictor = edgetam.VideoPredictor(ours, fill_hole_area=0)
    state = predictor.init_state(frames)
    predictor.add_new_points_or_box(state, 0, 1, **click)
    mine = {f: logits.clone() for f, _, logits in predictor.propagate_in_video(state)}

    src = Frames(frames, SIZE)
    session = M.hf_session(torch.stack([src[i] for i in range(len(src))]))
    M.hf_add_prompt(session, 0, 1, **click)
    theirs = {out.frame_idx: F.interpolate(out.pred_masks.float(), size=(SIZE, SIZE),
                                           mode="bilinear", align_corners=False)
              for out in hf.propagate_in_video_iterator(session, start_frame_idx=0)}

    assert sorted(mine) == sorted(theirs) == list(range(NUM_FRAMES))
    scores = [float(o["object_score_logits"]) for o in
              session.output_dict_per_obj[0]["non_cond_frame_outputs"].values()]
    assert len(scores) == NUM_FRAMES - 1 and min(scores) > 0  # masks flowed into memory
    errors = {f: rel_l2(mine[f], theirs[f]) for f in mine}
    agreement = {f: ((mine[f] > 0) == (theirs[f] > 0)).double().mean().item() for f in mine}
    areas = [(mine[f] > 0).double().mean().item() for f in mine]
    print(f"\nrel L2 per frame {errors}\nagreement {agreement}\nmask area {areas}")
    assert max(errors.values()) < REL_L2, errors
    assert min(agreement.values()) >= AGREEMENT, agreement
    assert max(m.abs().max().item() for m in mine.values()) > 5  # logits of a useful size
    assert 0.05 < min(areas[1:]) and max(areas[1:]) < 0.95  # tracked masks are not trivial


def test_hub_id_goes_through_huggingface_hub(hf_saved, monkeypatch, tmp_path, capsys):
    _, folder = hf_saved
    asked = []

    def fake_download(repo_id):
        asked.append(repo_id)
        return folder

    monkeypatch.setattr(hf_checkpoint, "download_from_hub", fake_download)
    from_hub = edgetam.load(hf_checkpoint.HUB_ID, image_size=SIZE)
    from_folder = edgetam.load(folder, image_size=SIZE)
    assert asked == [hf_checkpoint.HUB_ID]
    for (k, a), b in zip(from_hub.state_dict().items(), from_folder.state_dict().values()):
        assert torch.equal(a, b), k

    out = tmp_path / "runs" / "hf"
    assert main(["track", "--checkpoint", hf_checkpoint.HUB_ID, "--out", str(out), "--frames",
                 "2", "--image-size", "512", "--threads", "1", "--no-progress"]) == 0
    assert asked == [hf_checkpoint.HUB_ID] * 2
    assert "RANDOM" not in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["random_weights"] is False


def test_offline_names_what_to_download(monkeypatch, tmp_path, capsys):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # and an empty cache: nothing to find
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(edgetam.CheckpointError) as e:
        edgetam.load(hf_checkpoint.HUB_ID)
    msg = str(e.value)
    for needed in ("config.json", "model.safetensors",
                   "https://huggingface.co/yonigozlan/EdgeTAM-hf", "--checkpoint"):
        assert needed in msg, msg

    assert main(["track", "--checkpoint", "someone/not-edgetam", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "https://huggingface.co/someone/not-edgetam" in err
    assert not (tmp_path / "o").exists()


def _config(tmp_path, name, **changes):
    from transformers.models.edgetam_video import EdgeTamVideoConfig

    folder = tmp_path / name
    cfg = M.hf_config(SIZE) if changes.pop("edgetam", True) else EdgeTamVideoConfig()
    cfg.save_pretrained(folder)
    if changes:
        path = folder / "config.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("case,message", [
    ("hiera", "not EdgeTAM's RepViT-M1"),
    ("sam2", "'sam2_video'"),
    ("image_only", "single-image"),
    ("num_maskmem", "num_maskmem=9"),
    ("no_config", "no config.json"),
    ("no_weights", "no model.safetensors"),
    ("bad_weights", "cannot read"),
])
def test_not_an_edgetam_checkpoint(tmp_path, case, message):
    if case == "hiera":  # transformers' default EdgeTamVideoConfig: SAM 2's Hiera backbone
        folder = _config(tmp_path, case, edgetam=False)
    elif case == "sam2":
        folder = _config(tmp_path, case, model_type="sam2_video")
    elif case == "image_only":
        folder = _config(tmp_path, case, model_type="edgetam")
    elif case == "num_maskmem":
        folder = _config(tmp_path, case, num_maskmem=9)
    elif case == "no_config":
        folder = tmp_path / "empty"
        folder.mkdir()
    else:
        folder = _config(tmp_path, case)
        if case == "bad_weights":
            (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")
    with pytest.raises(edgetam.CheckpointError, match=message):
        edgetam.load(folder)


def test_two_different_positional_tables_are_refused():
    table = torch.randn(2, 128)
    with pytest.raises(edgetam.CheckpointError, match="two different positional tables"):
        hf_checkpoint.hf_to_meta({
            "shared_image_embedding.positional_embedding": table,
            "prompt_encoder.shared_embedding.positional_embedding": table + 1})


def test_what_counts_as_a_hugging_face_checkpoint(tmp_path):
    file = tmp_path / "edgetam.pt"
    file.write_bytes(b"")
    assert hf_checkpoint.is_hf_checkpoint(tmp_path)  # a folder
    assert hf_checkpoint.is_hf_checkpoint("yonigozlan/EdgeTAM-hf")  # a hub id
    assert not hf_checkpoint.is_hf_checkpoint(file)  # Meta's file
    assert not hf_checkpoint.is_hf_checkpoint("checkpoints/edgetam.pt")  # a missing file
    assert not hf_checkpoint.is_hf_checkpoint(str(tmp_path / "a" / "b"))  # a missing path
    assert not hf_checkpoint.is_hf_checkpoint({"model": {}})
