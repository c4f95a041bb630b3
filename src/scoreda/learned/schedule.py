"""The variance-preserving cosine schedule of seed 003 (after Rozet & Louppe's SDA).

    x_t = μ_t x_0 + σ_t ε,   ε ~ N(0, I),   t ∈ [0, 1]
    μ_t = cos(ω t)²,  ω = arccos(√η),   σ_t = √(1 − μ_t² + η²)

so μ_0 = 1, σ_0 = η (almost clean) and μ_1 = η, σ_1 ≈ 1 (almost pure noise). A network ε_θ(x_t, t)
that predicts ε gives the score ∇ log p_t(x_t) ≈ −ε_θ(x_t, t) / σ_t and Tweedie's estimate
E[x_0 | x_t] ≈ (x_t − σ_t ε_θ) / μ_t.
"""

from __future__ import annotations

import math

import torch


class VPCosine:
    """μ_t and σ_t for t of any shape (tensors in, tensors out, same dtype and device)."""

    def __init__(self, eta: float = 1e-3):
        if not 0 < eta < 1:
            raise ValueError(f"eta: must be in (0, 1), got {eta}")
        self.eta = float(eta)
        self.omega = math.acos(math.sqrt(eta))

    def mu(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.omega * t) ** 2

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.mu(t) ** 2 + self.eta**2).sqrt()

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(t), self.sigma(t)
