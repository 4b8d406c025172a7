"""`python -m edgetam_kernels info | bench` run end to end in a subprocess."""

import json
import os
import subprocess
import sys


def _run(*args, timeout=600):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "edgetam_kernels", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_info_lists_every_backend_with_state():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    for name in ("reference", "cpu", "triton", "metal"):
        assert name in r.stdout
    assert "available" in r.stdout


def test_bench_quick_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = _run("bench", "--quick", "--no-compile", "--reps", "1", "--only", "perceiver",
             "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "| spatial_perceiver" in r.stdout and "| perceiver_attention" in r.stdout
    data = json.loads(out.read_text())
    providers = {row["provider"] for row in data["rows"]}
    assert "reference" in providers
    block = [row for row in data["rows"] if row["case"].startswith("perceiver_attention")]
    assert {"reference", "cpu"} <= {row["provider"] for row in block}
    assert all(row["x_vs_sdpa"] > 0 for row in block)  # against LN + linear + SDPA + linear
    assert all(row["median_ms"] > 0 and row["gflops"] > 0 for row in data["rows"])
    assert data["ceilings"]["matmul_gflops"] > 0


def test_bench_rejects_unknown_dtype():
    r = _run("bench", "--dtype", "int8")
    assert r.returncode != 0 and "invalid choice" in r.stderr
