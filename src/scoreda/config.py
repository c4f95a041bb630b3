"""Structured configs (dataclasses) and the validation that runs before any work starts.

Hydra composes YAML from ``configs/``; ``validate(cfg)`` merges each section onto its dataclass
schema (types, unknown keys) and checks the values, raising ``ConfigError`` — one line naming the
key — on the first problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scoreda.dynamics.lorenz96 import Lorenz96Params
from scoreda.dynamics.qg2l import QG2LParams
from scoreda.dynamics.sqg import SQGParams


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is ``"<key>: <what is wrong>"``."""


@dataclass
class ModelCommon:
    name: str = "sqg"
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


MODELS = {
    "sqg": _model_schema("sqg", SQGParams),
    "lorenz96": _model_schema("lorenz96", Lorenz96Params),
    "qg2l": _model_schema("qg2l", QG2LParams),
}


@dataclass
class Observation:
    name: str = "full"
    kind: str = "identity"  # identity | subsample | stations
    sigma: float = 1.0
    every: int = 1
    n_stations: int = 0
    transform: str = "linear"  # linear | arctan


@dataclass
class Filter:
    name: str = "ensf"  # ensf | letkf | none
    ranks: int = 1
    shard: str = "members"  # members | state
    rtps: float = 0.0
    inflation: float = 1.0
    adaptive_inflation: bool = False  # innovation-based inflation each cycle (filters.innovation_inflation)
    # EnSF
    n_steps: int = 100
    prior_score: str = "paired"  # paired | mixture
    eps_alpha: float = 0.05
    eps_beta: float = 0.5
    t_end: float = 0.0
    implicit: bool = True
    # LETKF
    cutoff: float = 2000.0  # distance where the Gaspari–Cohn taper reaches zero (km; index units for L96)
    cross_level: float = 1.0
    rtpp: float = 0.0


@dataclass
class Shocks:
    """Model error unknown to the forecast model: Gaussian noise added to the truth."""

    fraction: float = 0.0  # share of cycles shocked (each cycle independently, from the seed)
    std: list[float] = field(default_factory=lambda: [5.0, 4.0, 3.0, 2.0])  # used in turn [units]


@dataclass
class Forecaster:
    name: str = "physics"


@dataclass
class Platform:
    name: str = "local"
    workers: int = 2  # Parsl workers (stages that may run at the same time)
    threads_per_worker: int = 1  # torch threads in each stage
    retries: int = 0
    address: str = "127.0.0.1"
    mpi_launcher: str = "mpiexec"


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
    seed: int = 0
    cycles: int = 50
    burn_in: int = 10
    members: int = 20
    device: str = "cpu"
    progress: bool = True
    experiment_name: str = "default"
    model: Any = None
    observation: Observation = field(default_factory=Observation)
    filter: Filter = field(default_factory=Filter)
    shocks: Shocks = field(default_factory=Shocks)
    forecaster: Forecaster = field(default_factory=Forecaster)
    platform: Platform = field(default_factory=Platform)
    logger: Logger = field(default_factory=Logger)


def _merge(schema, section, key: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), section)
    except OmegaConfBaseException as e:
        full = ".".join(k for k in (key, getattr(e, "full_key", None)) if k)
        msg = str(e).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            msg = "not a valid key"
        raise ConfigError(f"{full}: {msg}") from None


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: DictConfig | dict) -> DictConfig:
    """Return the typed, checked config (a new DictConfig); raise ``ConfigError`` on the first problem."""
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))
    cfg.pop("hydra", None)
    model = cfg.get("model")
    _check(
        isinstance(model, DictConfig) and "name" in model, "model", "missing (choose model=sqg|lorenz96|qg2l)"
    )
    _check(model.name in MODELS, "model.name", f"unknown model {model.name!r} (expected {', '.join(MODELS)})")
    typed_model = _merge(MODELS[model.name], model, "model")
    rest = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "model"])
    out = _merge(Root, rest, "")
    out.model = typed_model
    _check_values(out)
    return out


