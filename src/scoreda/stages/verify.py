"""Validation of a run directory on every run: which files are bad, and which stage remakes each.

A run is deterministic (randomness from (seed, cycle, stage)), so a bad file is remade from its
inputs alone, bit for bit: truth(k) from truth(k−1) and obs(k) from truth(k) by ``nature(k)``,
forecast(k) from analysis(k−1) by ``forecast(k)``, analysis(k) from forecast(k) and obs(k) by
``analysis(k)``, the fine-tuned weights of cycle k by ``train(k)``; cycle 0 (initial ensemble and
truth) by ``nature(0)``. Remade in cycle order, every input is good by the time it is read.

    python -m scoreda.stages.verify --run-dir RUN      # lists the bad files, exit 1 if any
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scoreda.stages.common import MISSING, Run, completed_cycles

REMADE_BY = {
    "truth": "nature",
    "obs": "nature",
    "forecast": "forecast",
    "analysis": "analysis",
    "weights": "train",
}


@dataclass(frozen=True)
class BadFile:
    """A file of a run that is missing or does not validate."""

    cycle: int
    kind: str  # truth | obs | forecast | analysis | weights
    path: str
    problem: str  # one line

    @property
    def stage(self) -> str:
        """The stage that remakes it (cycle 0: the nature run's initialisation)."""
        return "nature" if self.cycle == 0 else REMADE_BY[self.kind]

    def __str__(self) -> str:
        return f"{self.path} ({self.problem})"


def kinds(run: Run, cycle: int) -> tuple[str, ...]:
    """The files cycle ``cycle`` holds: truth and the initial ensemble at 0; truth, obs, forecast,
    analysis (and, with online fine-tuning, the surrogate's weights) after."""
    if cycle == 0:
        return ("truth", "analysis")
    online = run.cfg.forecaster.name == "vit" and run.cfg.surrogate.online
    return ("truth", "obs", "forecast", "analysis", *(("weights",) if online else ()))


def weights_problem(path: Path) -> str | None:
    """What is wrong with a surrogate weights file (``MISSING`` when absent), None when it loads."""
    if not path.is_file():
        return MISSING
    from scoreda.surrogate import load_weights

    try:
        load_weights(path)
    except (ValueError, OSError, RuntimeError) as e:
        return " ".join(str(e).split()).removeprefix(f"{path}: ")
    return None


def check(run: Run, cycle: int, kind: str) -> BadFile | None:
    if kind == "weights":
        from scoreda.stages.train import weights_path

        path = weights_path(run, cycle)
        problem = weights_problem(path)
    else:
        path, problem = run.path(cycle, kind), run.problem(cycle, kind)
    return None if problem is None else BadFile(cycle, kind, str(path), problem)


def verify(run_dir: str | Path, cycles) -> list[BadFile]:
    """The bad files of ``cycles`` (an iterable of cycle numbers), in cycle order."""
    run = Run(run_dir)
    found = (check(run, k, kind) for k in cycles for kind in kinds(run, k))
    return [b for b in found if b is not None]


def verify_complete(run_dir: str | Path, cycles: int) -> tuple[list[BadFile], int]:
    """The bad files of cycle 0 and of the complete cycles (those with ``scores.json``, which a run does
    not launch again), and how many cycles are complete."""
    done = len(completed_cycles(run_dir, cycles))
    return verify(run_dir, range(done + 1)), done


def set_aside(bad: list[BadFile]) -> None:
    """Remove the bad files before they are remade: no reader may take one for complete meanwhile."""
    for b in bad:
        Path(b.path).unlink(missing_ok=True)


def _cli() -> None:
    ap = argparse.ArgumentParser(description="List the files of a run that are missing or do not validate.")
    ap.add_argument("--run-dir", required=True)
    args = ap.parse_args()
    run = Run(args.run_dir)
    t0 = time.perf_counter()
    bad, done = verify_complete(args.run_dir, run.cfg.cycles)
    for b in bad:
        print(f"bad: {b}")
    print(f"{done} complete cycles checked in {time.perf_counter() - t0:.2f} s: {len(bad)} bad file(s)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    _cli()
