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
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from scoreda.filters import inflate, relax_spread
from scoreda.observations import ObservationOperator


@dataclass
class EnSF:
    n_steps: int = 100
    prior_score: str = "paired"  # "paired" | "mixture"
    eps_alpha: float = 0.05
    eps_beta: float = 0.5
    t_end: float = 0.0  # ε: last pseudo-time (0 integrates to the end)
    rtps: float = 0.0
    inflation: float = 1.0
    implicit: bool = True

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

    def prior_score_fn(self, z: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor, t: float) -> torch.Tensor:
        """Score of the forward-diffused prior at z [M, d], given standardised members x [M, d]."""
        a, b2 = self.alpha(t), self.beta_sq(t)
        if self.prior_score == "paired":
            return (a * x - z) / b2
        # ‖z_i − α x_j‖² = ‖z_i‖² − 2α z_i·x_j + α²‖x_j‖²; the ‖z_i‖² term cancels in the softmax
        logits = (2.0 * a * (z @ x.T) - a * a * x_sq[None, :]) / (2.0 * b2)
        w = torch.softmax(logits, dim=1)
        return (a * (w @ x) - z) / b2

    @torch.no_grad()
    def analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Analysis ensemble [M, d] from the forecast ensemble ``prior`` [M, d] and obs ``y`` [p]."""
        prior = inflate(prior, self.inflation)
        mean = prior.mean(0, keepdim=True)
        std = prior.std(0, keepdim=True).clamp_min(1e-6 * prior.std().clamp_min(1e-30).item())
        x = (prior - mean) / std
        x_sq = (x * x).sum(1)
        y = y.to(prior)
        if operator.linear:
            curv = operator.curvature(prior) * std[0] ** 2

        def noise() -> torch.Tensor:  # drawn on the CPU so a seed gives the same numbers on any device
            return torch.randn(prior.shape, generator=generator, dtype=prior.dtype).to(prior.device)

        z = noise()
        ts = torch.linspace(1.0, self.t_end, self.n_steps + 1, dtype=torch.float64).tolist()
        for t, t_next in zip(ts[:-1], ts[1:], strict=True):
            dt = t - t_next
            b, g2 = self.drift_diffusion(t)
            h = 1.0 - t
            score = self.prior_score_fn(z, x, x_sq, t)
            xz = mean + std * z
            if h > 0:
                score = score + h * std * operator.likelihood_score(xz, y)
            dz = dt * (g2 * score - b * z) + (dt**0.5) * (g2**0.5) * noise()
            if self.implicit and h > 0:
                c = curv if operator.linear else operator.curvature(xz) * std**2
                dz = dz / (1.0 + dt * g2 * h * c)
            z = z + dz
        analysis = mean + std * z
        return relax_spread(analysis, prior, self.rtps)
