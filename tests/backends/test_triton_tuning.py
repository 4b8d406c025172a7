"""The Triton autotuner's store: bucketed keys (EdgeTAM's growing memory tunes a few times, not
once per length) and choices persisted per machine (a new process does not tune again).

The timing itself needs a GPU; here `_tune` is replaced by a counter that picks a config, and
the chosen config runs in the interpreter against the float64 reference."""

import json
import os

import pytest
import torch

import edgetam_kernels as ek
from edgetam_kernels import _registry, reference
from edgetam_kernels.testing import TOLERANCE, rel_l2, to64

pytestmark = pytest.mark.skipif(
    _registry.why_unavailable("triton") is not None,
    reason=f"triton backend unavailable: {_registry.why_unavailable('triton')}",
)


def _mods():
    from edgetam_kernels.triton import _tuning, rope_attention as tr

    return _tuning, tr


def test_bucket():
    _tuning, _ = _mods()
    assert [_tuning.bucket(n) for n in (0, 1, 2, 3, 4, 5, 516, 1024, 1025, 3648, 4096)] == \
        [1, 1, 2, 4, 4, 8, 1024, 1024, 2048, 4096, 4096]


def test_edgetam_memory_lengths_share_keys():
    """Memory of 1-7 frames of 512 tokens plus 4 pointer tokens per frame, and the 4096-token
    self-attention: three tuning keys instead of eight."""
    _, tr = _mods()
    keys = {tr.tuning_key("cpu", 1, 4096, f * 516, 256, 256, torch.bfloat16, torch.bfloat16)
            for f in range(1, 8)}
    keys.add(tr.tuning_key("cpu", 1, 4096, 4096, 256, 256, torch.bfloat16, torch.bfloat16))
    assert len(keys) == 3
    # what must not share a choice: head dims, dtypes, object-count buckets
    k = tr.tuning_key("cpu", 1, 4096, 4096, 256, 256, torch.bfloat16, torch.bfloat16)
    assert k != tr.tuning_key("cpu", 1, 4096, 4096, 64, 64, torch.bfloat16, torch.bfloat16)
    assert k != tr.tuning_key("cpu", 1, 4096, 4096, 256, 256, torch.float16, torch.float16)
    assert k != tr.tuning_key("cpu", 3, 4096, 4096, 256, 256, torch.bfloat16, torch.bfloat16)


def test_store_roundtrip_and_bad_files(tmp_path):
    _tuning, _ = _mods()
    path = tmp_path / "sub" / "tuned.json"
    a = _tuning.TunedStore(str(path))
    assert a.get("k") is None
    a.put("k", dict(BLOCK_M=64, SPLITS=2))
    got = a.get("k")
    got["BLOCK_M"] = 1  # callers get copies
    assert a.get("k") == dict(BLOCK_M=64, SPLITS=2)
    b = _tuning.TunedStore(str(path))  # another process
    assert b.get("k") == dict(BLOCK_M=64, SPLITS=2)
    b.put("j", dict(SDPA=True))
    a.put("i", dict(SDPA=False))  # merges with what b wrote meanwhile
    assert set(json.loads(path.read_text())) == {"i", "j", "k"}
    assert not [p for p in os.listdir(path.parent) if p.startswith(".")]  # no temp files left

    path.write_text("{not json")
    assert _tuning.TunedStore(str(path)).get("k") is None  # corrupt: ignored, not raised
    blocked = tmp_path / "file"
    blocked.write_text("")
    c = _tuning.TunedStore(str(blocked / "tuned.json"))  # cannot create a folder under a file
    c.put("k", dict(SPLITS=1))
    assert c.get("k") == dict(SPLITS=1) and c.path is None


def test_cache_location(monkeypatch, tmp_path):
    _tuning, _ = _mods()
    monkeypatch.setenv(_tuning.CACHE_ENV, "0")
    assert _tuning.default_path() is None
    monkeypatch.setenv(_tuning.CACHE_ENV, str(tmp_path / "t.json"))
    assert _tuning.default_path() == str(tmp_path / "t.json")
    monkeypatch.delenv(_tuning.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _tuning.default_path() == str(tmp_path / "edgetam_kernels" / "triton_tuned.json")


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """Autotuning switched on with a fake timer: records every tuning and picks the last
    candidate that runs in the interpreter (small tiles)."""
    _tuning, tr = _mods()
    calls = []

    def fake_tune(run, configs):
        configs = list(configs)
        calls.append(configs)
        return dict(BLOCK_M=32, BLOCK_N=32, SPLITS=2, PRE_ROT=True, num_warps=4, num_stages=1)

    monkeypatch.setenv(_tuning.CACHE_ENV, str(tmp_path / "tuned.json"))
    monkeypatch.setattr(tr, "_tune", fake_tune)
    monkeypatch.setattr(tr, "_autotune_enabled", lambda device: True)
    monkeypatch.setattr(tr, "_TUNED", {})
    monkeypatch.setattr(tr, "_STORE", None)
    return tr, calls, tmp_path / "tuned.json"


def _case(frames, seed):
    g = torch.Generator().manual_seed(seed)
    n_k = frames * (4 + 8 * 8) + 4 * frames
    q = torch.randn(1, 1, 64, 32, generator=g)
    k = torch.randn(1, 1, n_k, 32, generator=g)
    v = torch.randn(1, 1, n_k, 32, generator=g)
    kw = dict(q_grid=[8, 8], k_grid=[8, 8], k_repeat=frames, num_k_exclude_rope=4 * frames)
    return q, k, v, kw


def test_growing_memory_tunes_once_per_bucket_and_once_per_machine(tuner):
    tr, calls, path = tuner
    for frames, seed in ((2, 0), (3, 1), (4, 2)):  # 144, 216, 288 keys: buckets 256, 256, 512
        q, k, v, kw = _case(frames, seed)
        out = ek.rope_attention(q, k, v, backend="triton", **kw)
        ref = reference.rope_attention(*to64((q, k, v)), kw["q_grid"], kw["k_grid"],
                                       kw["k_repeat"], kw["num_k_exclude_rope"])
        assert rel_l2(out, ref) < TOLERANCE[torch.float32]
    buckets = {tr.tuning_key("cpu", 1, 64, n, 32, 32, torch.float32, torch.float32)
               for n in (2 * 72, 3 * 72, 4 * 72)}
    assert len(calls) == len(buckets) == 2
    assert set(json.loads(path.read_text())) == buckets
    # a new process: choices come from the file, nothing is tuned
    tr._TUNED.clear()
    tr._STORE = None
    q, k, v, kw = _case(4, 3)
    ek.rope_attention(q, k, v, backend="triton", **kw)
    assert len(calls) == len(buckets)


def test_failed_tuning_falls_back_and_is_not_persisted(tuner, monkeypatch):
    tr, calls, path = tuner
    monkeypatch.setattr(tr, "_tune", lambda run, configs: calls.append(1))  # every config fails
    q, k, v, kw = _case(2, 0)
    out = ek.rope_attention(q, k, v, backend="triton", **kw)
    ek.rope_attention(q, k, v, backend="triton", **kw)
    assert len(calls) == 1  # not retried in this process
    assert not path.exists()  # nor remembered for the next one
    ref = reference.rope_attention(*to64((q, k, v)), kw["q_grid"], kw["k_grid"],
                                   kw["k_repeat"], kw["num_k_exclude_rope"])
    assert rel_l2(out, ref) < TOLERANCE[torch.float32]
