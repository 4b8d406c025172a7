"""`edgetam_kernels.layers.attend`, the attention block every patched model (and edgetam/) runs:
projections, the rope_attention op, output projection, against a float64 computation of the
same block written out plainly. With one head and values narrower than the attention (memory
attention's cross-attention: 64-dim memory, 256-dim attention) the value projection is folded
into the output projection; the op then sees the narrow values."""

import pytest
import torch

from edgetam_kernels import layers as C
from edgetam_kernels import reference
from edgetam_kernels.testing import TOLERANCE, rel_l2


def _linear(c_in, c_out, g, bias=True):
    w = torch.randn(c_out, c_in, generator=g, dtype=torch.float64) / c_in ** 0.5
    b = torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1 if bias else None
    return w, b


def _block(d=32, c_kv=16, heads=1, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    wq, bq = _linear(d, d, g, bias)
    wk, bk = _linear(c_kv, d, g, bias)
    wv, bv = _linear(c_kv, d, g, bias)
    wo, bo = _linear(d, d, g, bias)
    return C.Projections(wq, bq, wk, bk, wv, bv, wo, bo, heads)


def _plain64(q_in, k_in, v_in, p, rope):
    """The unfolded block in float64."""
    def lin(x, w, b):
        return torch.nn.functional.linear(x.double(), w.double(),
                                          None if b is None else b.double())

    def heads(x):
        b, n, c = x.shape
        return x.view(b, n, p.heads, c // p.heads).transpose(1, 2)

    q, k, v = heads(lin(q_in, p.wq, p.bq)), heads(lin(k_in, p.wk, p.bk)), heads(lin(v_in, p.wv, p.bv))
    out = reference.rope_attention(q, k, v, rope.q_grid, rope.k_grid, rope.k_repeat,
                                   rope.num_k_exclude_rope, rope.theta)
    b, h, n, dh = out.shape
    return lin(out.transpose(1, 2).reshape(b, n, h * dh), p.wo, p.bo)


def _inputs(p, frames=2, ptrs=3, batch=2, seed=1):
    """Cross-attention inputs: 6x6 query grid, memory frames of 4 unrotated + 3x3 rotated
    tokens, then pointer tokens."""
    g = torch.Generator().manual_seed(seed)
    d, c_kv = p.wq.shape[1], p.wk.shape[1]
    n_k = frames * (4 + 9) + ptrs
    q_in = torch.randn(batch, 36, d, generator=g)
    mem = torch.randn(batch, n_k, c_kv, generator=g)
    k_in = mem + 0.5 * torch.randn(batch, n_k, c_kv, generator=g)  # memory + pos
    return q_in, k_in, mem, C.Rope((6, 6), (3, 3), frames, ptrs)


def _record_value_widths(monkeypatch):
    widths = []
    op = C.ops.rope_attention

    def spy(q, k, v, **kw):
        widths.append(v.shape[-1])
        return op(q, k, v, **kw)

    monkeypatch.setattr(C.ops, "rope_attention", spy)
    return widths


def test_when_the_fold_applies():
    assert C.folds_value(_block(d=256, c_kv=64), 64)
    assert not C.folds_value(_block(d=256, c_kv=64, heads=2), 64)  # per-head folds: no saving
    assert not C.folds_value(_block(d=32, c_kv=32), 32)  # self-attention: nothing narrower


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_attend_fp32(monkeypatch, bias, heads, backend):
    p64 = _block(heads=heads, bias=bias)
    q_in, k_in, v_in, rope = _inputs(p64)
    p32 = C.Projections(*(None if t is None else t.float() for t in
                          (p64.wq, p64.bq, p64.wk, p64.bk, p64.wv, p64.bv, p64.wo, p64.bo)),
                        heads=heads)
    widths = _record_value_widths(monkeypatch)
    out = C.attend(q_in, k_in, v_in, p32, rope, dict(backend=backend))
    assert out.dtype == torch.float32 and out.shape == (2, 36, 32)
    assert widths == [16 if heads == 1 else 32 // heads]  # 1 head: the 16-dim memory itself
    assert rel_l2(out, _plain64(q_in, k_in, v_in, p64, rope)) < TOLERANCE[torch.float32]


def test_attend_bf16_compute():
    """compute_dtype=bf16: the folded W_o W_v is formed in float64 and rounded once to bf16."""
    p64 = _block(d=64, c_kv=16)
    q_in, k_in, v_in, rope = _inputs(p64)
    p32 = C.Projections(*(t.float() for t in (p64.wq, p64.bq, p64.wk, p64.bk, p64.wv, p64.bv,
                                              p64.wo, p64.bo)), heads=1)
    out = C.attend(q_in, k_in, v_in, p32, rope,
                   dict(backend="reference", compute_dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    assert rel_l2(out, _plain64(q_in, k_in, v_in, p64, rope)) < TOLERANCE[torch.bfloat16]


def test_attend_under_autocast():
    p64 = _block()
    q_in, k_in, v_in, rope = _inputs(p64)
    p32 = C.Projections(*(t.float() for t in (p64.wq, p64.bq, p64.wk, p64.bk, p64.wv, p64.bv,
                                              p64.wo, p64.bo)), heads=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = C.attend(q_in, k_in, v_in, p32, rope, dict(backend="reference"))
    assert out.dtype == q_in.dtype  # attend returns its input's dtype
    assert rel_l2(out.float(), _plain64(q_in, k_in, v_in, p64, rope)) < TOLERANCE[torch.bfloat16]


def _fp32(p64):
    return C.Projections(*(None if t is None else t.float() for t in
                           (p64.wq, p64.bq, p64.wk, p64.bk, p64.wv, p64.bv, p64.wo, p64.bo)),
                         heads=p64.heads)


def test_folded_weights_are_cached_until_a_weight_changes(monkeypatch):
    """The fold runs once per weight set (no per-call GEMMs or launches), again after an
    in-place update of a weight, and never from a stale entry."""
    p = _fp32(_block())
    q_in, k_in, v_in, rope = _inputs(p)
    calls = []
    fold = C.fold_value_into_output
    monkeypatch.setattr(C, "fold_value_into_output", lambda *a: calls.append(1) or fold(*a))
    cache = {}
    with torch.no_grad():
        first = C.attend(q_in, k_in, v_in, p, rope, dict(backend="reference"), cache)
        assert torch.equal(C.attend(q_in, k_in, v_in, p, rope, dict(backend="reference"), cache),
                           first)
        assert len(calls) == 1
        p.wv.mul_(0.5)  # in place: same pointer, new version
        scaled = C.attend(q_in, k_in, v_in, p, rope, dict(backend="reference"), cache)
    assert len(calls) == 2 and rel_l2(scaled, first) > 1e-2
    p64 = C.Projections(*(None if t is None else t.double() for t in
                          (p.wq, p.bq, p.wk, p.bk, p.wv, p.bv, p.wo, p.bo)), heads=1)
    assert rel_l2(scaled, _plain64(q_in, k_in, v_in, p64, rope)) < TOLERANCE[torch.float32]


def test_gradients_reach_the_folded_weights():
    """With gradients wanted for the weights the fold is computed under autograd (not taken
    from the cache): W_v, b_v, W_o, b_o get the gradients of the unfolded block."""
    p64 = _block()
    q_in, k_in, v_in, rope = _inputs(p64, batch=1)
    leaves = [t.clone().requires_grad_(True) for t in (p64.wv, p64.bv, p64.wo, p64.bo)]
    p = _fp32(p64)
    p = C.Projections(p.wq, p.bq, p.wk, p.bk, *(t.float() for t in leaves[:2]),
                      *(t.float() for t in leaves[2:]), heads=1)
    C.attend(q_in, k_in, v_in, p, rope, dict(backend="reference"), {}).sum().backward()
    ours = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    p64 = C.Projections(p64.wq, p64.bq, p64.wk, p64.bk, *leaves, heads=1)
    _plain64(q_in, k_in, v_in, p64, rope).sum().backward()
    for name, a, t in zip(("w_v", "b_v", "w_o", "b_o"), ours, leaves):
        assert rel_l2(a, t.grad) < 1e-4, name


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("compute_dtype", [None, torch.bfloat16])
def test_mlp_in_row_chunks(bias, compute_dtype, monkeypatch):
    """`MLP` on a CPU runs in row chunks (memory attention's 4096 x 2048 hidden activation):
    same result as the whole-tensor computation, for row counts that are not a multiple of the
    chunk, with or without the second bias; with autograd it runs whole and differentiates."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    w1, b1 = _linear(24, 96, g, bias=True)
    w2, b2 = _linear(96, 24, g, bias=bias)
    mlp = C.MLP(w1.float(), b1.float(), w2.float(), None if b2 is None else b2.float(), F.relu)
    x = torch.randn(2, 333, 24, generator=g)
    exact = F.linear(F.relu(F.linear(x.double(), w1, b1)), w2, b2)
    monkeypatch.setattr(C, "_CHUNK_BYTES", 64 * 96 * 4)  # 64-row chunks: 11 of them, short last
    monkeypatch.setattr(C, "_WHOLE_BYTES", 0)
    assert C._row_chunk(x, 96, ()) == 64
    with torch.no_grad():
        chunked = mlp(x, compute_dtype)
        monkeypatch.setattr(C, "_CHUNK_BYTES", 1 << 40)
        whole = mlp(x, compute_dtype)
    assert chunked.shape == whole.shape == (2, 333, 24) and chunked.dtype == torch.float32
    assert rel_l2(chunked, whole) < 1e-6
    budget = TOLERANCE[torch.float32] if compute_dtype is None else TOLERANCE[torch.bfloat16]
    assert rel_l2(chunked, exact) < budget
    monkeypatch.setattr(C, "_CHUNK_BYTES", 64 * 96 * 4)
    xg = x.clone().requires_grad_()
    mlp(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
