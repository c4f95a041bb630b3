"""Filters behind one protocol: ``analyse(prior[M, d], y, operator, generator) -> Analysis``.

A filter is one module of this package that names its class in a module-level ``REGISTER =
{"<name>": Class}`` (``filter=<name>``), plus ``configs/filter/<name>.yaml``: nothing else changes.
The class is a dataclass whose fields are its config keys (see ``config_fields``); what it can do
(:class:`Capabilities`) decides how the analysis stage launches it, and an unsupported combination
is a config error before any work. What the filters do around their analysis (inflation,
regression of unobserved components, RTPP, spread cap, RTPS) is one chain, ``processing``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field, fields
from typing import ClassVar, Protocol, runtime_checkable

import torch

from scoreda.observations import ObservationOperator


@dataclass(frozen=True)
class Capabilities:
    """What a filter supports. ``shards``: the ``filter.shard`` modes it runs on several MPI ranks
    (empty: one rank only); ``nonlinear_operators``: observation operators other than h(x) = x[i];
    ``min_members``: the smallest ensemble it analyses (1: a deterministic run)."""

    shards: tuple[str, ...] = ()
    nonlinear_operators: bool = True
    min_members: int = 2


@dataclass
class Analysis:
    """What ``analyse`` returns: the ensemble [M, d] (None on MPI ranks other than 0) and the
    diagnostics to log with the cycle's scores (e.g. ``inflation``: the factor on the forecast
    anomalies), name -> float."""

    ensemble: torch.Tensor | None
    diagnostics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Filter(Protocol):
    capabilities: ClassVar[Capabilities]

    def analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None = None,
    ) -> Analysis:
        """Analysis of the forecast ensemble [M, d] given observations y [p]. Filters with
        ``capabilities.shards`` also take ``comm`` (a ``sharding.Collective``) and ``device``; a filter
        that can analyse each rank's slice of the state alone also has ``slices_state(observes_all)``
        and ``analyse_slice`` (``EnSF``), which the analysis stage uses to read and write slices."""
        ...


#: ``field(metadata=CONSTRUCTED)``: a filter's field that ``from_config`` builds (not a config key)
CONSTRUCTED = {"config": False}
#: keys every ``filter`` section has: how the analysis stage launches the filter
LAUNCH_KEYS = ("name", "ranks", "shard")


def config_fields(cls: type) -> list:
    """The dataclass fields of a filter class that are config keys (all but ``CONSTRUCTED`` ones)."""
    return [f for f in fields(cls) if f.init and f.metadata.get("config", True)]


def config_keys(cls: type, cfg) -> dict:
    """The config keys of ``cls`` that ``cfg`` sets, as constructor arguments. Any other key except
    the launch keys is an error naming it: a renamed key never falls back to a default unseen."""
    known = {f.name for f in config_fields(cls)}
    extra = sorted(set(cfg) - known - set(LAUNCH_KEYS))
    if extra:
        raise ValueError(f"filter.{extra[0]}: not a key of filter={cfg.get('name', cls.__name__)}")
    return {k: cfg[k] for k in known if k in cfg}


def check_common(f) -> None:
    """The checks of the keys every ensemble filter has: ``rtps`` in [0, 1], ``inflation`` ≥ 1."""
    if not 0 <= f.rtps <= 1:
        raise ValueError(f"filter.rtps: must be in [0, 1], got {f.rtps}")
    if not f.inflation >= 1:
        raise ValueError(f"filter.inflation: must be ≥ 1, got {f.inflation}")


@functools.cache
def registry() -> dict[str, type]:
    """``filter.name`` -> class: ``none`` and the ``REGISTER`` of every module of this package."""
    found = {}
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        found |= getattr(importlib.import_module(f"{__name__}.{mod.name}"), "REGISTER", {})
    return found | {"none": NoAssimilation}


def filter_class(name: str) -> type:
    """The class of ``filter=<name>``."""
    if name not in registry():
        raise ValueError(f"filter.name: unknown filter {name!r} (expected {', '.join(registry())})")
    return registry()[name]


@dataclass
class NoAssimilation:
    """``filter=none``: the analysis is the forecast (a free ensemble run). No keys."""

    capabilities: ClassVar[Capabilities] = Capabilities(min_members=1)

    @classmethod
    def from_config(cls, filter_cfg, grid=None) -> NoAssimilation:
        return cls(**config_keys(cls, filter_cfg))

    def analyse(self, prior, y, operator, generator=None) -> Analysis:
        return Analysis(prior.clone())


def make_filter(filter_cfg, grid=None) -> Filter:
    """The filter of ``filter_cfg``; the model's ``grid`` (``dynamics.grid.Grid``) gives the shape and
    the geometry that the LETKF (and the EnSF's ``unobserved=regress``) localises on."""
    return filter_class(filter_cfg["name"]).from_config(filter_cfg, grid)
