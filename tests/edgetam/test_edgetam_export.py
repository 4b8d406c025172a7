"""torch.export of one tracking step keeps edgetam_kernels' custom ops in the graph."""

import warnings

import torch

import edgetam
from edgetam import export


def test_export_track_step_has_custom_ops():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgetam.load(image_size=256)
    ep = export.export_track_step(model, num_objects=2, num_mem_frames=2, num_ptrs=3)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "edgetam.rope_attention.default" in targets
    assert targets.count("edgetam.rope_attention.default") == 4  # 2 layers x (self, cross)
    assert "edgetam.spatial_perceiver.default" in targets
    assert targets.count("aten.conv2d.default") > 100  # the image encoder is in the graph too

    inputs = export.example_inputs(model, 2, 2, 3)
    with torch.no_grad():
        got = ep.module()(*inputs)
        want = export.TrackStep(model, 2, 3)(*inputs)
    names = ["masks", "obj_ptr", "score", "memory", "memory_pos"]
    shapes = [(2, 1, 64, 64), (2, 256), (2, 1), (2, 512, 64), (2, 512, 64)]
    for name, shape, a, b in zip(names, shapes, got, want):
        assert tuple(a.shape) == shape, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
