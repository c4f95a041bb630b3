"""Structured configs (dataclasses) and the validation that runs before any work starts.

Hydra composes YAML from ``configs/``; ``validate(cfg)`` merges each section onto its dataclass
schema (types, unknown keys) and checks the values, raising ``ConfigError`` — one line naming the
key — on the first problem.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scoreda.dynamics import model_params, model_science
from scoreda.dynamics import registry as dynamics_registry
from scoreda.dynamics.grid import model_grid
from scoreda.filters import LAUNCH_KEYS, config_fields, make_filter, registry
from scoreda.filters.sharding import SHARDS
from scoreda.observations import ObservationParams


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is ``"<key>: <what is wrong>"``."""


@dataclass
class ModelCommon:
    name: str = "?"  # set per model by _model_schema
    cycle_hours: float = 12.0  # model hours between observation times (one DA cycle)
    spinup_cycles: int = 200  # free cycles before the nature run and the climatology start
    member_spacing_cycles: int = 10  # initial members: states this far apart on one long run
    units: str = "K"


def _model_schema(name: str, params: type) -> type:
    """Schema of ``model=<name>``: the common keys plus the model's own parameter dataclass
    (defaults stay in one place, the dynamics module)."""
    hints = get_type_hints(ModelCommon) | get_type_hints(params)
    defaults = {f.name: f.default for f in fields(ModelCommon)} | {f.name: f.default for f in fields(params)}
    defaults["name"] = name
    spec = [(k, hints[k], field(default=v)) for k, v in defaults.items()]
    return make_dataclass(f"{params.__name__}Config", spec)


MODELS = {name: _model_schema(name, params) for name, (params, _) in dynamics_registry().items()}


def model_config(name: str, **keys) -> DictConfig:
    """The ``model=<name>`` section with its defaults and ``keys`` set (typed, like ``validate``'s)."""
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r} (expected {', '.join(MODELS)})")
    return _merge(MODELS[name], keys, "model")


def _filter_schema(name: str, cls: type) -> type:
    """Schema of ``filter=<name>``: the launch keys (name, ranks, shard), then the filter class's own
    config fields with their defaults (``filters.config_fields``; the class is the one place)."""
    spec = [
        ("name", str, field(default=name)),
        ("ranks", int, field(default=1)),
        ("shard", str, field(default="members")),
    ]
    for f in config_fields(cls):
        if f.name not in LAUNCH_KEYS:
            spec.append(
                (f.name, eval(f.type, {}) if isinstance(f.type, str) else f.type, field(default=f.default))
            )
    return make_dataclass(f"{cls.__name__}Config", spec)


#: ``filter=<name>`` -> its schema, also registered with Hydra as ``filter/<name>_schema`` (the
#: ``defaults`` of ``configs/filter/<name>.yaml``)
FILTERS = {name: _filter_schema(name, cls) for name, cls in registry().items()}
for _name, _schema in FILTERS.items():
    ConfigStore.instance().store(group="schema/filter", name=_name, node=_schema)

#: keys (and defaults) of the one filter schema before issue 17; a section written then holds them
#: all, whatever its filter; ``validate`` drops those its filter lacks, ``science_keys`` fills them in
#: so that every run keeps its hash
LEGACY_FILTER_KEYS = {
    "rtps": 0.0,
    "inflation": 1.0,
    "adaptive_inflation": False,
    "n_steps": 100,
    "prior_score": "paired",
    "eps_alpha": 0.05,
    "eps_beta": 0.5,
    "t_end": 0.0,
    "implicit": True,
    "unobserved": "regress",
    "rtps_unobserved": 0.5,
    "standardise": "point",
    "cap_spread": False,
    "cutoff": 2000.0,
    "cross_level": 1.0,
    "rtpp": 0.0,
}


@dataclass
class Shocks:
    """Model error unknown to the forecast model: Gaussian noise added to the truth."""

    fraction: float = 0.0  # share of cycles shocked (each cycle independently, from the seed)
    std: list[float] = field(default_factory=lambda: [5.0, 4.0, 3.0, 2.0])  # used in turn [units]


@dataclass
class Forecaster:
    name: str = "physics"  # physics | vit (the `surrogate` section)


