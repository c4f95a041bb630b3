"""What the ensemble filters do around their analysis, in one chain with its order explicit.

``Processing.before`` (the forecast ensemble as the filter analyses it):

1. multiplicative inflation × ``inflation``, then × λ (``innovation_inflation``) when adaptive.

``Processing.after`` (the analysis ensemble, against that inflated forecast):

2. ``regress_unobserved`` (EnSF ``unobserved=regress``): unobserved components from the observed;
3. RTPP (``relax_perturbations``) toward the forecast anomalies;
4. ``cap_spread``: the analysis spread ≤ the forecast spread per component;
5. RTPS (``relax_spread``) toward the forecast spread.

Each step is the identity at its default. Ensembles are [M, d] (members × state); σ is the ensemble
std (ddof = 1) per component.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from scoreda.observations import ObservationOperator

Allreduce = Callable[[torch.Tensor], torch.Tensor]  # elementwise sum over the ranks (``Collective``)


class Localiser(Protocol):
    def regress(
        self, xb: torch.Tensor, observed: torch.Tensor, increments: torch.Tensor, precision: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Processing:
    """The chain of one filter's settings (the module docstring gives the order)."""

    inflation: float = 1.0  # 1. × the forecast anomalies
    adaptive_inflation: bool = False  # 1. then × λ ≥ 1 from the innovations
    observed_only: bool = False  # 1. λ only on the observed components
    regress: bool = False  # 2. regress the unobserved components
    localiser: Localiser | None = None  # 2. the regression's geometry
    rtps_unobserved: float = 0.0  # 2. RTPS of the regressed components
    rtpp: float = 0.0  # 3.
    cap_spread: bool = False  # 4.
    rtps: float = 0.0  # 5.

    @classmethod
    def of(cls, f, **steps) -> Processing:
        """The chain of filter ``f``'s common keys (``inflation``, ``adaptive_inflation``, ``rtps`` and,
        where it has one, ``rtpp``) and the filter-specific ``steps``."""
        keys = dict(inflation=f.inflation, adaptive_inflation=f.adaptive_inflation, rtps=f.rtps)
        return cls(**keys, rtpp=getattr(f, "rtpp", 0.0), **steps)

    def before(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        allreduce: Allreduce | None = None,
    ) -> tuple[torch.Tensor, float]:
        """Step 1: the inflated forecast and the whole factor applied (``inflate_prior``; with
        ``allreduce``, of a slice of the state: λ from the sums over the ranks)."""
        return inflate_prior(
            prior, y, operator, self.inflation, self.adaptive_inflation, self.observed_only, allreduce
        )

    def after(
        self, analysis: torch.Tensor, prior: torch.Tensor, operator: ObservationOperator
    ) -> torch.Tensor:
        """Steps 2–5 on ``analysis`` [M, d] against the inflated forecast ``prior`` [M, d]."""
        if self.regress:
            analysis = regress_unobserved(analysis, prior, operator, self.localiser, self.rtps_unobserved)
        if self.rtpp:
            analysis = relax_perturbations(analysis, prior - prior.mean(0, keepdim=True), self.rtpp)
        if self.cap_spread:
            analysis = cap_spread(analysis, prior)
        return relax_spread(analysis, prior, self.rtps)


