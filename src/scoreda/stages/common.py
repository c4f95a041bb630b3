"""What every stage shares: the run directory layout, the config, attributes and the CLI."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from scoreda.config import ConfigError, divergence_bound, validate
from scoreda.dynamics import Dynamics, make_dynamics
from scoreda.dynamics.grid import Grid, model_grid, time_coords
from scoreda.io import CheckpointError, config_hash, read_state, write_state, write_text
from scoreda.io.sharded import (
    part_path,
    read_state_slice,
    remove_parts,
    write_state_part,
    write_state_virtual,
)
from scoreda.science import science_keys

# attributes every state file carries (Run.attrs) and a reader checks; newer keys are not required
CHECKED_ATTRS = ("cycle", "kind", "time_hours", "model", "grid", "units", "config_hash", "seed")


def training_threads(cfg, local_world_size: int) -> int:
    """Torch threads of a training process: ``OMP_NUM_THREADS`` where the environment sets it (a shared
    machine: oversubscribed cores slow a step several times over), else the node's cores over its
    ranks, at least ``platform.threads_per_worker``."""
    import os

    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(cfg.platform.threads_per_worker, (os.cpu_count() or 1) // local_world_size)


def cycle_dir(run_dir: str | Path, cycle: int) -> Path:
    return Path(run_dir) / "cycles" / f"{cycle:06d}"


def artefact(run_dir: str | Path, cycle: int, name: str) -> Path:
    """``RUN/cycles/NNNNNN/<name>.h5`` (``scores.json`` for ``name='scores'``)."""
    suffix = ".json" if name == "scores" else ".h5"
    return cycle_dir(run_dir, cycle) / f"{name}{suffix}"


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> DictConfig:
    return validate(OmegaConf.load(path))


def load_config(run_dir: str | Path) -> DictConfig:
    """The validated, resolved config of a run (``RUN/config.yaml``), cached per process."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no config.yaml in the run directory (start the run with workflows/cycle.py)"
        )
    return _load(str(path.resolve()), path.stat().st_mtime)


def write_config(run_dir: str | Path, cfg: DictConfig) -> Path:
    """Write the resolved config as ``RUN/config.yaml``, atomically.

    An existing run directory must hold the same science (``science_keys``): resuming with other
    numbers would mix two experiments, so that is refused with one line naming the file.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if path.is_file():
        old = validate(OmegaConf.load(path))
        if config_hash(science_keys(old)) != config_hash(science_keys(cfg)):
            changed = [k for k, v in science_keys(cfg).items() if science_keys(old)[k] != v]
            raise ValueError(
                f"{path}: the run directory holds another experiment (differs in {', '.join(changed)});"
                " choose a new run_dir"
            )
    write_text(path, OmegaConf.to_yaml(cfg))
    return path


def steps_main(description: str, steps: dict[str, Callable[[str], object]]) -> None:
    """``python -m scoreda.stages.<stage> STEP --out-dir DIR``: run one of ``steps`` on DIR (the
    directory holding config.yaml) and print its dict result as JSON, less the per-step losses."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("step", choices=tuple(steps))
    ap.add_argument("--out-dir", required=True, help="directory holding config.yaml")
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = ap.parse_args()
    out = steps[args.step](args.out_dir)
    if isinstance(out, dict):
        print(json.dumps({k: v for k, v in out.items() if k != "losses"}))