@dataclass
class Surrogate:
    """The ViT surrogate of DESIGN.md (seed 002, Table II; the authors' public code for the extras):
    architecture, the optimiser shared by pre-training and online fine-tuning, and the cycle keys."""

    name: str = "vit_tiny"
    img_size: int = 64  # H = W of the state (model.N for SQG)
    channels: int = 2  # levels of the state
    patch: int = 4
    embed_dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path: float = 0.0
    head_depth: int = 2  # hidden Linear(D, D) + GELU layers before the output projection
    level_aggregation: bool = True  # one patch embedding per level, merged by one cross-attention
    residual: bool = True  # predict x(t+12 h) − x(t)
    step_hours: float | None = None  # hours of one ViT step (null: model.cycle_hours); a cycle is
    # cycle_hours / step_hours steps rolled out
    # optimiser (AdamW, linear warm-up then cosine decay to min_lr)
    lr: float = 5e-4
    min_lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1e-5
    warmup_steps: int = 50
    batch_size: int = 8  # global samples per optimiser step (over ranks and accumulation)
    grad_accum: int = 1  # micro-batches per optimiser step on each rank
    # the cycle
    checkpoint: str | None = None  # consolidated weights from workflows/pretrain.py (forecaster=vit)
    online: bool = False  # fine-tune every cycle on recent analysis pairs
    lag: int = 0  # 1: forecast(k+1) uses the weights of cycle k−1, so training overlaps it
    replay: int = 4  # cycles of analysis pairs (analysis(j−1)[i] → analysis(j)[i]) in the window
    finetune_steps: int = 10  # optimiser steps per cycle
    finetune_lr: float = 1e-4  # constant learning rate of online fine-tuning


@dataclass
class Pretrain:
    """Offline pre-training of the surrogate on a nature-run trajectory (workflows/pretrain.py)."""

    out_dir: str = "runs/pretrain/vit_tiny"  # trajectory.h5, weights.pt, report.json
    trajectories: int = 16  # independent nature runs, made in one batch
    held_out: int = 2  # of them, kept for evaluation only
    length: int = 160  # cycles per trajectory: states model.cycle_hours apart (length − 1 pairs each)
    frame_hours: float | None = 1.0  # hours between stored frames (None: model.cycle_hours)
    decorrelate_cycles: int = 20  # cycles between branching off the spun-up run and the first state
    steps: int = 7000  # optimiser steps (sets the learning-rate schedule)
    # optional guard: stop at a step boundary after this much training (None: train all `steps`); a
    # stop before `steps` is reported (train.json, report.json). Off by default: results do not
    # depend on the machine's load.
    max_minutes: float | None = None
    roll: bool = True  # augment with random periodic shifts along x (the forcing is x-invariant)
    eval_noise: float = 1.0  # initial-state error of the noisy-start comparison [model units]
    rollout_steps: int = 0  # last optimiser steps on one-cycle pairs, loss on the rolled-out forecast


@dataclass
class Parallel:
    """Data-parallel training strategy (seed 002, Table I) and its knobs."""

    name: str = "ddp"  # zero1 | zero2 | zero3 | ddp | fsdp_full | fsdp_grad_op
    ranks: int = 1  # training processes (the train stage and pre-training)
    launcher: str = "torchrun"  # torchrun | mpiexec | srun | deepspeed
    precision: str = "fp32"  # fp32 | bf16
    bucket_size: float = 5e8  # ZeRO reduce/allgather bucket (elements); the paper found 5e8 best
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    backend: str = "auto"  # auto: gloo on CPU, nccl on GPU (RCCL on ROCm) | gloo | nccl


@dataclass
class Platform:
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


@dataclass
class Scaling:
    """One point of a scaling study (``workflows/scaling.py``, ``experiment=scaling_ensf|scaling_vit``)."""

    study: str = "analysis"  # analysis: a filter's weak scaling, state per rank fixed | training: ViT
    filter: str = "ensf"  # analysis: the filter timed (a name of filter=)
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


@dataclass
class Logger:
    name: str = "none"  # none | wandb
    project: str = "scoreda"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None