def inflate(ensemble: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiplicative inflation of the anomalies about the ensemble mean."""
    if factor == 1.0:
        return ensemble
    mean = ensemble.mean(0, keepdim=True)
    return (ensemble - mean).mul_(factor).add_(mean)  # mean + factor (x − mean), one temporary


def innovation_inflation(
    prior: torch.Tensor, y: torch.Tensor, operator: ObservationOperator, allreduce: Allreduce | None = None
) -> float:
    """Adaptive multiplicative inflation λ of the forecast anomalies from this cycle's innovations.

    With d = y − mean_m h(x_m) [p] and the ensemble variance of h(x) per observation v [p],
    E‖d‖² = λ² Σv + p σo² for a calibrated ensemble (Desroziers et al. 2005; the global estimate
    of Li, Kalnay & Miyoshi 2009, here without smoothing in time, so a sudden model error is met
    in the cycle it happens):  λ² = max(1, (‖d‖²/p − σo²) / mean(v)).  Returns λ (≥ 1); 1 without
    observations. ``allreduce``: the sums (‖d‖², Σv, p; float64) over the ranks that each hold a
    slice of the state and its observations (``filters.sharding``).
    """
    hx = operator(prior)  # [M, p]
    d = y.to(hx) - hx.mean(0)
    sums = torch.stack(
        [d.double().square().sum(), hx.var(0).double().sum(), d.new_tensor(d.numel()).double()]
    )
    d2, v, p = (sums if allreduce is None else allreduce(sums)).tolist()
    if p == 0:
        return 1.0
    return max(1.0, (d2 / p - operator.sigma**2) / max(v / p, torch.finfo(hx.dtype).tiny)) ** 0.5


def innovation_white(
    prior: torch.Tensor,
    y: torch.Tensor,
    operator: ObservationOperator,
    groups: torch.Tensor | None = None,
    n: int = 1,
    significance: float = 0.0,
) -> torch.Tensor:
    """Adaptive variance σ_w² of an error the ensemble does not span, white in space, from this cycle's
    innovations (the additive counterpart of ``innovation_inflation``). With d_j and v_j as there and
    g'_j the slope of h at the forecast mean at observation j,  E d_j² = v_j + σo² + g'_j² σ_w²;  the
    least-squares fit of σ_w² to these equations (``white_fit``, with its ``significance`` threshold),
    one σ_w² per group of observations (``groups`` [p]: labels 0..n−1, e.g. the state variable
    observed; None: one group), is

        σ_w² = max(0, Σ_j g'_j² (d_j² − v_j − σo²) / Σ_j g'_j⁴)

    (= (‖d‖²/p − σo² − mean(v)) / g'² for a linear h; for a nonlinear one the observations where h is
    flat, which say little about σ_w², weigh little). Returns σ_w² [n] (≥ 0, state units²)."""
    hx = operator(prior)  # [M, p]
    d = y.to(hx) - hx.mean(0)
    return white_fit(
        d.square() - hx.var(0), observed_slope2(prior, operator), operator.sigma, groups, n, significance
    )


def white_fit(
    moment: torch.Tensor,
    slope2: torch.Tensor,
    sigma: float,
    groups: torch.Tensor | None = None,
    n: int = 1,
    significance: float = 0.0,
) -> torch.Tensor:
    """σ_w² ≥ 0 fitted by least squares to  moment_j = σo² + g'_j² σ_w²  (moment, g'_j² = ``slope2``:
    [p]) in each group of observations (``groups`` [p], labels 0..n−1; None: one):
    σ̂_w² = Σ g'_j² (moment_j − σo²) / Σ g'_j⁴ [n]; 0 for a group without observations, and 0 where
    σ̂_w² ≤ ``significance`` × its standard error, SE² = Σ g'_j⁴ r_j² / (Σ g'_j⁴)² with the residuals
    r_j = moment_j − σo² − g'_j² σ̂_w² (the sandwich estimate; it takes the moments as independent, so
    spatially correlated errors make it an underestimate). A few observations give a noisy σ̂_w²
    whose positive part, clipped at zero, is biased up: the threshold keeps such noise out."""
    groups = torch.zeros_like(slope2, dtype=torch.long) if groups is None else groups.to(slope2.device)
    excess = moment - sigma**2
    num = slope2.new_zeros(n).index_add_(0, groups, slope2 * excess)
    den = slope2.new_zeros(n).index_add_(0, groups, slope2.square())
    fit = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
    if significance > 0:
        r2 = (excess - slope2 * fit[groups]).square()
        se = (slope2.new_zeros(n).index_add_(0, groups, slope2.square() * r2)).sqrt() / den.clamp_min(
            torch.finfo(den.dtype).tiny
        )
        fit = torch.where(fit > significance * se, fit, 0.0)
    return fit.clamp_min(0.0)


def observed_slope2(prior: torch.Tensor, operator: ObservationOperator) -> torch.Tensor:
    """g'_j² [p]: the squared slope of h at the forecast mean of ``prior`` [M, d] at each observation
    (the operator's Gauss–Newton ``curvature`` × σo²)."""
    curvature = operator.curvature(prior.mean(0, keepdim=True))
    return curvature[..., operator.indices].reshape(-1) * operator.sigma**2


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
    allreduce: Allreduce | None = None,
) -> tuple[torch.Tensor, float]:
    """The forecast ensemble as a filter analyses it: anomalies × ``factor`` (``filter.inflation``),
    then × λ = ``innovation_inflation`` when ``adaptive`` (``filter.adaptive_inflation``). Returns it
    and the whole factor applied, ``factor`` · λ (recorded as ``inflation`` in ``scores.json``).

    ``observed_only``: λ multiplies only the anomalies of the observed components, the only ones
    whose error the innovations constrain (x_i ← x̄_i + λ (x_i − x̄_i) for i observed, unchanged
    otherwise); with every component observed this is the same operation as without it.
    ``allreduce``: λ from the sums over the ranks (``innovation_inflation``); the rest is per component."""
    prior = inflate(prior, factor)
    if not adaptive:
        return prior, factor
    lam = innovation_inflation(prior, y, operator, allreduce)
    mask = observed_mask(operator, prior.shape[-1]) if observed_only and lam != 1.0 else None
    if mask is None:
        return inflate(prior, lam), factor * lam
    mask = mask.to(prior.device)
    return torch.where(mask, inflate(prior, lam), prior), factor * lam


