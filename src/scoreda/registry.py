"""The component registry: ``model=<name>`` and ``filter=<name>`` -> their schema, built from the
classes the components declare (``REGISTER`` in each module of ``scoreda.dynamics`` and
``scoreda.filters``), so that a component's keys, defaults and checks live in one place. The filter
schemas are registered with Hydra's ConfigStore as ``schema/filter/<name>`` (the ``defaults`` of
``configs/filter/<name>.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from scoreda.dynamics import registry as dynamics_registry
from scoreda.filters import LAUNCH_KEYS, config_fields
from scoreda.filters import registry as filters_registry
from scoreda.validation import ConfigError, merge_schema, require


@dataclass
class ModelCommon:
    name: str = "?"  # set per model by _model_schema
    cycle_hours: float = 12.0  # model hours between observation times (one DA cycle)
    spinup_cycles: int = 200  # free cycles before the nature run and the climatology start
    member_spacing_cycles: int = 10  # initial members: states this far apart on one long run
    units: str = "K"

    def __post_init__(self) -> None:
        require(self.cycle_hours > 0, "model.cycle_hours", f"must be positive, got {self.cycle_hours}")
        require(self.spinup_cycles >= 0, "model.spinup_cycles", f"must be ≥ 0, got {self.spinup_cycles}")
        n = self.member_spacing_cycles
        require(n >= 1, "model.member_spacing_cycles", f"must be ≥ 1, got {n}")


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
    return merge_schema(MODELS[name], keys, "model")


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
FILTERS = {name: _filter_schema(name, cls) for name, cls in filters_registry().items()}
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


def section(group: str, cfg) -> DictConfig:
    """The ``model`` or ``filter`` section ``cfg`` merged onto the schema of the component it names;
    ``ConfigError`` when it is missing or names none. A filter section written before issue 17 holds
    every filter's keys (``LEGACY_FILTER_KEYS``): those its filter lacks are dropped."""
    schemas = MODELS if group == "model" else FILTERS
    if not (isinstance(cfg, DictConfig) and "name" in cfg):
        raise ConfigError(f"{group}: missing (choose {group}={'|'.join(schemas)})")
    if cfg.name not in schemas:
        raise ConfigError(f"{group}.name: unknown {group} {cfg.name!r} (expected {', '.join(schemas)})")
    if group == "filter":
        keys = {f.name for f in fields(schemas[cfg.name])}
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k in keys or k not in LEGACY_FILTER_KEYS])
    return merge_schema(schemas[cfg.name], cfg, group)
