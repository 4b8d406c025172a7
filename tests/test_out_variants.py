"""The `.out` overloads of the edgetam:: ops (ExecuTorch runs those): their schemas repeat the
functional ones exactly, they pass opcheck, equal the functional op, resize `out`, refuse an
`out` of the wrong dtype or device, and export / ExecuTorch lowering keeps them."""

import importlib.util

import pytest
import torch

from edgetam_kernels import _out_variants
from edgetam_kernels.testing import masked_cross_attention_inputs, random_perceiver_weights


def op_cases():
    """(name, functional arguments) for each op, small shapes, reference backend."""
    q, k, v, kw = masked_cross_attention_inputs(batch=2, heads=2)
    mask = torch.rand(2, k.shape[2], generator=torch.Generator().manual_seed(0)) < 0.6
    mask[1] = False
    rope = (q, k, v, kw["q_grid"], kw["k_grid"], kw["k_repeat"], kw["num_k_exclude_rope"],
            1e4, 0.25, None, mask, "reference")
    ws, lat1, lat2, (norm_w, norm_b) = random_perceiver_weights(c=16, inner=16, hidden=32,
                                                                depth=1, l1=3, l2=4)
    lat, x, pos = torch.randn(2, 5, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    perceiver = (lat, x, pos, *ws[:7], 2, 1e-5, "reference")
    xs, poss = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    spatial = (xs, poss, lat1, lat2, ws, norm_w, norm_b, 1, 2, True, 1e-5, None, "reference")
    return [("rope_attention", rope), ("perceiver_attention", perceiver),
            ("spatial_perceiver", spatial)]


CASES = op_cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name", _out_variants.OPS)
def test_out_schema_repeats_the_functional_arguments(name):
    functional = getattr(torch.ops.edgetam, name).default._schema
    out = getattr(torch.ops.edgetam, name).out._schema
    f_args = [(a.name, str(a.type)) for a in functional.arguments]
    o_args = [(a.name, str(a.type)) for a in out.arguments]
    assert o_args[:-1] == f_args
    assert o_args[-1] == ("out", "Tensor") and out.arguments[-1].kwarg_only
    assert out.arguments[-1].alias_info.is_write and out.returns[0].alias_info.is_write


@pytest.mark.parametrize("name,args", CASES, ids=IDS)
def test_out_equals_functional_and_resizes(name, args):
    expected = getattr(torch.ops.edgetam, name)(*args)
    out = torch.empty(0)
    res = getattr(torch.ops.edgetam, name).out(*args, out=out)
    assert res is out and torch.equal(out, expected)
    same = torch.full_like(expected, float("nan"))
    getattr(torch.ops.edgetam, name).out(*args, out=same)
    assert torch.equal(same, expected)


@pytest.mark.parametrize("name,args", CASES, ids=IDS)
def test_opcheck_out(name, args):
    expected = getattr(torch.ops.edgetam, name)(*args)
    torch.library.opcheck(getattr(torch.ops.edgetam, name).out, args,
                          {"out": torch.empty_like(expected)},
                          # AOT dispatch does not functionalize custom ops that return an
                          # aliased `out` (torch refuses them by design); ExecuTorch needs
                          # exactly that signature, and runs them after functionalization.
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


@pytest.mark.parametrize("name,args", CASES, ids=IDS)
def test_out_of_wrong_dtype_or_device_is_named(name, args):
    expected = getattr(torch.ops.edgetam, name)(*args)
    op = getattr(torch.ops.edgetam, name).out
    with pytest.raises(TypeError, match=r"out has dtype torch.float64"):
        op(*args, out=torch.empty_like(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="out is on device meta"):
        op(*args, out=torch.empty_like(expected, device="meta"))


def test_out_runs_the_named_backend(monkeypatch):
    """The out variant computes through the functional op: the backend it names runs."""
    from edgetam_kernels import _registry

    name, args = CASES[0]
    calls = []
    real = _registry.REFERENCE.kernels[name]
    monkeypatch.setitem(_registry.REFERENCE.kernels, name,
                        lambda *a: calls.append(1) or real(*a))
    torch.ops.edgetam.rope_attention.out(*args, out=torch.empty(0))
    assert calls == [1]


class _Calls(torch.nn.Module):
    """Each functional op once, as the tracker's step would call them."""

    def forward(self, q, k, v, mask, lat, x, pos, xs, poss):
        r, p, s = (case[1] for case in CASES)  # weights and scalars as in the op tests
        a = torch.ops.edgetam.rope_attention(q, k, v, *r[3:10], mask, "auto")
        b = torch.ops.edgetam.perceiver_attention(lat, x, pos, *p[3:10], 2, 1e-5, "auto")
        c = torch.ops.edgetam.spatial_perceiver(xs, poss, *s[2:12], "auto")
        return a, b, c


def _module_inputs():
    r, p, s = (c[1] for c in CASES)
    return (r[0], r[1], r[2], r[10], p[0], p[1], p[2], s[0], s[1])


def test_export_keeps_each_op():
    ep = torch.export.export(_Calls(), _module_inputs())
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    for name in _out_variants.OPS:
        assert f"edgetam.{name}.default" in targets
    for got, want in zip(ep.module()(*_module_inputs()), _Calls()(*_module_inputs())):
        assert torch.equal(got, want)


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                    reason="executorch is not installed (pip install executorch==1.5.1)")
def test_executorch_lowering_uses_out_variants():
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(_Calls(), _module_inputs())
    program = to_edge_transform_and_lower(ep).to_executorch()
    names = {op.name for op in program.executorch_program.execution_plan[0].operators}
    for name in _out_variants.OPS:
        assert f"edgetam::{name}" in names, names
    overloads = {f"{op.name}.{op.overload}" for op in
                 program.executorch_program.execution_plan[0].operators}
    for name in _out_variants.OPS:
        assert f"edgetam::{name}.out" in overloads, overloads
