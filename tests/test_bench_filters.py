"""``scripts/bench_filters.py``: its loop baseline is the same math as ``EnSF.analyse``, and ``--quick``
writes every kind of row (1 and 2 ranks, paired and mixture, loop baseline, LETKF) with sane numbers."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_filters.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_filters", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("transform", ["linear", "arctan"])
@pytest.mark.parametrize("prior_score", ["paired", "mixture"])
def test_member_loop_equals_vectorised_ensf(prior_score, transform):
    assert _bench().loop_check(prior_score, transform) <= 1e-5


def test_quick_benchmark_writes_the_rows(tmp_path):
    out = tmp_path / "x.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"torch", "threads_per_process", "cpu", "date"} <= set(data["env"])
    assert max(data["loop_check"].values()) <= 1e-5
    rows = data["rows"]
    ensf = {
        (r["case"], r["prior_score"], r["kernel"], r["ranks"], r["shard"])
        for r in rows
        if r["filter"] == "ensf"
    }
    for case, scores in (("l96-1e4", ["paired"]), ("sqg-64", ["paired", "mixture"])):
        for score in scores:
            for k in ("torch", "fused"):  # old and new side by side
                want = {
                    (case, score, k, 1, "-"),
                    (case, score, k, 2, "members"),
                    (case, score, k, 2, "state"),
                }
                assert want <= ensf
    for r in rows:
        assert math.isfinite(r["time_s"]) and r["time_s"] > 0, r
        assert r["peak_rss"] > r["state_bytes"] > 0, r
        if r["filter"] == "ensf":
            assert r["ns_element_step"] > 0, r
        if r["filter"] == "ensf" and r["ranks"] == 1 and r["kernel"] == "torch":  # loop baseline
            assert math.isfinite(r["loop_s"]) and r["loop_s"] > 0 and r["speedup"] > 0, r
    letkf, letkf_2 = sorted((r for r in rows if r["filter"] == "letkf"), key=lambda r: r["ranks"])
    assert letkf["first_s"] > 0 and letkf_2["ranks"] == 2 and letkf_2["time_s"] > 0
    assert letkf["max_abs_diff"] <= 1e-4 and letkf["speedup"] > 0
    lensf = [r for r in rows if r["filter"] == "lensf"]
    assert len(lensf) == 5 and all(r["ratio_to_letkf"] > 0 and r["letkf_s"] > 0 for r in lensf)
    assert "time[s]" in p.stdout and "speedup" in p.stdout and "ns/el·st" in p.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_check_without_a_gpu_is_one_line_error(tmp_path):
    """``scripts/gpu_check.sh`` (the GPU rows of every benchmark) stops at once without CUDA."""
    p = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
        cwd=ROOT, env={**os.environ, "PY": sys.executable}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode != 0
    assert p.stderr.strip() == "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False)"
    assert not (tmp_path / "out").exists()
