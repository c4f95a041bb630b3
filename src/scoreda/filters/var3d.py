"""3D-Var with a Matérn GMRF prior (``filter=var3d``), as an ensemble of data assimilations.

For each member m, with background x_b = the (inflated) forecast member [C, H, W], the prior
precision Q = D L^α D (``filters.matern.MaternPrior``, keys ``length_scale``, ``sigma``,
``sigma_levels``, ``alpha``, ``vertical``) and perturbed observations y_m = y + σo (ε_m − ε̄)
(``perturb``; none with one member, so ``members=1`` is deterministic), the analysis minimises

    J(x) = ½ (x − x_b)ᵀ Q (x − x_b) + ½ ‖(y_m − h(x)) / σo‖².

Gauss–Newton: from x_0 = x_b, ``outer`` times (once for a linear h, where it is exact),

    (Q + Hₖᵀ R⁻¹ Hₖ) δ = Hₖᵀ R⁻¹ (y_m − h(x_k)) − Q (x_k − x_b),   x_{k+1} = x_k + δ,

with Hₖᵀ R⁻¹ Hₖ the operator's ``curvature`` (diagonal: every operator here observes points) and the
right-hand side its ``likelihood_score`` minus the prior's gradient. ``Var3D`` solves the normal
equations by conjugate gradients, batched over the members, preconditioned by (Q + r I)⁻¹ with r
the least observation precision of a point per level: exact in Fourier space when every point is
observed alike (one step), and Q⁻¹ = B (the usual control-variable preconditioning) otherwise.
It stops when a step changes δ by ≤ ``tol`` ‖δ‖ for every member (or at ``max_iter``): a residual
norm, plain or preconditioned, is dominated by the observed points when σo is small and stops far
too early. ``filters.gmrf_mp`` reaches the same solution by message passing. Around it, the chain
of ``filters.processing`` (``inflation`` before, ``rtps`` after). One rank: the FFTs are not
sharded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from scoreda.filters import CONSTRUCTED, Analysis, Capabilities, check_common, config_keys
from scoreda.filters.matern import MaternPrior
from scoreda.filters.processing import Processing
from scoreda.observations import ObservationOperator

if TYPE_CHECKING:
    from scoreda.dynamics.grid import Grid
    from scoreda.filters.sharding import Collective


@dataclass
class Variational:
    """The keys of the static-prior filters (``var3d``, ``gmrf_mp``) and their analysis around a solver
    of (Q + diag(c)) δ = b (``solve``)."""

    length_scale: float = 1000.0  # Matérn length ℓ, in the grid's length unit (km; grid index for L96)
    sigma: float = 1.0  # marginal prior std of every level (state units)
    sigma_levels: list[float] | None = None  # one std per level instead of sigma
    alpha: int = 2  # Q = D (κ² − Δ + γκ²D_z)^α D
    vertical: float = 0.0  # γ: coupling of the levels (0: independent levels)
    perturb: bool = True  # perturbed observations per member (EDA); never with one member
    outer: int = 3  # Gauss–Newton loops for a nonlinear h (one for a linear h)
    tol: float = 1e-6  # stop at a relative change of δ ≤ tol (per CG step; over check_every MP steps)
    max_iter: int = 500  # iterations of the solver per solve (per multigrid level for gmrf_mp)
    inflation: float = 1.0  # multiplicative, on the forecast anomalies (the backgrounds)
    adaptive_inflation: bool = False  # × innovation_inflation(prior, y) (≥ 1), after ``inflation``
    rtps: float = 0.0  # relaxation of the analysis spread to the forecast spread (1 = fully)
    shape: tuple[int, int, int] | None = field(
        default=None, metadata=CONSTRUCTED
    )  # (C, H, W); None: (1, 1, d)
    spacing: tuple[float, float] = field(default=(1.0, 1.0), metadata=CONSTRUCTED)  # (dy, dx)

    def __post_init__(self) -> None:
        check_common(self)
        for key in ("length_scale", "sigma", "tol"):
            if not getattr(self, key) > 0:
                raise ValueError(f"filter.{key}: must be positive, got {getattr(self, key)}")
        for key in ("outer", "max_iter"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"filter.{key}: must be ≥ 1, got {getattr(self, key)}")
        if self.shape is not None:
            self.prior(math.prod(self.shape))  # the prior's own checks, before any work

    @classmethod
    def from_config(cls, filter_cfg, grid: Grid | None = None):
        """Keys of ``filter_cfg``; ``shape`` and ``spacing`` from the model's ``grid``."""
        kw = config_keys(cls, filter_cfg)
        if kw.get("sigma_levels") is not None:
            kw["sigma_levels"] = [float(s) for s in kw["sigma_levels"]]
        if grid is not None:
            kw["shape"], kw["spacing"] = tuple(grid.shape), tuple(float(s) for s in grid.spacing)
        return cls(**kw)

    def prior(self, d: int) -> MaternPrior:
        """The Matérn prior on the grid of a state of size d."""
        shape = self.shape or (1, 1, d)
        if math.prod(shape) != d:
            raise ValueError(f"filter: a state of {d} values does not fit the grid {shape}")
        sig = self.sigma_levels if self.sigma_levels is not None else [self.sigma] * shape[0]
        if len(sig) != shape[0]:
            raise ValueError(
                f"filter.sigma_levels: expected {shape[0]} values (one per level), got {len(sig)}"
            )
        return MaternPrior(
            shape, self.spacing, float(self.length_scale), tuple(sig), int(self.alpha), self.vertical
        )

    @property
    def processing(self) -> Processing:
        return Processing.of(self)

    def observations(self, y: torch.Tensor, M: int, sigma: float, generator) -> torch.Tensor:
        """y_m = y + σo (ε_m − ε̄) [M, p] (ε ~ N(0, I) from ``generator``); y for every member when
        ``perturb`` is off or M = 1."""
        ys = y[None].expand(M, -1)
        if not self.perturb or M == 1:
            return ys
        eps = torch.randn(M, y.numel(), generator=generator, dtype=torch.float64).to(y.device)
        return ys + (sigma * (eps - eps.mean(0))).to(y.dtype)

    @torch.no_grad()
    def analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None = None,
        comm: Collective | None = None,
        device: torch.device | str | None = None,
    ) -> Analysis:
        """Analysis ensemble [M, d] of the forecast ``prior`` [M, d] (module docstring); diagnostics:
        ``inflation``, ``iterations`` (of the solver, summed over the outer loops) and ``residual``
        (the last solve's relative residual or change). With ``comm``, rank 0 returns the ensemble
        (None elsewhere)."""
        if device is not None:
            prior, y = prior.to(device), y.to(device)
        processing = self.processing
        xb, inflation = processing.before(prior, y, operator)
        M, d = xb.shape
        Q = self.prior(d)
        ys = self.observations(y, M, float(operator.sigma), generator)
        field_shape = (M, *Q.shape)
        x = xb.to(torch.float64)
        iterations, residual = 0, 0.0
        for _ in range(1 if operator.linear else int(self.outer)):
            curv = operator.curvature(x).reshape(-1, *Q.shape)  # [1 or M, C, H, W]
            rhs = operator.likelihood_score(x, ys.to(x)).reshape(field_shape)
            rhs = rhs - Q.apply((x - xb).reshape(field_shape))
            delta, info = self.solve(Q, curv, rhs, comm)
            iterations += info["iterations"]
            residual = info["residual"]
            x = x + delta.reshape(M, d)  # every rank holds δ (gmrf_mp all-reduces its tiles)
        if comm is not None and comm.rank != 0:
            return Analysis(None, {"inflation": inflation})
        post = processing.after(x.to(prior.dtype), xb, operator)
        return Analysis(post, {"inflation": inflation, "iterations": float(iterations), "residual": residual})

    def solve(self, Q: MaternPrior, curv: torch.Tensor, rhs: torch.Tensor, comm=None):
        """δ [M, C, H, W] with (Q + diag(curv)) δ = rhs, and {"iterations", "residual"}."""
        raise NotImplementedError


