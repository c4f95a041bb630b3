"""The ``platform`` and ``scaling`` sections: where the stages run and one point of a scaling study;
keys, defaults and each one's own checks (``__post_init__``, one line naming the key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from scoreda.filters import registry
from scoreda.validation import require


def end_time_seconds(value: str | float | int | None) -> float | None:
    """Unix seconds of ``platform.end_time``: a number, or an ISO time (naive = local time, as squeue
    prints it); None for None, ``auto``, ``NONE``/``Unknown`` (no limit) or anything unreadable."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return datetime.fromisoformat(str(value).strip()).timestamp()
    except ValueError:
        return None


@dataclass
class PlatformParams:
    """Where the stages run (``configs/platform/``): this machine or a Slurm cluster (any, or Frontier)."""

    name: str = "local"  # local | slurm | frontier
    workers: int = 2  # Parsl workers (stages that may run at the same time)
    threads_per_worker: int = 1  # torch threads in each stage
    retries: int = 0  # Parsl re-runs of a failed stage (a walltime stop is never retried)
    lost_after_s: float = 120.0  # tasks waiting this long with no worker pool connected: lost, an error
    address: str | None = "127.0.0.1"  # where workers reach the interchange; None: this host's name
    mpi_launcher: str = "mpiexec"  # MPI stages: `mpiexec` command prefix (local) or `srun`
    # Slurm (platform slurm/frontier); every site-specific value comes from here or an override.
    provider: str = "auto"  # auto | allocation (inside sbatch/salloc) | submit (SlurmProvider blocks)
    ranks_per_node: int = 1  # MPI ranks a node (Frontier: 8, one per GCD); nodes = ceil(ranks / this)
    cpus_per_task: int = 1  # cores per MPI rank
    srun_options: str = ""  # extra srun flags of every MPI stage (GPU binding, --mpi=...)
    nodes: int = 1  # nodes of a submitted block (provider=submit)
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    walltime: str = "01:00:00"  # of a submitted block
    scheduler_options: str = ""  # extra `#SBATCH` lines of a submitted block
    env_script: str | None = None  # sourced by a submitted block's workers (repo-relative or absolute)
    python: str | None = None  # how job steps start Python (container: `apptainer exec ... python3`)
    end_time: str | None = None  # allocation end (unix seconds, ISO time, or auto = ask squeue)
    stop_margin_s: float = 60.0  # a cycle starts only if its estimate + this fits before end_time
    min_cycle_s: float = 0.0  # floor of a cycle's estimate (before one is measured in this run)

    def __post_init__(self) -> None:
        require(
            self.name in ("local", "slurm", "frontier"),
            "platform.name",
            f"unknown platform {self.name!r} (expected local, slurm or frontier)",
        )
        require(
            self.provider in ("auto", "allocation", "submit"),
            "platform.provider",
            f"expected auto, allocation or submit, got {self.provider!r}",
        )
        require(
            self.name != "local" or self.mpi_launcher != "srun",
            "platform.mpi_launcher",
            "srun needs a Slurm platform (platform=slurm or platform=frontier)",
        )
        for key in ("ranks_per_node", "cpus_per_task", "nodes"):
            require(getattr(self, key) >= 1, f"platform.{key}", f"must be ≥ 1, got {getattr(self, key)}")
        require(self.stop_margin_s >= 0, "platform.stop_margin_s", f"must be ≥ 0, got {self.stop_margin_s}")
        require(self.min_cycle_s >= 0, "platform.min_cycle_s", f"must be ≥ 0, got {self.min_cycle_s}")
        require(
            self.end_time in (None, "auto") or end_time_seconds(self.end_time) is not None,
            "platform.end_time",
            f"expected unix seconds, an ISO time or auto, got {self.end_time!r}",
        )
        require(self.workers >= 1, "platform.workers", f"must be ≥ 1, got {self.workers}")
        require(
            self.threads_per_worker >= 1,
            "platform.threads_per_worker",
            f"must be ≥ 1, got {self.threads_per_worker}",
        )
        require(self.retries >= 0, "platform.retries", f"must be ≥ 0, got {self.retries}")
        require(self.lost_after_s > 0, "platform.lost_after_s", f"must be positive, got {self.lost_after_s}")


@dataclass
class ScalingParams:
    """One point of a scaling study (``workflows/scaling.py``, ``configs/experiment/scaling_*.yaml``)."""

    study: str = "analysis"  # analysis: a filter's weak scaling, state per rank fixed | training: ViT
    filter: str | None = None  # analysis: the filter timed (a name of filter=; configs/config.yaml sets it)
    ranks: int = 1  # MPI ranks / training processes (devices); nodes = ceil(ranks / ranks_per_node)
    per_rank: int = 100_000  # analysis: state dimension per rank (dimension = per_rank × ranks)
    n_steps: int = 100  # analysis: pseudo-time steps of one analysis (score filters)
    repeats: int = 3  # analysis: timed analyses (median)
    batch_per_rank: int = 4  # training: samples per rank and step (global batch = this × ranks)
    steps: int = 5  # training: timed optimiser steps (median), after `warmup`
    warmup: int = 2
    gpu: bool = False  # training: bf16 + flash attention on the node's GPUs
    submit: str = "local"  # local: measure now | sbatch: one job per point (--dry-run prints it)
    dry_run: bool = False
    time: str = "00:30:00"  # sbatch: time limit of a job
    collect: bool = False  # gather OUT/points/*.json into OUT/scaling.{json,md} and plots
    out_dir: str = "runs/scaling/default"

    def __post_init__(self) -> None:
        require(
            self.study in ("analysis", "training"),
            "scaling.study",
            f"expected analysis or training, got {self.study!r}",
        )
        timed = [f for f in registry() if f != "none"]
        ok = self.filter is None or self.filter in timed  # None: workflows/scaling.py asks for it
        require(ok, "scaling.filter", f"expected one of {', '.join(timed)}, got {self.filter!r}")
        require(
            self.submit in ("local", "sbatch"),
            "scaling.submit",
            f"expected local or sbatch, got {self.submit!r}",
        )
        for key in ("ranks", "per_rank", "n_steps", "repeats", "batch_per_rank", "steps"):
            require(getattr(self, key) >= 1, f"scaling.{key}", f"must be ≥ 1, got {getattr(self, key)}")
