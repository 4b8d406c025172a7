"""Build Meta's reference EdgeTAM (package `sam2`, PyPI edgetam-dimos) offline with random
weights, for parity tests and comparisons. Needs sam2, hydra-core, iopath and timm; nothing here
is imported by the model itself. The builder is edgetam_kernels.testing.hosts' (also used by the
kernel library's parity tests); what is added here is what comparing with edgetam.EdgeTAM needs.
"""

from __future__ import annotations

import contextlib

import torch

from edgetam_kernels.testing import hosts


def build_meta_video_predictor(image_size: int = 1024, device: str = "cpu", seed: int = 0,
                               fill_hole_area: int = 8):
    """Meta's SAM2VideoPredictor for EdgeTAM at `image_size`, random weights (seeded).

    fill_hole_area: Meta's builder sets 8 (fill background holes of up to 8 low-res pixels).
    Meta's code finds the holes with its CUDA extension or OpenCV and silently skips the step
    without them; `our_hole_filling()` makes it use edgetam's (identical to OpenCV's)
    so results do not depend on whether OpenCV is installed."""
    side = image_size // 16
    # Meta's self-attention RoPE table follows the query length anyway; fixing it at the grid
    # only avoids its rebuild on the first frame
    extra = [f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]"]
    model = hosts.meta_video_predictor(image_size, seed=seed, device=device, extra=extra,
                                       object_score_bias=None)
    model.fill_hole_area = fill_hole_area
    return model


@contextlib.contextmanager
def all_sdpa_kernels():
    """Within the block, Meta's attention lets torch pick any SDPA kernel instead of forcing
    the math path on CPU (its module global ALLOW_ALL_KERNELS; restored afterwards, so models
    built or run later in the process keep Meta's own behaviour)."""
    hosts.shim_torchvision()
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


def init_state_on(meta, frames, image_size: int):
    """Meta's predictor's `init_state` on exactly the frames ours reads (HxWx3 uint8 arrays,
    preprocessed by edgetam.predictor.Frames), so a comparison starts from identical inputs:
    Meta's own loader would decode and resize them its way."""
    import warnings

    import sam2.sam2_video_predictor as svp

    from .predictor import Frames

    src = Frames(frames, image_size)
    images = torch.stack([src[i] for i in range(len(src))])
    h, w = frames[0].shape[:2]
    original = svp.load_video_frames
    svp.load_video_frames = lambda **kw: (images, h, w)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return meta.init_state("clip.mp4")
    finally:
        svp.load_video_frames = original


def random_edgetam(image_size: int, seed: int = 0):
    """An edgetam.EdgeTAM (eval mode) whose weights depend on `seed` alone, in any process: the
    initial weights are drawn under the seed (without touching the caller's random state),
    then `randomize_`. What a .pte exported in one process and a model made in another must
    share."""
    import warnings

    from .model import EdgeTAM

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": that is the point here
        torch.manual_seed(seed)
        model = EdgeTAM(image_size=image_size)
    return randomize_(model, seed=seed).eval()


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
