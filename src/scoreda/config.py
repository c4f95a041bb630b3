"""The whole config: its root keys, its sections, and the validation that runs before any work starts.

Hydra composes YAML from ``configs/``; ``validate(cfg)`` merges each section onto its dataclass
schema (types, unknown keys), lets each component and section check its own keys (the model's and
the filter's classes via ``scoreda.registry``, the other sections' dataclasses in ``SECTIONS``),
then checks the rules across sections here, raising ``ConfigError`` — one line naming the key — on
the first problem. ``science_keys`` is the part of a config that a run's numbers depend on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scoreda.dynamics import model_params, model_science
from scoreda.dynamics.grid import model_grid
from scoreda.filters import make_filter
from scoreda.filters.sharding import SHARDS
from scoreda.observations import ObservationParams
from scoreda.platform import PlatformParams, ScalingParams
from scoreda.registry import FILTERS, LEGACY_FILTER_KEYS, MODELS
from scoreda.surrogate.params import ParallelParams, PretrainParams, SurrogateParams
from scoreda.tracking import LoggerParams
from scoreda.validation import ConfigError, merge_schema, require


@dataclass
class Shocks:
    """Model error unknown to the forecast model: Gaussian noise added to the truth."""

    fraction: float = 0.0  # share of cycles shocked (each cycle independently, from the seed)
    std: list[float] = field(default_factory=lambda: [5.0, 4.0, 3.0, 2.0])  # used in turn [units]

    def __post_init__(self) -> None:
        require(0 <= self.fraction <= 1, "shocks.fraction", f"must be in [0, 1], got {self.fraction}")
        require(
            len(self.std) > 0 and all(s > 0 for s in self.std),
            "shocks.std",
            f"must be a non-empty list of positive numbers, got {list(self.std)}",
        )


@dataclass
class Forecaster:
    name: str = "physics"  # physics | vit (the `surrogate` section)

    def __post_init__(self) -> None:
        require(
            self.name in ("physics", "vit"), "forecaster.name", f"expected physics or vit, got {self.name!r}"
        )


#: the sections that check their own keys (``__post_init__``), in the order ``validate`` checks them
SECTIONS = {
    "observation": ObservationParams,
    "shocks": Shocks,
    "forecaster": Forecaster,
    "surrogate": SurrogateParams,
    "parallel": ParallelParams,
    "pretrain": PretrainParams,
    "platform": PlatformParams,
    "scaling": ScalingParams,
    "logger": LoggerParams,
}


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
    surrogate: SurrogateParams = field(default_factory=SurrogateParams)
    parallel: ParallelParams = field(default_factory=ParallelParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    platform: PlatformParams = field(default_factory=PlatformParams)
    logger: LoggerParams = field(default_factory=LoggerParams)
    scaling: ScalingParams = field(default_factory=ScalingParams)


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
    typed_model = merge_schema(MODELS[model.name], model, "model")
    flt = cfg.get("filter")
    _check(
        isinstance(flt, DictConfig) and "name" in flt,
        "filter",
        f"missing (choose filter={'|'.join(FILTERS)})",
    )
    _check(flt.name in FILTERS, "filter.name", f"unknown filter {flt.name!r} (expected {', '.join(FILTERS)})")
    keys = {f.name for f in fields(FILTERS[flt.name])}
    flt = OmegaConf.masked_copy(flt, [k for k in flt if k in keys or k not in LEGACY_FILTER_KEYS])
    typed_filter = merge_schema(FILTERS[flt.name], flt, "filter")
    rest = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("model", "filter")])
    out = merge_schema(Root, rest, "")
    out.model, out.filter = typed_model, typed_filter
    _check_values(out)
    return out


def _own(build, *args, **kwargs) -> Any:
    """``build(*args, **kwargs)``, a section or component checking its own keys; its ValueError (one
    line naming the key) becomes a ``ConfigError``."""
    try:
        return build(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_values(c: DictConfig) -> None:
    """Each section's own checks (the component's dataclass), then the rules across sections."""
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
    params = _own(model_params, m)
    grid = model_grid(m)
    sec = {k: _own(cls, **OmegaConf.to_container(c[k])) for k, cls in SECTIONS.items()}
    _own(sec["observation"].check, grid.shape)
    f = c.filter
    _check(f.ranks >= 1, "filter.ranks", f"must be ≥ 1, got {f.ranks}")
    _check(f.shard in SHARDS, "filter.shard", f"expected {' or '.join(SHARDS)}, got {f.shard!r}")
    _check(
        f.ranks <= c.members or f.shard != "members",
        "filter.ranks",
        f"{f.ranks} ranks for {c.members} members: each rank needs at least one member",
    )
    shards = _own(make_filter, f, grid).capabilities.shards
    _check(
        f.ranks == 1 or f.shard in shards,
        "filter.shard" if shards else "filter.ranks",
        f"filter={f.name} runs on several ranks with filter.shard={' or '.join(shards)}, not {f.shard}"
        if shards
        else f"filter={f.name} runs on one rank only, got {f.ranks}",
    )
    pt, s, par = c.pretrain, c.surrogate, c.parallel
    _check(
        s.batch_size % (par.ranks * s.grad_accum) == 0,
        "surrogate.batch_size",
        f"{s.batch_size} is not a multiple of parallel.ranks × surrogate.grad_accum"
        f" = {par.ranks * s.grad_accum}",
    )
    _check_divides(s.step_hours, m.cycle_hours, "surrogate.step_hours", "model.cycle_hours")
    _check_divides(pt.frame_hours, m.cycle_hours, "pretrain.frame_hours", "model.cycle_hours")
    step, frame = s.step_hours or m.cycle_hours, pt.frame_hours or m.cycle_hours
    _check_divides(frame, step, "pretrain.frame_hours", "surrogate.step_hours")
    n = params.steps_in(pt.frame_hours) if pt.frame_hours is not None else None
    _check(
        n is None or math.isclose(n, round(n)),
        "pretrain.frame_hours",
        f"{pt.frame_hours} h is not a whole number of model steps",
    )
    if c.forecaster.name == "vit":
        _check(
            (s.channels, s.img_size, s.img_size) == tuple(grid.shape),
            "surrogate.img_size",
            f"the surrogate maps {s.channels}×{s.img_size}² states,"
            f" the model's are {'×'.join(map(str, grid.shape))}",
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
