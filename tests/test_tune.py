"""``scripts/tune.py``: one cycled run per combination of the grid, the table of their time means, a
failed run as a row naming why."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "model.N=32",
    "members=6",
    "burn_in=2",
    "model.spinup_cycles=20",
    "model.member_spacing_cycles=2",
    "progress=false",
    "filter=letkf",
]


@pytest.mark.slow
def test_tune_runs_the_grid_and_tables_it(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "tune.py"), *SMALL, "--grid", "divergence=null,0.001"]
    cmd += [
        "--grid",
        "filter.rtps=0.5",
        "--cycles",
        "4",
        "--first",
        "3",
        "--out",
        str(tmp_path),
        "--jobs",
        "2",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [line.split(" | ") for line in p.stdout.splitlines()[2:]]
    assert [r[1] for r in rows] == ["divergence-null_rtps-0.5", "divergence-0.001_rtps-0.5"]
    ok, failed = rows
    assert ok[2] == "3-4" and float(ok[3].split()[0]) > 0  # the analysis RMSE over cycles 3..4, in K
    assert failed[2].startswith("failed: diverged: cycle 1: analysis RMSE")
    assert (tmp_path / "divergence-null_rtps-0.5" / "summary.json").is_file()
