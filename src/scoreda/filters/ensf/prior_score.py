"""The EnSF's prior-score estimators at one pseudo-time step (α = ``st.a``, β² = ``st.b2``), from
samples z [m, c] and standardised forecast members x̃ (all in the same column block).

- ``paired`` (the public reference code): sample i is pulled toward its own member,
  s_prior(z_i) = (α x̃_i − z_i) / β².
- ``mixture`` (the paper, eqs. 11–12): the score of the Gaussian mixture Σ_j N(α x̃_j, β² I),
  w_ij = softmax_j(−‖z_i − α x̃_j‖² / 2β²),  s_prior(z_i) = (α Σ_j w_ij x̃_j − z_i) / β².
  ‖z_i‖² cancels in the softmax, so w needs only G = z·x̃ᵀ [m, M] and ‖x̃_j‖² [M] (float64), which the
  integrator sums over column blocks (and ranks)."""

from __future__ import annotations

import torch

from scoreda.filters.ensf.schedule import Step

PRIOR_SCORES = ("paired", "mixture")


def paired(st: Step, x: torch.Tensor, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(α x̃ − z)/β² into ``out``, x̃ and z [m, c] row-paired."""
    return torch.mul(x, st.a, out=out).sub_(z).div_(st.b2)


def mixture_weights(st: Step, g: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """w [m, M] = softmax_j((2α G_ij − α² ‖x̃_j‖²) / 2β²) from G = z·x̃ᵀ [m, M] and ‖x̃_j‖² [M]."""
    a, b2 = st.a, st.b2
    return torch.softmax((2.0 * a * g - a * a * x_sq[None, :]) / (2.0 * b2), dim=1)


def mixture(st: Step, w: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(α w x̃ − z)/β² [m, c] from the weights w [m, M] and all members x̃ [M, c] (float64)."""
    return (st.a * (w @ x)).to(z.dtype).sub_(z).div_(st.b2)
