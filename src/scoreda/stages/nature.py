"""Nature run: the truth, synthetic observations, and (cycle 0) the initial ensemble.

Cycle 0 spins a single trajectory up from seeded noise for ``model.spinup_cycles`` cycles, then
takes ``members`` states ``model.member_spacing_cycles`` apart from the continuing run as the
initial ensemble (a climatological ensemble, as in the seed paper) and the state one spacing later
as the truth; the trajectory is cached in ``cache_dir`` for every run of the same model and seed.
Cycle k ≥ 1 advances the truth by one cycle and observes it:
y_k = h(x_k) + σo ε, ε drawn from the (seed, k, "obs") stream.

Model shocks (``shocks.fraction`` > 0, ``scoreda.shocks``) are added to the truth before it is
observed, and the nature run continues from the shocked truth. The forecast model never sees them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from scoreda.dynamics import model_science
from scoreda.io import CheckpointError, config_hash, read_dataset_file, read_selections, write_dataset_file
from scoreda.observations import (
    ObservationParams,
    PointObservation,
    make_observation_operator,
    slice_observation_operator,
)
from scoreda.seeding import generator
from scoreda.shocks import shock_std
from scoreda.stages.common import Run, dynamics, main, note, record_time


def observation_operator(run: Run) -> PointObservation:
    """The run's observation operator (random stations drawn from the (seed, 0, "stations") stream)."""
    return make_observation_operator(run.cfg.observation, run.shape, generator(run.cfg.seed, 0, "stations"))


def initialise(run: Run) -> None:
    """Spin-up, initial ensemble (``analysis`` of cycle 0) and initial truth: s_1 … s_M and s_{M+1}
    of ``spun_up_states``."""
    if run.done(0, "truth") and run.done(0, "analysis"):
        return
    t0 = time.perf_counter()
    M = run.cfg.members
    s = spun_up_states(run, M + 1)
    run.write(0, "analysis", s[:M])
    run.write(0, "truth", s[M : M + 1])
    record_time(run, 0, "initialise", t0)


def spinup_key(run: Run) -> str:
    """What the spun-up trajectory depends on: the model's science, the seed and the device."""
    return config_hash(
        {
            "model": model_science(run.cfg.model),
            "seed": run.cfg.seed,
            "device": torch.device(run.cfg.device).type,
        }
    )


def spun_up_states(run: Run, n: int) -> torch.Tensor:
    """s_1 … s_n [n, C, H, W] on the CPU: one trajectory spun up from seeded noise for
    ``model.spinup_cycles`` cycles, s_j ``j × model.member_spacing_cycles`` cycles after it.

    Cached in ``cache_dir`` (``spinup-<key>.h5``, validated on every read like a run's files) and
    shared by every run with the same model, seed and device; a run that needs more states than the
    cache holds extends the trajectory from its last state and writes the longer cache. The states
    are those the uncached loop makes, bit for bit (the same model steps from the same states).
    """
    m, model = run.cfg.model, dynamics(run)
    spacing = m.member_spacing_cycles * model.steps_per_cycle
    cache = Path(run.cfg.cache_dir) / f"spinup-{spinup_key(run)}.h5" if run.cfg.cache_dir else None
    states = []
    if cache is not None and cache.exists():
        try:
            data, _ = read_dataset_file(
                cache, expect={"state": (None, *run.shape)}, expect_attrs={"key": spinup_key(run)}
            )
            states = list(torch.from_numpy(data["state"])[:, None])
        except CheckpointError as e:
            note(f"replacing {cache} ({e.problem})")
    cached = len(states)
    if states:
        x = states[-1].to(run.cfg.device)
    else:
        x = model.initial_state(generator(run.cfg.seed, 0, "spinup"), 1).to(run.cfg.device)
        x = model.step(x, m.spinup_cycles * model.steps_per_cycle)
    while len(states) < n:  # a sequence in model time: one trajectory, not a loop over members
        x = model.step(x, spacing)
        states.append(x.cpu())
    out = torch.cat(states)
    if cache is not None and len(states) > cached:
        attrs = {"key": spinup_key(run), "model": m.name, "seed": run.cfg.seed, "units": m.units}
        attrs |= {"spinup_cycles": m.spinup_cycles, "member_spacing_cycles": m.member_spacing_cycles}
        write_dataset_file(cache, {"state": (("sample", "level", "y", "x"), out)}, attrs)
    return out[:n]