def _check_values(c: DictConfig) -> None:
    _check(c.members >= 2, "members", f"must be ≥ 2, got {c.members}")
    _check(c.cycles >= 1, "cycles", f"must be ≥ 1, got {c.cycles}")
    _check(0 <= c.burn_in < c.cycles, "burn_in", f"must be in [0, cycles={c.cycles}), got {c.burn_in}")
    _check(c.seed >= 0, "seed", f"must be ≥ 0, got {c.seed}")
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
    if m.name == "sqg":
        _check(m.N >= 8 and m.N % 2 == 0, "model.N", f"must be an even number ≥ 8, got {m.N}")
        _check(
            m.jacobian in ("reference", "consistent"),
            "model.jacobian",
            f"expected reference or consistent, got {m.jacobian!r}",
        )
        steps = m.cycle_hours * 3600 / m.dt
        _check(
            m.dt > 0 and math.isclose(steps, round(steps)),
            "model.dt",
            f"{m.dt} s must divide model.cycle_hours={m.cycle_hours} h",
        )
    if m.name == "lorenz96":
        _check(m.size >= 4, "model.size", f"must be ≥ 4, got {m.size}")
        steps = m.cycle_time / m.dt
        _check(
            m.dt > 0 and math.isclose(steps, round(steps)),
            "model.dt",
            f"must divide model.cycle_time={m.cycle_time}",
        )
    if m.name == "qg2l":
        _check(m.nx >= 4 and m.nx % 2 == 0, "model.nx", f"must be an even number ≥ 4, got {m.nx}")
    grid = state_shape(m)
    o = c.observation
    _check(
        o.kind in ("identity", "subsample", "stations"),
        "observation.kind",
        f"expected identity, subsample or stations, got {o.kind!r}",
    )
    _check(
        o.transform in ("linear", "arctan"),
        "observation.transform",
        f"expected linear or arctan, got {o.transform!r}",
    )
    _check(o.sigma > 0, "observation.sigma", f"must be positive, got {o.sigma}")
    if o.kind == "subsample":
        H, W = grid[1], grid[2]
        _check(
            o.every >= 1 and H % o.every == 0 and W % o.every == 0,
            "observation.every",
            f"{o.every} does not divide the {H}×{W} grid",
        )
    if o.kind == "stations":
        _check(
            0 < o.n_stations <= grid[1] * grid[2],
            "observation.n_stations",
            f"must be in 1..{grid[1] * grid[2]}, got {o.n_stations}",
        )
    f = c.filter
    _check(
        f.name in ("ensf", "letkf", "none"),
        "filter.name",
        f"unknown filter {f.name!r} (expected ensf, letkf or none)",
    )
    _check(f.ranks >= 1, "filter.ranks", f"must be ≥ 1, got {f.ranks}")
    _check(
        f.ranks <= c.members or f.shard != "members",
        "filter.ranks",
        f"{f.ranks} ranks for {c.members} members: each rank needs at least one member",
    )
    _check(f.shard in ("members", "state"), "filter.shard", f"expected members or state, got {f.shard!r}")
    _check(0 <= f.rtps <= 1, "filter.rtps", f"must be in [0, 1], got {f.rtps}")
    _check(f.inflation >= 1, "filter.inflation", f"must be ≥ 1, got {f.inflation}")
    _check(f.n_steps >= 1, "filter.n_steps", f"must be ≥ 1, got {f.n_steps}")
    _check(
        f.prior_score in ("paired", "mixture"),
        "filter.prior_score",
        f"expected paired or mixture, got {f.prior_score!r}",
    )
    _check(0 < f.eps_alpha < 1, "filter.eps_alpha", f"must be in (0, 1), got {f.eps_alpha}")
    _check(0 <= f.eps_beta <= 1, "filter.eps_beta", f"must be in [0, 1], got {f.eps_beta}")
    _check(0 <= f.t_end < 1, "filter.t_end", f"must be in [0, 1), got {f.t_end}")
    _check(f.cutoff > 0, "filter.cutoff", f"must be positive (.inf: global ETKF), got {f.cutoff}")
    _check(f.cross_level >= 0, "filter.cross_level", f"must be ≥ 0, got {f.cross_level}")
    _check(0 <= f.rtpp <= 1, "filter.rtpp", f"must be in [0, 1], got {f.rtpp}")
    _check(0 <= c.shocks.fraction <= 1, "shocks.fraction", f"must be in [0, 1], got {c.shocks.fraction}")
    _check(
        len(c.shocks.std) > 0 and all(s > 0 for s in c.shocks.std),
        "shocks.std",
        f"must be a non-empty list of positive numbers, got {list(c.shocks.std)}",
    )
    _check(
        c.forecaster.name == "physics",
        "forecaster.name",
        f"{c.forecaster.name!r} is not available yet (expected physics)",
    )
    p = c.platform
    _check(p.name in ("local",), "platform.name", f"unknown platform {p.name!r} (expected local)")
    _check(p.workers >= 1, "platform.workers", f"must be ≥ 1, got {p.workers}")
    _check(
        p.threads_per_worker >= 1, "platform.threads_per_worker", f"must be ≥ 1, got {p.threads_per_worker}"
    )
    _check(p.retries >= 0, "platform.retries", f"must be ≥ 0, got {p.retries}")
    _check(
        c.logger.name in ("none", "wandb"), "logger.name", f"expected none or wandb, got {c.logger.name!r}"
    )
    _check(
        c.logger.mode in ("offline", "online", "disabled"),
        "logger.mode",
        f"expected offline, online or disabled, got {c.logger.mode!r}",
    )


def state_shape(model_cfg) -> tuple[int, int, int]:
    """(C, H, W) of one member's state for a model config, without building the model."""
    if model_cfg.name == "sqg":
        return (2, model_cfg.N, model_cfg.N)
    if model_cfg.name == "lorenz96":
        return (1, 1, model_cfg.size)
    return (2, model_cfg.nx, model_cfg.nx)


def science_keys(cfg: DictConfig) -> dict:
    """The part of the config that determines the numbers (hashed into every checkpoint).

    Leaves out what may change on a resume without changing any result: cycles, platform,
    logger, progress, run_dir, and filter.ranks / filter.shard (the same analysis to rounding).
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    c["filter"] = {k: v for k, v in c["filter"].items() if k not in ("ranks", "shard")}  # same numbers
    return {k: c[k] for k in ("seed", "members", "model", "observation", "filter", "shocks", "forecaster")}
