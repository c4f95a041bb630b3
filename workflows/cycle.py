"""The cycled OSSE as a Parsl DAG, configured by Hydra.

    python workflows/cycle.py experiment=quickstart cycles=10 run_dir=/tmp/r1 filter=ensf

Cycle k: nature(k) (truth + observations, runs ahead), forecast(k) after analysis(k−1),
analysis(k) after forecast(k) and nature(k), evaluate(k) after analysis(k). With
``forecaster=vit surrogate.online=true``, train(k) (fine-tuning, ``parallel.ranks`` processes by
``parallel.launcher``, logs in ``RUN/logs/train-NNNNNN.*``) follows analysis(k) and train(k−1), and
forecast(k) waits for train(k − 1 − ``surrogate.lag``). With
``filter.ranks`` > 1 the analysis is an MPI job, ``{platform.mpi_launcher} -n R python -m
scoreda.stages.analysis ...`` (its output in ``RUN/logs/analysis-NNNNNN.{out,err}``). Futures are chained
over all cycles before anything is awaited. Every stage skips itself when its outputs exist and
validate, so re-running the same command resumes an interrupted run.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import hydra
import parsl
from omegaconf import DictConfig
from parsl import bash_app, python_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))
# Parsl's interchange and worker pool (and mpiexec) are scripts beside this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from platforms import launch_command, parsl_config, precheck_groups, run_validated  # noqa: E402

from scoreda.stages.common import write_config  # noqa: E402
from scoreda.stages.evaluate import summary_lines  # noqa: E402
from scoreda.tracking import Tracker  # noqa: E402


@python_app
def stage_app(stage, run_dir, cycle, inputs=()):
    """One stage of one cycle in a Parsl worker: ``scoreda.stages.<stage>.<stage>(run_dir, cycle)``."""
    import importlib

    return getattr(importlib.import_module(f"scoreda.stages.{stage}"), stage)(run_dir, cycle)


@bash_app
def analysis_mpi_app(command, inputs=(), stdout=None, stderr=None):
    return command


def analysis_command(cfg: DictConfig, run_dir: str, cycle: int) -> str:
    """The analysis stage on ``filter.ranks`` MPI ranks, launched by ``platform.mpi_launcher``."""
    stage = [sys.executable, "-m", "scoreda.stages.analysis", "--run-dir", run_dir, "--cycle", str(cycle)]
    return f"{cfg.platform.mpi_launcher} -n {cfg.filter.ranks} {shlex.join(stage)}"


def analysis_future(cfg: DictConfig, run_dir: str, cycle: int, inputs):
    """analysis(k): in a Parsl worker, or as an MPI job when ``filter.ranks`` > 1."""
    if cfg.filter.ranks == 1:
        return stage_app("analysis", run_dir, cycle, inputs=inputs)
    log = Path(run_dir) / "logs" / f"analysis-{cycle:06d}"
    return analysis_mpi_app(
        analysis_command(cfg, run_dir, cycle), inputs=inputs, stdout=f"{log}.out", stderr=f"{log}.err"
    )


@bash_app
def train_app(command, inputs=(), stdout=None, stderr=None):
    return command


def train_future(cfg: DictConfig, run_dir: str, cycle: int, inputs):
    """train(k): online fine-tuning on ``parallel.ranks`` processes started by ``parallel.launcher``."""
    args = ["--run-dir", run_dir, "--cycle", str(cycle)]
    command = launch_command(cfg, "scoreda.stages.train", args, cfg.parallel.ranks)
    log = Path(run_dir) / "logs" / f"train-{cycle:06d}"
    return train_app(command, inputs=inputs, stdout=f"{log}.out", stderr=f"{log}.err")


@python_app
def report_app(run_dir, cycles, inputs=()):
    from scoreda.stages.evaluate import report

    return report(run_dir, cycles)


def build_dag(cfg: DictConfig, run_dir: str, cycles: int):
    """Chain the futures of every cycle; returns (evaluate futures, report future)."""
    truth = stage_app("nature", run_dir, 0)
    ensemble = truth  # cycle 0 writes the initial ensemble too
    online = cfg.forecaster.name == "vit" and cfg.surrogate.online
    trained = {}  # cycle -> train future (online fine-tuning)
    scores = []
    for k in range(1, cycles + 1):
        truth = stage_app("nature", run_dir, k, inputs=[truth])
        weights = [trained[j]] if (j := k - 1 - cfg.surrogate.lag) in trained else []
        fc = stage_app("forecast", run_dir, k, inputs=[ensemble, *weights])
        ensemble = analysis_future(cfg, run_dir, k, inputs=[fc, truth])
        if online:  # train(k) after analysis(k) and train(k−1); overlaps forecast(k+1) when lag = 1
            previous = [trained[k - 1]] if k > 1 else []
            trained[k] = train_future(cfg, run_dir, k, inputs=[ensemble, *previous])
        done = [ensemble, *([trained[k]] if online else [])]
        scores.append(stage_app("evaluate", run_dir, k, inputs=done))
    return scores, report_app(run_dir, cycles, inputs=scores)


def run(cfg: DictConfig) -> dict:
    run_dir = str(Path(cfg.run_dir).resolve())
    write_config(run_dir, cfg)
    tracker = Tracker(cfg, run_dir)
    t0 = time.perf_counter()
    with parsl.load(parsl_config(cfg, run_dir)):
        scores, final = build_dag(cfg, run_dir, cfg.cycles)
        progress = _progress(cfg)
        for fut in scores:  # log in cycle order as results arrive
            s = fut.result()
            tracker.log(s)
            progress(s)
        summary = final.result()
    parsl.clear()
    summary["wall_seconds_total"] = time.perf_counter() - t0
    tracker.finish(summary)
    _print_summary(cfg, run_dir, summary)
    return summary


def _progress(cfg):
    if not cfg.progress:
        return lambda s: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]cycles"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
    task = bar.add_task("cycles", total=cfg.cycles, info="")
    bar.start()
    u = cfg.model.units

    def update(s):
        bar.update(task, advance=1, info=f"RMSE fc {s['rmse_forecast']:.3f} an {s['rmse_analysis']:.3f} {u}")
        if s["cycle"] == cfg.cycles:
            bar.stop()

    return update


def _print_summary(cfg, run_dir, summary):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.experiment_name}: time means over cycles {summary['scored_cycles']}")
    table.add_column("score")
    table.add_column("value", justify="right")
    for label, value in summary_lines(summary):
        table.add_row(label, value)
    table.add_row("wall time", f"{summary['wall_seconds_total']:.1f} s")
    console = Console()
    console.print(table)
    console.print(f"outputs: {run_dir}/ (metrics.csv, summary.json, plots/*.png, cycles/NNNNNN/*.h5)")


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_validated(run, cfg)


if __name__ == "__main__":
    precheck_groups(ROOT / "configs", sys.argv[1:])
    main()
