"""Nature run: the truth, synthetic observations, and (cycle 0) the initial ensemble.

Cycle 0 spins a single trajectory up from seeded noise for ``model.spinup_cycles`` cycles, then
takes ``members`` states ``model.member_spacing_cycles`` apart from the continuing run as the
initial ensemble (a climatological ensemble, as in the seed paper) and the state one spacing later
as the truth. Cycle k ≥ 1 advances the truth by one cycle and observes it:
y_k = h(x_k) + σo ε, ε drawn from the (seed, k, "obs") stream.

Model shocks (``shocks.fraction`` > 0): cycle k is shocked when u_k < fraction, u_k ~ U(0, 1) from
the (seed, k, "shock") stream; the j-th shocked cycle (j = 0, 1, ...) adds white noise
N(0, std[j mod len(std)]²) to every truth grid value before it is observed, and the nature run
continues from the shocked truth. The forecast model never sees the noise.
"""

from __future__ import annotations

import time

import torch

from scoreda.io import read_dataset_file, write_dataset_file
from scoreda.observations import PointObservation, make_observation_operator
from scoreda.seeding import generator
from scoreda.stages.common import Run, dynamics, main, record_time


def observation_operator(run: Run) -> PointObservation:
    """The run's observation operator (random stations drawn from the (seed, 0, "stations") stream)."""
    return make_observation_operator(run.cfg.observation, run.shape, generator(run.cfg.seed, 0, "stations"))


def initialise(run: Run) -> None:
    """Spin-up, initial ensemble (``analysis`` of cycle 0) and initial truth."""
    if run.done(0, "truth") and run.done(0, "analysis"):
        return
    t0 = time.perf_counter()
    model, m = dynamics(run), run.cfg.model
    dev = run.cfg.device
    x = model.initial_state(generator(run.cfg.seed, 0, "spinup"), 1).to(dev)
    x = model.step(x, m.spinup_cycles * model.steps_per_cycle)
    members = []
    for _ in range(run.cfg.members):  # a sequence in model time: one trajectory, not a loop over members
        x = model.step(x, m.member_spacing_cycles * model.steps_per_cycle)
        members.append(x)
    truth = model.step(x, m.member_spacing_cycles * model.steps_per_cycle)
    run.write(0, "analysis", torch.cat(members).cpu())
    run.write(0, "truth", truth.cpu())
    record_time(run, 0, "initialise", t0)


def nature(run_dir, cycle: int) -> str:
    """Truth and observations of ``cycle`` (cycle 0: spin-up and initial ensemble)."""
    run = Run(run_dir)
    if cycle == 0:
        initialise(run)
        return str(run.path(0, "truth"))
    if run.done(cycle, "truth") and _obs_done(run, cycle):
        return str(run.path(cycle, "truth"))
    t0 = time.perf_counter()
    model = dynamics(run)
    truth = model.step(run.read(cycle - 1, "truth").to(run.cfg.device), model.steps_per_cycle).cpu()
    std = shock_std(run.cfg, cycle)
    if std > 0:
        g = generator(run.cfg.seed, cycle, "shock")
        torch.rand((), generator=g)  # u_k, drawn first as in shock_std
        truth = truth + std * torch.randn(truth.shape, generator=g, dtype=truth.dtype)
    op = observation_operator(run)
    y = op.sample(truth.reshape(-1), generator(run.cfg.seed, cycle, "obs"))
    write_observations(run, cycle, op, y)
    run.write(cycle, "truth", truth)
    record_time(run, cycle, "nature", t0)
    return str(run.path(cycle, "truth"))


def shock_std(cfg, cycle: int) -> float:
    """Standard deviation of the shock the truth receives at ``cycle`` (0.0: none)."""
    f = cfg.shocks.fraction
    if f <= 0 or cycle < 1:
        return 0.0
    u = [float(torch.rand((), generator=generator(cfg.seed, k, "shock"))) for k in range(1, cycle + 1)]
    shocked = [uk < f for uk in u]
    if not shocked[-1]:
        return 0.0
    return float(cfg.shocks.std[(sum(shocked) - 1) % len(cfg.shocks.std)])


def write_observations(run: Run, cycle: int, op: PointObservation, y: torch.Tensor) -> None:
    o = run.cfg.observation
    attrs = run.attrs(cycle, "obs") | {"sigma": o.sigma, "transform": o.transform, "operator": o.kind}
    write_dataset_file(
        run.path(cycle, "obs"), {"obs": (("obs",), y.numpy()), "index": (("obs",), op.indices.numpy())}, attrs
    )


def read_observations(run: Run, cycle: int) -> tuple[torch.Tensor, PointObservation]:
    """Observations y [p] of ``cycle`` and the operator, checked against the run's operator."""
    op = observation_operator(run)
    path = run.path(cycle, "obs")
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
