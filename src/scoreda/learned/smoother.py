"""SDA as a smoother (seed 003): M trajectories x_{1:L} [M, L, C, H, W] sampled from
p(x_{1:L} | y_{1:L}) with a local score network over windows of 2k+1 states.

The trajectory's ε is composed from the network's ε on its L − 2k windows x_{i−k:i+k} (stacked as
(2k+1)·C channels, as ``train_score`` trains it): state i takes the centre of the window centred on
it, the first k and the last k states their positions in the first and the last window. For a
Markov chain of order ≤ k this is the score of the whole trajectory at t = 0 (each state's score
depends on its k neighbours on either side only); at t > 0 an approximation (seed 003). All windows
of all trajectories go through the network in batches of ``batch`` windows.

Observations y [L, p] of every state through one operator h (``ObservationOperator``), σo; the
sampler is ``sda.sample`` on the normalised trajectory z = (x − m_c)/s_c with

- ``guidance=kalman``: Tweedie's estimate x̂₀ of every state moved by the Gaussian update of each
  value (prior variance C_t s_c², C_t = κ/(1 + κ), κ = γ (σ_t/μ_t)²), one Gauss–Newton step with h's
  likelihood score and curvature; no network gradient;
- ``guidance=tweedie``: seed 003's likelihood N(y | h(x̂₀), σo² + γ (σ_t/μ_t)² s_c²), autograd
  through the composed ε_θ.

Cost: steps × (1 + corrections) evaluations of ε_θ on M (L − 2k) windows (and their backward pass
with ``guidance=tweedie``).
"""

from __future__ import annotations

import torch

from scoreda.learned import sda
from scoreda.learned.schedule import VPCosine
from scoreda.learned.unet import ScoreUNet
from scoreda.observations import ObservationOperator

GUIDANCE = ("kalman", "tweedie")


def trajectory_eps(net: ScoreUNet, k: int, batch: int = 64) -> sda.EpsFn:
    """ε(x, t) [B, L, C, H, W] of trajectories x [B, L, C, H, W] at times t [B], composed from the
    window network ``net`` of 2k+1 states (module docstring); L ≥ 2k + 1."""
    w = 2 * k + 1

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B, L, C, H, W = x.shape
        n = L - 2 * k
        if n < 1:
            raise ValueError(f"a trajectory of {L} states is shorter than the network's window of {w}")
        windows = x.unfold(1, w, 1).permute(0, 1, 5, 2, 3, 4).reshape(B * n, w * C, H, W)
        tt = t.repeat_interleave(n)
        e = torch.cat([net(windows[i : i + batch], tt[i : i + batch]) for i in range(0, B * n, batch)])
        e = e.reshape(B, n, w, C, H, W)
        return torch.cat([e[:, 0, :k], e[:, :, k], e[:, -1, k + 1 :]], dim=1)

    return eps


def smooth(
    network: tuple[ScoreUNet, VPCosine, torch.Tensor, torch.Tensor],
    k: int,
    operator: ObservationOperator,
    y: torch.Tensor,
    shape: tuple[int, int, int],
    samples: int,
    generator: torch.Generator,
    guidance: str = "kalman",
    gamma: float = 1.0,
    steps: int = 64,
    corrections: int = 1,
    tau: float = 0.5,
    t_max: float = 0.9,
    batch: int = 64,
) -> torch.Tensor:
    """``samples`` trajectories [M, L, C, H, W] in model units given y [L, p] (module docstring);
    ``network``: (ε_θ over windows of 2k+1 states, schedule, mean[C], std[C])."""
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance: expected one of {', '.join(GUIDANCE)}, got {guidance!r}")
    net, schedule, mean, std = network
    C, H, W = shape
    L, d = y.shape[0], C * H * W
    if net.channels != (2 * k + 1) * C:
        raise ValueError(f"the network takes {net.channels} channels, not windows of {2 * k + 1} × {C}")
    m, s = mean.float().view(1, 1, C, 1, 1), std.float().view(1, 1, C, 1, 1)
    s2 = (std.float() ** 2).repeat_interleave(H * W)  # s_c² of every state value [d]
    y = y.float()

    def model_units(z: torch.Tensor) -> torch.Tensor:
        return (z * s + m).reshape(-1, L, d)

    def update(z0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = model_units(z0)
        score = operator.likelihood_score(x.reshape(-1, d), y.repeat(x.shape[0], 1)).reshape(x.shape)
        curv = operator.curvature(x.reshape(-1, d)).expand(x.shape[0] * L, d).reshape(x.shape)
        x = sda.gauss_newton_step(x, score, curv, c * s2, operator.linear)
        return (x.reshape(z0.shape) - m) / s

    def observe(z: torch.Tensor) -> torch.Tensor:
        x = model_units(z)
        return operator(x.reshape(-1, d)).reshape(x.shape[0], L, -1)

    idx = operator.indices
    z = sda.sample(
        trajectory_eps(net, k, batch),
        schedule,
        (samples, L, C, H, W),
        generator,
        observe=observe,
        y=y,
        var_y=float(operator.sigma) ** 2,
        gamma=gamma if guidance == "kalman" else gamma * s2[idx],
        steps=steps,
        corrections=corrections,
        tau=tau,
        update=update if guidance == "kalman" else None,
        t_max=t_max,
    )
    if not torch.isfinite(z).all():
        raise FloatingPointError(f"the smoother diverged ({steps} steps, gamma={gamma}, guidance={guidance})")
    return z * s + m
