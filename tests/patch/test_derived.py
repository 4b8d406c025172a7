"""edgetam_kernels.derived: when cached derived tensors are reused, rebuilt, copied, pickled."""

import copy
import io
import pickle

import numpy as np
import pytest
import torch

from edgetam_kernels.derived import DerivedCache, cached, entries, table


def _twice(t):
    return lambda: t * 2


def test_reused_while_unchanged():
    store, w = {}, torch.randn(64)
    first = cached(store, "s", (w, None), _twice(w))
    assert cached(store, "s", (w, None), lambda: pytest.fail("recomputed")) is first


def test_in_place_edit_view_and_extra_rebuild():
    store, w = {}, torch.randn(64)
    cached(store, "s", (w,), _twice(w))
    w.add_(1)  # in place: version moves
    assert torch.equal(cached(store, "s", (w,), _twice(w)), w * 2)
    v = w.view(8, 8)  # same memory, other shape: a different source
    assert cached(store, "s", (v,), lambda: "view") == "view"
    assert cached(store, "s", (v,), lambda: "again", extra=(1,)) == "again"


def test_freed_weight_address_reused_by_a_new_tensor():
    """A new tensor at a freed source's address, at the same version, is not the old one.
    (An address + version key returned the old result here: malloc hands a freed block straight
    to the next request of its size, but not always, so the malloc loop below cannot be relied
    on to hit the case. The numpy half always does: a second tensor over the same buffer is a
    new storage at the same address, version 0, holding values numpy changed in between.)"""
    for n in (256, 1024, 4096, 16384, 65536) * 4:
        store = {}
        w = torch.randn(n)
        cached(store, "s", (w,), lambda: w.sum())
        del w
        w2 = torch.randn(n)  # often, not always, at the freed address
        assert torch.equal(cached(store, "s", (w2,), lambda: w2.sum()), w2.sum())

    buf = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    store = {}
    w = torch.from_numpy(buf)
    address, version = w.data_ptr(), w._version
    old = cached(store, "s", (w,), lambda: w.sum())
    del w
    buf[:] = np.random.default_rng(1).standard_normal(4096)  # numpy writes: no version bump
    w2 = torch.from_numpy(buf)
    assert (w2.data_ptr(), w2._version) == (address, version)  # what an address key would see
    new = cached(store, "s", (w2,), lambda: w2.sum())
    assert torch.equal(new, w2.sum()) and not torch.equal(new, old)


def test_grad_and_no_store_compute_every_time():
    w = torch.randn(8, requires_grad=True)
    calls = []
    for _ in range(2):
        cached({}, "s", (w,), lambda: calls.append(1))
        cached(None, "s", (w.detach(),), lambda: calls.append(1))
    assert len(calls) == 4
    with torch.no_grad():  # no gradients wanted: cached again
        store = {}
        cached(store, "s", (w,), lambda: calls.append(1))
        cached(store, "s", (w,), lambda: calls.append(1))
    assert len(calls) == 5


def test_inference_tensors():
    with torch.inference_mode():
        w = torch.randn(16)
    store = {}
    first = cached(store, "s", (w,), _twice(w))
    assert not first.is_inference()  # usable outside inference_mode later
    assert cached(store, "s", (w,), lambda: pytest.fail("recomputed")) is first


def test_table_rebuilt_after_in_place_edit():
    store = {}
    a = table(store, ("k", 1), lambda: torch.zeros(3))
    assert table(store, ("k", 1), lambda: pytest.fail("rebuilt")) is a
    a.add_(1)
    b = table(store, ("k", 1), lambda: torch.zeros(3))
    assert b is not a and torch.equal(b, torch.zeros(3))
    with torch.inference_mode():  # built outside inference mode: still versioned
        c = table(store, ("k", 2), lambda: torch.ones(2))
    assert not c.is_inference()


def test_copies_and_pickles_empty():
    store = {"other": 1}
    w = torch.randn(4)
    cached(store, "s", (w,), _twice(w))
    table(store, "t", lambda: torch.ones(1000))
    assert len(entries(store)) == 2
    for clone in (copy.deepcopy(store), copy.copy(entries(store)),
                  pickle.loads(pickle.dumps(store))):
        derived = clone if isinstance(clone, DerivedCache) else clone["derived"]
        assert isinstance(derived, DerivedCache) and len(derived) == 0
    assert len(pickle.dumps(store)) < 200


def test_patched_position_encoding_copies_without_its_tables():
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    import edgetam_kernels as ek
    from edgetam_kernels.patch import is_patched

    plain = PositionEmbeddingSine(num_pos_feats=256, normalize=True)
    pe = ek.patch(copy.deepcopy(plain))
    x = torch.zeros(1, 8, 128, 128)
    ref = plain(x)  # Meta's own cache now holds a 16 MB table
    assert torch.equal(pe(x), ref)  # ... and so does the patch state
    assert len(pickle.dumps(pe)) < len(pickle.dumps(plain)) + 100_000
    for clone in (copy.deepcopy(pe), pickle.loads(pickle.dumps(pe))):
        assert is_patched(clone) and torch.equal(clone(x), ref)


def test_our_image_encoder_copies_without_its_tables():
    import warnings

    import edgetam

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights"
        enc = edgetam.load(image_size=256).image_encoder
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref = enc(x)["vision_pos_enc"]
        assert len(entries(enc.__dict__["_pos_tables"])) == 3
        buf = io.BytesIO()
        torch.save(enc, buf)
        clone = copy.deepcopy(enc)
        assert len(entries(clone.__dict__["_pos_tables"])) == 0
        buf.seek(0)
        for other in (clone, torch.load(buf, weights_only=False)):
            for a, b in zip(ref, other(x)["vision_pos_enc"]):
                assert torch.equal(a, b)
