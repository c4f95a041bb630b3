"""DiffDA's sampler (seed 004): a conditional diffusion model of the forecast's error, with the
observations imposed by inpainting (RePaint, Lugmayr et al. 2022) through a soft mask.

The network ε_θ(r_t, t | f) denoises r = x − f (the error of the forecast f, normalised) given f.
Observations fix r at the observed values: r̃ = y − f[obs]. Point values vanish in the U-Net's
downsampling, so, as seed 004 does, the mask is enlarged with interpolated data: with P the 0/1 mask of
observed values [C, H, W] and G a periodic Gaussian of ``radius`` grid lengths,

    known = G ⊛ (P r̃) / G ⊛ P,      w = min(1, G ⊛ P / G(0))   (w = 1 at observed points)

Reverse process from t_max to 0 in ``steps`` even steps t → s (DDIM with stochasticity ``eta``:
η = 1 the ancestral sampler, 0 deterministic); after each step the known part is put back at the
noise level of s:

    r̂₀ = (r_t − σ_t ε_θ)/μ_t,   r_s = μ_s r̂₀ + √(σ_s² − c²) ε_θ + c z,   c² = η² σ²_{t|s} σ_s²/σ_t²
    r_s ← w (μ_s known + σ_s z′) + (1 − w) r_s

with σ²_{t|s} = σ_t² − (μ_t/μ_s)² σ_s². Noisy observations (``noise`` λ = σo / the errors' std, per
channel): an observed value r̃ = r + λ ε is r at the noise level λ already, so it enters as
μ_s known + √(σ_s² − μ_s² λ²) z′ while σ_s ≥ μ_s λ and not at all below that level, where the
network denoises it like every other value (λ = 0: the observations are exact, RePaint itself).
``resample`` > 1: RePaint's resampling, each step repeated
after diffusing r_s back to t, r_t = (μ_t/μ_s) r_s + σ_{t|s} z″ (steps × resample network calls).
"""

from __future__ import annotations

import torch

from scoreda.learned.schedule import VPCosine
from scoreda.learned.unet import ScoreUNet


def soft_mask(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """G ⊛ mask for masks [..., H, W] with G(0) = 1: the periodic Gaussian exp(−r²/2ρ²) (ρ = ``radius``
    grid lengths; 0: the mask itself), by FFT."""
    if radius <= 0:
        return mask
    H, W = mask.shape[-2:]
    dy = torch.minimum(torch.arange(H), H - torch.arange(H)).to(mask.dtype)
    dx = torch.minimum(torch.arange(W), W - torch.arange(W)).to(mask.dtype)
    g = torch.exp(-(dy[:, None] ** 2 + dx[None] ** 2) / (2 * radius**2)).to(mask.device)
    return torch.fft.irfft2(torch.fft.rfft2(mask) * torch.fft.rfft2(g), s=(H, W))


def inpainting_targets(
    values: torch.Tensor, mask: torch.Tensor, radius: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(known, w) [B, C, H, W] of the module docstring from values [B, C, H, W] (read where mask is 1)
    and the 0/1 mask [C, H, W]."""
    mask = mask.to(values.dtype)
    den = soft_mask(mask, radius)
    known = soft_mask(values * mask, radius) / den.clamp_min(1e-12)
    w = den.clamp(0.0, 1.0)
    w = torch.where(den > 1e-6, w, torch.zeros_like(w))
    return torch.where(mask > 0, values, known), w.expand_as(values)


@torch.no_grad()
def sample(
    net: ScoreUNet,
    schedule: VPCosine,
    cond: torch.Tensor,
    known: torch.Tensor,
    weight: torch.Tensor,
    generator: torch.Generator,
    steps: int = 32,
    t_max: float = 1.0,
    eta: float = 1.0,
    resample: int = 1,
    noise: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Samples r₀ [B, C, H, W] given the condition ``cond`` [B, C', H, W] and the inpainting targets
    ``known``, ``weight`` (``inpainting_targets``) with noise level ``noise`` (broadcast against them);
    noise from the CPU ``generator``, moved to cond's device."""
    dev, dt = cond.device, cond.dtype
    shape = known.shape

    def noise_like() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=dt).to(dev)

    lam = torch.as_tensor(noise, dtype=dt, device=dev)
    x = noise_like()
    times = torch.linspace(float(t_max), 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(times[:-1], times[1:], strict=True):
        t, s = t.to(dt), s.to(dt)
        (mu_t, sig_t), (mu_s, sig_s) = schedule(t), schedule(s)
        a = mu_t / mu_s  # α_{t|s}
        var_ts = (sig_t**2 - a**2 * sig_s**2).clamp_min(0)
        c = eta * (var_ts * sig_s**2 / sig_t**2).sqrt()
        extra = sig_s**2 - (mu_s * lam) ** 2  # the noise the observations lack at level s
        w = torch.where(extra >= 0, weight, torch.zeros_like(weight))
        for u in range(resample):
            e = net(x, t.expand(shape[0]), cond)
            x0 = (x - sig_t * e) / mu_t
            xs = mu_s * x0 + (sig_s**2 - c**2).clamp_min(0).sqrt() * e + c * noise_like()
            xs = w * (mu_s * known + extra.clamp_min(0).sqrt() * noise_like()) + (1 - w) * xs
            if u < resample - 1:
                x = a * xs + var_ts.sqrt() * noise_like()
        x = xs
    return x
