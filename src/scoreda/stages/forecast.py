"""Forecast: advance every member of the analysis of cycle k−1 to cycle k, in one batch.

``forecaster=physics``: the model of the ``model`` group. ``forecaster=vit``: the ViT surrogate, one
12-hour step, with the weights ``scoreda.stages.train.forecast_weights`` names for cycle k.
"""

from __future__ import annotations

import functools
import time

from scoreda.dynamics import Dynamics
from scoreda.stages.common import Run, dynamics, main, record_time


@functools.lru_cache(maxsize=2)
def _surrogate(path: str, mtime: float, cycle_seconds: float, device: str) -> Dynamics:
    from scoreda.surrogate import ViTDynamics

    return ViTDynamics.from_weights(path, cycle_seconds, device=device)


def forecast_model(run: Run, cycle: int) -> Dynamics:
    """The model that makes forecast(``cycle``)."""
    if run.cfg.forecaster.name != "vit":
        return dynamics(run)
    from scoreda.stages.train import forecast_weights

    path = forecast_weights(run, cycle)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: surrogate weights for forecast({cycle}) do not exist")
    seconds = run.cfg.model.cycle_hours * 3600
    return _surrogate(str(path), path.stat().st_mtime, seconds, run.cfg.device)


def forecast(run_dir, cycle: int) -> str:
    """``forecast(k) = model(analysis(k−1))`` over one cycle, all members at once."""
    run = Run(run_dir)
    if cycle < 1:
        raise ValueError(f"forecast: cycle must be ≥ 1, got {cycle}")
    if not run.done(cycle, "forecast"):
        t0 = time.perf_counter()
        model = forecast_model(run, cycle)
        prior = run.read(cycle - 1, "analysis").to(run.cfg.device)
        run.write(cycle, "forecast", model.step(prior, model.steps_per_cycle).cpu())
        record_time(run, cycle, "forecast", t0)
    return str(run.path(cycle, "forecast"))


if __name__ == "__main__":
    main(forecast, "Forecast stage: advance the analysis ensemble of cycle K-1 to cycle K.")
