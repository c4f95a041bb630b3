"""Checks a workflow makes before any work, each failing in one line that names the key or the path:
the run directory can be written and has room for the run, and the files the run reads load.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from omegaconf import DictConfig

from scoreda.config import ConfigError
from scoreda.dynamics.grid import model_grid
from scoreda.io.atomic import MARGIN


class PreflightError(RuntimeError):
    """The run cannot start; ``str(err)`` is one line naming the path and what it needs."""


PLOTS_AND_LOGS = 8 << 20  # bytes: plots, metrics, summary, Parsl's runinfo of one run (measured: ≈ 3 MiB)
PER_CYCLE_SMALL = 64 << 10  # bytes: scores.json, timings, logs of one cycle


def check_writable(run_dir: str | Path) -> None:
    """Create ``run_dir`` and write a probe file in it, or raise ``PreflightError``."""
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{id(path)}"
        probe.write_bytes(b"scoreda")
        probe.unlink()
    except OSError as e:
        raise PreflightError(
            f"run_dir: cannot write {e.filename or path} ({e.strerror}); choose a writable run_dir"
        ) from None


def bytes_per_cycle(cfg: DictConfig) -> int:
    """What one cycle writes: truth, forecast and analysis in float32, the observations (at most one
    per state value: value + index), the fine-tuned weights of an online surrogate, scores and logs."""
    d = math.prod(model_grid(cfg.model).shape)
    n = 4 * d * (1 + 2 * cfg.members) + 12 * d + PER_CYCLE_SMALL
    if cfg.forecaster.name == "vit" and cfg.surrogate.online and cfg.surrogate.checkpoint:
        n += Path(cfg.surrogate.checkpoint).stat().st_size
    return n


def bytes_needed(cfg: DictConfig, done: int) -> int:
    """What the rest of a run writes after ``done`` complete cycles (cycle 0 and the cache included
    when nothing is done yet)."""
    d = math.prod(model_grid(cfg.model).shape)
    first = 8 * d * (cfg.members + 1) if done == 0 else 0  # initial ensemble + truth, and the cache
    return first + (cfg.cycles - done) * bytes_per_cycle(cfg) + PLOTS_AND_LOGS


def check_space(run_dir: str | Path, cfg: DictConfig, done: int) -> None:
    """Refuse a run whose files would not fit on the run directory's file system."""
    need = bytes_needed(cfg, done) + MARGIN
    free = shutil.disk_usage(run_dir).free
    if free < need:
        left = cfg.cycles - done
        raise PreflightError(
            f"run_dir: {run_dir} has {free / 2**20:.1f} MiB free; the run needs about {need / 2**20:.1f} MiB"
            f" ({left} cycles × {bytes_per_cycle(cfg) / 2**20:.2f} MiB, plots and logs): free space or"
            " choose another run_dir"
        )


def check_inputs(cfg: DictConfig) -> None:
    """The files a run reads besides its own: the pre-trained surrogate weights load
    (``forecaster=vit``), checked here rather than after the spin-up."""
    if cfg.forecaster.name != "vit":
        return
    from scoreda.stages.verify import weights_problem

    problem = weights_problem(Path(cfg.surrogate.checkpoint))
    if problem is not None:
        raise ConfigError(
            f"surrogate.checkpoint: {cfg.surrogate.checkpoint}: {problem} (python workflows/pretrain.py"
            " writes one)"
        )