@dataclass
class Root:
    run_dir: str = "runs/default"
    cache_dir: str | None = "runs/cache"  # spun-up trajectories shared by runs (null: none)
    seed: int = 0
    cycles: int = 50
    burn_in: int = 10
    members: int = 20
    device: str = "cpu"
    progress: bool = True
    divergence: float | None = 5.0  # stop once an analysis RMSE > this × the truth's std (None: never)
    experiment_name: str = "default"
    arm: str | None = None  # the arm of a multi-arm experiment (configs/arm/, e.g. paper_fig4)
    model: Any = None
    observation: ObservationParams = field(default_factory=ObservationParams)
    filter: Any = None
    shocks: Shocks = field(default_factory=Shocks)
    forecaster: Forecaster = field(default_factory=Forecaster)
    surrogate: Surrogate = field(default_factory=Surrogate)
    parallel: Parallel = field(default_factory=Parallel)
    pretrain: Pretrain = field(default_factory=Pretrain)
    platform: Platform = field(default_factory=Platform)
    logger: Logger = field(default_factory=Logger)
    scaling: Scaling = field(default_factory=Scaling)


def _merge(schema, section, key: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), section)
    except OmegaConfBaseException as e:
        full = ".".join(k for k in (key, getattr(e, "full_key", None)) if k)
        msg = str(e).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            msg = "not a valid key" + _did_you_mean(schema, key, full)
        raise ConfigError(f"{full}: {msg}") from None


def _did_you_mean(schema: type, section: str, full_key: str) -> str:
    """``"; did you mean filter.n_steps?"`` for a misspelled key of the dataclass ``schema`` (the
    section ``section`` of the config: "" for the root, "model"), else ``""``."""
    parent, _, leaf = full_key.rpartition(".")
    node = schema
    for part in parent.removeprefix(section).strip(".").split("."):
        if part:
            node = get_type_hints(node).get(part) if hasattr(node, "__dataclass_fields__") else None
    if not hasattr(node, "__dataclass_fields__"):
        return ""
    close = difflib.get_close_matches(leaf, [f.name for f in fields(node)], n=3, cutoff=0.6)
    prefix = f"{parent}." if parent else ""
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: DictConfig | dict) -> DictConfig:
    """Return the typed, checked config (a new DictConfig); raise ``ConfigError`` on the first problem."""
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))
    cfg.pop("hydra", None)
    model = cfg.get("model")
    _check(
        isinstance(model, DictConfig) and "name" in model,
        "model",
        f"missing (choose model={'|'.join(MODELS)})",
    )
    _check(model.name in MODELS, "model.name", f"unknown model {model.name!r} (expected {', '.join(MODELS)})")
    typed_model = _merge(MODELS[model.name], model, "model")
    flt = cfg.get("filter")
    _check(
        isinstance(flt, DictConfig) and "name" in flt,
        "filter",
        f"missing (choose filter={'|'.join(FILTERS)})",
    )
    _check(flt.name in FILTERS, "filter.name", f"unknown filter {flt.name!r} (expected {', '.join(FILTERS)})")
    keys = {f.name for f in fields(FILTERS[flt.name])}
    flt = OmegaConf.masked_copy(flt, [k for k in flt if k in keys or k not in LEGACY_FILTER_KEYS])
    typed_filter = _merge(FILTERS[flt.name], flt, "filter")
    rest = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("model", "filter")])
    out = _merge(Root, rest, "")
    out.model, out.filter = typed_model, typed_filter
    _check_values(out)
    return out


