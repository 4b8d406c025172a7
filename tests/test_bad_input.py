"""Bad input gets a clear error naming the argument, or a correct result; never a crash."""

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import reference
from edgetam_kernels.testing import assert_close, to64

from test_ops import perceiver_inputs, perceiver_params, rope_inputs


def _rope(**over):
    q, k, v, kw = rope_inputs()
    args = dict(q=q, k=k, v=v)
    args.update({k_: v_ for k_, v_ in over.items() if k_ in args})
    kw.update({k_: v_ for k_, v_ in over.items() if k_ not in args})
    return ek.rope_attention(args["q"], args["k"], args["v"], **kw)


@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(q=torch.randn(2, 1, 1, 24, 16)), ValueError, "q must"),
        (dict(k=torch.randn(17, 16)), ValueError, "k must have 4 dimensions"),
        (dict(q=torch.randn(2, 1, 24, 16, dtype=torch.float64)), TypeError, "dtype"),
        (dict(v=torch.randint(0, 3, (2, 1, 17, 16))), TypeError, "v must be a floating"),
        (dict(q="not a tensor"), TypeError, "q must be a torch.Tensor"),
        (dict(k=torch.randn(3, 1, 17, 16)), ValueError, "batch"),
        (dict(v=torch.randn(2, 1, 16, 16)), ValueError, "v has 16 tokens but k has 17"),
        (dict(k=torch.randn(2, 1, 17, 8)), ValueError, "head dim"),
        (dict(q_grid=(5, 5)), ValueError, "q_grid"),
        (dict(k_grid=(3, 3)), ValueError, "k_grid"),
        (dict(k_repeat=3), ValueError, "k_repeat=3"),
        (dict(num_k_exclude_rope=20), ValueError, "num_k_exclude_rope"),
        (dict(theta=-1.0), ValueError, "theta"),
        (dict(scale=float("inf")), ValueError, "scale"),
        (dict(compute_dtype=torch.int32), TypeError, "compute_dtype"),
        (dict(backend="gpu"), ValueError, "unknown backend"),
    ],
)
def test_rope_attention_bad_input(over, error, match):
    with pytest.raises(error, match=match):
        _rope(**over)


def test_rope_attention_empty_memory_is_an_error():
    q, k, v, _ = rope_inputs()
    with pytest.raises(ValueError, match="empty memory"):
        ek.rope_attention(q, k[:, :, :0], v[:, :, :0], q_grid=(4, 6), k_repeat=0)


def test_rope_attention_head_dim_must_suit_axial_rope():
    q = torch.randn(1, 1, 4, 6)
    with pytest.raises(ValueError, match="multiple of 4"):
        ek.rope_attention(q, q, q)


def test_rope_attention_non_square_default_grid_asks_for_q_grid():
    q = torch.randn(1, 1, 6, 8)
    with pytest.raises(ValueError, match="q_grid"):
        ek.rope_attention(q, q, q)


def test_rope_attention_device_mismatch_names_argument():
    q, k, v, kw = rope_inputs()
    with pytest.raises(ValueError, match="k is on device meta"):
        torch.ops.edgetam.rope_attention(q, k.to("meta"), v, [4, 6], [2, 3], 2, 3, 1e4, 0.25,
                                         None, None, "reference")


def test_rope_attention_non_contiguous_views_are_correct():
    q, k, v, kw = rope_inputs(d=16)
    qt = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
    kn = torch.cat([k, k], dim=-1)[..., ::2]  # strided view
    out = ek.rope_attention(qt, kn, v, **kw)
    ref = reference.rope_attention(*to64((q, kn.contiguous(), v)), **kw)
    assert_close(out, ref, torch.float32, "non-contiguous")


def test_rope_attention_empty_batch_and_queries_give_empty_results():
    q, k, v, kw = rope_inputs()
    out = ek.rope_attention(q[:0], k[:0], v[:0], **kw)
    assert out.shape == (0, 1, 24, 16)
    out = ek.rope_attention(q[:, :, :0], k, v, q_grid=(0, 6), k_grid=(2, 3), k_repeat=2,
                            num_k_exclude_rope=3)
    assert out.shape == (2, 1, 0, 16)


def test_rope_attention_nan_in_nan_out():
    q, k, v, kw = rope_inputs()
    q[0, 0, 3, 1] = float("nan")
    out = ek.rope_attention(q, k, v, **kw)
    assert torch.isnan(out[0, 0, 3]).all()
    assert not torch.isnan(out[1]).any()


# ---------------------------------------------------------------------------------------------
# Perceiver
# ---------------------------------------------------------------------------------------------


def _sp(**over):
    (x, pos, l1, l2, ws, nw_, nb_), kw = perceiver_inputs()
    a = dict(x=x, pos=pos, latents_1d=l1, latents_2d=l2, weights=ws, norm_w=nw_, norm_b=nb_)
    for key, val in over.items():
        (a if key in a else kw)[key] = val
    return ek.spatial_perceiver(a["x"], a["pos"], a["latents_1d"], a["latents_2d"],
                                a["weights"], a["norm_w"], a["norm_b"], **kw)


