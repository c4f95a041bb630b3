"""Localised ensemble score filter: the LETKF's local analyses in ensemble space, with a Gaussian-
mixture prior over the members and a score-based transport of the members in place of the
closed-form square root.

At each local analysis (a grid position, or a level there; ``LETKF.ensemble_space``) write
x = x̄ + Xbᵀ U ũ / √K, K = M − 1, U the orthonormal basis of 1⊥: ũ are whitened ensemble-space
coordinates, the prior members sit at ũ_m = √K U[m] (sample mean 0, covariance I). With the LETKF's
R-localised sums P (= Σ_j w_j y_j y_jᵀ) and q, the likelihood in ũ is exp(−½ ũᵀP̃ũ + q̃ᵀũ),
P̃ = P/K, q̃ = q/√K (h linearised over the ensemble, as the LETKF does). The prior is the mixture

    p(ũ) = (1/M) Σ_m N(ũ; a ũ_m, b² I),   b² = ``bandwidth``,  a² = (1 − b²) M/K

(covariance I for every b²). The posterior is then the Gaussian mixture with weights
ω_m ∝ exp(½ μ_mᵀ S⁻¹ μ_m), components N(μ_m, S), S = (I/b² + P̃)⁻¹, μ_m = S (a ũ_m / b² + q̃), all
diagonal in the eigenbasis V of P̃ (one batched ``eigh`` per chunk of points, as the LETKF).

The members are carried from the prior to that posterior by the probability-flow ODE of the
diffusion z_t = α_t x + β_t ε, α_t = cos(πt/2), β_t = sin(πt/2), from t = 1 to t = 0, with the exact
score of the diffused posterior. Member m starts at ``start=members``: its own ũ_m; ``rotated``:
R ũ_m, R a random rotation of the K coordinates drawn each analysis. Either start is the same at
every grid point, so the ensemble stays spatially coherent, and no noise is drawn. One step from t
to s, with γ the responsibilities of the components given z, μ̄ = Σ_c γ_c μ_c, D_t = α_t² S + β_t² I,

    z ← α_s μ̄ + (D_s / D_t)^½ (z − α_t μ̄),

consistent with the ODE and exact for one Gaussian. With b² = 1 (a = 0) the mixture is one Gaussian
and the result is the LETKF's, x̄ + Xbᵀ(w̄ + W): mean S q̃ and the symmetric square root S^½ of the
posterior covariance, for any ``n_steps`` (``tests/test_lensf.py``); ``rotated`` gives the same
mean and covariance with the members mixed by R. With b² < 1 the likelihood reweights the
mixture's components (non-Gaussian posteriors, bimodal ones included), but only from ``rotated``
starts: a member started at its own ũ_m is aligned with its own component in all K dimensions and
the flow keeps it there whatever the weights (measured on a bimodal prior: the posterior mean off
by 0.65 at b² = 0.1, against 0.01 from rotated starts; ``tests/test_lensf.py``). Cost per
step O(C_a · d_h · M² K) on top of the LETKF's sums and eigh.

White part (``white`` = σ_w² > 0, or ``adaptive_white``). The ensemble spans K directions, so an
error white in space (model shocks) is outside its span and no local analysis can correct it. The
prior gets a second, full-rank part: x = x̄ + Xbᵀ U ũ/√K + e, e_i ~ N(0, σ_w²) independent per state
point. Integrating e out of the observations leaves the ensemble-space analysis above with
σ_j² = σo² + g'_j² σ_w² (g'_j the slope of h at the forecast mean), which is the exact marginal of
ũ (up to localisation, and for a point observed once); then each member draws its e from the
conditional given its analysed ũ and the point's own observations (``white_part``; for a nonlinear
h the exact density, ``pointwise.quantiles``, or with ``likelihood=pointwise`` the pseudo-observations
below, a linear Gaussian step). σ_w² = 0 is the filter without it, exactly;
``adaptive_white`` estimates σ_w² from the innovations each analysis (``processing.innovation_white``;
``white`` is then its floor), and ``desroziers`` updates it from the analysis residuals
(``residual_white``).

Nonlinear h (``likelihood``): ``ensemble`` linearises h over the members (the LETKF's Yb);
``pointwise`` replaces each observation by the linear Gaussian pseudo-observation that gives the
point's exact posterior mean and variance under N(x̄_i, s_i² + σ_w²) (``pointwise.pseudo_observations``)
in both the ensemble-space analysis and the white part.
``mda`` > 1: that many ensemble-space passes with σ √mda, h relinearised each time.

MPI (``shard=state``): the local analyses split over ranks by blocks of grid positions (``analyse``).
Inflation, RTPP and RTPS: ``filters.processing``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from scoreda.filters import CONSTRUCTED, Analysis, Capabilities, check_common, config_keys, pointwise
from scoreda.filters.letkf import LETKF
from scoreda.filters.processing import Processing, innovation_white, observed_slope2, white_fit
from scoreda.filters.sharding import Collective
from scoreda.observations import ObservationOperator, PointObservation
from scoreda.seeding import counter_normal, noise_key

if TYPE_CHECKING:
    from scoreda.dynamics.grid import Grid


STARTS = ("members", "rotated")
LIKELIHOODS = ("ensemble", "pointwise")


@dataclass
class LEnSF:
    """``filter=lensf``. The fields are the config keys and their defaults, except those marked
    ``CONSTRUCTED``, which ``from_config`` sets from the grid."""

    bandwidth: float = 1.0  # b²: variance of each member's kernel, share of the prior's (1: the LETKF)
    n_steps: int = 10  # probability-flow steps from t = 1 to 0
    start: str = "members"  # where member m starts: "members" (its own ũ_m) | "rotated" (R ũ_m, R random)
    cutoff: float | None = 2000.0  # distance where the Gaspari–Cohn taper reaches zero; inf / None: global
    cross_level: float = 1.0  # factor on the weight of observations on another level
    inflation: float = 1.0  # multiplicative, on the forecast anomalies
    adaptive_inflation: bool = False  # × innovation_inflation(prior, y) (≥ 1), after ``inflation``
    rtps: float = 0.3  # relaxation of the analysis spread to the forecast spread
    rtpp: float = 0.0  # relaxation of the analysis perturbations to the forecast ones
    white: float = 0.0  # σ_w²: prior variance of the per-point white part [units²] (0: none)
    adaptive_white: bool = True  # σ_w² = max(white, innovation_white(prior, y)) each analysis
    desroziers: int = 1  # with adaptive_white: then this many residual updates (``residual_white``)
    white_significance: float = 0.0  # an adaptive σ_w² below this many standard errors is taken as 0
    mda: int = 1  # ensemble-space analyses in turn, each with σ_j √mda, h relinearised (as the LETKF's)
    # a nonlinear h in the ensemble-space part: "ensemble" (linearised over the members, as the LETKF)
    # | "pointwise" (Gaussian pseudo-observations from each point's exact posterior)
    likelihood: str = "pointwise"
    localiser: LETKF | None = field(default=None, metadata=CONSTRUCTED)  # the local analyses' geometry
    capabilities: ClassVar[Capabilities] = Capabilities(shards=("state",))  # tiles of grid rows

    def __post_init__(self) -> None:
        if not 0 < self.bandwidth <= 1:
            raise ValueError(f"filter.bandwidth: must be in (0, 1], got {self.bandwidth}")
        if self.n_steps < 1:
            raise ValueError(f"filter.n_steps: must be ≥ 1, got {self.n_steps}")
        if self.start not in STARTS:
            raise ValueError(f"filter.start: expected {' or '.join(STARTS)}, got {self.start!r}")
        self.cutoff = math.inf if self.cutoff is None else float(self.cutoff)
        if not self.cutoff > 0:
            raise ValueError(f"filter.cutoff: must be positive (.inf or null: global), got {self.cutoff}")
        if not self.cross_level >= 0:
            raise ValueError(f"filter.cross_level: must be ≥ 0, got {self.cross_level}")
        check_common(self)
        if not 0 <= self.rtpp <= 1:
            raise ValueError(f"filter.rtpp: must be in [0, 1], got {self.rtpp}")
        if not self.white >= 0:
            raise ValueError(f"filter.white: must be ≥ 0, got {self.white}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"filter.likelihood: expected {' or '.join(LIKELIHOODS)}, got {self.likelihood!r}"
            )
        if self.mda < 1:
            raise ValueError(f"filter.mda: must be ≥ 1, got {self.mda}")
        if self.desroziers < 0:
            raise ValueError(f"filter.desroziers: must be ≥ 0, got {self.desroziers}")
        if not self.white_significance >= 0:
            raise ValueError(f"filter.white_significance: must be ≥ 0, got {self.white_significance}")

    @classmethod
    def from_config(cls, cfg, grid: Grid | None = None) -> LEnSF:
        """Keys of ``cfg``; the localiser is the LETKF's geometry on the model's ``grid`` with
        ``cutoff`` and ``cross_level``."""
        kw = config_keys(cls, cfg)
        loc = {k: kw.get(k, getattr(cls, k)) for k in ("cutoff", "cross_level")}
        kw["localiser"] = LETKF.from_config(loc | {"rtps": 0.0}, grid)
        return cls(**kw)

    @property
    def processing(self) -> Processing:
        """Inflation before the analysis; RTPP, then RTPS after it."""
        return Processing.of(self)

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
        """Analysis ensemble [M, d] from the forecast ``prior`` [M, d] and obs ``y`` [p]; diagnostics:
        ``inflation`` and ``white`` (σ_w²). ``generator``'s seed draws the rotation of
        ``start=rotated`` and the noise of the white part.

        With ``comm`` (R ranks, ``shard=state``) every rank passes the full prior and all
        observations; rank r does the local sums and analyses of tile r of the grid rows
        (``LETKF.tile``: the sums from the observations within the cutoff's halo) on ``device``; the
        tiles are summed over the ranks (``ensemble_analysis``), then rank 0 adds the white part and
        post-processes, the others return None. Each local analysis is the same computation on any
        split up to the strip's FFT, so R ranks give one rank's result to rounding. ``mda`` > 1: that
        many ensemble-space passes in turn (the LETKF's multiple data assimilation) before the
        white part."""
        if self.localiser is None:
            raise ValueError("filter=lensf: no localiser (LEnSF.from_config(filter, grid) builds it)")
        R, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        if R > 1 and not math.isfinite(self.cutoff):
            raise ValueError("filter.ranks: the global LEnSF (filter.cutoff=inf) runs on one rank")
        device = prior.device if device is None else torch.device(device)
        processing = self.processing
        y = y.to(device)
        prior, inflation = processing.before(prior.to(device), y, operator)
        M, d = prior.shape
        C, H, W = self.localiser.grid(d)  # the state fits the grid
        groups = operator.indices.to(device) // (H * W)  # the state variable of each observation [p]
        seen = torch.zeros(C, dtype=torch.bool, device=device).index_fill_(0, groups, True)
        white = torch.where(seen, self.white, 0.0).double()  # σ_w² of each state variable [C]
        if self.adaptive_white and bool(seen.any()):
            white = torch.maximum(
                white, innovation_white(prior, y, operator, groups, C, self.white_significance).double()
            )
            for _ in range(self.desroziers):  # each update replaces the estimate (floor: ``white``)
                white = self.residual_white(prior, y, operator, white, groups).clamp_min(self.white)
            white = torch.where(seen, white, 0.0)
        diagnostics = {
            "inflation": inflation,
            "white": float(white[seen].mean()) if bool(seen.any()) else 0.0,
        }
        if not bool(seen.any()):
            return Analysis(prior.clone() if rank == 0 else None, diagnostics)
        white_obs, white_state = white[groups].to(prior), white.repeat_interleave(H * W).to(prior)  # [p], [d]
        rotation = self.rotation(M - 1, generator) if self.start == "rotated" else None
        y_smooth, op_smooth, base = y, operator, None
        if self.likelihood == "pointwise" and not operator.linear:
            y_smooth, base = pointwise.pseudo_observations(prior, y, operator, white_state)
            op_smooth = PointObservation(operator.indices, sigma=operator.sigma, d=d)
        analysis = prior
        for _ in range(self.mda):
            analysis = self.ensemble_analysis(analysis, y_smooth, op_smooth, white_obs, rotation, comm, base)
        if rank != 0:
            return Analysis(None, diagnostics)
        if bool((white > 0).any()):
            analysis = analysis + self.white_part(analysis, y_smooth, op_smooth, white_state, generator, base)
        return Analysis(processing.after(analysis, prior, operator), diagnostics)

    def ensemble_analysis(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        white: torch.Tensor,
        rotation: torch.Tensor | None,
        comm: Collective | None,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One pass of the local analyses in ensemble space [M, d], every rank getting all of it: the
        observation errors σ_j (``sigma``; ``white`` [p] the σ_w² at each observation) × √mda, h
        linearised over ``prior``; the members start from their own ũ_m, or from ũ_m ``rotation``.
        ``base`` [p]: the observations' error stds in place of σo (pseudo-observations). With
        ``comm``, rank r analyses tile r of the grid (``LETKF.tile``, its sums from the observations
        within the cutoff's halo) and the tiles are summed over the ranks (zeros elsewhere: exact)."""
        M, d = prior.shape
        R, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        sigma = self.sigma(prior, operator, white, base)
        if self.mda > 1:
            sigma = math.sqrt(self.mda) * (torch.full_like(y, operator.sigma) if sigma is None else sigma)
        tile = self.localiser.tile(d, R, rank) if R > 1 else None
        mean, U, sums, x = self.localiser.ensemble_space(prior, y, operator, sigma, tile)
        if self.bandwidth == 1.0 and rotation is None:  # the transport's closed form
            analyse = functools.partial(self.square_root, U=U)
        else:
            members = math.sqrt(M - 1) * U.double()  # ũ_m [M, K]
            starts = members if rotation is None else members @ rotation.to(members)
            analyse = functools.partial(self.transport, members=members, starts=starts)
        out = self.localiser.local_analyses(sums, x, analyse)  # [M, C, G_r]
        if R > 1:
            full = out.new_zeros(*out.shape[:2], d // out.shape[1])
            full[..., tile] = out
            out = comm.allreduce(full)
        return (mean + out.to(prior.device).reshape(M, d)).to(prior.dtype)

    @staticmethod
    def sigma(
        prior: torch.Tensor,
        operator: ObservationOperator,
        white: torch.Tensor,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """σ_j [p] of the ensemble-space analysis with the white part integrated out:
        σ_j² = σ_b,j² + g'_j² σ_w,j² (``white`` [p]), σ_b = ``base`` [p] or σo (None, i.e. σo,
        when both are zero or default)."""
        if not bool((white > 0).any()):
            return base
        b2 = operator.sigma**2 if base is None else base.to(prior).square()
        return (b2 + white.to(prior) * observed_slope2(prior, operator)).sqrt()

    def residual_white(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        white: torch.Tensor,
        groups: torch.Tensor,
    ) -> torch.Tensor:
        """σ_w² [C] of each state variable from the residuals of the ensemble-space analysis mean
        (Desroziers et al. 2005): for an analysis that takes σ_j² = σo² + g'_j² σ_w² as its
        observation error, E[d_a,j d_b,j] = σo² + g'_j² σ_w², with d_b = y − mean_m h(x_m) and d_a
        the same after the analysis increment of the mean; σ_w² is fitted to these by least squares
        over each variable's observations (``groups`` [p]; ``white_fit``), from the analysis with the
        current ``white`` [C]. Unlike ``innovation_white`` it does not subtract the ensemble
        variance: the part of the innovation the ensemble's span explains is taken out by the
        analysis itself, so spread outside the local span does not hide the error. Every rank
        computes it over all positions (one Cholesky per local analysis)."""
        M, d = prior.shape
        sigma = self.sigma(prior, operator, white[groups])
        mean, _, sums, x = self.localiser.ensemble_space(prior, y, operator, sigma)
        increment = self.localiser.local_analyses(sums, x, functools.partial(LETKF.mean_increment, M=M))
        posterior = prior + increment[0].reshape(1, d).to(prior)
        d_b = y.to(prior) - operator(prior).mean(0)
        d_a = y.to(prior) - operator(posterior).mean(0)
        return white_fit(
            d_a * d_b,
            observed_slope2(prior, operator),
            operator.sigma,
            groups,
            len(white),
            self.white_significance,
        ).double()

    @staticmethod
    def square_root(s: torch.Tensor, xb: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """``transport`` at b² = 1 from the members' own starts, in closed form: the LETKF's
        x̄ + Xbᵀ(w̄ + W) at the c points of n analyses, anomalies [n, c, M] (``LETKF.transform``)."""
        K = xb.shape[-1]
        out = LETKF.transform(s, xb, K)
        return out[..., :K] @ U.T.to(out) + out[..., K:]

    @staticmethod
    def white_part(
        smooth: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        white: torch.Tensor | float,
        generator: torch.Generator | None,
        sigma: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each member's per-point white part e [M, d] given its analysis ``smooth`` [M, d] (the
        ensemble-space analysis with the white part integrated out): the prior e_i ~ N(0, σ_w,i²)
        (``white``: [d], or one value), independent per state point, conditioned on the point's own
        observations,

            p(e_i | x_m) ∝ exp(−e_i² / 2σ_w,i² − Σ_{j at i} (y_j − g(x_m,i + e_i))² / 2σ_j²).

        For a linear h this is N(ν_i Σ_j (y_j − x_m,i) / σ_j², ν_i), 1/ν_i = 1/σ_w,i² + Σ_j 1/σ_j²
        (σ_j = σo, or ``sigma`` [p]: the pseudo-observations' σ̃_j of ``likelihood=pointwise``, ∞ for
        weight 0; ν_i = σ_w,i², mean 0 where unobserved), drawn as mean + √ν_i ξ; for a nonlinear g,
        the ξ-quantile of the exact density (``pointwise.quantiles``); e_i = 0 where σ_w,i = 0. With
        ancestral sampling the pair (x_m + e_m) samples the joint posterior. The noise ξ [M, d] is
        ``counter_normal`` of ``generator``'s seed, centred over members and scaled to unit variance
        at each point (for a linear h the white part's ensemble mean and spread are then exact)."""
        M, d = smooth.shape
        white = torch.as_tensor(white, dtype=smooth.dtype, device=smooth.device).expand(d)
        on = white > 0
        sw2 = white.clamp_min(torch.finfo(smooth.dtype).tiny)
        xi = counter_normal(noise_key(generator), 0, range(M), range(d), smooth.dtype, smooth.device)
        xi = xi - xi.mean(0)
        xi = xi / xi.std(0).clamp_min(torch.finfo(xi.dtype).tiny)
        if not operator.linear:
            e = pointwise.quantiles(smooth, sw2.sqrt(), y, operator, xi)
        else:
            idx = operator.indices.to(smooth.device)
            inv = 1.0 / (operator.sigma**2 if sigma is None else sigma.to(smooth).square())  # [p] or one
            inv = torch.as_tensor(inv, dtype=smooth.dtype, device=smooth.device).expand(idx.shape)
            precision = (1.0 / sw2).index_add(0, idx, inv)
            score = smooth.new_zeros(M, d).index_add_(1, idx, (y.to(smooth) - smooth[:, idx]) * inv)
            e = (score + xi * precision.sqrt()) / precision
        return torch.where(on, e, 0.0)

    @staticmethod
    def rotation(K: int, generator: torch.Generator | None) -> torch.Tensor:
        """A Haar-random rotation R [K, K] (float64, CPU) from ``generator``'s seed: the same at every
        grid point, so the analysis stays spatially coherent."""
        g = torch.Generator().manual_seed(noise_key(generator))
        q, r = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))

    def transport(
        self, s: torch.Tensor, xb: torch.Tensor, members: torch.Tensor, starts: torch.Tensor
    ) -> torch.Tensor:
        """The members' anomalies after n local analyses [n, c, M], from their local sums s
        [n, L + K] (``LETKF.ensemble_space``), the forecast anomalies Uᵀ Xb of their c points
        xb [n, c, K], the members' coordinates ũ_m [M, K] (the mixture's centres) and where the
        members start at t = 1 [M, K] (float64)."""
        n, _, K = xb.shape
        M = K + 1
        s = s.double()
        il = torch.tril_indices(K, K, device=s.device)
        p = s.new_zeros(n, K, K)
        p[:, il[0], il[1]] = s[:, :-K] / K  # P̃, lower triangle (eigh reads it)
        lam, v = torch.linalg.eigh(p)
        lam = lam.clamp_min(0.0)[:, None, :]  # [n, 1, K]
        q = (s[:, None, -K:] / math.sqrt(K)) @ v  # Vᵀ q̃ [n, 1, K]
        c = members @ v  # Vᵀ ũ_m [n, M, K]
        b2 = self.bandwidth
        a = math.sqrt((1.0 - b2) * M / K)
        var = b2 / (1.0 + b2 * lam)  # S, diagonal [n, 1, K]
        mu = var * (a / b2 * c + q)  # component means [n, M, K]
        log_w = 0.5 * (mu * mu / var).sum(-1)  # [n, M]
        z = starts @ v  # t = 1: α = 0, β = 1
        ts = torch.linspace(1.0, 0.0, self.n_steps + 1, dtype=torch.float64).tolist()
        for t, t_next in zip(ts[:-1], ts[1:], strict=True):
            al, be = math.cos(0.5 * math.pi * t), math.sin(0.5 * math.pi * t)
            al_s, be_s = math.cos(0.5 * math.pi * t_next), math.sin(0.5 * math.pi * t_next)
            d_t = al * al * var + be * be
            mbar = self._mean_component(z, mu, log_w, al, d_t)
            z = al_s * mbar + ((al_s * al_s * var + be_s * be_s) / d_t).sqrt() * (z - al * mbar)
        u = (z @ v.mT) / math.sqrt(K)  # back in the basis U, unwhitened [n, M, K]
        return (xb.double() @ u.mT).to(xb.dtype)  # Xbᵀ U u at the c points [n, c, M]

    @staticmethod
    def _mean_component(z, mu, log_w, al: float, d_t) -> torch.Tensor:
        """μ̄ = Σ_c γ_c μ_c [n, M, K]: the components' means weighted by their responsibilities for z
        [n, M, K], γ_ic ∝ ω_c N(z_i; α μ_c, D) with D = α² S + β² I [n, 1, K] diagonal."""
        wz = z / d_t
        dist = (
            (z * wz).sum(-1, keepdim=True)
            - 2.0 * al * (wz @ mu.mT)
            + al * al * (mu * mu / d_t).sum(-1)[:, None]
        )
        return torch.softmax(log_w[:, None, :] - 0.5 * dist, dim=-1) @ mu


REGISTER = {"lensf": LEnSF}