def _check_values(c: DictConfig) -> None:
    _check(c.members >= 2, "members", f"must be ≥ 2, got {c.members}")
    _check(c.cycles >= 1, "cycles", f"must be ≥ 1, got {c.cycles}")
    _check(c.burn_in >= 0, "burn_in", f"must be ≥ 0, got {c.burn_in}")  # ≥ cycles: a short run
    _check(c.seed >= 0, "seed", f"must be ≥ 0, got {c.seed}")
    _check(
        c.divergence is None or c.divergence > 0,
        "divergence",
        f"must be positive or null, got {c.divergence}",
    )
    _check(
        c.device == "cpu" or c.device.startswith("cuda"),
        "device",
        f"expected cpu or cuda[:n], got {c.device!r}",
    )
    m = c.model
    _check(m.cycle_hours > 0, "model.cycle_hours", f"must be positive, got {m.cycle_hours}")
    _check(m.spinup_cycles >= 0, "model.spinup_cycles", f"must be ≥ 0, got {m.spinup_cycles}")
    _check(
        m.member_spacing_cycles >= 1,
        "model.member_spacing_cycles",
        f"must be ≥ 1, got {m.member_spacing_cycles}",
    )
    try:
        params = model_params(m)  # the model checks its own keys
    except ValueError as e:
        raise ConfigError(str(e)) from None
    grid = model_grid(m).shape
    try:  # the observation section checks its own keys, then against the model's grid
        ObservationParams.from_config(c.observation).check(grid)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    f = c.filter
    _check(f.ranks >= 1, "filter.ranks", f"must be ≥ 1, got {f.ranks}")
    _check(f.shard in SHARDS, "filter.shard", f"expected {' or '.join(SHARDS)}, got {f.shard!r}")
    _check(
        f.ranks <= c.members or f.shard != "members",
        "filter.ranks",
        f"{f.ranks} ranks for {c.members} members: each rank needs at least one member",
    )
    try:
        shards = make_filter(f, model_grid(m)).capabilities.shards  # the filter checks its own keys
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check(
        f.ranks == 1 or f.shard in shards,
        "filter.shard" if shards else "filter.ranks",
        f"filter={f.name} runs on several ranks with filter.shard={' or '.join(shards)}, not {f.shard}"
        if shards
        else f"filter={f.name} runs on one rank only, got {f.ranks}",
    )
    _check(0 <= c.shocks.fraction <= 1, "shocks.fraction", f"must be in [0, 1], got {c.shocks.fraction}")
    _check(
        len(c.shocks.std) > 0 and all(s > 0 for s in c.shocks.std),
        "shocks.std",
        f"must be a non-empty list of positive numbers, got {list(c.shocks.std)}",
    )
    _check(
        c.forecaster.name in ("physics", "vit"),
        "forecaster.name",
        f"expected physics or vit, got {c.forecaster.name!r}",
    )
    check_surrogate(c.surrogate, c.parallel)
    pt = c.pretrain
    for key in ("trajectories", "length"):
        _check(pt[key] >= 2, f"pretrain.{key}", f"must be ≥ 2, got {pt[key]}")
    _check(pt.steps >= 1, "pretrain.steps", f"must be ≥ 1, got {pt.steps}")
    _check(
        0 <= pt.rollout_steps <= pt.steps,
        "pretrain.rollout_steps",
        f"must be in [0, pretrain.steps={pt.steps}], got {pt.rollout_steps}",
    )
    _check(
        1 <= pt.held_out < pt.trajectories,
        "pretrain.held_out",
        f"must be in [1, pretrain.trajectories={pt.trajectories}), got {pt.held_out}",
    )
    _check(
        pt.decorrelate_cycles >= 0,
        "pretrain.decorrelate_cycles",
        f"must be ≥ 0, got {pt.decorrelate_cycles}",
    )
    _check(
        pt.max_minutes is None or pt.max_minutes > 0,
        "pretrain.max_minutes",
        f"must be positive or null, got {pt.max_minutes}",
    )
    _check(pt.eval_noise >= 0, "pretrain.eval_noise", f"must be ≥ 0, got {pt.eval_noise}")
    _check_divides(c.surrogate.step_hours, m.cycle_hours, "surrogate.step_hours", "model.cycle_hours")
    _check_divides(pt.frame_hours, m.cycle_hours, "pretrain.frame_hours", "model.cycle_hours")
    step, frame = c.surrogate.step_hours or m.cycle_hours, pt.frame_hours or m.cycle_hours
    _check_divides(frame, step, "pretrain.frame_hours", "surrogate.step_hours")
    n = params.steps_in(pt.frame_hours) if pt.frame_hours is not None else None
    _check(
        n is None or math.isclose(n, round(n)),
        "pretrain.frame_hours",
        f"{pt.frame_hours} h is not a whole number of model steps",
    )
    if c.forecaster.name == "vit":
        s = c.surrogate
        _check(
            (s.channels, s.img_size, s.img_size) == tuple(grid),
            "surrogate.img_size",
            f"the surrogate maps {s.channels}×{s.img_size}² states,"
            f" the model's are {'×'.join(map(str, grid))}",
        )
        _check(
            s.checkpoint is not None,
            "surrogate.checkpoint",
            "forecaster=vit needs pre-trained weights (python workflows/pretrain.py writes them)",
        )
        _check(
            Path(s.checkpoint).is_file(),
            "surrogate.checkpoint",
            f"no such file {s.checkpoint!r} (python workflows/pretrain.py writes it)",
        )
    p = c.platform
    _check(
        p.name in ("local", "slurm", "frontier"),
        "platform.name",
        f"unknown platform {p.name!r} (expected local, slurm or frontier)",
    )
    _check(
        p.provider in ("auto", "allocation", "submit"),
        "platform.provider",
        f"expected auto, allocation or submit, got {p.provider!r}",
    )
    _check(
        p.name != "local" or p.mpi_launcher != "srun",
        "platform.mpi_launcher",
        "srun needs a Slurm platform (platform=slurm or platform=frontier)",
    )
    for key in ("ranks_per_node", "cpus_per_task", "nodes"):
        _check(getattr(p, key) >= 1, f"platform.{key}", f"must be ≥ 1, got {getattr(p, key)}")
    _check(p.stop_margin_s >= 0, "platform.stop_margin_s", f"must be ≥ 0, got {p.stop_margin_s}")
    _check(p.min_cycle_s >= 0, "platform.min_cycle_s", f"must be ≥ 0, got {p.min_cycle_s}")
    if p.end_time not in (None, "auto"):
        _check(
            end_time_seconds(p.end_time) is not None,
            "platform.end_time",
            f"expected unix seconds, an ISO time or auto, got {p.end_time!r}",
        )
    _check(p.workers >= 1, "platform.workers", f"must be ≥ 1, got {p.workers}")
    _check(
        p.threads_per_worker >= 1, "platform.threads_per_worker", f"must be ≥ 1, got {p.threads_per_worker}"
    )
    _check(p.retries >= 0, "platform.retries", f"must be ≥ 0, got {p.retries}")
    _check(p.lost_after_s > 0, "platform.lost_after_s", f"must be positive, got {p.lost_after_s}")
    sc = c.scaling
    _check(
        sc.study in ("analysis", "training"),
        "scaling.study",
        f"expected analysis or training, got {sc.study!r}",
    )
    timed = [f for f in FILTERS if f != "none"]
    _check(sc.filter in timed, "scaling.filter", f"expected one of {', '.join(timed)}, got {sc.filter!r}")
    _check(sc.submit in ("local", "sbatch"), "scaling.submit", f"expected local or sbatch, got {sc.submit!r}")
    for key in ("ranks", "per_rank", "n_steps", "repeats", "batch_per_rank", "steps"):
        _check(getattr(sc, key) >= 1, f"scaling.{key}", f"must be ≥ 1, got {getattr(sc, key)}")
    _check(
        c.logger.name in ("none", "wandb"), "logger.name", f"expected none or wandb, got {c.logger.name!r}"
    )
    _check(
        c.logger.mode in ("offline", "online", "disabled"),
        "logger.mode",
        f"expected offline, online or disabled, got {c.logger.mode!r}",
    )


