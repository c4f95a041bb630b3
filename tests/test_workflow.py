"""The Parsl cycle end to end: outputs of a run directory, resume after SIGKILL, the divergence stop."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scoreda.io import read_state

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "model.N=32",
    "members=6",
    "cycles=8",
    "burn_in=2",
    "model.spinup_cycles=20",
    "model.member_spacing_cycles=2",
    "filter.n_steps=30",
    "progress=false",
]


def cycle_cmd(run_dir, *extra):
    return [sys.executable, str(ROOT / "workflows" / "cycle.py"), f"run_dir={run_dir}", *SMALL, *extra]


def env():
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("unbroken") / "run"
    cmd = cycle_cmd(run_dir, "logger=wandb")  # the logger is not part of the science: resume may differ
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out.stdout


@pytest.mark.slow
def test_run_directory_contents(unbroken):
    run_dir, stdout = unbroken
    assert "analysis RMSE" in stdout and "outputs:" in stdout
    for name in ("config.yaml", "metrics.csv", "summary.json"):
        assert (run_dir / name).is_file()
    for png in ("rmse_spread.png", "fields.png", "ke_spectrum.png", "rank_histogram.png"):
        assert (run_dir / "plots" / png).stat().st_size > 10_000
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["cycle"]) for r in rows] == list(range(1, 9))
    assert {
        "cycle",
        "time_hours",
        "rmse_forecast",
        "rmse_analysis",
        "spread_forecast",
        "spread_analysis",
    } <= set(rows[0])
    assert float(rows[-1]["time_hours"]) == 96.0
    assert all(float(r["rmse_analysis"]) < float(r["rmse_forecast"]) for r in rows)
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0  # W&B offline log, `wandb sync`-able
    assert f"upload it with: wandb sync {offline[0].parent}" in stdout  # the run says where it is
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["scored_cycles"] == "3-8" and np.isfinite(summary["mean_rmse_analysis"])
    assert {"nature", "forecast", "analysis"} <= set(summary["wall_seconds"])
    for kind, members in (("truth", 1), ("obs", None), ("forecast", 6), ("analysis", 6)):
        assert (run_dir / "cycles" / "000008" / f"{kind}.h5").is_file()
        if members:
            ds = xr.open_dataset(run_dir / "cycles" / "000008" / f"{kind}.h5", engine="h5netcdf")
            assert ds["state"].dims == ("member", "level", "y", "x")
            assert ds["state"].shape == (members, 2, 32, 32)
            assert ds.attrs["cycle"] == 8 and ds.attrs["units"] == "K"
            ds.close()


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_to_identical_result(unbroken, tmp_path):
    ref_dir, _ = unbroken
    run_dir = tmp_path / "run"
    cmd = cycle_cmd(run_dir)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marker = run_dir / "cycles" / "000003" / "scores.json"
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists() and proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the workflow and its Parsl workers, mid-stage
    proc.wait()
    assert not (run_dir / "cycles" / "000008" / "analysis.h5").exists()
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    final, _ = read_state(run_dir / "cycles" / "000008" / "analysis.h5")
    expect, _ = read_state(ref_dir / "cycles" / "000008" / "analysis.h5")
    assert np.array_equal(final, expect)
    assert (run_dir / "metrics.csv").read_text() == (ref_dir / "metrics.csv").read_text()


@pytest.mark.slow
def test_divergence_stops_the_run_and_the_same_command_without_it_resumes(unbroken, tmp_path):
    ref_dir, _ = unbroken
    run_dir = tmp_path / "run"
    # a bound below cycle 1's analysis error: the run stops after evaluate(1), before forecast(2)
    cmd = cycle_cmd(run_dir, "divergence=0.001")
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    ref1 = json.loads((ref_dir / "cycles" / "000001" / "scores.json").read_text())
    rmse = ref1["rmse_analysis"]
    assert last.startswith(f"diverged: cycle 1: analysis RMSE {rmse:.4g} K > divergence=0.001 ×"), last
    assert json.loads((run_dir / "cycles" / "000001" / "scores.json").read_text()) == ref1
    assert not (run_dir / "cycles" / "000002" / "forecast.h5").exists()
    assert not (run_dir / "metrics.csv").exists()
    # the same command again stops at once, on the cycle already scored, before any stage runs
    again = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr[-3000:]
    assert [line for line in again.stderr.splitlines() if line.strip()][-1] == last
    assert not (run_dir / "cycles" / "000002" / "forecast.h5").exists()
    # the bound is not part of the science: lifted, the same run goes on to the unbroken result
    cmd = cycle_cmd(run_dir, "divergence=null")
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "metrics.csv").read_text() == (ref_dir / "metrics.csv").read_text()
