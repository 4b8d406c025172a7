"""edgetam's classes registered with edgetam_kernels.patch (through its public API), so
`edgetam_kernels.patch(model)` knows this model too; imported by edgetam/__init__.py.

- The perceiver and RoPE attention already run on edgetam_kernels' ops: patching only sets, for
  the duration of each call, the backend and compute dtype those ops get.
- The RepViT image encoder mirrors timm's classes: patched like them (`register_like`).
- The memory encoder has Meta's structure: patched channels-last like it (`register_classes`).
"""

from __future__ import annotations

from edgetam_kernels.patch import memory_encoder, register_adapter, register_like

from .common import sine_position_encoding


def _with_options(module, state, original):
    def forward(self, *args, **kwargs):
        saved = (self.backend, self.__dict__.get("compute_dtype"))
        self.backend = state["options"]["backend"]
        cd = state["options"]["compute_dtype"]  # None: keep the module's own (edgetam.load's)
        self.compute_dtype = saved[1] if cd is None else cd
        try:
            return original(*args, **kwargs)
        finally:
            self.backend, self.compute_dtype = saved

    return forward


def _memory_position(x):
    b, c, h, w = x.shape
    return sine_position_encoding(c, h, w, x.device).to(x.dtype)[None].expand(b, -1, -1, -1)


def register() -> None:
    register_adapter("edgetam.memory.SpatialPerceiver")(_with_options)
    register_adapter("edgetam.memory.RoPEAttention")(_with_options)

    timm = "timm.models.repvit"
    for ours, theirs in (("ConvNorm", "ConvNorm"), ("DwMixer", "RepVggDw"),
                         ("ConvMlp", "RepVitMlp"), ("Stem", "RepVitStem"),
                         ("Block", "RepViTBlock"), ("Downsample", "RepVitDownsample"),
                         ("RepViT", "RepVit")):
        register_like(f"edgetam.repvit.{ours}", f"{timm}.{theirs}")

    memory_encoder.register_classes(
        block="edgetam.memory.CXBlock",
        block_parts=("dwconv", "norm", "pwconv1", None, "pwconv2", "gamma"),
        fuser="edgetam.memory.Fuser", fuser_projection=None,
        downsampler="edgetam.memory.MaskDownSampler",
        encoder="edgetam.memory.MemoryEncoder",
        encoder_parts=("mask_downsampler", "pix_feat_proj", "fuser", "out_proj"),
        encoder_adapter=memory_encoder.tuple_encoder(_memory_position),
        layer_norm_2d="edgetam.common.LayerNorm2d",
    )


register()
