"""Command-line behaviour: `workflows/cycle.py` refuses bad configs in one line before touching the
disk, and each stage runs alone as `python -m scoreda.stages.<name> --run-dir RUN --cycle K`."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import xarray as xr
from conftest import tiny  # noqa: E402
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.stages.common import write_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ENV = {**os.environ, "WANDB_MODE": "offline", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}

TINY = tuple(tiny(4, 10, "cycles=2"))


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _stage(name: str, run_dir: Path, cycle: int) -> subprocess.CompletedProcess:
    return _run("-m", f"scoreda.stages.{name}", "--run-dir", str(run_dir), "--cycle", str(cycle))


def _config(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"run_dir={run_dir}", *overrides])
    return validate(cfg)


# ----------------------------------------------------------------------------------- workflows/cycle.py


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["members=-3"], "members"),
        (["filter=foo"], "filter"),  # unknown group option: precheck_groups, before Hydra
        (["observation=subsample", "observation.every=5"], "observation.every"),
        (["divergence=0"], "divergence"),
    ],
    ids=["members", "filter-option", "observation.every", "divergence"],
)
def test_cycle_rejects_bad_config_in_one_line(tmp_path, overrides, key):
    run_dir = tmp_path / "r"
    p = _run("workflows/cycle.py", *overrides, f"run_dir={run_dir}", timeout=60)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"config error: {key}:"), lines[0]
    assert not run_dir.exists(), f"created {sorted(str(f) for f in run_dir.rglob('*'))}"


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["filter.n_step=10"], "config error: filter.n_step: no such key; did you mean filter.n_steps?"),
        (["+filter.nstep=10"], "config error: filter.nstep: not a valid key; did you mean filter.n_steps?"),
        (["sed=3"], "config error: sed: no such key; did you mean seed?"),
        (
            ["filter=letkf", "filter.cap_spread=true"],
            "config error: filter.cap_spread: not a key of filter=letkf (it is one of filter=ensf)",
        ),
        (
            ["filter=ensf,letkf"],
            "config error: filter=ensf,letkf: several values sweep only with -m (--multirun);"
            " a list is key=[a,b]",
        ),
    ],
    ids=["misspelled", "misspelled-appended", "top-level", "other-option", "sweep-without-m"],
)
def test_cycle_says_what_is_wrong_with_a_key_in_one_line(tmp_path, overrides, line):
    run_dir = tmp_path / "r"
    p = _run("workflows/cycle.py", *overrides, f"run_dir={run_dir}", timeout=60)
    assert p.returncode == 2, p.stderr
    assert [x for x in p.stderr.splitlines() if x.strip()] == [line]
    assert not run_dir.exists()


def test_cycle_help_lists_the_config_groups():
    p = _run("workflows/cycle.py", "--help", timeout=60)
    assert p.returncode == 0, p.stderr
    for group in ("model", "observation", "filter", "forecaster", "platform", "logger", "experiment"):
        assert f"{group}:" in p.stdout, group
    filters = sorted(f.stem for f in (ROOT / "configs" / "filter").glob("*.yaml"))
    assert f"filter: {', '.join(filters)}" in p.stdout  # every filter's config file, as Hydra lists them


# ------------------------------------------------------------------------------------ stages, one by one


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 16² SQG run with 4 members, taken through cycle 1 by the stage CLIs, one process each."""
    run_dir = tmp_path_factory.mktemp("stages") / "run"
    write_config(run_dir, _config(run_dir))
    results = {}
    for name, cycle in (("nature", 0), ("nature", 1), ("forecast", 1), ("analysis", 1), ("evaluate", 1)):
        p = _stage(name, run_dir, cycle)
        results[(name, cycle)] = p
        assert p.returncode == 0, f"{name} --cycle {cycle} failed:\n{p.stderr}"
    return run_dir, results


@pytest.mark.slow
def test_stages_write_cycle_artefacts(tiny_run):
    run_dir, _ = tiny_run
    cyc = run_dir / "cycles" / "000001"
    for name in ("truth", "obs", "forecast", "analysis"):
        assert (cyc / f"{name}.h5").is_file(), name
    assert (run_dir / "cycles" / "000000" / "analysis.h5").is_file()  # the initial ensemble
    with xr.open_dataset(cyc / "analysis.h5", engine="h5netcdf") as ds:
        assert ds["state"].dims == ("member", "level", "y", "x")
        assert ds["state"].shape == (4, 2, 16, 16)
        assert int(ds.attrs["cycle"]) == 1


@pytest.mark.slow
def test_evaluate_writes_finite_scores(tiny_run):
    run_dir, results = tiny_run
    scores = json.loads((run_dir / "cycles" / "000001" / "scores.json").read_text())
    assert scores["cycle"] == 1
    assert math.isfinite(scores["rmse_analysis"]) and scores["rmse_analysis"] > 0
    assert math.isfinite(scores["rmse_forecast"])
    assert json.loads(results[("evaluate", 1)].stdout)["rmse_analysis"] == scores["rmse_analysis"]
    with xr.open_dataset(run_dir / "cycles" / "000001" / "analysis.h5", engine="h5netcdf") as ds:
        lam = float(ds.attrs["inflation"])  # the EnSF default: adaptive inflation, λ ≥ 1
    assert lam >= 1.0 and scores["inflation"] == lam


@pytest.mark.slow
def test_rerunning_a_done_stage_is_a_no_op(tiny_run):
    run_dir, _ = tiny_run
    path = run_dir / "cycles" / "000001" / "forecast.h5"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    p = _stage("forecast", run_dir, 1)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(path)
    assert path.stat().st_mtime_ns == mtime
    assert path.read_bytes() == before


