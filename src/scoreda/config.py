"""The whole config: its root keys, its sections, and the validation that runs before any work starts.

Hydra composes YAML from ``configs/``; ``validate(cfg)`` merges each section onto its dataclass
schema (types, unknown keys), lets each component and section check its own keys (the model's and
the filter's classes via ``scoreda.registry``, the other sections' dataclasses in ``SECTIONS``),
then checks the rules across sections here, raising ``ConfigError`` — one line naming the key — on
the first problem. The part of a config that a run's numbers depend on: ``scoreda.science``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scoreda.dynamics import model_params
from scoreda.dynamics.grid import model_grid
from scoreda.filters import make_filter
from scoreda.filters.sharding import SHARDS
from scoreda.learned.params import ScoreNetParams
from scoreda.observations import ObservationParams
from scoreda.platform import PlatformParams, ScalingParams
from scoreda.registry import ModelCommon, section
from scoreda.shocks import Shocks
from scoreda.surrogate.params import Forecaster, ParallelParams, PretrainParams, SurrogateParams
from scoreda.tracking import LoggerParams
from scoreda.validation import ConfigError, merge_schema, require

#: the sections that check their own keys (``__post_init__``), in the order ``validate`` checks them
SECTIONS = {
    "observation": ObservationParams,
    "shocks": Shocks,
    "forecaster": Forecaster,
    "surrogate": SurrogateParams,
    "parallel": ParallelParams,
    "pretrain": PretrainParams,
    "scorenet": ScoreNetParams,
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
    scorenet: ScoreNetParams = field(default_factory=ScoreNetParams)
    platform: PlatformParams = field(default_factory=PlatformParams)
    logger: LoggerParams = field(default_factory=LoggerParams)
    scaling: ScalingParams = field(default_factory=ScalingParams)

    def __post_init__(self) -> None:
        require(self.members >= 1, "members", f"must be ≥ 1, got {self.members}")
        require(self.cycles >= 1, "cycles", f"must be ≥ 1, got {self.cycles}")
        require(self.burn_in >= 0, "burn_in", f"must be ≥ 0, got {self.burn_in}")  # ≥ cycles: a short run
        require(self.seed >= 0, "seed", f"must be ≥ 0, got {self.seed}")
        ok = self.divergence is None or self.divergence > 0
        require(ok, "divergence", f"must be positive or null, got {self.divergence}")
        ok = self.device == "cpu" or self.device.startswith("cuda")
        require(ok, "device", f"expected cpu or cuda[:n], got {self.device!r}")


def divergence_bound(cfg: DictConfig) -> float | None:
    """The ``divergence`` factor that stops this run, or None: a free run (``filter=none``) has no
    filter to diverge, and its members may drift past any bound (ViT only: ≈ 60 K, docs/results.md),
    so it is scored to the end whatever ``divergence`` says."""
    return None if cfg.filter.name == "none" else cfg.divergence


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: DictConfig | dict) -> DictConfig:
    """Return the typed, checked config (a new DictConfig); raise ``ConfigError`` on the first problem."""
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))
    cfg.pop("hydra", None)
    typed_model, typed_filter = section("model", cfg.get("model")), section("filter", cfg.get("filter"))
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
    _own(Root, **{k.name: c[k.name] for k in fields(Root) if k.name not in (*SECTIONS, "model", "filter")})
    m = c.model
    _own(ModelCommon, **{k.name: m[k.name] for k in fields(ModelCommon)})
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
    capabilities = _own(make_filter, f, grid).capabilities
    shards = capabilities.shards
    _check(
        c.members >= capabilities.min_members,
        "members",
        f"filter={f.name} needs ≥ {capabilities.min_members} members, got {c.members}",
    )
    _check(
        f.ranks == 1 or f.shard in shards,
        "filter.shard" if shards else "filter.ranks",
        f"filter={f.name} runs on several ranks with filter.shard={' or '.join(shards)}, not {f.shard}"
        if shards
        else f"filter={f.name} runs on one rank only, got {f.ranks}",
    )
    if f.ranks > 1 and f.name in ("letkf", "lensf"):  # tiles of grid rows (LETKF.tile)
        cutoff = math.inf if f.cutoff is None else float(f.cutoff)
        _check(
            math.isfinite(cutoff),
            "filter.cutoff",
            f"the global filter={f.name} (cutoff=inf) runs on one rank",
        )
        rows = grid.shape[1] if grid.shape[1] > 1 else grid.shape[2]
        _check(
            f.ranks <= rows,
            "filter.ranks",
            f"{f.ranks} ranks for a grid of {rows} rows (one row each at least)",
        )
    _check(
        capabilities.nonlinear_operators or c.observation.transform == "linear",
        "observation.transform",
        f"filter={f.name} takes observations of state values (linear), not {c.observation.transform}",
    )
    _check(
        f.get("kernel", "torch") != "fused" or c.observation.transform == "linear",
        "filter.kernel",
        f"fused takes linear observations (observation.transform=linear), not {c.observation.transform}",
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
