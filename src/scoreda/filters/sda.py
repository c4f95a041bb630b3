"""Score-based data assimilation as a filter in the cycle (``filter=sda``; seed 003's sampler).

The M analysis members are M samples of p(x | y, x̄_f) ∝ p_θ(x) N(y | h(x), σo² I) N(x̄_f | x, P),
drawn by ``learned.sda.sample`` (predictor–corrector on the reverse VP process, ``steps`` predictor
steps with ``corrections`` Langevin corrections each, step ``tau``) with

- p_θ: the learned prior of one state, the score network of ``weights`` (``workflows/train_score.py``;
  one state, ``scorenet.window=0``) on the per-channel normalised state z = (x − m_c) / s_c;
- the observations y of this cycle through the exact operator h (nonlinear ones by autograd);
- ``background=mean``: the forecast ensemble's mean x̄_f as a Gaussian observation with P the
  (inflated) ensemble variance per point, diagonal, at every ``background_stride``-th point along
  y and x (errors correlated over k points are about one independent value per k × k; k = 1: every
  point). ``background=none`` conditions on y alone (the learned climate as the prior: seed 003's
  filter over a window of one state).

``guidance=kalman`` (default): each step moves Tweedie's estimate x̂₀(x_t) by the Gaussian update of
every grid value with prior variance C_t s_c² (C_t = κ/(1 + κ), κ = γ (σ_t/μ_t)², γ = ``gamma``), one
Gauss–Newton step with the operator's likelihood score and curvature (exact for a linear h), and
takes the ε that leads to it. ``guidance=tweedie``: seed 003's likelihood score, each Gaussian term
with variance v + γ (σ_t/μ_t)² s_c² (v = σo² or P) through Tweedie's estimate, autograd through ε_θ
(a backward pass a step; unstable unless ε_θ's Jacobian is accurate near t = 1). All members are
one batch; the sampler's noise comes from the cycle's generator, so a rerun is bit for bit the same.
Around it, ``filters.processing``: ``inflation`` and ``adaptive_inflation`` on the forecast (so on
P) before, ``rtps`` toward the forecast spread after.
Cost: steps × (1 + corrections) evaluations of ε_θ on [M, C, H, W] (and of its gradient with
``guidance=tweedie``). One rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from scoreda.filters import CONSTRUCTED, Analysis, Capabilities, check_common, config_keys
from scoreda.filters.processing import Processing
from scoreda.learned import sda
from scoreda.observations import ObservationOperator

if TYPE_CHECKING:
    from scoreda.dynamics.grid import Grid

BACKGROUNDS = ("mean", "none")
GUIDANCE = ("kalman", "tweedie")


@dataclass
class SDAFilter:
    """``filter=sda`` (module docstring). ``network``: (ε_θ, schedule, mean[C], std[C]) from
    ``weights``, or set directly (tests); ``shape``: the model's (C, H, W)."""

    capabilities: ClassVar[Capabilities] = Capabilities()

    weights: str = "runs/scorenet/unet_cpu/weights.pt"  # the score network's weights file
    background: str = "mean"  # mean: the forecast mean as an observation with the ensemble's variance
    background_stride: int = 2  # the background observes every k-th point along y and x (its errors
    # are correlated over ~k points; as independent values at every point it would be over-trusted)
    guidance: str = "kalman"  # kalman: a Gaussian update of Tweedie's estimate; tweedie: seed 003's
    steps: int = 16  # predictor steps from t_max to 0
    t_max: float = 0.9  # where sampling starts from N(0, I): μ_t = 0.034, μ_t² = 0.1 % of the signal
    corrections: int = 1  # Langevin corrections after each predictor step
    tau: float = 0.5  # Langevin step relative to the score's size
    gamma: float = 1.0  # γ: Cov[x₀ | x_t] ≈ γ (σ_t/μ_t)² (normalised units) in the guidance
    inflation: float = 1.0  # multiplicative, on the forecast anomalies (the background variance P)
    adaptive_inflation: bool = False  # × innovation_inflation(prior, y) (≥ 1), after ``inflation``
    rtps: float = 0.0  # relaxation of the analysis spread to the forecast spread (1 = fully)
    shape: tuple[int, int, int] | None = field(default=None, metadata=CONSTRUCTED)
    network: tuple | None = field(default=None, metadata=CONSTRUCTED)

    def __post_init__(self) -> None:
        check_common(self)
        if self.background not in BACKGROUNDS:
            raise ValueError(
                f"filter.background: expected one of {', '.join(BACKGROUNDS)}, got {self.background!r}"
            )
        if self.guidance not in GUIDANCE:
            raise ValueError(f"filter.guidance: expected one of {', '.join(GUIDANCE)}, got {self.guidance!r}")
        if int(self.background_stride) < 1:
            raise ValueError(f"filter.background_stride: must be ≥ 1, got {self.background_stride}")
        for key in ("steps", "corrections"):
            if int(getattr(self, key)) < (1 if key == "steps" else 0):
                raise ValueError(
                    f"filter.{key}: must be ≥ {1 if key == 'steps' else 0}, got {getattr(self, key)}"
                )
        if not 0 < self.t_max <= 1:
            raise ValueError(f"filter.t_max: must be in (0, 1], got {self.t_max}")
        for key in ("tau", "gamma"):
            if not getattr(self, key) > 0:
                raise ValueError(f"filter.{key}: must be positive, got {getattr(self, key)}")

    @classmethod
    def from_config(cls, filter_cfg, grid: Grid | None = None) -> SDAFilter:
        """Keys of ``filter_cfg``; the network from ``weights`` (a one-line error naming
        ``filter.weights`` when it is missing, unreadable or does not fit the model's grid)."""
        from scoreda.learned.weights import load_for_filter

        f = cls(**config_keys(cls, filter_cfg))
        f.shape = tuple(grid.shape) if grid is not None else None
        f.network = load_for_filter(f.weights, f.shape, False, "sda")[:4]
        return f

    def background_points(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Flat indices of the values the background observes: every ``background_stride``-th grid
        point along y (if the grid has rows) and x, every channel."""
        C, H, W = shape
        k = int(self.background_stride)
        rows = torch.arange(H) % k == 0 if H > 1 else torch.ones(H, dtype=torch.bool)
        keep = rows[:, None] & (torch.arange(W) % k == 0)[None]
        return keep.expand(C, H, W).reshape(-1).nonzero().squeeze(1)

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
        processing = self.processing
        xb, inflation = processing.before(prior, y, operator)
        M, d = xb.shape
        net, schedule, mean, std = self.network
        shape = self.shape or (net.channels, 1, d // net.channels)
        if math.prod(shape) != d:
            raise ValueError(f"filter: a state of {d} values does not fit the grid {shape}")
        dev, dt = xb.device, torch.float32
        net = net.to(dev)
        C = shape[0]
        m = mean.to(dev, dt).view(1, C, 1, 1)
        s = std.to(dev, dt).view(1, C, 1, 1)
        s2 = (std.to(dev, dt) ** 2).repeat_interleave(d // C)  # s_c² of every state component [d]
        y = y.to(dev, dt)
        var = [torch.full_like(y, float(operator.sigma) ** 2)]
        gamma = [self.gamma * s2[operator.indices.to(dev)]]
        targets = [y]
        bidx = (
            self.background_points(shape).to(dev)
            if self.background == "mean"
            else torch.zeros(0, dtype=torch.long, device=dev)
        )
        bprec = torch.zeros(d, dtype=dt, device=dev)  # 1/P at the background's points, 0 elsewhere
        bmean = xb.mean(0).to(dt)
        if self.background == "mean":
            bvar = xb.to(dt).var(0).clamp_min(1e-12 * float(s2.min()))[bidx]
            bprec[bidx] = 1 / bvar
            targets.append(bmean[bidx])
            var.append(bvar)
            gamma.append(self.gamma * s2[bidx])

        def model_units(z: torch.Tensor) -> torch.Tensor:
            return (z * s + m).reshape(z.shape[0], d)

        def update(z0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            """The Gaussian update of every value of x̂₀ (prior variance c s_c²), normalised units."""
            x = model_units(z0)
            score, curv = operator.likelihood_score(x, y), operator.curvature(x)
            score, curv = score + bprec * (bmean - x), curv + bprec
            x = sda.gauss_newton_step(x, score, curv, c * s2, operator.linear)
            return (x.reshape(z0.shape) - m) / s

        def observe(z: torch.Tensor) -> torch.Tensor:
            x = model_units(z)
            return torch.cat([operator(x), x[:, bidx]], dim=1)  # no background: bidx is empty

        z = sda.sample(
            net,
            schedule,
            (M, *shape),
            generator if generator is not None else torch.Generator().manual_seed(0),
            observe=observe,
            y=torch.cat(targets),
            var_y=torch.cat(var),
            gamma=self.gamma if self.guidance == "kalman" else torch.cat(gamma),
            steps=int(self.steps),
            corrections=int(self.corrections),
            tau=float(self.tau),
            dtype=dt,
            device=dev,
            update=update if self.guidance == "kalman" else None,
            t_max=float(self.t_max),
        )
        if not torch.isfinite(z).all():
            raise FloatingPointError(
                f"filter=sda: the sampler diverged ({self.steps} steps, gamma={self.gamma}); "
                "try a larger filter.gamma or more filter.steps"
            )
        post = model_units(z).to(prior.dtype)
        return Analysis(processing.after(post, xb, operator), {"inflation": inflation})


REGISTER = {"sda": SDAFilter}
