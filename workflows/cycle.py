"""The cycled OSSE as a Parsl DAG, configured by Hydra.

    python workflows/cycle.py experiment=quickstart cycles=10 run_dir=/tmp/r1

Cycle k: nature(k) (truth + observations, runs ahead), forecast(k) after analysis(k−1),
analysis(k) after forecast(k) and nature(k), evaluate(k) after analysis(k). With
``forecaster=vit surrogate.online=true``, train(k) (fine-tuning, ``parallel.ranks`` processes by
``parallel.launcher``, logs in ``RUN/logs/train-NNNNNN.*``) follows analysis(k) and train(k−1), and
forecast(k) waits for train(k − 1 − ``surrogate.lag``). With
``filter.ranks`` > 1 the analysis is an MPI job, ``{platform.mpi_launcher} -n R python -m
scoreda.stages.analysis ...`` here or an ``srun`` job step on Slurm platforms (its output in
``RUN/logs/analysis-NNNNNN.{out,err}``). Futures are chained over all cycles before anything is
awaited. Every stage skips itself when its outputs exist and validate, so re-running the same
command resumes an interrupted run (complete cycles, those with ``scores.json``, are not even
launched again). Inside a Slurm allocation (``platform.end_time=auto``) a cycle
starts only if it can finish before the job ends; otherwise the workflow exits with status 75 and
``slurm/*.sbatch`` resubmits itself to continue. With ``divergence`` set, forecast(k) also waits for
evaluate(k − 1 − ``surrogate.lag``) (nothing it did not wait for already), so once an analysis error
passes the bound the run stops a cycle or two later with exit status 1.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import hydra
import parsl
from omegaconf import DictConfig
from parsl import bash_app, python_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))
# Parsl's interchange and worker pool (and mpiexec) are scripts beside this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from platforms import (  # noqa: E402
    allocation_end,
    launch_command,
    mpi_command,
    parsl_config,
    precheck_overrides,
    run_validated,
)
from watchdog import Tasks, Watchdog, WorkflowError, wait  # noqa: E402

from scoreda.config import ConfigError, divergence_bound  # noqa: E402
from scoreda.stages import preflight  # noqa: E402
from scoreda.stages.common import (  # noqa: E402
    MISSING,
    Diverged,
    Run,
    WalltimeStop,
    check_scored,
    completed_cycles,
    write_config,
)
from scoreda.stages.evaluate import short_run_note, summary_lines  # noqa: E402
from scoreda.stages.verify import set_aside, verify_complete  # noqa: E402
from scoreda.tracking import Tracker  # noqa: E402

EXIT_WALLTIME = 75  # EX_TEMPFAIL: stopped before the allocation's end, not finished; resubmit


@python_app
def stage_app(stage, run_dir, cycle, inputs=()):
    """One stage of one cycle in a Parsl worker (``scoreda.stages.common.run_stage``): its result and
    notes, or one ``StageFailed`` line."""
    from scoreda.stages.common import run_stage

    return run_stage(stage, run_dir, cycle)


@bash_app
def analysis_mpi_app(command, inputs=(), stdout=None, stderr=None):
    return command


def analysis_future(cfg: DictConfig, run_dir: str, cycle: int, inputs, tasks: Tasks, replaces=()):
    """analysis(k): in a Parsl worker, or as an MPI job of ``filter.ranks`` ranks (``mpi_command``:
    ``mpiexec`` here, an ``srun`` job step on Slurm) when ``filter.ranks`` > 1."""
    if cfg.filter.ranks == 1:
        fut = stage_app("analysis", run_dir, cycle, inputs=inputs)
        return tasks.add("analysis", cycle, fut, None, replaces)
    args = ["--run-dir", run_dir, "--cycle", str(cycle)]
    command = mpi_command(cfg, "scoreda.stages.analysis", args, cfg.filter.ranks)
    log = Path(run_dir) / "logs" / f"analysis-{cycle:06d}"
    fut = analysis_mpi_app(command, inputs=inputs, stdout=f"{log}.out", stderr=f"{log}.err")
    return tasks.add("analysis", cycle, fut, Path(f"{log}.err"), replaces)


@python_app
def gate_app(run_dir, cycle, end_time, margin, previous, floor, inputs=()):
    """Walltime gate of cycle k (``scoreda.stages.common.walltime_gate``); forecast(k) waits for it."""
    from scoreda.stages.common import walltime_gate

    return walltime_gate(run_dir, cycle, end_time, margin, previous, floor)


@bash_app
def train_app(command, inputs=(), stdout=None, stderr=None):
    return command


def train_future(cfg: DictConfig, run_dir: str, cycle: int, inputs, tasks: Tasks, replaces=()):
    """train(k): online fine-tuning on ``parallel.ranks`` processes started by ``parallel.launcher``."""
    args = ["--run-dir", run_dir, "--cycle", str(cycle)]
    command = launch_command(cfg, "scoreda.stages.train", args, cfg.parallel.ranks)
    log = Path(run_dir) / "logs" / f"train-{cycle:06d}"
    fut = train_app(command, inputs=inputs, stdout=f"{log}.out", stderr=f"{log}.err")
    return tasks.add("train", cycle, fut, Path(f"{log}.err"), replaces)


@python_app
def report_app(run_dir, cycles, inputs=()):
    from scoreda.stages.evaluate import report

    return report(run_dir, cycles)


def repair(cfg: DictConfig, run_dir: str, bad, tasks: Tasks):
    """Remake the bad files of complete cycles (``scoreda.stages.verify``), one stage after another in
    cycle order, so that every input is good when it is read; returns the last future (None: none)."""
    last, groups = None, {}
    for b in bad:  # truth and obs of one cycle are both remade by nature(k): one task
        groups.setdefault((b.cycle, b.stage), []).append(b)
    for (k, stage), files in groups.items():
        inputs = [last] if last is not None else []
        if stage == "analysis":
            last = analysis_future(cfg, run_dir, k, inputs, tasks, files)
        elif stage == "train":
            last = train_future(cfg, run_dir, k, inputs, tasks, files)
        else:
            last = tasks.add(stage, k, stage_app(stage, run_dir, k, inputs=inputs), None, files)
    return last


def build_dag(cfg: DictConfig, run_dir: str, cycles: int, end_time=None, done=(), bad=(), tasks=None):
    """Chain the futures of every cycle after ``done`` (the scores of the complete cycles 1, 2, …,
    launched no more), after the repairs of ``bad`` files; returns (evaluate futures, walltime gates,
    report future). Every future is registered in ``tasks`` with its stage and cycle.

    With an ``end_time`` (the allocation's end), forecast(k) also waits for a gate that lets cycle k
    start only if it can finish in time; a refused gate fails cycle k and everything after it.
    """
    tasks = tasks if tasks is not None else Tasks()
    scores, gates = [_resolved(s) for s in done], []
    repaired = repair(cfg, run_dir, [b for b in bad if b.cycle <= len(done) and done], tasks)
    if done:
        truth = repaired
    else:  # nature(0) remakes cycle 0's bad files itself (missing ones: not made yet)
        zero = [b for b in bad if b.cycle == 0 and b.problem != MISSING]
        truth = tasks.add("nature", 0, stage_app("nature", run_dir, 0), None, zero)
    ensemble = truth  # cycle 0 writes the initial ensemble too
    online = cfg.forecaster.name == "vit" and cfg.surrogate.online
    trained = {}  # cycle -> train future (online fine-tuning)
    for k in range(len(done) + 1, cycles + 1):
        fut = stage_app("nature", run_dir, k, inputs=[truth] if truth else [])
        truth = tasks.add("nature", k, fut)
        waits = [trained[j]] if (j := k - 1 - cfg.surrogate.lag) in trained else []
        if divergence_bound(cfg) is not None and j >= 1:  # evaluate(j) needs nothing forecast(k) does not
            waits.append(scores[j - 1])
        if end_time is not None:
            previous = gates[-1] if gates else None
            done_before = [f for f in (ensemble, trained.get(k - 1)) if f is not None]
            margin, floor = cfg.platform.stop_margin_s, cfg.platform.min_cycle_s
            gates.append(gate_app(run_dir, k, end_time, margin, previous, floor, inputs=done_before))
            waits.append(tasks.add("walltime gate", k, gates[-1]))
        fut = stage_app("forecast", run_dir, k, inputs=[f for f in (ensemble, *waits) if f is not None])
        fc = tasks.add("forecast", k, fut)
        ensemble = analysis_future(cfg, run_dir, k, [fc, truth], tasks)
        if online:  # train(k) after analysis(k) and train(k−1); overlaps forecast(k+1) when lag = 1
            previous = [trained[k - 1]] if k - 1 in trained else []  # none: done in an earlier run
            previous += [repaired] if repaired is not None and k == len(done) + 1 else []
            trained[k] = train_future(cfg, run_dir, k, [ensemble, *previous], tasks)
        after = [ensemble, *([trained[k]] if online else [])]
        scores.append(tasks.add("evaluate", k, stage_app("evaluate", run_dir, k, inputs=after)))
    final = report_app(run_dir, cycles, inputs=[*scores, *([repaired] if repaired is not None else [])])
    return scores, gates, tasks.add("report", cycles, final)


def _resolved(value) -> Future:
    f = Future()
    f.set_result({"result": value, "notes": []})
    return f


def _no_retry_on_stops(e: Exception, task_record) -> float:
    """Parsl retry cost: a walltime stop or a divergence is final (retrying would burn the retries),
    others cost 1."""
    return float("inf") if isinstance(e, WalltimeStop | Diverged) else 1.0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def fail(message: str, code: int = 1):
    say(f"error: {message}")
    sys.exit(code)


def prepare(cfg: DictConfig, run_dir: str):
    """Everything before the DAG, each failure one line before any work: the surrogate's weights load,
    the run directory is writable and holds this experiment, the run fits on its disk; then the files of
    the complete cycles are validated and the bad ones set aside. Returns (done scores, bad files)."""
    try:
        preflight.check_inputs(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        preflight.check_writable(run_dir)
        write_config(run_dir, cfg)
    except preflight.PreflightError as e:
        fail(str(e), 2)
    except ValueError as e:  # another experiment's run directory
        fail(f"run_dir: {e}", 2)
    except OSError as e:
        fail(f"run_dir: cannot write {e.filename or run_dir} ({e.strerror})", 2)
    t0 = time.perf_counter()
    bad, n_done = verify_complete(run_dir, cfg.cycles)
    if n_done:
        say(
            f"checked the files of {n_done} complete cycle(s) in {time.perf_counter() - t0:.1f} s:"
            f" {len(bad) or 'none'} to remake"
        )
    set_aside(bad)
    done = completed_cycles(run_dir, cfg.cycles)  # a resumed run starts after them
    try:
        preflight.check_space(run_dir, cfg, len(done))
    except preflight.PreflightError as e:
        fail(str(e))
    if (note := short_run_note(cfg.burn_in, cfg.cycles)) is not None:
        say(note)
    return done, bad


def run(cfg: DictConfig) -> dict:
    """Run (or resume) the cycle. Exits with ``EXIT_WALLTIME`` after the last cycle that fits before
    the allocation's end (``platform.end_time``); the same command continues the run. Any failure ends
    it with one line naming the stage, the cycle and the file (exit 1), never a wait."""
    run_dir = str(Path(cfg.run_dir).resolve())
    if cfg.cache_dir:
        cfg.cache_dir = str(Path(cfg.cache_dir).resolve())  # the workers' working directory may differ
    done, bad = prepare(cfg, run_dir)
    try:  # a run stopped by ``divergence`` stops again at once, not a cycle later
        check_scored(Run(run_dir), done)
    except Diverged as e:
        print(f"diverged: {e}", file=sys.stderr)
        sys.exit(1)
    tracker = Tracker(cfg, run_dir, group=sweep_group(cfg))
    t0 = time.perf_counter()
    end_time = allocation_end(cfg)
    stop, diverged, error, logged = None, None, None, 0
    with parsl.load(parsl_config(cfg, run_dir, retry_handler=_no_retry_on_stops)) as dfk:
        tasks = Tasks()
        scores, gates, final = build_dag(cfg, run_dir, cfg.cycles, end_time, done, bad, tasks)
        dog = Watchdog(dfk, cfg.platform.lost_after_s)
        progress = _progress(cfg)
        try:
            for fut in scores:  # log in cycle order as results arrive
                s = wait(fut, tasks, dog, say)["result"]
                tracker.log(s)
                progress(s)
                logged += 1
            summary = wait(final, tasks, dog, say)
        except Diverged as e:
            diverged = e
        except WalltimeStop as e:
            stop = e
        except WorkflowError as e:
            error = e
        if stop or diverged or error:  # the failed cycles' dependants fail in Parsl callbacks at shutdown
            progress(None)
            logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL)
    parsl.clear()
    if error:
        tracker.finish()
        fail(str(error))
    if diverged:
        tracker.finish()
        print(f"diverged: {diverged}", file=sys.stderr)
        sys.exit(1)
    if stop:
        tracker.finish()
        if logged <= len(done):  # no new cycle: a resubmission would stop the same way
            print(f"walltime: {stop}; no cycle fits in this allocation, ask for more time", file=sys.stderr)
            sys.exit(1)
        print(f"walltime: {stop}; run the same command to continue ({run_dir})", file=sys.stderr)
        sys.exit(EXIT_WALLTIME)
    summary["wall_seconds_total"] = time.perf_counter() - t0
    where = tracker.finish(summary)
    _print_summary(cfg, run_dir, summary)
    if where is not None:
        print(f"W&B offline run: {where}\n  upload it with: wandb sync {where}")
    return summary


def sweep_group(cfg: DictConfig) -> str | None:
    """W&B group of a Hydra multirun: ``<experiment>-sweep-<sweep directory>``; None for one run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return f"{cfg.experiment_name}-sweep-{Path(HydraConfig.get().sweep.dir).name}"


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

    def update(s):  # None: the run stops here
        if s is not None:
            info = f"RMSE fc {s['rmse_forecast']:.3f} an {s['rmse_analysis']:.3f} {u}"
            bar.update(task, advance=1, info=info)
        if s is None or s["cycle"] == cfg.cycles:
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
    print(f"outputs: {run_dir}/ (metrics.csv, summary.json, plots/*.png, cycles/NNNNNN/*.h5)")
    print(f"  as data: scoreda.open_run({run_dir!r}, 'analysis'), scoreda.open_metrics({run_dir!r})")


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_validated(run, cfg)


if __name__ == "__main__":
    precheck_overrides(ROOT / "configs", sys.argv[1:])
    main()
