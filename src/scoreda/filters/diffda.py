"""DiffDA as a filter in the cycle (``filter=diffda``; seed 004): each member's analysis is a sample of
the learned distribution of the truth given that member's forecast, with the observations imposed by
inpainting.

x_m^a = f_m + r_m,   r_m ~ p_θ(r | f_m) with r fixed at the observed points to y_m − f_m[obs]

- p_θ: the conditional network of ``weights`` (``workflows/train_score.py scorenet=diffda_cpu``),
  trained on 12-h forecasts of perturbed nature-run states against the truth; r and f each
  normalised per channel as in training;
- the observations enter through ``learned.diffda.sample``: RePaint with the mask enlarged by
  interpolation over a Gaussian of ``mask_radius`` grid lengths (0: the observed points alone),
  ``steps`` steps from ``t_max``, stochasticity ``eta``, ``resample`` RePaint repeats a step;
  ``observation_noise``: an observation is the error r at the noise level σo, so it is imposed only
  down to that level and the network denoises the rest (false: imposed to the end, the analysis
  equals y there, as seed 004);
- y_m = y + σo ε_m: perturbed observations, one draw per member (``perturb``; false: y for all).

``guidance=kalman`` in place of inpainting: ``learned.sda.sample`` with ε_θ(·, t | f_m) as the prior
and filter=sda's Kalman guidance through the exact operator (``gamma``) — the EnSF's structure (a
score-based sampler per member, prior score from the forecast, likelihood score of the exact h) with
the learned conditional score in place of the Monte-Carlo one; nonlinear observations too. With
``guidance=inpaint`` observations must be values of the state (``observation.transform=linear``):
inpainting writes them into the field. All members are one batch; the noise comes from the cycle's
generator, so a rerun is bit for bit the same. Around it, ``filters.processing``: ``inflation`` and
``adaptive_inflation`` on the forecast before (the members' forecasts are the condition), ``rtps``
toward the forecast spread after. Cost: steps × resample evaluations of ε_θ on [M, 2C, H, W]. One rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from scoreda.filters import CONSTRUCTED, Analysis, Capabilities, check_common, config_keys
from scoreda.filters.processing import Processing
from scoreda.learned import diffda, sda
from scoreda.observations import ObservationOperator

if TYPE_CHECKING:
    from scoreda.dynamics.grid import Grid


GUIDANCE = ("inpaint", "kalman")


@dataclass
class DiffDAFilter:
    """``filter=diffda`` (module docstring). ``network``: (ε_θ, schedule, (mean, std) of r, (mean, std)
    of f) from ``weights``, or set directly (tests); ``shape``: the model's (C, H, W)."""

    capabilities: ClassVar[Capabilities] = Capabilities(nonlinear_operators=False)  # guidance=kalman: all

    weights: str = "runs/scorenet/diffda_cpu/weights.pt"  # the conditional network's weights file
    guidance: str = "inpaint"  # inpaint: RePaint (seed 004); kalman: a Gaussian update of Tweedie's
    # estimate by the exact operator (filter=sda's guidance: nonlinear observations too)
    steps: int = 16  # reverse steps from t_max to 0 (as filter=sda)
    t_max: float = 0.9  # where sampling starts from N(0, I) (μ_t = 0.034; from t = 1 the first step
    # multiplies the network's error by μ_s/μ_t, filter=sda's finding)
    eta: float = 1.0  # DDIM stochasticity: 1 ancestral, 0 deterministic
    resample: int = 1  # RePaint: network calls per step (1: no resampling)
    mask_radius: float = 1.0  # the soft mask's Gaussian, grid lengths (0: observed points only)
    observation_noise: bool = True  # observations enter at their own noise level σo (false: exact)
    perturb: bool = False  # each member sees y + σo ε_m (with observation_noise=false: an EDA)
    inflation: float = 1.0  # multiplicative, on the forecast anomalies
    adaptive_inflation: bool = False  # × innovation_inflation(prior, y) (≥ 1), after ``inflation``
    gamma: float = 1.0  # guidance=kalman: Cov[r₀ | r_t] ≈ γ (σ_t/μ_t)² (normalised units)
    rtps: float = 0.0  # relaxation of the analysis spread to the forecast spread (1 = fully)
    shape: tuple[int, int, int] | None = field(default=None, metadata=CONSTRUCTED)
    network: tuple | None = field(default=None, metadata=CONSTRUCTED)

    def __post_init__(self) -> None:
        check_common(self)
        if self.guidance not in GUIDANCE:
            raise ValueError(f"filter.guidance: expected one of {', '.join(GUIDANCE)}, got {self.guidance!r}")
        if self.guidance == "kalman":  # the capability of this instance
            self.capabilities = Capabilities()
        if not self.gamma > 0:
            raise ValueError(f"filter.gamma: must be positive, got {self.gamma}")
        for key in ("steps", "resample"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"filter.{key}: must be ≥ 1, got {getattr(self, key)}")
        if not 0 < self.t_max <= 1:
            raise ValueError(f"filter.t_max: must be in (0, 1], got {self.t_max}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"filter.eta: must be in [0, 1], got {self.eta}")
        if not self.mask_radius >= 0:
            raise ValueError(f"filter.mask_radius: must be ≥ 0, got {self.mask_radius}")

    @classmethod
    def from_config(cls, filter_cfg, grid: Grid | None = None) -> DiffDAFilter:
        """Keys of ``filter_cfg``; the network from ``weights`` (a one-line error naming
        ``filter.weights`` when it is missing, unreadable, unconditional or not of the model's grid)."""
        from scoreda.learned.weights import load_for_filter

        f = cls(**config_keys(cls, filter_cfg))
        f.shape = tuple(grid.shape) if grid is not None else None
        net, schedule, mean, std, meta = load_for_filter(f.weights, f.shape, True, "diffda")
        f.network = (net, schedule, (mean, std), (meta["condition_mean"], meta["condition_std"]))
        return f

    @property
    def processing(self) -> Processing:
        return Processing.of(self)

    @torch.no_grad()
    def analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None = None,
    ) -> Analysis:
        """Analysis ensemble [M, d] of the forecast [M, d]; diagnostics ``inflation``."""
        if not operator.linear and self.guidance == "inpaint":
            raise ValueError(
                "filter=diffda: observations must be state values (observation.transform=linear) "
                "with filter.guidance=inpaint"
            )
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        processing = self.processing
        xb, inflation = processing.before(prior, y, operator)
        M, d = xb.shape
        net, schedule, (rm, rs), (fm, fs) = self.network
        shape = self.shape or (net.channels, 1, d // net.channels)
        if math.prod(shape) != d:
            raise ValueError(f"filter: a state of {d} values does not fit the grid {shape}")
        dev, dt = xb.device, torch.float32
        C = shape[0]
        rm, rs = rm.to(dev, dt).view(1, C, 1, 1), rs.to(dev, dt).view(1, C, 1, 1)
        cond = (xb.to(dt).reshape(M, *shape) - fm.to(dev, dt).view(1, C, 1, 1)) / fs.to(dev, dt).view(
            1, C, 1, 1
        )
        net = net.to(dev)
        y = y.to(dev, dt)
        if self.perturb:
            y = y + float(operator.sigma) * torch.randn((M, y.numel()), generator=g, dtype=dt).to(dev)
        if self.guidance == "inpaint":
            r = self._inpaint(net, schedule, cond, xb.to(dt), y, operator, shape, (rm, rs), g)
        else:
            r = self._kalman(net, schedule, cond, xb.to(dt), y, operator, shape, (rm, rs), g)
        if not torch.isfinite(r).all():
            raise FloatingPointError(f"filter=diffda: the sampler diverged ({self.steps} steps)")
        post = (xb.to(dt) + (r * rs + rm).reshape(M, d)).to(prior.dtype)
        return Analysis(processing.after(post, xb, operator), {"inflation": inflation})

    def _inpaint(self, net, schedule, cond, xb, y, operator, shape, moments, g) -> torch.Tensor:
        """Normalised errors r [M, C, H, W]: RePaint of the observed values (``learned.diffda``)."""
        (rm, rs), (M, d), dev = moments, xb.shape, xb.device
        idx = operator.indices.to(dev)
        innovation = torch.zeros_like(xb)
        innovation[:, idx] = y - xb[:, idx]  # r at the observed values
        mask = torch.zeros(d, dtype=xb.dtype, device=dev)
        mask[idx] = 1
        known, weight = diffda.inpainting_targets(
            (innovation.reshape(M, *shape) - rm) / rs, mask.reshape(shape), float(self.mask_radius)
        )
        return diffda.sample(
            net,
            schedule,
            cond,
            known,
            weight,
            g,
            steps=int(self.steps),
            t_max=float(self.t_max),
            eta=float(self.eta),
            resample=int(self.resample),
            noise=float(operator.sigma) / rs if self.observation_noise else 0.0,
        )

    def _kalman(self, net, schedule, cond, xb, y, operator, shape, moments, g) -> torch.Tensor:
        """Normalised errors r [M, C, H, W]: ``learned.sda.sample`` with ε_θ(·, t | f_m) and the Kalman
        guidance (Tweedie's estimate moved by the Gaussian update of every value through h)."""
        (rm, rs), (M, d) = moments, xb.shape
        rs2 = rs.expand(1, *shape).reshape(d)

        def update(r0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            x = xb + (r0 * rs + rm).reshape(M, d)
            score, curv = operator.likelihood_score(x, y), operator.curvature(x)
            x = sda.gauss_newton_step(x, score, curv, c * rs2**2, operator.linear)
            return ((x - xb).reshape(r0.shape) - rm) / rs

        return sda.sample(
            lambda r, t: net(r, t, cond),
            schedule,
            (M, *shape),
            g,
            gamma=float(self.gamma),
            steps=int(self.steps),
            corrections=0,
            dtype=xb.dtype,
            device=xb.device,
            update=update,
            t_max=float(self.t_max),
        )


REGISTER = {"diffda": DiffDAFilter}