def write_json(path: str | Path, obj) -> None:
    """Atomic JSON write (temporary name, fsync, rename)."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True))


class Run:
    """A run directory with its config: paths, attributes and typed state I/O."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.cfg = load_config(self.dir)
        self.hash = config_hash(science_keys(self.cfg))
        self.shape = self.grid.shape
        torch.set_num_threads(self.cfg.platform.threads_per_worker)

    def path(self, cycle: int, name: str) -> Path:
        return artefact(self.dir, cycle, name)

    def attrs(self, cycle: int, kind: str) -> dict:
        m = self.cfg.model
        return {
            "cycle": cycle,
            "kind": kind,
            "time_hours": cycle * m.cycle_hours,
            "model": m.name,
            "grid": list(self.shape),
            "units": m.units,
            "config_hash": self.hash,
            "seed": self.cfg.seed,
        }

    def _shape(self, kind: str) -> tuple:
        return (1 if kind == "truth" else self.cfg.members, *self.shape)

    def done(self, cycle: int, kind: str, cols: slice | None = None) -> bool:
        """The file of ``kind`` at ``cycle`` exists and validates (``cols``: that slice of it, as
        ``read_slice``); a bad one is noted (``note``) as about to be replaced."""
        problem = self.problem(cycle, kind, cols)
        if problem is not None and problem != MISSING:
            note(f"replacing {self.path(cycle, kind)} ({problem})")
        return problem is None

    def problem(self, cycle: int, kind: str, cols: slice | None = None) -> str | None:
        """What is wrong with the file of ``kind`` (truth, obs, forecast, analysis) at ``cycle``, in
        one line (``MISSING`` when there is none), or None when it validates: shape, dtype, the
        fletcher32 checksums, attributes, finiteness (observations: also their locations)."""
        path = self.path(cycle, kind)
        if not path.is_file():
            return MISSING
        try:
            if kind == "obs":
                from scoreda.stages.nature import read_observations

                read_observations(self, cycle)
            elif cols is not None:
                self.read_slice(cycle, kind, cols)
            else:
                self.read(cycle, kind)
        except CheckpointError as e:  # a part of a virtual file: named
            return e.problem if e.path == str(path) else str(e)
        except (ValueError, OSError) as e:
            return describe(e).removeprefix(f"{path}: ")
        return None

    def read(self, cycle: int, kind: str) -> torch.Tensor:
        """State ``[M, C, H, W]`` of artefact ``kind`` at ``cycle``, validated (shape, hash, finite)."""
        return self.read_with_attrs(cycle, kind)[0]

    def read_with_attrs(self, cycle: int, kind: str) -> tuple[torch.Tensor, dict]:
        """``read`` and the file's attributes."""
        expect = {k: v for k, v in self.attrs(cycle, kind).items() if k in CHECKED_ATTRS}
        state, attrs = read_state(self.path(cycle, kind), shape=self._shape(kind), expect_attrs=expect)
        return torch.from_numpy(state), attrs

    def read_slice(self, cycle: int, kind: str, cols: slice) -> torch.Tensor:
        """The flat state indices ``cols`` of every member of artefact ``kind`` at ``cycle``, [M, d'],
        read by hyperslabs (``io.sharded``) and validated like ``read``."""
        expect = {k: v for k, v in self.attrs(cycle, kind).items() if k in CHECKED_ATTRS}
        part, _ = read_state_slice(self.path(cycle, kind), cols.start, cols.stop, self._shape(kind), expect)
        return torch.from_numpy(part)

    def write(self, cycle: int, kind: str, state: torch.Tensor, **extra) -> None:
        """``state`` with the run's attributes and ``extra`` ones (e.g. the analysis' ``inflation``),
        its coordinates (member, level, level_units, y, x; scalar cycle, time) and CF attributes."""
        coords = self.grid.coords(state.shape[0]) | self.time_coords(cycle)
        attrs = self.attrs(cycle, kind) | extra
        path = self.path(cycle, kind)
        write_state(path, state, attrs, coords=coords, state_attrs=self.grid.state_attrs)
        remove_parts(path)  # of an earlier sharded write

    def write_part(
        self, cycle: int, kind: str, part: torch.Tensor, cols: slice, rank: int, ranks: int
    ) -> Path:
        """Rank ``rank``'s slice ``cols`` [M, d'] of artefact ``kind`` as its part file (atomic)."""
        path = part_path(self.path(cycle, kind), rank, ranks)
        return write_state_part(path, part, cols.start, cols.stop, self.attrs(cycle, kind))

    def write_parts(self, cycle: int, kind: str, parts: list[tuple[Path, int, int]], **extra) -> None:
        """Artefact ``kind`` at ``cycle`` from the ranks' ``parts`` ((file, start, stop), ``write_part``)
        as one file (a virtual dataset over them), attributes and coordinates as ``write``."""
        coords = self.grid.coords(self.cfg.members) | self.time_coords(cycle)
        attrs = self.attrs(cycle, kind) | extra
        shape = self._shape(kind)
        write_state_virtual(self.path(cycle, kind), parts, shape, attrs, coords, self.grid.state_attrs)

    @functools.cached_property
    def grid(self) -> Grid:
        """The model's grid: coordinates, level names and units (built once per Run)."""
        return model_grid(self.cfg.model)

    def time_coords(self, cycle: int) -> dict:
        """Scalar coordinates ``cycle`` and ``time`` (hours since the start of cycling) of ``cycle``."""
        return time_coords(cycle, cycle * self.cfg.model.cycle_hours)