def _check_divides(part: float | None, whole: float, key: str, whole_key: str) -> None:
    """``whole / part`` must be a positive integer (``part`` None: nothing to check)."""
    if part is None:
        return
    n = whole / part if part > 0 else 0.0
    _check(
        part > 0 and n >= 1 and math.isclose(n, round(n)),
        key,
        f"{part} h must divide {whole_key}={whole} h into a whole number of steps",
    )


def check_surrogate(s: DictConfig, par: DictConfig) -> None:
    """Values of the ``surrogate`` and ``parallel`` sections (also used by workflows/pretrain.py)."""
    for key in ("img_size", "channels", "patch", "embed_dim", "depth", "heads", "batch_size", "grad_accum"):
        _check(s[key] >= 1, f"surrogate.{key}", f"must be ≥ 1, got {s[key]}")
    _check(
        s.img_size % s.patch == 0,
        "surrogate.patch",
        f"{s.patch} does not divide surrogate.img_size={s.img_size}",
    )
    _check(
        s.embed_dim % s.heads == 0,
        "surrogate.heads",
        f"{s.heads} does not divide surrogate.embed_dim={s.embed_dim}",
    )
    _check(s.mlp_ratio > 0, "surrogate.mlp_ratio", f"must be positive, got {s.mlp_ratio}")
    _check(s.head_depth >= 0, "surrogate.head_depth", f"must be ≥ 0, got {s.head_depth}")
    for key in ("drop_rate", "drop_path"):
        _check(0 <= s[key] < 1, f"surrogate.{key}", f"must be in [0, 1), got {s[key]}")
    for key in ("lr", "finetune_lr"):
        _check(s[key] > 0, f"surrogate.{key}", f"must be positive, got {s[key]}")
    _check(0 <= s.min_lr <= s.lr, "surrogate.min_lr", f"must be in [0, surrogate.lr], got {s.min_lr}")
    _check(
        len(s.betas) == 2 and all(0 <= b < 1 for b in s.betas),
        "surrogate.betas",
        f"expected two numbers in [0, 1), got {list(s.betas)}",
    )
    _check(s.weight_decay >= 0, "surrogate.weight_decay", f"must be ≥ 0, got {s.weight_decay}")
    _check(s.warmup_steps >= 0, "surrogate.warmup_steps", f"must be ≥ 0, got {s.warmup_steps}")
    _check(s.lag in (0, 1), "surrogate.lag", f"expected 0 or 1, got {s.lag}")
    _check(s.replay >= 1, "surrogate.replay", f"must be ≥ 1, got {s.replay}")
    _check(s.finetune_steps >= 1, "surrogate.finetune_steps", f"must be ≥ 1, got {s.finetune_steps}")
    _check(
        par.name in PARALLEL,
        "parallel.name",
        f"unknown strategy {par.name!r} (expected {', '.join(PARALLEL)})",
    )
    _check(par.ranks >= 1, "parallel.ranks", f"must be ≥ 1, got {par.ranks}")
    _check(
        s.batch_size % (par.ranks * s.grad_accum) == 0,
        "surrogate.batch_size",
        f"{s.batch_size} is not a multiple of parallel.ranks × surrogate.grad_accum"
        f" = {par.ranks * s.grad_accum}",
    )
    _check(
        par.launcher in ("torchrun", "mpiexec", "srun", "deepspeed"),
        "parallel.launcher",
        f"expected torchrun, mpiexec, srun or deepspeed, got {par.launcher!r}",
    )
    _check(
        par.precision in ("fp32", "bf16"),
        "parallel.precision",
        f"expected fp32 or bf16, got {par.precision!r}",
    )
    _check(par.bucket_size >= 1, "parallel.bucket_size", f"must be ≥ 1, got {par.bucket_size}")
    _check(
        par.backend in ("auto", "gloo", "nccl"),
        "parallel.backend",
        f"expected auto, gloo or nccl, got {par.backend!r}",
    )