def regress_unobserved(
    analysis: torch.Tensor,
    forecast: torch.Tensor,
    operator: ObservationOperator,
    localiser: Localiser | None,
    rtps_unobserved: float,
) -> torch.Tensor:
    """The unobserved components u of the analysis [M, d] replaced by the forecast plus the localised
    ensemble regression (``localiser.regress``, the LETKF's) of the members' changes at the observed
    components o,

        x^a_u = x^f_u + C_uo (C_oo + R)⁻¹ (x^a_o − x^f_o)     (GC-localised, ridge R = diag(1/c)),

    then RTPS with ``rtps_unobserved`` toward the forecast spread (the 20-member regression takes out
    more spread than error); C the covariances of ``forecast`` [M, d], c = ``operator.curvature`` at
    its mean (1/σo² for a linear h). A no-op when every component is observed."""
    mask = observed_mask(operator, forecast.shape[1])
    if mask is None:
        return analysis
    if localiser is None:
        raise ValueError("filter.unobserved=regress: no localiser (from_config(filter, grid) builds it)")
    mask = mask.to(forecast.device)
    obs = mask.nonzero().squeeze(1)
    mean = forecast.mean(0, keepdim=True)
    precision = operator.curvature(mean).reshape(-1)[obs]
    delta = localiser.regress(forecast - mean, obs, analysis[:, obs] - forecast[:, obs], precision)
    regressed = relax_spread(forecast + delta.to(forecast.dtype), forecast, rtps_unobserved)
    return torch.where(mask, analysis, regressed)


def relax_perturbations(analysis: torch.Tensor, xb: torch.Tensor, rtpp: float) -> torch.Tensor:
    """RTPP (Zhang et al. 2004): analysis anomalies ← (1 − rtpp) Xa + rtpp Xb, Xb the forecast
    anomalies [M, d]; the analysis mean is kept."""
    mean = analysis.mean(0, keepdim=True)
    return mean + (1.0 - rtpp) * (analysis - mean) + rtpp * xb


def cap_spread(analysis: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Analysis anomalies scaled down, per component, where the analysis spread exceeds the prior's:
    σ_new = min(σ_a, σ_f). A Bayesian update never widens the spread; the EnSF's kernels do where
    observations say little (variance (1 + ε_β) s²)."""
    mean = analysis.mean(0, keepdim=True)
    sa = analysis.std(0, keepdim=True).clamp_min(torch.finfo(analysis.dtype).tiny)
    sf = prior.std(0, keepdim=True)
    return mean + (analysis - mean) * torch.clamp(sf / sa, max=1.0)


def relax_spread(analysis: torch.Tensor, prior: torch.Tensor, rtps: float) -> torch.Tensor:
    """RTPS (Whitaker & Hamill 2012): analysis anomalies scaled so that, per component,
    σ_new = rtps·σ_f + (1 − rtps)·σ_a. rtps = 0 (or one member) leaves it unchanged."""
    if rtps == 0 or len(analysis) == 1:
        return analysis
    mean = analysis.mean(0, keepdim=True)
    sa = analysis.std(0, keepdim=True).clamp_min(torch.finfo(analysis.dtype).tiny)
    sf = prior.std(0, keepdim=True)
    return mean + (analysis - mean) * (1.0 + rtps * (sf - sa) / sa)
