"""``scripts/bench_cycle.py --quick``: two Lorenz-96 runs of the real workflow, the per-cycle slope of
their wall time and the stages' share of it (numbers sane, not a speed target)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_cycle_benchmark_writes_its_row(tmp_path):
    out = tmp_path / "cycle.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_cycle.py"), "--quick", "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["case"] == "l96-letkf" and [r["cycles"] for r in row["runs"]] == [20, 60]
    assert all(r["wall_s"] > 0 and r["stages"]["forecast"] > 0 for r in row["runs"])
    assert 0 < row["wall_per_cycle_s"] < 60 and math.isfinite(row["overhead_per_cycle_s"])
    assert "overhead[s]" in p.stdout