PARALLEL = ("zero1", "zero2", "zero3", "ddp", "fsdp_full", "fsdp_grad_op")


def science_keys(cfg: DictConfig) -> dict:
    """The part of the config that determines the numbers (hashed into every checkpoint).

    Leaves out what may change on a resume without changing any result: cycles, platform,
    logger, progress, run_dir, and filter.ranks / filter.shard (the same analysis to rounding).
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    c["model"] = model_science(c["model"])
    c["filter"] = LEGACY_FILTER_KEYS | c["filter"]  # the hash of a run made before issue 17
    c["filter"] = {k: v for k, v in c["filter"].items() if k not in ("ranks", "shard")}  # same numbers
    # keys added after runs existed, left out at their defaults so that those runs keep their hash
    if c["model"].get("state") == "pv":
        del c["model"]["state"]
    if c["observation"].get("channels", 0) is None:
        del c["observation"]["channels"]
    for key, default in (("standardise", "point"), ("cap_spread", False)):
        if c["filter"].get(key) == default:
            del c["filter"][key]
    keys = ["seed", "members", "model", "observation", "filter", "shocks", "forecaster"]
    if c["forecaster"]["name"] == "vit":  # the surrogate's numbers; not how many ranks train it
        keys += ["surrogate", "parallel"]
        c["parallel"] = {k: v for k, v in c["parallel"].items() if k not in ("ranks", "launcher", "backend")}
    return {k: c[k] for k in keys}


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