#: the analysis file's attribute listing the filter's diagnostics (``Analysis.diagnostics``)
DIAGNOSTICS = "diagnostics"


@functools.lru_cache(maxsize=4)
def _dynamics(model_yaml: str, device: str) -> Dynamics:
    return make_dynamics(OmegaConf.create(model_yaml), device=device)


def dynamics(run: Run) -> Dynamics:
    """The run's forecast model, built once per process."""
    return _dynamics(OmegaConf.to_yaml(run.cfg.model), run.cfg.device)


def record_time(run: Run, cycle: int, stage: str, t0: float) -> None:
    """Wall time of one stage of one cycle, as ``RUN/timings/<stage>-NNNNNN.json``."""
    write_json(
        run.dir / "timings" / f"{stage}-{cycle:06d}.json",
        {"stage": stage, "cycle": cycle, "seconds": time.perf_counter() - t0},
    )


def main(stage: Callable[..., object], description: str) -> None:
    """``python -m scoreda.stages.<name> --run-dir RUN --cycle K`` for a stage function. A failure is
    one line on stderr (``error: <stage> of cycle K failed: ...``, exit 1); the traceback goes to
    ``RUN/logs/<stage>-NNNNNN.traceback``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--run-dir", required=True, help="run directory holding config.yaml")
    ap.add_argument("--cycle", type=int, required=True, help="cycle number (0 = initialisation)")
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = ap.parse_args()
    try:
        out = call_stage(stage, args.run_dir, args.cycle)
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for line in take_notes():
        print(line, file=sys.stderr)
    if out is not None:
        print(json.dumps(out) if isinstance(out, dict) else out)


# ------------------------------------------------------------------------------ failures, in one line

MISSING = "missing"
_NOTES: list[str] = []  # what a stage said while it ran (``note``), taken by whoever ran it


def note(line: str) -> None:
    """Record one line for the user (e.g. which file a stage replaced and why); ``take_notes`` returns
    them to the workflow, which prints them."""
    _NOTES.append(line)


def take_notes() -> list[str]:
    out = list(_NOTES)
    _NOTES.clear()
    return out


class StageFailed(RuntimeError):
    """A stage failed; ``str(err)`` is one line naming the stage, the cycle and the file, if any.
    Built from a message alone, so that it survives pickling between Parsl's processes."""


def describe(e: BaseException) -> str:
    """One line for any exception: the file and what is wrong with it where known; for a full disk or
    a file system that refuses writes, the path and what was needed."""
    if isinstance(e, CheckpointError):
        return str(e)
    if isinstance(e, OSError) and e.errno is not None:
        where = f"{e.filename}: " if e.filename else ""
        if e.errno == errno.ENOSPC:
            return f"{where}{e.strerror or 'No space left on device'}"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{where}cannot write there ({e.strerror})"
        return f"{where}{e.strerror}"
    text = " ".join(str(e).split())
    if "errno = 28" in text:  # HDF5 reports a full disk as a RuntimeError
        return f"No space left on device ({text[:300]})"
    if isinstance(e, ValueError | OSError | FileNotFoundError) and text:
        return text  # ours name the file first
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def call_stage(stage: Callable[..., object], run_dir, cycle: int):
    """``stage(run_dir, cycle)``; any failure but a deliberate stop (``Diverged``, ``WalltimeStop``) or
    a ``ConfigError`` becomes a ``StageFailed`` line naming the stage and the cycle, the traceback kept in
    ``RUN/logs/<stage>-NNNNNN.traceback``."""
    take_notes()
    try:
        return stage(run_dir, cycle)
    except (Diverged, WalltimeStop, ConfigError):  # said as they are (``config error: <key>: ...``)
        raise
    except Exception as e:
        name = stage.__name__
        try:
            log = Path(run_dir) / "logs" / f"{name}-{cycle:06d}.traceback"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
        except OSError:
            pass  # a full or read-only disk: the line below still says what went wrong
        raise StageFailed(f"{name} of cycle {cycle} failed: {describe(e)}") from None


