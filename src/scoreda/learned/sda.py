"""Posterior sampling with a learned prior score (SDA, seed 003 after Rozet & Louppe): the reverse VP
process with the prior's ε_θ and a Gaussian approximation of the likelihood score.

Likelihood of y = A(x₀) + ν, ν ~ N(0, Σ_y), given x_t, through Tweedie's estimate
x̂₀ = (x_t − σ_t ε_θ(x_t, t)) / μ_t:

    p(y | x_t) ≈ N(y | A(x̂₀), Σ_y + γ (σ_t/μ_t)² I)

so the posterior's ε is ε_post = ε_θ − σ_t ∇_{x_t} log p(y | x_t) (autograd through ε_θ and A).
From t = 1 to 0 in ``steps`` even steps, each a predictor, the exponential integrator

    x_{t−Δ} = (μ_{t−Δ}/μ_t) x_t + (σ_{t−Δ} − (μ_{t−Δ}/μ_t) σ_t) ε_post(x_t, t)

then ``corrections`` Langevin corrections at t − Δ, x ← x − δ ε_post/σ + √(2δ) z with
δ = τ / mean(ε_post²/σ²) per sample (a step τ relative to the score's size). The samples are x₀ [B, ...].

``update`` in place of ``observe`` (``sample(..., update=...)``): the Kalman guidance. Tweedie's
estimate is moved by a Gaussian update with a diagonal prior variance C_t = κ/(1 + κ), κ = γ (σ_t/μ_t)²,
per value (exact for a white unit-variance prior at γ = 1), x̂₀ ← update(x̂₀, C_t), and
ε_post = (x_t − μ_t x̂₀)/σ_t; no gradient of ε_θ (one network evaluation a step instead of a forward
and a backward pass), and the gain C_t/(C_t + R) ≤ 1 cannot overshoot where ε_θ's Jacobian is poor
(at t → 1 Tweedie's guidance needs it exact to O(μ_t²)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoreda.learned.schedule import VPCosine

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def posterior_eps(
    eps: EpsFn,
    schedule: VPCosine,
    x: torch.Tensor,
    t: torch.Tensor,
    observe: Callable[[torch.Tensor], torch.Tensor] | None,
    y: torch.Tensor | None,
    var_y: torch.Tensor | float,
    gamma: torch.Tensor | float,
) -> torch.Tensor:
    """ε_post(x_t, t) [B, ...] for x [B, ...] at the scalar time t; the prior's ε without observations."""
    mu, sigma = schedule(t)
    tt = t.expand(x.shape[0])
    if observe is None:
        with torch.no_grad():
            return eps(x, tt)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        e = eps(x, tt)
        x0 = (x - sigma * e) / mu
        err = y - observe(x0)
        var = var_y + gamma * (sigma / mu) ** 2
        log_lik = -0.5 * (err.square() / var).sum()
        (grad,) = torch.autograd.grad(log_lik, x)
    return (e - sigma * grad).detach()


def kalman_eps(
    eps: EpsFn,
    schedule: VPCosine,
    x: torch.Tensor,
    t: torch.Tensor,
    update: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    gamma: float,
) -> torch.Tensor:
    """ε_post(x_t, t) of the Kalman guidance (module docstring) for x [B, ...] at the scalar time t."""
    mu, sigma = schedule(t)
    e = eps(x, t.expand(x.shape[0]))
    kappa = gamma * (sigma / mu) ** 2
    x0 = update((x - sigma * e) / mu, kappa / (1 + kappa))
    return (x - mu * x0) / sigma


def gauss_newton_step(
    x: torch.Tensor, score: torch.Tensor, curv: torch.Tensor, prior_var: torch.Tensor, linear: bool
) -> torch.Tensor:
    """x + score / (1/prior_var + curv): the Gaussian update of every value with the likelihood's score
    and Gauss–Newton curvature at x (exact for a linear operator). A nonlinear operator's step is
    kept within 3 prior standard deviations (a trust region: Newton's step on arctan overshoots
    without bound where |x| > 1.4, e.g. −12.5 from x = 3 toward 0)."""
    step = score / (1 / prior_var + curv)
    if not linear:
        bound = 3 * prior_var.sqrt()
        step = torch.maximum(torch.minimum(step, bound), -bound)
    return x + step


@torch.no_grad()
def sample(
    eps: EpsFn,
    schedule: VPCosine,
    shape: tuple[int, ...],
    generator: torch.Generator,
    observe: Callable[[torch.Tensor], torch.Tensor] | None = None,
    y: torch.Tensor | None = None,
    var_y: torch.Tensor | float = 1.0,
    gamma: torch.Tensor | float = 1e-2,
    steps: int = 256,
    corrections: int = 1,
    tau: float = 0.5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    update: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    t_max: float = 1.0,
) -> torch.Tensor:
    """B = shape[0] samples x₀ of p(x₀ | y) (of the prior p(x₀) with ``observe`` None); ``observe`` maps
    [B, ...] → [B, ...y] and ``y``, ``var_y`` and ``gamma`` broadcast against its output. The noise is
    drawn on the CPU ``generator`` and moved to ``device``. ``update(x̂₀, C_t)``: the Kalman guidance
    instead (``observe`` is then unused; ``gamma`` a float)."""

    def post(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if update is not None:
            return kalman_eps(eps, schedule, x, t, update, float(gamma))
        return posterior_eps(eps, schedule, x, t, observe, y, var_y, gamma)

    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    times = torch.linspace(float(t_max), 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(times[:-1], times[1:], strict=True):
        t, s = t.to(dtype), s.to(dtype)
        (mu_t, sig_t), (mu_s, sig_s) = schedule(t), schedule(s)
        e = post(x, t)
        x = (mu_s / mu_t) * x + (sig_s - (mu_s / mu_t) * sig_t) * e
        for _ in range(corrections):
            e = post(x, s)
            # δ/σ² per sample, with the score −ε/σ: the step τ σ² / mean(ε²)
            delta = tau / e.square().flatten(1).mean(1).view(-1, *[1] * (e.dim() - 1))
            z = torch.randn(shape, generator=generator, dtype=dtype).to(device)
            x = x - delta * sig_s * e + (2 * delta).sqrt() * sig_s * z
    return x
