"""The benchmark harness's pieces that decide what a number means: the variant parser (one
grammar for every bench script, the e2e benchmark tests and the plots) and the interleaved
rounds. No timing is asserted."""

import pytest
import torch
from edgetam_kernels.harness import Variant, parse_variants, race, stats


@pytest.mark.parametrize("text,kwargs", [
    ("patched:cpu", dict(backend="cpu", compute_dtype=None, fuse_encoder=True,
                         fuse_memory_encoder=True)),
    ("patched:reference:no-fuse", dict(backend="reference", compute_dtype=None,
                                       fuse_encoder=False, fuse_memory_encoder=False)),
    ("patched:cpu:no-image-encoder", dict(backend="cpu", compute_dtype=None, fuse_encoder=False,
                                          fuse_memory_encoder=True)),
    ("patched:cpu:no-memory-encoder", dict(backend="cpu", compute_dtype=None, fuse_encoder=True,
                                           fuse_memory_encoder=False)),
    ("patched:cpu:bf16", dict(backend="cpu", compute_dtype=torch.bfloat16, fuse_encoder=True,
                              fuse_memory_encoder=True)),
    ("patched:cpu:fp32", dict(backend="cpu", compute_dtype=torch.float32, fuse_encoder=True,
                              fuse_memory_encoder=True)),
    ("patched:auto:fp16", dict(backend="auto", compute_dtype=torch.float16, fuse_encoder=True,
                               fuse_memory_encoder=True)),
    ("patched:cpu:auto", dict(backend="cpu", compute_dtype="auto", fuse_encoder=True,
                              fuse_memory_encoder=True)),
    ("patched:cpu:bf16:no-fuse", dict(backend="cpu", compute_dtype=torch.bfloat16,
                                      fuse_encoder=False, fuse_memory_encoder=False)),
])
def test_variant_means_these_patch_arguments(text, kwargs):
    v = Variant.parse(text)
    assert v.patched and v.patch_kwargs() == kwargs
    assert Variant.parse(str(v)) == v  # the canonical text parses back to the same variant


def test_unpatched_and_canonical_text():
    v = Variant.parse("unpatched")
    assert not v.patched and str(v) == "unpatched" and v.compute_dtype is None
    with pytest.raises(ValueError, match="no patch"):
        v.patch_kwargs()
    # options in any order; the canonical text orders them: fusion, then precision
    assert str(Variant.parse("patched:cpu:bf16:no-fuse")) == "patched:cpu:no-fuse:bf16"
    # both encoder options together are no-fuse
    assert Variant.parse("patched:cpu:no-image-encoder:no-memory-encoder") == \
        Variant.parse("patched:cpu:no-fuse")
    assert Variant.parse("patched:cpu:no-fuse:bf16").without_encoders() == \
        Variant.parse("patched:cpu:bf16")
    assert "fuse_memory_encoder=False" in Variant.parse("patched:cpu:no-fuse").describe()


@pytest.mark.parametrize("text,match", [
    ("", "expected"), ("patched", "expected"), ("patched:", "expected"),
    ("fused:cpu", "expected"), ("unpatched:cpu", "expected"),
    ("patched:cuda", "unknown backend"), ("patched:cpu:fast", "unknown option 'fast'"),
    ("patched:cpu:bf16:fp16", "two precisions"), ("patched:cpu:no-fuse:no-fuse", "twice"),
])
def test_bad_variants_are_refused_by_name(text, match):
    with pytest.raises(ValueError, match=match):
        Variant.parse(text)


def test_variant_lists():
    vs = parse_variants("unpatched, patched:cpu ,patched:cpu:auto")
    assert [str(v) for v in vs] == ["unpatched", "patched:cpu", "patched:cpu:auto"]
    with pytest.raises(ValueError, match="more than once"):
        parse_variants("patched:cpu:bf16:no-fuse,patched:cpu:no-fuse:bf16")
    with pytest.raises(ValueError, match="empty"):
        parse_variants(" , ")


def test_apply_patches_and_unpatches_one_module():
    """apply() re-patches a shared module as each variant says (the e2e benchmarks' pattern)."""
    pytest.importorskip("sam2")
    from edgetam_kernels.patch import patched_modules
    from edgetam_kernels.testing import hosts

    module = hosts.meta_perceiver(seed=0).eval()
    x, pos = hosts.perceiver_inputs(16, 1, seed=0)
    with torch.no_grad():
        plain = module(x, pos)
        Variant.parse("patched:reference:bf16").apply(module)
        assert patched_modules(module)
        Variant.parse("patched:reference:no-fuse").apply(module)  # re-patched: options replaced
        assert patched_modules(module)
        fused = module(x, pos)
        Variant.parse("unpatched").apply(module)
        assert not patched_modules(module)
        again = module(x, pos)
    for a, b in zip(plain, fused):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(plain, again):
        assert torch.equal(a, b)


def test_race_interleaves_rounds_rotated():
    calls = []
    samples = race({n: (lambda n=n: calls.append(n)) for n in "abc"}, rounds=3, warmup=1,
                   before=lambda n: calls.append("before " + n))
    plain = [c for c in calls if not c.startswith("before")]
    assert plain == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, 3 rounds
    assert calls.count("before a") == 4  # before every call of a, warm-up included
    assert {n: len(s) for n, s in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for s in samples.values() for t in s)
    timed = race({"x": lambda: 0.25}, rounds=2, warmup=0, self_timed=True)
    assert timed == {"x": [0.25, 0.25]}
    s = stats([3.0, 1.0, 2.0])
    assert (s["min"], s["median"], s["rounds"]) == (1.0, 2.0, 3)


def test_auto_without_a_precision_policy_says_so(monkeypatch):
    from edgetam_kernels.harness import variants

    monkeypatch.setattr(variants, "auto_supported", lambda: False)
    with pytest.raises(ValueError, match="precision policy"):
        Variant.parse("patched:reference:auto").apply(torch.nn.Linear(2, 2))


def test_cpu_report_runs_on_the_harness(capsys):
    """`python -m edgetam_kernels.cpu.bench` (the C++ kernels' report), one section, one round."""
    from edgetam_kernels import backends
    from edgetam_kernels.cpu import bench

    cpu = backends()["cpu"]
    if not cpu["available"]:
        pytest.skip(f"cpu backend: {cpu['reason']}")

    threads = torch.get_num_threads()
    try:
        bench.main(["--reps", "1", "--threads", "1", "--only", "perceiver_attention",
                    "--matmul-n", "512"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "matmul ceilings measured in this run" in out
    for row in ("| reference (PyTorch) |", "| ours (C++) |", "| SDPA eager",
                "| ours, raw op (no Python checks) |"):
        assert row in out


