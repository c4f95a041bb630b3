"""A run as data: scoreda.open_run / open_metrics on a tiny real run (the stages called in-process),
in the current file layout and in the one before the files carried coordinates."""

import json
import shutil

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from test_cli import _config

import scoreda
from scoreda.io import CheckpointError, read_dataset_file, read_state, write_dataset_file, write_state
from scoreda.stages import analysis, evaluate, forecast, nature
from scoreda.stages.common import Run, write_config

CYCLES = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """SQG 16², 4 members, cycles 0..3 (nature, forecast, analysis, evaluate), in this process."""
    run_dir = tmp_path_factory.mktemp("data") / "run"
    write_config(run_dir, _config(run_dir, f"cycles={CYCLES}"))
    nature.nature(run_dir, 0)
    for k in range(1, CYCLES + 1):
        nature.nature(run_dir, k)
        forecast.forecast(run_dir, k)
        analysis.analysis(run_dir, k)
        evaluate.evaluate(run_dir, k)
    return run_dir


def _path(run_dir, cycle, name):
    return run_dir / "cycles" / f"{cycle:06d}" / f"{name}.h5"


def test_open_run_state(run_dir):
    for artefact, first, members in (("truth", 0, 1), ("analysis", 0, 4), ("forecast", 1, 4)):
        ds = scoreda.open_run(run_dir, artefact)
        cycles = list(range(first, CYCLES + 1))
        assert ds["state"].dims == ("time", "member", "level", "y", "x")
        assert ds["state"].shape == (len(cycles), members, 2, 16, 16)
        assert isinstance(ds["state"].data, da.Array)  # lazy: one chunk per file
        assert ds["state"].data.chunks[0] == (1,) * len(cycles)
        assert ds["time"].values.tolist() == [12.0 * k for k in cycles]  # hours since the start
        assert ds["time"].attrs["units"] == "hours" and ds["cycle"].values.tolist() == cycles
        assert ds["cycle"].dims == ("time",) and ds["member"].values.tolist() == list(range(members))
        assert np.allclose(np.diff(ds["x"].values), 20000.0 / 16) and ds["x"].attrs["units"] == "km"
        assert ds["y"].values.tolist() == ds["x"].values.tolist() and ds["y"].attrs["axis"] == "Y"
        assert ds["level"].values.tolist() == ["z=0", "z=H"]
        assert ds["level_units"].values.tolist() == ["K", "K"]
        assert ds["state"].attrs["standard_name"] == "air_potential_temperature"
        assert ds["state"].attrs["units"] == "K" and ds.attrs["kind"] == artefact
        assert "cycle" not in ds.attrs and "inflation" not in ds.attrs  # per cycle: not the run's
        values = ds["state"].values
        for i, k in enumerate(cycles):  # bit for bit what each file holds
            assert np.array_equal(values[i], read_state(_path(run_dir, k, artefact))[0])


def test_open_run_obs(run_dir):
    ds = scoreda.open_run(run_dir, "obs")
    assert ds["obs"].dims == ("time", "location") and ds["obs"].shape == (CYCLES, 2 * 16 * 16)
    assert ds["cycle"].values.tolist() == [1, 2, 3] and ds["time"].values.tolist() == [12.0, 24.0, 36.0]
    assert isinstance(ds["obs"].data, da.Array)
    assert ds["obs"].attrs["units"] == "K" and ds.attrs["sigma"] == 1.0
    index = ds["index"].values
    assert np.array_equal(index, np.arange(512))  # every point observed
    assert ds["level"].values[[0, 256]].tolist() == ["z=0", "z=H"]
    assert ds["x"].values[[0, 1, 16]].tolist() == [0.0, 1250.0, 0.0]
    assert ds["y"].values[[0, 16, 256 + 32]].tolist() == [0.0, 1250.0, 2500.0]
    for i, k in enumerate(range(1, CYCLES + 1)):
        data, _ = read_dataset_file(_path(run_dir, k, "obs"))
        assert np.array_equal(ds["obs"].values[i], data["obs"])


def test_error_of_the_ensemble_mean_matches_the_scores(run_dir):
    """The README's example: the analysis error over time from open_run equals open_metrics'."""
    an, truth = scoreda.open_run(run_dir, "analysis"), scoreda.open_run(run_dir, "truth")
    err = an["state"].mean("member") - truth["state"].isel(member=0)
    rmse = np.sqrt((err**2).mean(["level", "y", "x"])).sel(time=slice(12, None))
    m = scoreda.open_metrics(run_dir)
    assert m["time"].values.tolist() == [12.0, 24.0, 36.0] and m["cycle"].values.tolist() == [1, 2, 3]
    assert np.allclose(rmse.values, m["rmse_analysis"].values, rtol=1e-5)
    assert m["rmse_analysis"].attrs["units"] == "K" and m["inflation"].attrs["units"] == "1"
    for k in range(1, CYCLES + 1):
        scores = json.loads((run_dir / "cycles" / f"{k:06d}" / "scores.json").read_text())
        assert m["crps_forecast"].sel(time=12.0 * k).item() == scores["crps_forecast"]
    assert "rank_histogram" not in m and "config_hash" not in m  # scalar numbers only


def test_open_run_is_lazy_and_names_a_bad_file(run_dir, tmp_path):
    """Opening reads one file; a corrupted one is named when its chunk is computed."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    bad = _path(copy, 2, "forecast")
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    ds = scoreda.open_run(copy, "forecast")
    assert np.isfinite(ds["state"].isel(time=0).values).all()  # the good files still read
    with pytest.raises(CheckpointError, match=f"^{bad}: unreadable or corrupted"):
        ds["state"].load()
    with pytest.raises(ValueError, match="artefact: expected one of"):
        scoreda.open_run(copy, "scores")
    with pytest.raises(FileNotFoundError, match="no cycles"):
        scoreda.open_run(tmp_path, "truth")


def test_old_layout_opens_and_validates(run_dir, tmp_path):
    """A run written before the files carried coordinates (state without coords, obs on a dimension
    ``obs``): the stages still accept its files, and open_run gives the same Dataset."""
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for path in old.glob("cycles/*/*.h5"):
        data, attrs = read_dataset_file(path)
        if path.name == "obs.h5":
            old_obs = {"obs": (("obs",), data["obs"]), "index": (("obs",), data["index"])}
            write_dataset_file(path, old_obs, attrs)
        else:
            write_state(path, data["state"], attrs)
    with xr.open_dataset(_path(old, 1, "obs"), engine="h5netcdf") as f:
        assert f["obs"].dims == ("obs",) and "x" not in f  # really the old layout
    run = Run(old)
    y, _ = nature.read_observations(run, 1)
    assert np.array_equal(y.numpy(), read_dataset_file(_path(run_dir, 1, "obs"))[0]["obs"])
    assert all(run.done(k, kind) for k in range(1, CYCLES + 1) for kind in ("truth", "forecast", "analysis"))
    for artefact in ("analysis", "obs"):
        new, got = scoreda.open_run(run_dir, artefact), scoreda.open_run(old, artefact)
        xr.testing.assert_identical(got.load(), new.load())
