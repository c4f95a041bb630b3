"""Analysis: assimilate the observations of cycle k into the forecast ensemble (``filter`` config)."""

from __future__ import annotations

import time

from scoreda.filters import make_filter
from scoreda.seeding import generator
from scoreda.stages.common import Run, main, record_time
from scoreda.stages.nature import read_observations


def analysis(run_dir, cycle: int) -> str:
    """``analysis(k) = filter(forecast(k), obs(k))``; noise from the (seed, k, "analysis") stream."""
    run = Run(run_dir)
    if not run.done(cycle, "analysis"):
        t0 = time.perf_counter()
        prior = run.read(cycle, "forecast").to(run.cfg.device)
        y, op = read_observations(run, cycle)
        filt = make_filter(run.cfg.filter, run.cfg.model)
        M = prior.shape[0]
        post = filt.analyse(
            prior.reshape(M, -1), y.to(prior.device), op, generator(run.cfg.seed, cycle, "analysis")
        )
        run.write(cycle, "analysis", post.reshape(prior.shape).cpu())
        record_time(run, cycle, "analysis", t0)
    return str(run.path(cycle, "analysis"))


if __name__ == "__main__":
    main(analysis, "Analysis stage: assimilate the observations of cycle K into its forecast ensemble.")
