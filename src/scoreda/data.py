"""A run as data: one artefact over all cycles as one lazy xarray Dataset, and the scores.

    ds = scoreda.open_run("runs/quickstart", "analysis")   # state [time, member, level, y, x]
    m = scoreda.open_metrics("runs/quickstart")            # rmse_analysis [time], ...

``time`` is the model time in hours since the start of cycling (cycle k at k · ``model.cycle_hours``),
``cycle`` a coordinate along it. Files written before the checkpoints carried coordinates get them
here, from the run's ``config.yaml`` (the same :mod:`scoreda.dynamics.grid` the writer uses).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from omegaconf import DictConfig, OmegaConf

from scoreda.config import validate
from scoreda.dynamics.grid import Grid, model_grid, time_coords
from scoreda.io import read_variable

ARTEFACTS = ("truth", "obs", "forecast", "analysis")
PER_CYCLE = ("cycle", "time_hours", "inflation", "diagnostics")  # file attributes that differ between cycles
SCORES = {"rmse": "RMSE of the ensemble mean", "spread": "ensemble spread", "crps": "CRPS"}


def _config(run_dir: Path) -> DictConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.yaml in the run directory")
    return validate(OmegaConf.load(path))


def _with_coords(ds: xr.Dataset, grid: Grid) -> xr.Dataset:
    """The grid's coordinates for a file written before the files carried them (no-op otherwise)."""
    if "state" in ds and "x" not in ds.coords:
        ds = ds.assign_coords(grid.coords(ds.sizes["member"]))
        ds["state"].attrs = grid.state_attrs | ds["state"].attrs
    if "obs" in ds.dims:  # the old obs file: values on a dimension named like them (xarray's index)
        index = ds["index"].values
        ds = ds.drop_indexes("obs").rename_dims(obs="location").reset_coords("obs").drop_vars("index")
        ds = ds.assign_coords(grid.locate(index))
        ds["obs"].attrs = grid.observed_attrs(index, ds.attrs.get("transform", "linear"))
    return ds


def _read_block(files: tuple[Path, ...], name: str, block_info=None) -> np.ndarray:
    """Variable ``name`` of one file as a ``[1, ...]`` block; the block's place along time picks the file."""
    info = block_info[None]
    return read_variable(files[info["chunk-location"][0]], name, info["chunk-shape"][1:])[None]


def open_run(run_dir: str | Path, artefact: str) -> xr.Dataset:
    """Every ``RUN/cycles/*/<artefact>.h5`` as one Dataset along ``time``, loaded lazily (dask, one
    chunk per file, read and checked when computed: a bad file raises ``CheckpointError`` naming it).

    State artefacts: ``state [time, member, level, y, x]`` (truth: one member); ``obs``:
    ``obs [time, location]``. ``truth`` and ``analysis`` start at cycle 0 (the initial truth and
    ensemble), ``obs`` and ``forecast`` at cycle 1. Grid coordinates and attributes come from the
    first file (the grid and the stations are the run's); ``cycle`` from the directory names and
    ``time`` = cycle × ``model.cycle_hours``, as the writer computes them, so that opening reads one
    file, not all; the per-cycle file attributes (``cycle``, ``time_hours``, ``inflation``) are left
    out (they are coordinates, or in :func:`open_metrics`).
    """
    run_dir = Path(run_dir)
    if artefact not in ARTEFACTS:
        raise ValueError(f"artefact: expected one of {', '.join(ARTEFACTS)}, got {artefact!r}")
    files = tuple(sorted(run_dir.glob(f"cycles/[0-9]*/{artefact}.h5")))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no cycles/*/{artefact}.h5")
    cfg = _config(run_dir)
    with xr.open_dataset(files[0], engine="h5netcdf") as first:
        ds = _with_coords(first.load(), model_grid(cfg.model)).drop_vars(["cycle", "time"], errors="ignore")
    for name, v in list(ds.data_vars.items()):  # each becomes [time, ...], read lazily
        chunks = ((1,) * len(files), *((n,) for n in v.shape))
        read = functools.partial(_read_block, files, name)
        data = da.map_blocks(read, dtype=v.dtype, chunks=chunks, meta=np.empty((0,) * (v.ndim + 1), v.dtype))
        ds[name] = (("time", *v.dims), data, v.attrs)
    cycles = np.array([int(f.parent.name) for f in files])
    ds = ds.assign_coords(time_coords(cycles, (cycles * cfg.model.cycle_hours).astype(np.float32), ("time",)))
    listed = str(ds.attrs.get("diagnostics", "")).split(",")  # the filter's (``Analysis.diagnostics``)
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in PER_CYCLE and k not in listed}
    return ds


def _units(name: str, cfg: DictConfig, grid: Grid) -> str | None:
    """Units of a score: the headline's (``model.units``), a channel's for ``<score>_<channel>``."""
    for level, unit in zip(grid.level_names, grid.level_units, strict=True):
        if name.endswith(f"_{level}") and name.split("_")[0] in SCORES:
            return unit
    if name.split("_")[0] in SCORES or name in ("truth_std", "shock_std"):
        return cfg.model.units
    return "1" if name == "inflation" else None


def open_metrics(run_dir: str | Path) -> xr.Dataset:
    """The scalar scores of every scored cycle (``RUN/cycles/*/scores.json``: RMSE, spread and CRPS of
    forecast and analysis, per channel where the model names them, ``inflation``, ``truth_std``, ...)
    as variables along ``time`` (hours since the start of cycling, as :func:`open_run`), ``cycle`` a
    coordinate; ``units`` in each variable's attributes. A score missing in a cycle is NaN."""
    run_dir = Path(run_dir)
    rows = [json.loads(p.read_text()) for p in sorted(run_dir.glob("cycles/[0-9]*/scores.json"))]
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no cycles/*/scores.json (no cycle scored yet)")
    cfg = _config(run_dir)
    grid = model_grid(cfg.model)
    numbers = {k: None for r in rows for k, v in r.items() if type(v) in (int, float)}  # ordered set
    names = [k for k in numbers if k not in ("cycle", "time_hours")]
    data = {}
    for k in names:
        unit = _units(k, cfg, grid)
        what, _, kind = k.partition("_")
        attrs = {"long_name": f"{SCORES[what]} of the {kind.replace('_', ' ')}"} if what in SCORES else {}
        values = np.array([r.get(k, math.nan) for r in rows], dtype=np.float64)
        data[k] = ("time", values, attrs | ({"units": unit} if unit is not None else {}))
    cycles = np.array([r["cycle"] for r in rows])
    hours = np.array([r["time_hours"] for r in rows], dtype=np.float32)
    attrs = {"model": cfg.model.name, "filter": cfg.filter.name, "units": cfg.model.units}
    return xr.Dataset(data, time_coords(cycles, hours, ("time",)), attrs)
