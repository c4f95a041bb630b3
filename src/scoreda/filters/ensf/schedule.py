"""The EnSF's pseudo-time schedule (seed paper eqs. 6–8): t runs from 1 down to t_end in n_steps
equal steps, with

    α_t = 1 − (1 − ε_α) t,   β_t² = ε_β + (1 − ε_β) t,   b = d log α/dt,   σ² = dβ²/dt − 2 b β²,

and the likelihood damping h(t) = 1 − t."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    """Pseudo-time step k from t to t − dt: drift b, diffusion σ² (g2), damping h, α (a), β² (b2),
    √Δt σ (sq)."""

    k: int
    t: float
    dt: float
    b: float
    g2: float
    h: float
    a: float
    b2: float
    sq: float


@dataclass(frozen=True)
class Schedule:
    n_steps: int
    eps_alpha: float
    eps_beta: float
    t_end: float = 0.0

    def alpha(self, t: float) -> float:
        return 1.0 - (1.0 - self.eps_alpha) * t

    def beta_sq(self, t: float) -> float:
        return self.eps_beta + (1.0 - self.eps_beta) * t

    def drift_diffusion(self, t: float) -> tuple[float, float]:
        """(b, σ²) at pseudo-time t: b = d log α/dt, σ² = dβ²/dt − 2 b β²."""
        b = -(1.0 - self.eps_alpha) / self.alpha(t)
        return b, (1.0 - self.eps_beta) - 2.0 * b * self.beta_sq(t)

    def steps(self) -> list[Step]:
        """The n_steps steps, t on a float64 linspace from 1 to t_end."""
        ts = torch.linspace(1.0, self.t_end, self.n_steps + 1, dtype=torch.float64).tolist()
        out = []
        for k, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
            dt = t - t_next
            b, g2 = self.drift_diffusion(t)
            out.append(Step(k, t, dt, b, g2, 1.0 - t, self.alpha(t), self.beta_sq(t), dt**0.5 * g2**0.5))
        return out
