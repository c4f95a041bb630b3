"""Filters behind one protocol: ``analyse(prior[M, d], y, operator, generator) -> Analysis``.

A filter is one module of this package that names its class in a module-level ``REGISTER =
{"<name>": Class}`` (``filter=<name>``), plus ``configs/filter/<name>.yaml``: nothing else changes.
The class is a dataclass whose fields are its config keys (see ``config_fields``); what it can do
(:class:`Capabilities`) decides how the analysis stage launches it, and an unsupported combination
is a config error before any work. The post-processing steps shared by the filters
(inflation, RTPS, spread cap) are the functions below.
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
    (empty: one rank only); ``nonlinear_operators``: observation operators other than h(x) = x[i]."""

    shards: tuple[str, ...] = ()
    nonlinear_operators: bool = True


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
        ``capabilities.shards`` also take ``comm`` (a ``sharding.Collective``) and ``device``."""
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

    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def from_config(cls, filter_cfg, grid=None) -> NoAssimilation:
        return cls(**config_keys(cls, filter_cfg))

    def analyse(self, prior, y, operator, generator=None) -> Analysis:
        return Analysis(prior.clone())


def relax_spread(analysis: torch.Tensor, prior: torch.Tensor, rtps: float) -> torch.Tensor:
    """RTPS (Whitaker & Hamill 2012): scale analysis anomalies so that, per dimension,
    σ_new = rtps·σ_f + (1 − rtps)·σ_a  (σ: ensemble std, ddof=1). rtps=0 leaves it unchanged."""
    if rtps == 0:
        return analysis
    mean = analysis.mean(0, keepdim=True)
    sa = analysis.std(0, keepdim=True).clamp_min(torch.finfo(analysis.dtype).tiny)
    sf = prior.std(0, keepdim=True)
    return mean + (analysis - mean) * (1.0 + rtps * (sf - sa) / sa)


def cap_spread(analysis: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Analysis anomalies scaled down, per dimension, where the analysis spread exceeds the prior's:
    σ_new = min(σ_a, σ_f) (σ: ensemble std, ddof=1). A Bayesian update never widens the spread;
    the EnSF's kernels do where observations say little (variance (1 + ε_β) s²)."""
    mean = analysis.mean(0, keepdim=True)
    sa = analysis.std(0, keepdim=True).clamp_min(torch.finfo(analysis.dtype).tiny)
    sf = prior.std(0, keepdim=True)
    return mean + (analysis - mean) * torch.clamp(sf / sa, max=1.0)


def inflate(ensemble: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiplicative inflation of the anomalies about the ensemble mean."""
    if factor == 1.0:
        return ensemble
    mean = ensemble.mean(0, keepdim=True)
    return mean + factor * (ensemble - mean)


def innovation_inflation(prior: torch.Tensor, y: torch.Tensor, operator: ObservationOperator) -> float:
    """Adaptive multiplicative inflation λ of the forecast anomalies from this cycle's innovations.

    With d = y − mean_m h(x_m) [p] and the ensemble variance of h(x) per observation v [p],
    E‖d‖² = λ² Σv + p σo² for a calibrated ensemble (Desroziers et al. 2005; the global estimate
    of Li, Kalnay & Miyoshi 2009, here without smoothing in time, so a sudden model error is met
    in the cycle it happens):  λ² = max(1, (‖d‖²/p − σo²) / mean(v)).  Returns λ (≥ 1).
    """
    hx = operator(prior)  # [M, p]
    d = y.to(hx) - hx.mean(0)
    v = hx.var(0).mean().clamp_min(torch.finfo(hx.dtype).tiny)
    return max(1.0, float((d.square().mean() - operator.sigma**2) / v)) ** 0.5


def observed_mask(operator: ObservationOperator, d: int) -> torch.Tensor | None:
    """Boolean [d]: the state components that ``operator`` observes; None when it observes all."""
    mask = torch.zeros(d, dtype=torch.bool, device=operator.indices.device)
    mask[operator.indices] = True
    return None if bool(mask.all()) else mask


def inflate_prior(
    prior: torch.Tensor,
    y: torch.Tensor,
    operator: ObservationOperator,
    factor: float,
    adaptive: bool,
    observed_only: bool = False,
) -> tuple[torch.Tensor, float]:
    """The forecast ensemble as a filter analyses it: anomalies × ``factor`` (``filter.inflation``),
    then × λ = ``innovation_inflation`` when ``adaptive`` (``filter.adaptive_inflation``). Returns it
    and the whole factor applied, ``factor`` · λ (recorded as ``inflation`` in ``scores.json``).

    ``observed_only``: λ multiplies only the anomalies of the observed components, the only ones
    whose error the innovations constrain (x_i ← x̄_i + λ (x_i − x̄_i) for i observed, unchanged
    otherwise); with every component observed this is the same operation as without it."""
    prior = inflate(prior, factor)
    if not adaptive:
        return prior, factor
    lam = innovation_inflation(prior, y, operator)
    mask = observed_mask(operator, prior.shape[-1]) if observed_only and lam != 1.0 else None
    if mask is None:
        return inflate(prior, lam), factor * lam
    mask = mask.to(prior.device)
    return torch.where(mask, inflate(prior, lam), prior), factor * lam


def make_filter(filter_cfg, grid=None) -> Filter:
    """The filter of ``filter_cfg``; the model's ``grid`` (``dynamics.grid.Grid``) gives the shape and
    the geometry that the LETKF (and the EnSF's ``unobserved=regress``) localises on."""
    return filter_class(filter_cfg["name"]).from_config(filter_cfg, grid)
