"""Ensemble Score Filter (Bao, Zhang & Zhang 2023; seed paper eqs. 6–12), training-free.

Forecast ensemble X [M, d] is standardised per dimension, x̃ = (x − x̄)/s. Pseudo-time runs from
t=1 down to t=ε in ``n_steps`` steps of the reverse SDE

    dZ = [b(t) Z − σ²(t) s(Z, t)] dt + σ(t) dW̄,
    α_t = 1 − (1−ε_α) t,  β_t² = ε_β + (1−ε_β) t,  b = d log α/dt,  σ² = dβ²/dt − 2 b β²,

with posterior score s = s_prior + h(t) ∇ log p(y|z), damping h(t) = 1 − t. Prior score:

- ``mixture`` (the paper, eqs. 11–12): w_ij = softmax_j(−‖z_i − α x̃_j‖² / 2β²),
  s_prior(z_i) = −(z_i − α Σ_j w_ij x̃_j) / β²; distances by one matrix product.
- ``paired`` (the public reference code): sample i is pulled toward its own member,
  s_prior(z_i) = −(z_i − α x̃_i) / β².

Integrator: Euler–Maruyama with the likelihood term linearly implicit. With C the Gauss–Newton
curvature of −log p (diagonal, ``operator.curvature``) in standardised units,

    Δz = Δt (−b z + σ² s(z)) + √Δt σ ξ,     z ← z + Δz / (1 + Δt σ² h C).

Plain explicit stepping goes non-finite when the likelihood is sharp (DESIGN.md); the implicit
treatment is unconditionally stable for that term. ``standardise=spectral`` replaces the per-index
standardisation by x̃ = C^-½ S⁻¹ (x − x̄), C the ensemble's homogeneous correlation (diagonal in
Fourier space), so the kernels carry spatial covariance; its curvature is no longer diagonal and the
implicit step is solved by conjugate gradients (``_Spectral``). Afterwards the spread is relaxed toward the
forecast spread (RTPS). Cost O(n_steps · M² · d) (mixture).

Python loops run over pseudo-time and over column blocks of ``chunk_elements`` values (m × c, 512 KiB
of float32 on CPU), never over members or grid points: a block's temporaries stay in cache, where
whole-array ones ([M, d] float32/int64, 80–160 MB at d = 10⁶) cost page faults and memory traffic for
every one of the ~40 elementwise operations of a step (scripts/bench_filters.py). Each expression is
evaluated on a block exactly as on the whole array, so the blocking does not change a bit of
``paired``. ``paired``: columns evolve independently, so a block runs all pseudo-time steps before the
next one; ``mixture``: every step sweeps the blocks once, summing the next step's z·x̃ᵀ as it goes.

Sharding over R ranks (``comm``; DESIGN.md): ``shard=members`` — rank r integrates a contiguous
block of the members (every rank holds all standardised members x̃ for the mixture score; no
communication per step); ``shard=state`` — rank r integrates a contiguous slice of the state indices
of every member, with the observation operator restricted to that slice and, for ``mixture``, one
all-reduce of the M×M matrix z·x̃ᵀ per step (‖x̃_j‖² once). Noise is a pure function of (key, step,
global member, global state index) (``scoreda.seeding.counter_normal``), and the M×M products are
accumulated in float64, so any R gives the one-rank result to rounding. Rank 0 gathers the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from scoreda.filters import (
    CONSTRUCTED,
    Analysis,
    Capabilities,
    cap_spread,
    check_common,
    config_keys,
    inflate_prior,
    observed_mask,
    relax_spread,
)
from scoreda.filters.sharding import SHARDS, Collective, block, check_sharding
from scoreda.observations import ObservationOperator, PointObservation
from scoreda.seeding import CounterNormal, noise_key

if TYPE_CHECKING:
    from scoreda.dynamics.grid import Grid
    from scoreda.filters.letkf import LETKF

UNOBSERVED = ("none", "regress")
STANDARDISE = ("point", "spectral")
CG_TOL, CG_ITER = 1e-3, 50  # the spectral implicit step's conjugate gradients


@dataclass
class EnSF:
    """``filter=ensf``. The fields are the config keys and their defaults (the schema of
    ``configs/filter/ensf.yaml``), except those marked ``CONSTRUCTED``, which ``from_config`` sets."""

    n_steps: int = 100  # Euler–Maruyama steps from t = 1 to t_end
    prior_score: str = "paired"  # "paired" (the reference code) | "mixture" (the paper's eqs. 11–12)
    eps_alpha: float = 0.05  # α_t = 1 − (1 − eps_alpha) t
    eps_beta: float = 0.5  # β_t² = eps_beta + (1 − eps_beta) t
    t_end: float = 0.0  # ε: last pseudo-time (0 integrates to the end)
    implicit: bool = True  # likelihood term linearly implicit (stable for sharp likelihoods)
    standardise: str = "point"  # x̃ per state index "point" | per wavenumber "spectral" (needs ``grid``)
    rtps: float = 0.0  # relaxation of the analysis spread to the forecast spread (1 = fully)
    inflation: float = 1.0  # multiplicative inflation of the forecast anomalies
    adaptive_inflation: bool = True  # × innovation_inflation(prior, y) (≥ 1) before the analysis
    cap_spread: bool = False  # analysis spread ≤ forecast spread per index, before RTPS
    unobserved: str = "regress"  # unobserved components: "none" (as integrated) | "regress" (from observed)
    rtps_unobserved: float = 0.5  # RTPS of the regressed components (unobserved=regress)
    cutoff: float = 2000.0  # Gaspari–Cohn cutoff of that regression (grid length units; .inf: global)
    cross_level: float = 1.0  # factor on the weight of observations on another level, in it
    shard: str = "members"  # how ranks split the work: "members" | "state"
    localiser: LETKF | None = field(default=None, metadata=CONSTRUCTED)  # the regression's geometry
    grid: tuple[int, int, int] | None = field(default=None, metadata=CONSTRUCTED)  # (C, H, W), periodic
    chunk_elements: int = field(default=1 << 17, metadata=CONSTRUCTED)  # m × columns of one block

    @property
    def capabilities(self) -> Capabilities:
        """Both shardings; ``standardise=spectral`` needs whole members on each rank."""
        return Capabilities(shards=("members",) if self.standardise == "spectral" else SHARDS)

    def __post_init__(self) -> None:
        if self.prior_score not in ("paired", "mixture"):
            raise ValueError(f"filter.prior_score: expected paired or mixture, got {self.prior_score!r}")
        if self.n_steps < 1:
            raise ValueError(f"filter.n_steps: must be ≥ 1, got {self.n_steps}")
        if not 0 < self.eps_alpha < 1:
            raise ValueError(f"filter.eps_alpha: must be in (0, 1), got {self.eps_alpha}")
        if not 0 <= self.eps_beta <= 1:
            raise ValueError(f"filter.eps_beta: must be in [0, 1], got {self.eps_beta}")
        if not 0 <= self.t_end < 1:
            raise ValueError(f"filter.t_end: must be in [0, 1), got {self.t_end}")
        if self.shard not in SHARDS:
            raise ValueError(f"filter.shard: expected members or state, got {self.shard!r}")
        if self.unobserved not in UNOBSERVED:
            raise ValueError(f"filter.unobserved: expected none or regress, got {self.unobserved!r}")
        if not 0 <= self.rtps_unobserved <= 1:
            raise ValueError(f"filter.rtps_unobserved: must be in [0, 1], got {self.rtps_unobserved}")
        if self.standardise not in STANDARDISE:
            raise ValueError(f"filter.standardise: expected point or spectral, got {self.standardise!r}")
        check_common(self)
        if not self.cutoff > 0:
            raise ValueError(f"filter.cutoff: must be positive (.inf: global), got {self.cutoff}")
        if not self.cross_level >= 0:
            raise ValueError(f"filter.cross_level: must be ≥ 0, got {self.cross_level}")

    @classmethod
    def from_config(cls, cfg, grid: Grid | None = None) -> EnSF:
        """Keys of ``cfg``; the model's ``grid`` gives the shape (C, H, W) and, with
        ``unobserved=regress``, the localiser: the LETKF's geometry with ``cfg.cutoff`` and
        ``cfg.cross_level``."""
        kw = config_keys(cls, cfg)
        if grid is not None:
            kw["grid"] = grid.shape
        if kw.get("unobserved", cls.unobserved) == "regress" and grid is not None:
            from scoreda.filters.letkf import LETKF

            loc = {k: kw.get(k, getattr(cls, k)) for k in ("cutoff", "cross_level")}
            kw["localiser"] = LETKF.from_config(loc | {"rtps": 0.0}, grid)
        return cls(**kw)

    # schedules --------------------------------------------------------------
    def alpha(self, t: float) -> float:
        return 1.0 - (1.0 - self.eps_alpha) * t

    def beta_sq(self, t: float) -> float:
        return self.eps_beta + (1.0 - self.eps_beta) * t

    def drift_diffusion(self, t: float) -> tuple[float, float]:
        """(b, σ²) at pseudo-time t: b = d log α/dt, σ² = dβ²/dt − 2 b β²."""
        b = -(1.0 - self.eps_alpha) / self.alpha(t)
        return b, (1.0 - self.eps_beta) - 2.0 * b * self.beta_sq(t)

    def _mixture_weights(self, g: torch.Tensor, x_sq: torch.Tensor, t: float) -> torch.Tensor:
        """w [m, M] = softmax_j((2α G_ij − α² ‖x_j‖²) / 2β²) from G = z·xᵀ [m, M] and ‖x_j‖² [M] (float64)."""
        a, b2 = self.alpha(t), self.beta_sq(t)
        return torch.softmax((2.0 * a * g - a * a * x_sq[None, :]) / (2.0 * b2), dim=1)

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
        """Analysis ensemble [M, d] from the forecast ensemble ``prior`` [M, d] and obs ``y`` [p];
        diagnostics: ``inflation``, the factor the forecast anomalies were multiplied by.

        The noise key is ``generator``'s seed. With ``comm`` (R ranks) every rank passes the full
        prior and all observations; rank r integrates block r of the members or of the state indices
        (``self.shard``) on ``device`` (default: the prior's), and rank 0 returns the gathered
        analysis while the others return None.
        """
        R, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        M, d = prior.shape
        check_sharding(self.shard, M, d, R)
        rows = block(M, R, rank) if self.shard == "members" else slice(0, M)
        cols = block(d, R, rank) if self.shard == "state" else slice(0, d)
        device = prior.device if device is None else torch.device(device)

        # global, from the full prior that every rank holds: no communication
        # λ where the analysis corrects: observed components, and with ``regress`` or ``spectral``
        # (whose B carries each observation to its neighbours) unobserved ones too
        regress = self.unobserved == "regress"
        everywhere = regress or self.standardise == "spectral"
        prior, inflation = inflate_prior(
            prior, y, operator, self.inflation, self.adaptive_inflation, observed_only=not everywhere
        )
        full_operator = operator
        floor = 1e-6 * prior.std().clamp_min(1e-30).item()
        local = prior[:, cols].to(device)  # [M, d'] (d' = d unless shard=state)
        mean = local.mean(0, keepdim=True)
        std = local.std(0, keepdim=True).clamp_min(floor)
        if cols != slice(0, d):
            if self.standardise == "spectral":
                raise ValueError("filter.standardise=spectral needs whole members: use filter.shard=members")
            operator, keep = operator.restrict(cols.start, cols.stop)
            y = y[keep.to(y.device)]
        allreduce = comm.allreduce if R > 1 and self.shard == "state" else None
        analysis = self._integrate(
            local, mean, std, y.to(local), operator, noise_key(generator), rows, cols, allreduce
        )  # [m, d']
        if R > 1:
            analysis = comm.gather(analysis, dim=0 if self.shard == "members" else 1)
            if analysis is None:
                return Analysis(None, {"inflation": inflation})
            analysis = analysis.to(device)
        if regress:
            analysis = self.regress_unobserved(analysis, prior.to(device), full_operator)
        if self.cap_spread:
            analysis = cap_spread(analysis, prior.to(device))
        return Analysis(relax_spread(analysis, prior.to(device), self.rtps), {"inflation": inflation})

    def regress_unobserved(
        self, analysis: torch.Tensor, forecast: torch.Tensor, operator: ObservationOperator
    ) -> torch.Tensor:
        """``unobserved=regress``: the unobserved components u of the analysis [M, d] replaced by the
        forecast plus the localised ensemble regression (``LETKF.regress``) of the members' changes at
        the observed components o,

            x^a_u = x^f_u + C_uo (C_oo + R)⁻¹ (x^a_o − x^f_o)     (GC-localised, ridge R = diag(1/c)),

        then RTPS with ``rtps_unobserved`` toward the forecast spread (σ_u ← ρ σ^f_u + (1 − ρ) σ^a_u: the
        20-member regression takes out more spread than error),

        with C the covariances of ``forecast`` [M, d] (the ensemble the integration started from,
        inflated) and c = ``operator.curvature`` at its mean (1/σo² for a linear h). A no-op when every
        component is observed. Needs the whole state: on rank 0 after the gather."""
        mask = observed_mask(operator, forecast.shape[1])
        if mask is None:
            return analysis
        if self.localiser is None:
            raise ValueError(
                "filter.unobserved=regress: no localiser (EnSF.from_config(filter, grid) builds it)"
            )
        mask = mask.to(forecast.device)
        obs = mask.nonzero().squeeze(1)
        mean = forecast.mean(0, keepdim=True)
        precision = operator.curvature(mean).reshape(-1)[obs]
        delta = self.localiser.regress(forecast - mean, obs, analysis[:, obs] - forecast[:, obs], precision)
        regressed = relax_spread(forecast + delta.to(forecast.dtype), forecast, self.rtps_unobserved)
        return torch.where(mask, analysis, regressed)

    # integration --------------------------------------------------------------
    def _column_blocks(self, m: int, n: int, device: torch.device, operator) -> list[slice]:
        """Contiguous blocks of the n local state indices, m·width ≤ ``chunk_elements`` (CPU; one
        block on other devices, where whole arrays are what is fast, and for an operator that cannot
        be restricted to a block). Widths ≥ 64 are multiples of 64."""
        whole = device.type != "cpu" or not hasattr(operator, "restrict")
        if whole or m * n <= self.chunk_elements:
            return [slice(0, n)]
        width = max(1, self.chunk_elements // m)
        width -= width % 64 if width >= 64 else 0
        return [slice(s, min(s + width, n)) for s in range(0, n, width)]

    def _schedule(self) -> list[_Step]:
        ts = torch.linspace(1.0, self.t_end, self.n_steps + 1, dtype=torch.float64).tolist()
        steps = []
        for k, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
            dt = t - t_next
            b, g2 = self.drift_diffusion(t)
            steps.append(_Step(k, t, dt, b, g2, 1.0 - t, self.alpha(t), self.beta_sq(t), dt**0.5 * g2**0.5))
        return steps

    def _integrate(self, local, mean, std, y, operator, key: int, rows: slice, cols: slice, allreduce):
        """Reverse SDE for samples ``rows`` on state indices ``cols``; returns the analysis
        mean + std·z [m, d'] at t = ε.

        local [M, d'] the (inflated) forecast members on ``cols``, mean/std [1, d'], ``operator`` and y
        restricted to ``cols``; noise ξ(step, global member, global state index) from
        ``CounterNormal``. Every expression is evaluated on column blocks [m, c] (``chunk_elements``)
        that stay in cache, with the same elementwise operations in the same order as on the whole
        array (so ``paired`` gives the same bits for any blocking). ``paired``: the columns evolve
        independently, so each block runs all pseudo-time steps in turn. ``mixture``: step k needs
        G = z·x̃ᵀ [m, M] over all columns (float64; summed over the blocks, then over the ranks) for
        the weights w [m, M]; one sweep over the blocks applies step k and sums step k+1's G.
        """
        m, n = rows.stop - rows.start, local.shape[1]
        spectral = self.standardise == "spectral"
        if spectral and self.grid is None:
            raise ValueError("filter.standardise=spectral: no grid (EnSF.from_config(filter, grid) sets it)")
        blocks = [slice(0, n)] if spectral else self._column_blocks(m, n, local.device, operator)
        width = max(s.stop - s.start for s in blocks)
        noise = CounterNormal(key, rows, cols, device=local.device, max_cols=width)
        steps = self._schedule()
        out = torch.empty(m, n, dtype=local.dtype, device=local.device)
        if self.prior_score == "paired":
            for sl in blocks:
                if spectral:
                    blk = _Spectral.make(local, mean, std, y, operator, self.grid, rows)
                else:
                    blk = _Block.make(local, mean, std, y, operator, sl, rows, standardised=False)
                z = self._draw(noise, 0, sl, local.dtype).clone()
                work = _Work(z)
                for st in steps:
                    score = torch.mul(blk.x, st.a, out=work.score).sub_(z).div_(st.b2)  # (α x̃ − z)/β²
                    self._advance(st, z, score, blk, noise, work)
                blk.to_state(z, out=out[:, sl])
            return out
        if spectral:
            parts = [_Spectral.make(local, mean, std, y, operator, self.grid, slice(None), torch.float64)]
            x = parts[0].x
        else:
            x = ((local - mean) / std).to(torch.float64)  # [M, d'] standardised members
            parts = [
                _Block.make(x, mean, std, y, operator, sl, slice(None), standardised=True) for sl in blocks
            ]
        x_sq = (x * x).sum(1)  # ‖x̃_j‖² [M]
        if allreduce is not None:
            x_sq = allreduce(x_sq)
        del x
        zs = [self._draw(noise, 0, sl, local.dtype).clone() for sl in blocks]
        works = {z.shape: _Work(z) for z in zs}  # at most two widths
        g = None  # G = z·x̃ᵀ = Σ_blocks z_b·x̃_bᵀ for step 0; later summed in the sweep of the step before
        for blk, z in zip(parts, zs, strict=True):
            g_b = z.to(torch.float64) @ blk.x.T
            g = g_b if g is None else g.add_(g_b)
        for i, st in enumerate(steps):
            if allreduce is not None:
                g = allreduce(g)
            w = self._mixture_weights(g, x_sq, st.t)  # [m, M]
            g = None
            for blk, z in zip(parts, zs, strict=True):
                score = (st.a * (w @ blk.x)).to(z.dtype).sub_(z).div_(st.b2)  # (α w x̃ − z)/β²
                self._advance(st, z, score, blk, noise, works[z.shape])
                if i + 1 < len(steps):
                    g_b = z.to(torch.float64) @ blk.x.T
                    g = g_b if g is None else g.add_(g_b)
        for blk, z in zip(parts, zs, strict=True):
            blk.to_state(z, out=out[:, blk.cols])
        return out

    @staticmethod
    def _draw(noise: CounterNormal, step: int, sl: slice, dtype: torch.dtype) -> torch.Tensor:
        xi = noise.draw(step, sl.start, sl.stop)
        return xi if dtype == xi.dtype else xi.to(dtype)

    def _advance(self, st: _Step, z, score, blk: _Block, noise: CounterNormal, work: _Work) -> None:
        """One Euler–Maruyama step on a block, in place on z [m, c]; ``score`` [m, c] holds the prior
        score on entry and is overwritten. With x = mean + S z (S = diag(std), or B^½ for
        ``spectral``), s = score + h S ∇log p(y|x),

            Δz = Δt (σ² s − b z) + √Δt σ ξ,   z ← z + (1 + Δt σ² h C)⁻¹ Δz   (C ≈ S diag(curvature) S).
        """
        xz = blk.to_state(z, out=work.xz)
        if st.h > 0:
            if blk.direct:  # every index observed, h = identity: ∇log p = (y − x)/σo²
                lik = torch.sub(blk.y, xz, out=work.lik).div_(blk.op.sigma**2)
            else:
                lik = blk.op.likelihood_score(xz, blk.y)
            score.add_(blk.pull(lik, st.h))
        score.mul_(st.g2).sub_(torch.mul(z, st.b, out=work.bz)).mul_(st.dt)  # Δt (σ² s − b z)
        score.add_(self._draw(noise, st.k + 1, blk.cols, z.dtype).mul_(st.sq))  # + √Δt σ ξ
        if self.implicit and st.h > 0:
            blk.implicit(score, st.dt * st.g2 * st.h, xz, work)
        z.add_(score)


@dataclass(frozen=True)
class _Step:
    """Pseudo-time step k from t to t − dt: drift b, diffusion σ² (g2), damping h, α, β², √Δt σ (sq)."""

    k: int
    t: float
    dt: float
    b: float
    g2: float
    h: float
    a: float
    b2: float
    sq: float


@dataclass
class _Block:
    """One column block ``cols`` (local state indices): the standardised members x̃ [·, c] on it
    (``paired``: the rows being integrated; ``mixture``: all members, float64), mean/std [1, c], std² [1, c],
    the operator and y restricted to it, the linear curvature C = curvature(mean)·std² [c], and
    ``direct``: whether ∇log p(y|x) = (y − x)/σo² (see ``_direct``)."""

    cols: slice
    x: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    std_sq: torch.Tensor
    op: ObservationOperator
    y: torch.Tensor
    curv: torch.Tensor | None
    direct: bool

    @classmethod
    def make(cls, x, mean, std, y, operator, cols: slice, rows: slice, standardised: bool) -> _Block:
        mean_b, std_b = mean[:, cols].contiguous(), std[:, cols].contiguous()
        if standardised:
            x_b = x[rows, cols].contiguous()
        else:  # x̃ = (x − mean)/std on the rows integrated here
            x_b = (x[rows, cols] - mean_b) / std_b
        if cols == slice(0, x.shape[1]):
            op, y_b = operator, y
        else:
            op, keep = operator.restrict(cols.start, cols.stop)
            y_b = y[keep.to(y.device)]
        curv = op.curvature(mean_b) * std_b[0] ** 2 if op.linear else None
        return cls(cols, x_b, mean_b, std_b, std_b**2, op, y_b, curv, _direct(op, y_b, mean_b))

    def to_state(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """x = mean + std·z into ``out``."""
        return torch.mul(z, self.std, out=out).add_(self.mean)

    def pull(self, lik: torch.Tensor, h: float) -> torch.Tensor:
        """h · std · ∇ₓlog p: the likelihood score in z (in place on ``lik``)."""
        return lik.mul_(h * self.std)

    def implicit(self, dz: torch.Tensor, coef: float, xz: torch.Tensor, work: _Work) -> None:
        """dz ← dz / (1 + coef · C), C = curvature · std² per index (in place)."""
        if self.op.linear:  # C [c], the same for every member
            dz.div_(torch.mul(self.curv, coef, out=work.den).add_(1.0))
        else:
            dz.div_(self.op.curvature(xz).mul_(self.std_sq).mul_(coef).add_(1.0))


@dataclass
class _Spectral:
    """``standardise=spectral``: the whole state of a member, (C, H, W) periodic in H and W, whitened
    per state index and then per wavenumber. With s the ensemble std per index, Â_j(k) =
    F((x_j − x̄)/s) (orthonormal 2-D DFT per channel) and the correlation spectrum
    P(k) = Σ_j |Â_j(k)|² / (M − 1) [C, H, W/2+1], the prior covariance is taken to be
    B = S C S, S = diag(s), with the homogeneous correlation C = F⁻¹ P F, and

        x̃_j = C^-½ S⁻¹ (x_j − x̄),   x = x̄ + S C^½ z,   ∇_z log p = C^½ S ∇ₓ log p,

    so the per-index kernels of the prior score become kernels with covariance ∝ B in x: the update
    spreads each observation over the ensemble's correlation lengths and weighs each scale by its
    own variance against σo². The curvature in z, A = C^½ S diag(c) S C^½ (c: ``operator.curvature``),
    is no longer diagonal: the implicit step solves (1 + Δt σ² h A) v = Δz by conjugate gradients
    preconditioned with 1 + Δt σ² h c̄ P(k), c̄ the channel mean of c s² (exact where c s² is
    uniform: every point observed linearly with one σo and a uniform spread)."""

    cols: slice
    x: torch.Tensor  # [m, d] whitened members
    mean: torch.Tensor  # [1, d]
    std: torch.Tensor  # [1, d]
    power: torch.Tensor  # P [C, H, W/2+1]
    root: torch.Tensor  # P^½, the factor of C^½
    grid: tuple[int, int, int]
    op: ObservationOperator
    y: torch.Tensor
    curv: torch.Tensor | None  # c s² [1, d] for a linear operator
    direct: bool

    @classmethod
    def make(cls, local, mean, std, y, operator, grid, rows: slice, dtype=None) -> _Spectral:
        C, H, W = grid
        M, d = local.shape
        if C * H * W != d:
            raise ValueError(f"filter.standardise=spectral: state size {d} does not fit the grid {grid}")
        a_hat = torch.fft.rfft2(((local - mean) / std).reshape(M, C, H, W), norm="ortho")
        power = a_hat.abs().square().sum(0) / max(M - 1, 1)
        power = power.clamp_min(1e-12 * float(power.mean()) + torch.finfo(power.dtype).tiny)
        root = power.sqrt()
        x = torch.fft.irfft2(a_hat[rows] / root, s=(H, W), norm="ortho").reshape(-1, d)
        x = x if dtype is None else x.to(dtype)
        curv = operator.curvature(mean).reshape(1, d) * std.square() if operator.linear else None
        direct = _direct(operator, y, mean)
        return cls(slice(0, d), x, mean, std, power, root, grid, operator, y, curv, direct)

    def _apply(self, f: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """F⁻¹ (factor · F f) for fields f [m, d] → [m, d]."""
        C, H, W = self.grid
        f_hat = torch.fft.rfft2(f.reshape(-1, C, H, W), norm="ortho") * factor
        return torch.fft.irfft2(f_hat, s=(H, W), norm="ortho").reshape(f.shape).to(f.dtype)

    def to_state(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """x = x̄ + S C^½ z into ``out``."""
        return torch.mul(self._apply(z, self.root), self.std, out=out).add_(self.mean)

    def pull(self, lik: torch.Tensor, h: float) -> torch.Tensor:
        """h · C^½ S ∇ₓlog p: the likelihood score in z."""
        return self._apply(lik * self.std, self.root).mul_(h)

    def implicit(self, dz: torch.Tensor, coef: float, xz: torch.Tensor, work) -> None:
        """dz ← (1 + coef A)⁻¹ dz, A v = C^½ (c s² ⊙ C^½ v), by preconditioned conjugate gradients per
        member (each stops at relative residual ≤ ``CG_TOL``, so a member's result does not depend on
        the others; at most ``CG_ITER`` iterations; in place)."""
        C, H, W = self.grid
        w = self.curv if self.curv is not None else self.op.curvature(xz) * self.std.square()
        c_bar = w.reshape(*w.shape[:-1], C, H * W).mean(-1)[..., None, None]
        precond = 1.0 / (1.0 + coef * c_bar * self.power)  # [.., C, H, W/2+1]

        def op(v):
            return v + coef * self._apply(w * self._apply(v, self.root), self.root)

        v = self._apply(dz, precond)
        r = dz - op(v)
        q = self._apply(r, precond)
        p, rq = q, (r * q).sum(1, keepdim=True)
        stop, tiny = CG_TOL * dz.norm(dim=1, keepdim=True), torch.finfo(dz.dtype).tiny
        for _ in range(CG_ITER):
            active = r.norm(dim=1, keepdim=True) > stop  # a converged member stops where it is
            if not bool(active.any()):
                break
            ap = op(p)
            step = torch.where(active, rq / (p * ap).sum(1, keepdim=True).clamp_min(tiny), 0.0)
            v.add_(step * p)
            r.sub_(step * ap)
            q = self._apply(r, precond)
            rq_next = (r * q).sum(1, keepdim=True)
            p = q + (rq_next / rq.clamp_min(tiny)) * p
            rq = rq_next
        dz.copy_(v)


def _direct(op: ObservationOperator, y: torch.Tensor, probe: torch.Tensor) -> bool:
    """Whether ``op`` observes all of its c state indices in order with h the identity (a linear
    ``PointObservation`` of the whole block), so that its likelihood score Hᵀ(y − Hx)/σo² is
    (y − x)/σo² elementwise — the same operations without the gather and scatter. Checked once on
    ``probe`` [1, c] against ``op.likelihood_score`` (same bits, or the operator is used as is)."""
    c = probe.shape[1]
    if not (isinstance(op, PointObservation) and op.linear and op.n_obs == c):
        return False
    if not torch.equal(op.indices.cpu(), torch.arange(c)):
        return False
    return torch.equal((y - probe) / op.sigma**2, op.likelihood_score(probe, y))


class _Work:
    """Scratch buffers shaped like one block [m, c] (and [c])."""

    def __init__(self, like: torch.Tensor) -> None:
        self.score, self.xz, self.bz, self.lik = (torch.empty_like(like) for _ in range(4))
        self.den = torch.empty(like.shape[1], dtype=like.dtype, device=like.device)


REGISTER = {"ensf": EnSF}
