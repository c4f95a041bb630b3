"""Ensemble Score Filter (Bao, Zhang & Zhang 2023; seed paper eqs. 6–12), training-free.

Forecast ensemble X [M, d] is standardised per dimension, x̃ = (x − x̄)/s. Pseudo-time runs from
t=1 down to t=ε in ``n_steps`` steps of the reverse SDE

    dZ = [b(t) Z − σ²(t) s(Z, t)] dt + σ(t) dW̄,
    α_t = 1 − (1−ε_α) t,  β_t² = ε_β + (1−ε_β) t,  b = d log α/dt,  σ² = dβ²/dt − 2 b β²,

with posterior score s = s_prior + h(t) ∇ log p(y|z), damping h(t) = 1 − t. Prior score:

- ``mixture`` (the paper, eqs. 11–12): w_ij = softmax_j(−‖z_i − α x̃_j‖² / 2β²),
  s_prior(z_i) = −(z_i − α Σ_j w_ij x̃_j) / β²; distances by one matrix product.
- ``paired`` (the public reference code): sample i is pulled toward its own member,
  s_prior(z_i) = −(z_i − α x̃_i) / β².

Integrator: Euler–Maruyama with the likelihood term linearly implicit. With C the Gauss–Newton
curvature of −log p (diagonal, ``operator.curvature``) in standardised units,

    Δz = Δt (−b z + σ² s(z)) + √Δt σ ξ,     z ← z + Δz / (1 + Δt σ² h C).

Plain explicit stepping goes non-finite when the likelihood is sharp (DESIGN.md); the implicit
treatment is unconditionally stable for that term. Afterwards the spread is relaxed toward the
forecast spread (RTPS). Cost O(n_steps · M² · d) (mixture) — the only Python loop is over
pseudo-time.

Sharding over R ranks (``comm``; DESIGN.md): ``shard=members`` — rank r integrates a contiguous
block of the members (every rank holds all standardised members x̃ for the mixture score; no
communication per step); ``shard=state`` — rank r integrates a contiguous slice of the state indices
of every member, with the observation operator restricted to that slice and, for ``mixture``, one
all-reduce of the M×M matrix z·x̃ᵀ per step (‖x̃_j‖² once). Noise is a pure function of (key, step,
global member, global state index) (``scoreda.seeding.counter_normal``), and the M×M products are
accumulated in float64, so any R gives the one-rank result to rounding. Rank 0 gathers the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch

from scoreda.filters import inflate, innovation_inflation, relax_spread
from scoreda.observations import ObservationOperator
from scoreda.seeding import counter_normal, noise_key

SHARDS = ("members", "state")


class Collective(Protocol):
    """What a sharded analysis needs from its communicator (the mpi4py one: ``scoreda.stages.analysis``)."""

    rank: int
    size: int

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``t`` over the ranks, returned on every rank."""
        ...

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor | None:
        """The ranks' ``t`` concatenated along ``dim`` in rank order on rank 0 (CPU); None elsewhere."""
        ...


def block(n: int, parts: int, k: int) -> slice:
    """Block ``k`` of ``range(n)`` cut into ``parts`` contiguous blocks (the first n mod parts one longer)."""
    q, r = divmod(n, parts)
    start = k * q + min(k, r)
    return slice(start, start + q + (k < r))


def check_sharding(shard: str, members: int, d: int, ranks: int) -> None:
    """Every rank must own at least one member (``members``) or one state index (``state``)."""
    if shard not in SHARDS:
        raise ValueError(f"filter.shard: expected members or state, got {shard!r}")
    if shard == "members" and members < ranks:
        raise ValueError(
            f"filter.ranks: {ranks} ranks for {members} members with filter.shard=members:"
            " each rank needs at least one member (use fewer ranks or filter.shard=state)"
        )
    if shard == "state" and d < ranks:
        raise ValueError(
            f"filter.ranks: {ranks} ranks for a state of {d} values with filter.shard=state:"
            " each rank needs at least one state index"
        )


