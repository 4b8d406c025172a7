"""torch.export of the tracker's step and prompt step keeps edgetam_kernels' custom ops in the
graph, and the exported programs give the eager results."""

import warnings

import torch

import edgetam
from edgetam import export
from edgetam.tracker_step import PromptStep


def _model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return edgetam.load(image_size=256)


def test_export_track_step_has_custom_ops_and_matches_eager():
    model = _model()
    ep = export.export_track_step(model, num_objects=2)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("edgetam.rope_attention.default") == 4  # 2 layers x (self, cross)
    assert "edgetam.spatial_perceiver.default" in targets
    assert targets.count("aten.conv2d.default") > 100  # the image encoder is in the graph too

    inputs = export.example_inputs(model, 2)
    with torch.no_grad():
        got = ep.module()(*inputs)
        want = export.track_step(model)(*inputs)
    assert tuple(got[0].shape) == (2, 1, 64, 64) and tuple(got[1].shape) == (2, 1)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=str(i))
        else:
            assert torch.equal(a, b), i
    for a, b in zip(got[2:], inputs[1:]):  # new state = state's layout
        assert a.shape == b.shape and a.dtype == b.dtype


def test_export_prompt_step_matches_eager():
    model = _model()
    ep = export.export_prompt_step(model, num_objects=2, num_points=2)
    inputs = export.prompt_example_inputs(model, 2, 2)
    with torch.no_grad():
        got = ep.module()(*inputs)
        want = PromptStep(model, 8)(*inputs)
    shapes = [(2, 1, 64, 64), (2, 1), (2, 256), (2, 512, 64)]
    for shape, a, b in zip(shapes, got, want):
        assert tuple(a.shape) == shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