@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(x=torch.randn(2, 16, 64), pos=None), ValueError, "x must have 4 dimensions"),
        (dict(x=torch.randn(2, 16, 9, 9), pos=None), ValueError, "windows"),
        (dict(x=torch.randn(2, 16, 8, 6), pos=None), ValueError, "windows"),
        (dict(x=torch.randn(2, 16, 0, 8), pos=None), ValueError, "empty spatial grid"),
        (dict(pos=torch.randn(2, 16, 4, 4)), ValueError, "pos must have shape"),
        (dict(latents_2d=torch.randn(5, 16)), ValueError, "square number"),
        (dict(latents_1d=torch.randn(5, 8)), ValueError, "latents_1d"),
        (dict(latents_1d=None, latents_2d=None), ValueError, "at least one"),
        (dict(weights=perceiver_params(depth=1)), ValueError, "weights must hold"),
        (dict(norm_w=torch.randn(8)), ValueError, "norm_w"),
        (dict(depth=0), ValueError, "depth"),
        (dict(heads=3), ValueError, "heads=3"),
        (dict(latents_2d=torch.randn(4, 16, dtype=torch.float64)), TypeError, "latents_2d"),
        (dict(compute_dtype=torch.int32), ValueError, "compute_dtype"),
        (dict(compute_dtype=torch.float64), ValueError, "compute_dtype"),
        (dict(compute_dtype="bf16"), ValueError, "compute_dtype"),
    ],
)
def test_spatial_perceiver_bad_input(over, error, match):
    with pytest.raises(error, match=match):
        _sp(**over)


def test_spatial_perceiver_op_bad_compute_dtype():
    """The op itself (no public wrapper in front) checks compute_dtype too, fake included."""
    (x, pos, l1, l2, ws, nw_, nb_), kw = perceiver_inputs()
    args = (x, pos, l1, l2, ws, nw_, nb_, kw["depth"], 1, kw["use_self_attn"], 1e-5, torch.int32,
            "reference")
    with pytest.raises(ValueError, match="compute_dtype"):
        torch.ops.edgetam.spatial_perceiver(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else
                [mode.from_tensor(t) for t in a] if isinstance(a, list) else a for a in args]
        with pytest.raises(ValueError, match="compute_dtype"):
            torch.ops.edgetam.spatial_perceiver(*fake)


def test_spatial_perceiver_wrong_weight_shape_names_index():
    (x, pos, l1, l2, ws, nw_, nb_), kw = perceiver_inputs()
    ws[5] = torch.randn(16, 16)
    with pytest.raises(ValueError, match=r"weights\[5\]"):
        ek.spatial_perceiver(x, pos, l1, l2, ws, nw_, nb_, **kw)


@pytest.mark.parametrize("index", [4, 9, 20 + 13, 20 + 18])  # the matrices dims are read from
def test_spatial_perceiver_weight_matrix_not_2d_names_index(index):
    (x, pos, l1, l2, ws, nw_, nb_), kw = perceiver_inputs()
    ws[index] = ws[index].flatten()
    with pytest.raises(ValueError, match=rf"weights\[{index}\] must be a 2-D weight matrix"):
        ek.spatial_perceiver(x, pos, l1, l2, ws, nw_, nb_, **kw)


@pytest.mark.parametrize("bad, error, match", [
    (torch.ones(16, dtype=torch.int32), TypeError, r"weights\[7\] must be a floating tensor"),
    (torch.ones(16, dtype=torch.float64), TypeError, r"weights\[7\] has dtype torch.float64"),
    (torch.ones(16, device="meta"), ValueError, r"weights\[7\] is on device meta"),
    ("not a tensor", TypeError, r"weights\[7\] must be a torch.Tensor"),
])
def test_spatial_perceiver_bad_weight_names_index(bad, error, match):
    # the checks build weight names only on failure: the message must still name the index
    (x, pos, l1, l2, ws, nw_, nb_), kw = perceiver_inputs()
    ws[7] = bad
    with pytest.raises(error, match=match):
        ek.spatial_perceiver(x, pos, l1, l2, ws, nw_, nb_, **kw)


def test_spatial_perceiver_nan_in_nan_out():
    (x, pos, l1, l2, ws, nw_, nb_), kw = perceiver_inputs()
    x[1, 0, 0, 0] = float("nan")
    out = ek.spatial_perceiver(x, pos, l1, l2, ws, nw_, nb_, **kw)
    assert torch.isnan(out[1, :5]).all()          # global latents see every token
    assert torch.isnan(out[1, 5]).all()           # the first window holds the NaN
    assert not torch.isnan(out[1, 6:]).any()      # the other windows do not
    assert not torch.isnan(out[0]).any()


def test_perceiver_attention_bad_input():
    p = perceiver_params(depth=1, self_attn=False)
    lat, x = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    with pytest.raises(ValueError, match="x has 8 channels"):
        ek.perceiver_attention(lat, torch.randn(2, 9, 8), None, *p[:7])
    with pytest.raises(ValueError, match="pos must have shape"):
        ek.perceiver_attention(lat, x, torch.randn(2, 8, 16), *p[:7])
    with pytest.raises(ValueError, match="w_kv"):
        ek.perceiver_attention(lat, x, None, *p[:5], torch.randn(16, 16), p[6])
    with pytest.raises(ValueError, match="no tokens"):
        ek.perceiver_attention(lat, x[:, :0], None, *p[:7])