def nature(run_dir, cycle: int) -> str:
    """Truth and observations of ``cycle`` (cycle 0: spin-up and initial ensemble)."""
    run = Run(run_dir)
    if cycle == 0:
        initialise(run)
        return str(run.path(0, "truth"))
    have_truth, have_obs = run.done(cycle, "truth"), run.done(cycle, "obs")
    if have_truth and have_obs:
        return str(run.path(cycle, "truth"))
    t0 = time.perf_counter()
    if have_truth:  # only the observations are remade (from their own stream: the same values)
        truth = run.read(cycle, "truth")
    else:
        model = dynamics(run)
        truth = model.step(run.read(cycle - 1, "truth").to(run.cfg.device), model.steps_per_cycle).cpu()
        std = shock_std(run.cfg, cycle)
        if std > 0:
            g = generator(run.cfg.seed, cycle, "shock")
            torch.rand((), generator=g)  # u_k, drawn first as in shock_std
            truth = truth + std * torch.randn(truth.shape, generator=g, dtype=truth.dtype)
    if not have_obs:
        op = observation_operator(run)
        y = op.sample(truth.reshape(-1), generator(run.cfg.seed, cycle, "obs"))
        write_observations(run, cycle, op, y)
    if not have_truth:
        run.write(cycle, "truth", truth)
    record_time(run, cycle, "nature", t0)
    return str(run.path(cycle, "truth"))


def write_observations(run: Run, cycle: int, op: PointObservation, y: torch.Tensor) -> None:
    """``obs.h5``: y [p] as variable ``obs`` on dimension ``location``, with coordinates ``index`` (the
    flat index into the state [level, y, x]), ``level``, ``y``, ``x`` (the grid's length units) and the
    scalar ``cycle`` and ``time``; σo, transform and operator as file attributes."""
    o, index = run.cfg.observation, op.indices.numpy()
    obs = (("location",), y.numpy(), run.grid.observed_attrs(index, o.transform))
    attrs = run.attrs(cycle, "obs") | {"sigma": o.sigma, "transform": o.transform, "operator": o.kind}
    coords = run.grid.locate(index, dim="location") | run.time_coords(cycle)
    write_dataset_file(run.path(cycle, "obs"), {"obs": obs}, attrs, coords)


def read_observations(
    run: Run, cycle: int, cols: slice | None = None
) -> tuple[torch.Tensor, PointObservation]:
    """Observations y [p] of ``cycle`` and the operator, checked against the run's operator. Reads
    both layouts: ``obs`` and ``index`` on dimension ``location`` (with coordinates) or, in files
    written before coordinates, on dimension ``obs``. ``cols``: only those of the state indices
    ``cols`` and the operator restricted to them (``slice_observation_operator``), read by hyperslab."""
    path = run.path(cycle, "obs")
    if cols is not None:  # no index vector of the whole state (``slice_observation_operator``)
        o, stations = run.cfg.observation, generator(run.cfg.seed, 0, "stations")
        sub, lo = slice_observation_operator(o, run.shape, cols, stations)
        p, sel = ObservationParams.from_config(o).n_observed(run.shape), np.s_[lo : lo + sub.n_obs]
        expect = {"cycle": cycle, "config_hash": run.hash}
        data = {n: read_selections(path, n, [sel], (p,), expect)[0][0] for n in ("obs", "index")}
        if not torch.equal(torch.from_numpy(data["index"]) - cols.start, sub.indices):
            raise ValueError(f"{path}: observation locations differ from the run's observation operator")
        return torch.from_numpy(data["obs"]), sub
    op = observation_operator(run)
    data, _ = read_dataset_file(
        path,
        expect={"obs": (op.n_obs,), "index": (op.n_obs,)},
        expect_attrs={"cycle": cycle, "config_hash": run.hash},
    )
    if not torch.equal(torch.from_numpy(data["index"]), op.indices):
        raise ValueError(f"{path}: observation locations differ from the run's observation operator")
    return torch.from_numpy(data["obs"]), op


def _obs_done(run: Run, cycle: int) -> bool:
    try:
        read_observations(run, cycle)
        return True
    except (ValueError, OSError):
        return False


if __name__ == "__main__":
    main(nature, "Nature run: truth and observations of one cycle (cycle 0: spin-up and initial ensemble).")