@pytest.mark.slow
def test_stage_without_its_input_fails_naming_the_file(tiny_run):
    run_dir, _ = tiny_run
    p = _stage("analysis", run_dir, 2)  # forecast of cycle 2 was never made
    assert p.returncode != 0
    missing = run_dir / "cycles" / "000002" / "forecast.h5"
    assert str(missing) in p.stderr, p.stderr
    assert not (run_dir / "cycles" / "000002" / "analysis.h5").exists()


def test_a_run_shorter_than_its_burn_in_runs_and_takes_the_means_over_all_cycles(tmp_path):
    from scoreda.stages import analysis, evaluate, forecast, nature
    from scoreda.stages.evaluate import short_run_note

    run_dir = tmp_path / "run"
    write_config(run_dir, _config(run_dir, "cycles=1", "burn_in=10"))
    nature.nature(run_dir, 0)
    nature.nature(run_dir, 1)
    forecast.forecast(run_dir, 1)
    analysis.analysis(run_dir, 1)
    summary = evaluate.report(run_dir)
    scores = json.loads((run_dir / "cycles" / "000001" / "scores.json").read_text())
    assert summary["scored_cycles"] == "1-1" and summary["burn_in"] == 0
    assert summary["mean_rmse_analysis"] == scores["rmse_analysis"]
    assert short_run_note(10, 1) == (
        "note: cycles=1 ≤ burn_in=10: the time means are taken over all 1 cycles (a longer run leaves the"
        " burn-in out)"
    )
    assert short_run_note(10, 11) is None


def test_the_spin_up_is_cached_extended_and_bit_for_bit_the_uncached_one(tmp_path, monkeypatch):
    from scoreda.dynamics.sqg import SQG
    from scoreda.stages.common import Run
    from scoreda.stages.nature import nature, spun_up_states

    cache = tmp_path / "cache"
    plain = tmp_path / "plain"
    write_config(plain, _config(plain, "cache_dir=null"))
    nature(plain, 0)
    assert not cache.exists()
    first = tmp_path / "first"
    write_config(first, _config(first, f"cache_dir={cache}"))
    nature(first, 0)
    (stored,) = cache.glob("spinup-*.h5")
    for kind in ("truth", "analysis"):
        assert torch.equal(Run(first).read(0, kind), Run(plain).read(0, kind)), kind
    steps = []
    monkeypatch.setattr(SQG, "step", lambda self, x, n=1, _f=SQG.step: steps.append(n) or _f(self, x, n))
    second = tmp_path / "second"  # another run directory, the same model and seed: no model step at all
    write_config(second, _config(second, f"cache_dir={cache}", "cycles=7", "filter.rtps=0.2"))
    nature(second, 0)
    assert steps == []
    assert torch.equal(Run(second).read(0, "analysis"), Run(first).read(0, "analysis"))
    more = tmp_path / "more"  # more members: the cached trajectory goes on from its last state
    write_config(more, _config(more, f"cache_dir={cache}", "members=6"))
    nature(more, 0)
    assert len(steps) == 2  # two more states, one member spacing each
    run = Run(more)
    assert torch.equal(run.read(0, "analysis")[:4], Run(first).read(0, "analysis"))
    assert torch.equal(run.read(0, "analysis")[4], Run(first).read(0, "truth")[0])
    assert torch.equal(spun_up_states(run, 7), torch.cat([run.read(0, "analysis"), run.read(0, "truth")]))
    assert stored.exists() and len(steps) == 2


# ------------------------------------------------------------------------------------------ write_config


def test_write_config_refuses_another_experiment(tmp_path):
    run_dir = tmp_path / "r"
    path = write_config(run_dir, _config(run_dir))
    assert path == run_dir / "config.yaml"
    original = path.read_text()
    with pytest.raises(ValueError, match=r"config\.yaml") as info:
        write_config(run_dir, _config(run_dir, "seed=1"))
    assert "seed" in str(info.value) and "\n" not in str(info.value)
    assert path.read_text() == original  # left as it was
    # A resume with more cycles is the same experiment.
    write_config(run_dir, _config(run_dir, "cycles=5"))
    assert "cycles: 5" in path.read_text()


# ---------------------------------------------------------------------------------------------- shocks


def test_shocks_hit_a_share_of_cycles_with_the_stds_in_turn(tmp_path):
    from scoreda.shocks import shock_std

    cfg = _config(tmp_path, "shocks.fraction=0.5", "shocks.std=[5,4,3,2]")
    stds = [shock_std(cfg, k) for k in range(1, 301)]
    hit = [s for s in stds if s > 0]
    assert 120 < len(hit) < 180  # Binomial(300, 0.5): mean 150, sd 8.7
    assert hit[:8] == [5, 4, 3, 2, 5, 4, 3, 2]
    assert shock_std(_config(tmp_path), 7) == 0.0  # fraction 0: perfect model


def test_nature_stage_adds_the_shock_to_the_truth(tmp_path):
    from scoreda.shocks import shock_std
    from scoreda.stages.common import Run, dynamics
    from scoreda.stages.nature import nature

    run_dir = tmp_path / "run"
    cfg = _config(run_dir, "shocks.fraction=1.0", "shocks.std=[3.0]")
    write_config(run_dir, cfg)
    nature(run_dir, 0)
    nature(run_dir, 1)
    run = Run(run_dir)
    model = dynamics(run)
    unshocked = model.step(run.read(0, "truth"), model.steps_per_cycle)
    noise = (run.read(1, "truth") - unshocked).numpy()
    assert shock_std(run.cfg, 1) == 3.0
    assert noise.std() == pytest.approx(3.0, rel=0.1)  # 512 values
    assert abs(noise.mean()) < 0.5