@dataclass
class EnSF:
    n_steps: int = 100
    prior_score: str = "paired"  # "paired" | "mixture"
    eps_alpha: float = 0.05
    eps_beta: float = 0.5
    t_end: float = 0.0  # ε: last pseudo-time (0 integrates to the end)
    rtps: float = 0.0
    inflation: float = 1.0
    adaptive_inflation: bool = False  # × innovation_inflation(prior, y) (≥ 1) before the analysis
    implicit: bool = True
    shard: str = "members"  # how ranks split the work: "members" | "state"

    def __post_init__(self) -> None:
        if self.prior_score not in ("paired", "mixture"):
            raise ValueError(f"filter.prior_score: expected paired or mixture, got {self.prior_score!r}")
        if self.n_steps < 1:
            raise ValueError(f"filter.n_steps: must be ≥ 1, got {self.n_steps}")
        if not 0 < self.eps_alpha < 1:
            raise ValueError(f"filter.eps_alpha: must be in (0, 1), got {self.eps_alpha}")
        if not 0 <= self.eps_beta <= 1:
            raise ValueError(f"filter.eps_beta: must be in [0, 1], got {self.eps_beta}")
        if not 0 <= self.t_end < 1:
            raise ValueError(f"filter.t_end: must be in [0, 1), got {self.t_end}")
        if self.shard not in SHARDS:
            raise ValueError(f"filter.shard: expected members or state, got {self.shard!r}")

    @classmethod
    def from_config(cls, cfg) -> EnSF:
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

    # schedules --------------------------------------------------------------
    def alpha(self, t: float) -> float:
        return 1.0 - (1.0 - self.eps_alpha) * t

    def beta_sq(self, t: float) -> float:
        return self.eps_beta + (1.0 - self.eps_beta) * t

    def drift_diffusion(self, t: float) -> tuple[float, float]:
        """(b, σ²) at pseudo-time t: b = d log α/dt, σ² = dβ²/dt − 2 b β²."""
        b = -(1.0 - self.eps_alpha) / self.alpha(t)
        return b, (1.0 - self.eps_beta) - 2.0 * b * self.beta_sq(t)

    def prior_score_fn(
        self,
        z: torch.Tensor,
        x: torch.Tensor,
        t: float,
        rows: slice = slice(None),
        x_sq: torch.Tensor | None = None,
        allreduce=None,
    ) -> torch.Tensor:
        """Score of the forward-diffused prior at z [m, d'], the samples of members ``rows``.

        x [M, d']: all standardised members on the same state indices as z. ``paired``: the pull of
        sample i is x_i. ``mixture``: x in float64 and x_sq [M] = ‖x_j‖² over the FULL state;
        G = z·xᵀ [m, M] (summed over ranks by ``allreduce`` when z holds a slice of the state),
        w = softmax_j((2α G_ij − α² ‖x_j‖²) / 2β²)  (‖z_i‖² cancels), s = (α w x − z) / β².
        """
        a, b2 = self.alpha(t), self.beta_sq(t)
        if self.prior_score == "paired":
            return (a * x[rows] - z) / b2
        g = z.to(torch.float64) @ x.T
        if allreduce is not None:
            g = allreduce(g)
        w = torch.softmax((2.0 * a * g - a * a * x_sq[None, :]) / (2.0 * b2), dim=1)
        return ((a * (w @ x)).to(z.dtype) - z) / b2

    @torch.no_grad()
    def analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None = None,
        comm: Collective | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | None:
        """Analysis ensemble [M, d] from the forecast ensemble ``prior`` [M, d] and obs ``y`` [p].

        The noise key is ``generator``'s seed. With ``comm`` (R ranks) every rank passes the full
        prior and all observations; rank r integrates block r of the members or of the state indices
        (``self.shard``) on ``device`` (default: the prior's), and rank 0 returns the gathered
        analysis while the others return None.
        """
        R, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        M, d = prior.shape
        check_sharding(self.shard, M, d, R)
        rows = block(M, R, rank) if self.shard == "members" else slice(0, M)
        cols = block(d, R, rank) if self.shard == "state" else slice(0, d)
        device = prior.device if device is None else torch.device(device)

        prior = inflate(prior, self.inflation)
        if self.adaptive_inflation:  # global, from the full prior on every rank: no communication
            prior = inflate(prior, innovation_inflation(prior, y, operator))
        floor = 1e-6 * prior.std().clamp_min(1e-30).item()
        local = prior[:, cols].to(device)  # [M, d'] (d' = d unless shard=state)
        mean = local.mean(0, keepdim=True)
        std = local.std(0, keepdim=True).clamp_min(floor)
        if cols != slice(0, d):
            operator, keep = operator.restrict(cols.start, cols.stop)
            y = y[keep.to(y.device)]
        allreduce = comm.allreduce if R > 1 and self.shard == "state" else None
        z = self._integrate(
            (local - mean) / std,
            mean,
            std,
            y.to(local),
            operator,
            noise_key(generator),
            rows,
            cols,
            allreduce,
        )
        analysis = mean + std * z  # [m, d']
        if R > 1:
            analysis = comm.gather(analysis.contiguous(), dim=0 if self.shard == "members" else 1)
            if analysis is None:
                return None
            analysis = analysis.to(device)
        return relax_spread(analysis, prior.to(device), self.rtps)

    def _integrate(self, x, mean, std, y, operator, key: int, rows: slice, cols: slice, allreduce):
        """Reverse SDE for samples ``rows`` on state indices ``cols``: z [m, d'] at t = ε.

        x [M, d'] standardised members, mean/std [1, d'], ``operator`` and y restricted to ``cols``;
        noise ξ(step, global member, global state index) from ``counter_normal``.
        """
        x_sq = None
        if self.prior_score == "mixture":
            x = x.to(torch.float64)
            x_sq = (x * x).sum(1)
            if allreduce is not None:
                x_sq = allreduce(x_sq)

        def noise(step: int) -> torch.Tensor:
            return counter_normal(key, step, rows, cols, dtype=mean.dtype, device=mean.device)

        if operator.linear:
            curv = operator.curvature(mean) * std[0] ** 2  # [d'], the same for every member
        z = noise(0)
        ts = torch.linspace(1.0, self.t_end, self.n_steps + 1, dtype=torch.float64).tolist()
        for k, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
            dt = t - t_next
            b, g2 = self.drift_diffusion(t)
            h = 1.0 - t
            score = self.prior_score_fn(z, x, t, rows=rows, x_sq=x_sq, allreduce=allreduce)
            xz = mean + std * z
            if h > 0:
                score = score + h * std * operator.likelihood_score(xz, y)
            dz = dt * (g2 * score - b * z) + (dt**0.5) * (g2**0.5) * noise(k + 1)
            if self.implicit and h > 0:
                c = curv if operator.linear else operator.curvature(xz) * std**2
                dz = dz / (1.0 + dt * g2 * h * c)
            z = z + dz
        return z