def run_stage(name: str, run_dir, cycle: int) -> dict:
    """``scoreda.stages.<name>.<name>(run_dir, cycle)`` by ``call_stage``, for a workflow's worker:
    ``{"result": ..., "notes": [lines]}``."""
    import importlib

    stage = getattr(importlib.import_module(f"scoreda.stages.{name}"), name)
    result = call_stage(stage, run_dir, cycle)
    return {"result": result, "notes": take_notes()}


class Diverged(RuntimeError):
    """The analysis error has left any sensible range (``divergence``): the run stops, not retried."""


def check_divergence(run: Run, cycle: int, rmse_analysis: float, sigma: float) -> None:
    """Raise ``Diverged`` when ``rmse_analysis`` > ``divergence`` × σ, σ the std of the truth over its
    values (``scores.json``'s ``truth_std``: the error of a guess of the field's mean).
    A free ensemble stays within ≈ 3σ (docs/results.md); a diverged filter passes 5σ within a few
    cycles and then grows without bound. A free run (``filter=none``) is never stopped."""
    factor = divergence_bound(run.cfg)
    if factor is None:
        return
    if not rmse_analysis <= factor * sigma:  # NaN too
        raise Diverged(
            f"cycle {cycle}: analysis RMSE {rmse_analysis:.4g} {run.cfg.model.units} > divergence={factor:g}"
            f" × the truth's std {sigma:.4g}: the filter has diverged, run stopped (scores so far in"
            f" {run.dir}/cycles/*/scores.json; divergence=null lets it go on)"
        )


def check_scored(run: Run, scores: list[dict]) -> None:
    """``check_divergence`` on cycles scored before (a resumed run; scores without ``truth_std``,
    written before it was kept, are not checked)."""
    for s in scores:
        if "truth_std" in s:
            check_divergence(run, s["cycle"], s["rmse_analysis"], s["truth_std"])


class WalltimeStop(RuntimeError):
    """The allocation ends before the next cycle could finish; rerun the same command to continue."""


def read_timings(run_dir: str | Path) -> list[dict]:
    """Every ``record_time`` entry of the run: ``{"stage", "cycle", "seconds"}``, in file-name order."""
    return [json.loads(f.read_text()) for f in sorted(Path(run_dir, "timings").glob("*.json"))]


def recorded_cycle_seconds(run_dir: str | Path) -> float:
    """The longest cycle so far by the stage timings of ``RUN/timings/`` (forecast + analysis + train
    of one cycle; the nature run goes ahead of them), 0 when none is recorded."""
    per_cycle: dict[int, float] = {}
    for t in read_timings(run_dir):
        if t["stage"] in ("forecast", "analysis", "train"):
            per_cycle[t["cycle"]] = per_cycle.get(t["cycle"], 0.0) + t["seconds"]
    return max(per_cycle.values(), default=0.0)


def walltime_gate(
    run_dir: str, cycle: int, end_time: float, margin: float, previous: float | None, floor: float = 0.0
) -> float:
    """Admit ``cycle`` if it is complete already, or if now + estimate + ``margin`` ≤ ``end_time``;
    else raise ``WalltimeStop``. The estimate is the longest of: the cycles recorded in the run,
    now − ``previous`` (the time the previous gate passed: a whole cycle's wall time in this
    process), and ``floor``. Returns this gate's time."""
    now = time.time()
    if artefact(run_dir, cycle, "scores").exists():
        return now  # done in an earlier job: its stages only check their files
    estimate = max(recorded_cycle_seconds(run_dir), now - previous if previous else 0.0, floor)
    if now + estimate + margin > end_time:
        raise WalltimeStop(
            f"cycle {cycle} not started: {end_time - now:.0f} s left, a cycle takes up to {estimate:.0f} s"
            f" + {margin:.0f} s margin"
        )
    return now


def completed_cycles(run_dir: str | Path, cycles: int) -> list[dict]:
    """The scores of cycles 1, 2, … that are complete (``cycles/NNNNNN/scores.json`` of this config,
    written last by ``evaluate`` after the cycle's analysis and training), up to the first that is not."""
    run, done = Run(run_dir), []
    for k in range(1, cycles + 1):
        try:
            scores = json.loads(run.path(k, "scores").read_text())
        except (OSError, ValueError):
            break
        if scores.get("config_hash") != run.hash:
            break
        done.append(scores)
    return done
