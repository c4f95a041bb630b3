"""EnSF on several MPI ranks (real ``mpiexec``) equals one process, for both shardings and both
prior-score estimators; the analysis stage (EnSF and LEnSF) and the workflow on ``filter.ranks`` > 1;
clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from scoreda.config import validate
from scoreda.io import read_state
from scoreda.stages.analysis import analysis
from scoreda.stages.common import write_config
from scoreda.stages.forecast import forecast
from scoreda.stages.nature import nature

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CYCLE, tiny  # noqa: E402
from ensf_mpi_cases import CASES  # noqa: E402
from ensf_mpi_cases import analyse as analyse_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "ensf_mpi_cases.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ATOL = 1e-5  # one rank vs R ranks (absolute; the states here are O(1–10), SQG θ anomalies O(10 K))
ATOL_TILES = 3e-5  # the LETKF's tiles: a strip's FFT in place of the grid's (measured ≤ 9.5e-6 on O(7))

TINY = tuple(tiny(5, 20, "cycles=2", "progress=false"))


def mpirun(ranks: int, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MPIEXEC), "-n", str(ranks), sys.executable, *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tiny(overrides) -> list[str]:
    """TINY, less the EnSF's filter.n_steps where the filter is the LETKF."""
    return [o for o in TINY if "filter=letkf" not in overrides or not o.startswith("filter.n_steps")]


def _compose(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[*_tiny(overrides), f"run_dir={run_dir}", *overrides])


def _forecast_ready(run_dir: Path, *overrides: str) -> Path:
    """A run directory taken through forecast(1) in this process (so that analysis(1) can run)."""
    write_config(run_dir, validate(_compose(run_dir, *overrides)))
    for stage, cycle in ((nature, 0), (nature, 1), (forecast, 1)):
        stage(run_dir, cycle)
    return run_dir


# ----------------------------------------------------------------------------- the filter alone


@pytest.fixture(scope="module")
def one_rank():
    torch.set_num_threads(1)
    return {name: analyse_case(name).numpy() for name in CASES}


@pytest.mark.parametrize("ranks", [2, 3])
def test_ensf_on_ranks_equals_one_rank(ranks, one_rank, tmp_path):
    """Every case of ``ensf_mpi_cases`` (members/state × paired/mixture, linear and arctan
    observations, partial ones, RTPS, inflation, uneven splits) on R ranks vs one process."""
    out = tmp_path / "ranks.npz"
    p = mpirun(ranks, str(HELPER), str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    got = np.load(out)
    assert set(got.files) == set(CASES)
    for name in CASES:
        assert got[name].shape == one_rank[name].shape, name
        err = float(np.abs(got[name] - one_rank[name]).max())
        assert err <= (ATOL_TILES if name.startswith("letkf") else ATOL), (name, err)
        if name.startswith(("members", "gmrf")):  # no reduction changes order: the same numbers
            assert np.array_equal(got[name], one_rank[name]), name


def test_gmrf_mp_on_four_ranks_uneven_tiles_equals_one_rank(one_rank, tmp_path):
    """Message passing on 4 tiles of rows (5, 5, 4, 4 coarse rows of 18; a grid of one row cut along
    x), messages across the tile edges by Sendrecv: one rank's analysis, bit for bit."""
    out = tmp_path / "ranks.npz"
    p = mpirun(4, str(HELPER), str(out), "--only", "gmrf")
    assert p.returncode == 0, p.stderr[-3000:]
    got = np.load(out)
    assert sorted(got.files) == sorted(n for n in CASES if n.startswith("gmrf"))
    for name in got.files:
        assert np.array_equal(got[name], one_rank[name]), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--members", "2", "--d", "10"], "filter.ranks: 3 ranks for 2 members with filter.shard=members"),
        (["--members", "5", "--d", "2", "--shard", "state"], "filter.ranks: 3 ranks for a state of 2 values"),
    ],
    ids=["members", "state"],
)
def test_fewer_members_or_state_than_ranks_is_one_line_error(args, message):
    p = mpirun(3, str(HELPER), *args)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), p.stderr


# -------------------------------------------------------------------------- the analysis stage


