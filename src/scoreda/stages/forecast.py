"""Forecast: advance every member of the analysis of cycle k−1 to cycle k, in one batch."""

from __future__ import annotations

import time

from scoreda.stages.common import Run, dynamics, main, record_time


def forecast(run_dir, cycle: int) -> str:
    """``forecast(k) = model(analysis(k−1))`` over one cycle, all members at once."""
    run = Run(run_dir)
    if cycle < 1:
        raise ValueError(f"forecast: cycle must be ≥ 1, got {cycle}")
    if not run.done(cycle, "forecast"):
        t0 = time.perf_counter()
        model = dynamics(run)
        prior = run.read(cycle - 1, "analysis").to(run.cfg.device)
        run.write(cycle, "forecast", model.step(prior, model.steps_per_cycle).cpu())
        record_time(run, cycle, "forecast", t0)
    return str(run.path(cycle, "forecast"))


if __name__ == "__main__":
    main(forecast, "Forecast stage: advance the analysis ensemble of cycle K-1 to cycle K.")
