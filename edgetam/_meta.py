"""Build Meta's reference EdgeTAM (package `sam2`, PyPI edgetam-dimos) offline with random
weights, for parity tests and comparisons. Needs sam2, hydra-core, iopath and timm; nothing here
is imported by the model itself.
"""

from __future__ import annotations

import contextlib

import torch


def _shim_torchvision() -> None:
    """PyPI's torchvision is a CUDA build whose C ops fail to register beside a CPU torch; timm
    (imported by sam2) only needs its Python parts, which import once these schemas exist."""
    if torch.cuda.is_available():
        return
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in ("nms", "qnms"):
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _shim_torchvision.lib = lib
    except RuntimeError:
        pass  # already defined (the real ops, or the tests' conftest)


@contextlib.contextmanager
def _no_pretrained():
    """sam2's TimmBackbone asks timm for ImageNet weights (a download): ask for none."""
    import sam2.modeling.backbones.timm as tb

    original = tb.create_model

    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    tb.create_model = create_model
    try:
        yield
    finally:
        tb.create_model = original


def build_meta_video_predictor(image_size: int = 1024, device: str = "cpu", seed: int = 0,
                               fill_hole_area: int = 8):
    """Meta's SAM2VideoPredictor for EdgeTAM at `image_size`, random weights (seeded).

    fill_hole_area: Meta's builder sets 8 (fill background holes of up to 8 low-res pixels).
    Meta's code finds the holes with its CUDA extension or OpenCV and silently skips the step
    without them; `our_hole_filling()` makes it use edgetam's (identical to OpenCV's)
    so results do not depend on whether OpenCV is installed."""
    _shim_torchvision()
    from sam2.build_sam import build_sam2_video_predictor

    side = image_size // 16
    overrides = [f"++model.image_size={image_size}",
                 f"++model.memory_attention.layer.cross_attention.q_sizes=[{side},{side}]",
                 f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]"]
    torch.manual_seed(seed)
    with _no_pretrained(), contextlib.redirect_stdout(None):
        model = build_sam2_video_predictor("configs/edgetam.yaml", None, device=device,
                                           hydra_overrides_extra=overrides)
    model.fill_hole_area = fill_hole_area
    return model.eval()


@contextlib.contextmanager
def all_sdpa_kernels():
    """Within the block, Meta's attention lets torch pick any SDPA kernel instead of forcing
    the math path on CPU (its module global ALLOW_ALL_KERNELS; restored afterwards, so models
    built or run later in the process keep Meta's own behaviour)."""
    _shim_torchvision()
    import sam2.modeling.sam.transformer as tr

    saved = tr.ALLOW_ALL_KERNELS
    tr.ALLOW_ALL_KERNELS = True
    try:
        yield
    finally:
        tr.ALLOW_ALL_KERNELS = saved


@contextlib.contextmanager
def our_hole_filling():
    """Within the block, Meta's video predictor fills holes with edgetam.postprocess.fill_holes
    (bit-identical to its OpenCV path, which needs cv2) instead of skipping the step."""
    import sam2.sam2_video_predictor as svp

    from .postprocess import fill_holes

    original = svp.fill_holes_in_mask_scores
    svp.fill_holes_in_mask_scores = fill_holes
    try:
        yield
    finally:
        svp.fill_holes_in_mask_scores = original


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, obj_score_bias: float = 5.0,
               logit_scale: float = 30.0):
    """Give deterministic-init tensors random values so a comparison tests them: BatchNorm
    statistics and affine terms, LayerNorm affine terms, biases, layer scales. The object-score
    head's last bias is set to `obj_score_bias` (> 0) so masks count as present and flow into
    memory (with random weights the score would say "no object"). Works on Meta's model and
    on edgetam.EdgeTAM alike (same names). The hypernetwork outputs are scaled by `logit_scale`
    so mask logits have a realistic range."""
    g = torch.Generator().manual_seed(seed)

    def rand(t, lo, hi):
        return torch.rand(t.shape, generator=g, dtype=torch.float32) * (hi - lo) + lo

    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith("running_mean"):
            t.copy_(rand(t, -0.1, 0.1))
        elif name.endswith("running_var"):
            t.copy_(rand(t, 0.5, 1.5))
        elif name.endswith("gamma"):
            t.copy_(rand(t, 0.5, 1.0))
        elif name.endswith(".bias") or name.endswith("bn.weight") or "norm" in name and \
                name.endswith(".weight") or "output_upscaling.1.weight" in name or \
                "mask_downscaling.1.weight" in name or "mask_downscaling.4.weight" in name:
            if name.endswith(".weight"):
                t.copy_(rand(t, 0.7, 1.3))
            else:
                t.copy_(rand(t, -0.1, 0.1))
    sd = model.state_dict()
    for name, t in sd.items():
        # random init gives mask logits of about +-0.2: scale them to a realistic +-10 or so
        if "output_hypernetworks_mlps" in name and name.endswith("layers.2.weight"):
            t.mul_(logit_scale)
    head = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
    if head in sd:
        sd[head].fill_(obj_score_bias)
    return model