@pytest.mark.parametrize(
    ("ranks", "overrides"),
    [
        (2, ["filter.shard=members", "filter.prior_score=paired", "filter.rtps=0.5"]),
        (3, ["filter.shard=state", "filter.prior_score=mixture", "observation=arctan"]),
        (
            2,
            ["filter=lensf", "filter.adaptive_white=true", "filter.bandwidth=0.8", "filter.start=rotated"]
            + ["filter.mda=2"],
        ),
        (
            3,
            ["filter=lensf", "filter.white=0.5", "filter.adaptive_white=true", "filter.desroziers=1"]
            + ["observation=arctan", "filter.rtpp=0.2"],
        ),
        (2, ["filter=letkf", "filter.adaptive_inflation=true"]),
        (3, ["filter=letkf", "filter.mda=2", "observation=arctan", "filter.cross_level=0.5"]),
        (2, ["filter.kernel=fused", "filter.shard=state", "filter.prior_score=mixture"]),
    ],
    ids=[
        "2-members-paired",
        "3-state-mixture-arctan",
        "2-lensf-mixture-white",
        "3-lensf-arctan",
        "2-letkf-adaptive",
        "3-letkf-mda-arctan",
        "2-fused-state-mixture",
    ],
)
def test_analysis_stage_on_ranks_equals_one_rank(ranks, overrides, tmp_path):
    """``mpiexec -n R python -m scoreda.stages.analysis`` writes (rank 0 only) the one-rank analysis."""
    ref = _forecast_ready(tmp_path / "one", *overrides, "filter.ranks=1")
    analysis(ref, 1)
    run = _forecast_ready(tmp_path / "many", *overrides, f"filter.ranks={ranks}")
    p = mpirun(ranks, "-m", "scoreda.stages.analysis", "--run-dir", str(run), "--cycle", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == str(run / "cycles" / "000001" / "analysis.h5")  # printed by rank 0 alone
    expect, _ = read_state(ref / "cycles" / "000001" / "analysis.h5")
    got, attrs = read_state(run / "cycles" / "000001" / "analysis.h5")
    assert got.shape == (5, 2, 16, 16) and int(attrs["cycle"]) == 1
    assert float(np.abs(got - expect).max()) <= ATOL_TILES  # measured: 0 (members), ≤ 1e-6 (state)
    sliced = "filter.shard=state" in overrides  # the EnSF's slices: one part file a rank, stitched
    parts = [f"analysis.part-{r:04d}-of-{ranks:04d}.h5" for r in range(ranks)] if sliced else []
    names = sorted(f.name for f in (run / "cycles" / "000001").iterdir())
    assert names == sorted(["analysis.h5", *parts, "forecast.h5", "obs.h5", "truth.h5"])
    with h5py.File(run / "cycles" / "000001" / "analysis.h5") as f:
        assert f["state"].is_virtual == sliced
    assert (run / "timings" / "analysis-000001.json").is_file()


def test_members_fewer_than_ranks_stops_the_stage_in_one_line(tmp_path):
    """Refused before any work: config.yaml (written unchecked here) fails validation on every rank."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = _compose(run, "members=2", "filter.ranks=3")
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run / "config.yaml")
    p = mpirun(3, "-m", "scoreda.stages.analysis", "--run-dir", str(run), "--cycle", "1")
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: filter.ranks: 3 ranks for 2 members"), (
        p.stderr
    )
    assert sorted(f.name for f in run.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(("ranks", "launched"), [(1, 2), (2, 3)])
def test_ranks_other_than_the_mpi_world_is_one_line_error(ranks, launched, tmp_path):
    run = tmp_path / "run"
    write_config(run, validate(_compose(run, f"filter.ranks={ranks}")))
    p = mpirun(launched, "-m", "scoreda.stages.analysis", "--run-dir", str(run), "--cycle", "1")
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"config error: filter.ranks: {ranks}, but") and str(launched) in lines[0]


# ---------------------------------------------------------------------------------- the workflow


def _cycle(run_dir: Path, *overrides: str) -> None:
    cmd = [*CYCLE, f"run_dir={run_dir}", *_tiny(overrides), *overrides]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "common", [["filter.prior_score=mixture", "filter.shard=state"], ["filter=letkf"]], ids=["ensf", "letkf"]
)
def test_workflow_with_two_ranks_equals_one_rank(common, tmp_path):
    """``workflows/cycle.py filter.ranks=2``: the analysis runs as an MPI job (platform.mpi_launcher)
    and two cycles give the one-rank analyses (the LETKF's tiles to rounding)."""
    _cycle(tmp_path / "one", *common)
    _cycle(tmp_path / "two", *common, "filter.ranks=2")
    assert (tmp_path / "two" / "logs" / "analysis-000002.err").is_file()  # launched through mpiexec
    assert not (tmp_path / "one" / "logs").exists()
    for cycle in (1, 2):
        expect, _ = read_state(tmp_path / "one" / "cycles" / f"{cycle:06d}" / "analysis.h5")
        got, _ = read_state(tmp_path / "two" / "cycles" / f"{cycle:06d}" / "analysis.h5")
        assert float(np.abs(got - expect).max()) <= ATOL_TILES, cycle