@dataclass
class Var3D(Variational):
    """``filter=var3d``: the normal equations by preconditioned conjugate gradients (module docstring)."""

    capabilities: ClassVar[Capabilities] = Capabilities(min_members=1)

    def solve(self, Q: MaternPrior, curv: torch.Tensor, rhs: torch.Tensor, comm=None):
        """Preconditioned CG on every member at once; inner products per member in float64."""
        shift = curv.amin((0, 2, 3)).to(torch.float64)  # the uniform part of diag(HᵀR⁻¹H) per level
        inverse = Q.shifted_inverse(shift)

        def A(v: torch.Tensor) -> torch.Tensor:
            return Q.apply(v) + curv * v

        def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a * b).sum((1, 2, 3), keepdim=True, dtype=torch.float64)

        x = torch.zeros_like(rhs)
        r = rhs.clone()
        z = Q.apply_modes(inverse, r)
        p = z.clone()
        rz = dot(r, z)
        n, change = 0, torch.ones_like(rz)
        while n < int(self.max_iter) and not bool((change <= float(self.tol)).all()):
            n += 1
            Ap = A(p)
            step = rz / dot(p, Ap).clamp_min(1e-300)
            x += step * p
            r -= step * Ap
            change = (step.abs() * dot(p, p).sqrt()) / dot(x, x).sqrt().clamp_min(1e-300)
            z = Q.apply_modes(inverse, r)
            rz_new = dot(r, z)
            p = z + (rz_new / rz.clamp_min(1e-300)) * p
            rz = rz_new
        return x, {"iterations": n, "residual": float(change.max())}


REGISTER = {"var3d": Var3D}
