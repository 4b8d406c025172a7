"""Adapter for our own `edgetam/` model: it already runs on edgetam_kernels' ops, so patching
only sets, for the duration of each call, the backend and compute dtype those ops get."""

from __future__ import annotations

from .patch import register_adapter


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


register_adapter("edgetam.memory.SpatialPerceiver")(_with_options)
register_adapter("edgetam.memory.RoPEAttention")(_with_options)
