"""The ops inside torch.autocast regions (what Meta's and HF's GPU demos run in).

Rule (ops.py): floating inputs are cast to the region's dtype, the op runs with autocast off and
returns that dtype. Checked on the CPU's autocast key, which shares the code with CUDA's.
"""

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels.testing import TOLERANCE, rel_l2, to64
from edgetam_kernels.testing.cases import schema_calls

CASES = list(schema_calls())
# (case, backend) pairs where the backend has a kernel for the op; the rest fall outside the
# matrix rather than being skipped.
PAIRS = [(c, b) for c in CASES for b in ("reference", "cpu")
         if ek.backends()[b]["available"] and c[0] in ek.backends()[b]["ops"]]


def _with_backend(args, backend):
    return (*args[:-1], backend)


def _cast(args, dtype):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            a = a.to(dtype)
        elif isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            a = [t.to(dtype) for t in a]
        out.append(a)
    return tuple(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0][0]}-{p[1]}")
def test_autocast_casts_inputs_to_the_region_dtype(pair, dtype):
    (name, op, args), backend = pair
    args = _with_backend(args, backend)
    # The failing mix seen in the wild: activations already in the low dtype, weights fp32.
    mixed = (args[0].to(dtype), *args[1:])
    with torch.autocast("cpu", dtype=dtype):
        out = op(*mixed)
    assert out.dtype == dtype
    # Same as running without autocast on inputs cast by hand: bit for bit.
    expected = op(*_cast(args, dtype))
    assert torch.equal(out, expected)
    # And close to the float64 answer of the fp32 inputs, within the low dtype's budget.
    ref = op(*_with_backend(to64(args), "reference"))
    assert rel_l2(out, ref) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_autocast_backward_reaches_fp32_leaves(case):
    name, op, args = case
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and
              a.is_floating_point() else a for a in args]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op(*leaves)
    out.float().square().sum().backward()
    first = leaves[0]
    assert first.grad is not None and first.grad.dtype == torch.float32
    assert torch.isfinite(first.grad).all()


def test_autocast_under_torch_compile_has_no_graph_break():
    name, op, args = CASES[0]

    def f(*a):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return op(*a)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, f(*args))
