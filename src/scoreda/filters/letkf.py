"""Local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007) with R-localisation.

Forecast ensemble X [M, d] (after multiplicative inflation of its anomalies by ``inflation``),
mean x̄, anomalies Xb = X − x̄ (rows are members). Observations go through the operator member by
member, so nonlinear h is handled in observation space:

    Yb = h(X) − ȳ,   ȳ = mean_m h(X_m),   δ = y − ȳ.

For every state point, with the local diagonal weights  w_j = GC(r_j) · λ_j / σo²  on the
observations j within the cutoff (r_j: horizontal distance, λ_j = 1 on the point's own level and
``cross_level`` on any other level),

    A  = (M − 1) I + Ybᵀ diag(w) Yb               (M×M, via torch.linalg.eigh: A = V Λ Vᵀ)
    P̃  = A⁻¹,   w̄ = P̃ Ybᵀ diag(w) δ,   W = [(M − 1) P̃]^{1/2} = V (M − 1)^{1/2} Λ^{−1/2} Vᵀ
    x_a,m = x̄ + Σ_k Xb_k (w̄_k + W_km)      (at that point).

This is Hunt et al.'s algorithm with ρ = 1 in (M − 1)I/ρ: inflation is applied to the forecast
anomalies before h, which for linear h equals their covariance inflation with ρ = inflation².
Afterwards the analysis anomalies are relaxed toward the (inflated) forecast anomalies: RTPP
(Zhang et al. 2004), Xa ← (1 − rtpp) Xa + rtpp Xb, then RTPS (``filters.processing``).

Geometry. A state is [C, H, W] flattened (levels, y, x) on a doubly periodic grid of spacing ``dx``
with periodic lengths ``domain = (Ly, Lx)`` (same unit as ``dx``; H = Ly/dx, W = Lx/dx). The
distance between a state point and an observation is the horizontal periodic (minimum-image)
distance between their grid positions; the level enters only through ``cross_level``.

Gaspari–Cohn convention: ``cutoff`` is the distance at which the taper reaches zero, i.e. 2c in
Gaspari & Cohn (1999, eq. 4.10); GC(r) = f(r / c) with c = cutoff / 2, so GC(cutoff/2) = 5/24 ≈ 0.208.
Observations at distance ≥ cutoff get weight 0. (DAPPER's ``loc_rad`` R places c = 1.82 R, so its
radius R corresponds to cutoff = 3.64 R.) ``cutoff = inf`` (or ``None``) gives the global ETKF:
every point sees every observation with taper 1.

Local sums as convolutions. Observations sit on grid points and the taper depends only on the
offset o = (oy, ox) between point and observation, so there is one table τ(o) = GC(dx·|o|) [H, W]
(``taper_table``) for the whole grid. With, for observation j at grid point (c_j, g_j),

    P_j = y_j y_jᵀ / σo²  (packed lower triangle),   q_j = y_j δ_j / σo²

(y_j = column j of Yb) summed onto the grid (zero where nothing is observed), every local sum is a
periodic convolution with τ, for all points at once:

    A(c, g) − (M − 1) I = Σ_o τ(o) Σ_c' λ_cc' P(c', g + o),   b(c, g) = Ybᵀ diag(w) δ = same with q,

done by FFT with the rfft2 of τ cached per grid. This is exact (up to rounding) for any
observation network on the grid: all points, every k-th point, random stations, duplicates.
With ``cross_level == 1`` (or C = 1) all levels at a position share one A, b and analysis
(C_a = 1 level set), otherwise each level has its own (C_a = C). Then one batched ``eigh`` per
chunk of positions, no Python loop over points or members. The member space is reduced to the
K = M − 1 coordinates of 1⊥ (orthonormal U, Uᵀ1 = 0): the anomalies Xb, Yb sum to zero over
members, so 1 is an eigenvector of A with eigenvalue M − 1, W is the identity on it and
Xbᵀ1 = 0; all sums and the eigh are done on Uᵀ Yb, Uᵀ Xb (K×K). Cost O(C_a·d_h·M² log d_h) for the
sums plus O(C_a·d_h·M³) for the eigh (d_h = H·W), memory O(C_a·d_h·M²). Everything runs in the
dtype of the operator's output: float32 is enough (2×64², M = 20, all points observed with
σo = 1 K: float32 and float64 analyses differ by ~1e-5 K).

``reference.analyse_point_loop`` is the same analysis written as a plain loop over state points (the
reference for tests and the baseline for benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from scoreda.filters import CONSTRUCTED, Analysis, Capabilities, check_common, config_keys
from scoreda.filters.processing import Processing
from scoreda.filters.sharding import Collective, block
from scoreda.observations import ObservationOperator

if TYPE_CHECKING:
    from scoreda.dynamics.grid import Grid


def gaspari_cohn(dist: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Gaspari–Cohn (1999, eq. 4.10) taper, 1 at 0 and zero from ``cutoff`` (= 2c) on."""
    r = dist / (0.5 * cutoff)
    inner = (((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r * r + 1.0
    rs = r.clamp_min(1e-12)
    outer = ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0 - 2.0 / (3.0 * rs)
    out = torch.where(r <= 1.0, inner, outer)
    return torch.where(r < 2.0, out, torch.zeros_like(out)).clamp_min(0.0)


@dataclass
class LETKF:
    """``filter=letkf``. The fields are the config keys and their defaults (the paper's tuned
    setting), except those marked ``CONSTRUCTED``, which ``from_config`` sets from the grid."""

    cutoff: float | None = 2000.0  # distance where GC reaches zero (2c); inf / None = global ETKF
    cross_level: float = 1.0  # factor on the R⁻¹ weight of observations on another level
    inflation: float = 1.0  # multiplicative, on the forecast anomalies
    adaptive_inflation: bool = False  # × innovation_inflation(prior, y) (≥ 1), after ``inflation``
    rtps: float = 0.3  # relaxation of the analysis spread to the forecast spread (1 = fully)
    rtpp: float = 0.0  # relaxation of the analysis perturbations to the forecast ones (1 = fully)
    mda: int = 1  # analyses in turn, each with σo √mda, h relinearised over the updated ensemble
    obs_inflation: float = 1.0  # R inflation: the update uses σo² × this (adaptive inflation: σo²)
    dx: float = field(default=1.0, metadata=CONSTRUCTED)  # grid spacing (unit of cutoff)
    # periodic lengths (Ly, Lx); None: one row of d points
    domain: tuple[float, float] | None = field(default=None, metadata=CONSTRUCTED)
    # bound on the elements of one batch (FFT fields, local analyses)
    chunk_elements: int = field(default=1 << 23, metadata=CONSTRUCTED)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    capabilities: ClassVar[Capabilities] = Capabilities(shards=("state",))  # tiles of grid rows

    def __post_init__(self) -> None:
        if self.cutoff is None:
            self.cutoff = math.inf
        self.cutoff = float(self.cutoff)
        if not self.cutoff > 0:
            raise ValueError(f"filter.cutoff: must be positive, got {self.cutoff}")
        if not self.cross_level >= 0:
            raise ValueError(f"filter.cross_level: must be ≥ 0, got {self.cross_level}")
        check_common(self)
        if not 0 <= self.rtpp <= 1:
            raise ValueError(f"filter.rtpp: must be in [0, 1], got {self.rtpp}")
        if self.mda < 1:
            raise ValueError(f"filter.mda: must be ≥ 1, got {self.mda}")
        if not self.obs_inflation > 0:
            raise ValueError(f"filter.obs_inflation: must be positive, got {self.obs_inflation}")
        if not self.dx > 0:
            raise ValueError(f"filter.dx: must be positive, got {self.dx}")
        if self.domain is not None:
            self.domain = (float(self.domain[0]), float(self.domain[1]))
        if math.isfinite(self.cutoff) and self.domain is None:
            raise ValueError("LETKF: a finite cutoff needs the grid geometry (domain); use from_config")

    @classmethod
    def from_config(cls, filter_cfg, grid: Grid | None = None) -> LETKF:
        """Keys of ``filter_cfg``; ``dx`` and ``domain`` (in the grid's length units: km, or grid
        index for a 1-D model) from the model's ``grid``."""
        kw = config_keys(cls, filter_cfg)
        if grid is not None:
            dy, dx = grid.spacing
            if dy != dx:
                raise ValueError(f"LETKF: the grid spacing must be the same along y and x, got {dy} and {dx}")
            kw["dx"], kw["domain"] = dx, tuple(float(n) for n in grid.periodic_lengths)
        return cls(**kw)

    # geometry ---------------------------------------------------------------
    def grid(self, d: int) -> tuple[int, int, int]:
        """(C, H, W) of a flattened state of size d."""
        if self.domain is None:
            return 1, 1, d
        H, W = round(self.domain[0] / self.dx), round(self.domain[1] / self.dx)
        if H < 1 or W < 1 or d % (H * W):
            raise ValueError(f"LETKF: state size {d} does not fit a {H}×{W} grid (domain {self.domain})")
        return d // (H * W), H, W

    def taper_table(self, H: int, W: int) -> torch.Tensor:
        """τ [H, W] (float64): GC taper of the offset of (i, j) grid steps, at the periodic distance
        dx·√(min(i, H − i)² + min(j, W − j)²); zero from the cutoff on, all ones if it is infinite."""
        i, j = torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64)
        di, dj = torch.minimum(i, H - i), torch.minimum(j, W - j)
        dist = self.dx * torch.sqrt(di[:, None] ** 2 + dj[None, :] ** 2)
        return gaspari_cohn(dist, self.cutoff) if math.isfinite(self.cutoff) else torch.ones_like(dist)

    def local_sums(self, f: torch.Tensor) -> torch.Tensor:
        """Σ_o τ(o) f(g + o) for every grid point g of fields f [N, ..., H, W] (periodic convolution
        with ``taper_table``, by FFT, in chunks along N, in place); an infinite cutoff gives the
        sums over the grid, [N, ..., 1, 1]."""
        H, W = f.shape[-2:]
        if not math.isfinite(self.cutoff):
            return f.sum((-2, -1), keepdim=True)
        key = (H, W, f.dtype, f.device)
        if key not in self._cache:  # τ is even, so its transform is real
            self._cache[key] = torch.fft.rfft2(self.taper_table(H, W)).real.to(f.device, f.dtype)
        kernel = self._cache[key]
        step = max(1, self.chunk_elements // max(1, f[0].numel()))
        for n0 in range(0, f.shape[0], step):
            f[n0 : n0 + step] = torch.fft.irfft2(torch.fft.rfft2(f[n0 : n0 + step]) * kernel, s=(H, W))
        return f

    def gridded_sums(
        self, terms: torch.Tensor, ind: torch.Tensor, d: int, tile: slice | None = None
    ) -> torch.Tensor:
        """Local sums of per-observation terms [n, p] (observation j at flat state index ind[j] of a
        state of size d): the terms summed onto the grid, levels mixed with λ, convolved with τ.
        [n, C_a, G]: C_a = 1 level set when ``cross_level == 1`` (or C = 1), else C; G = H·W (1 if
        the cutoff is infinite). ``tile`` (``LETKF.tile``): only the sums at those positions, from
        the observations in a halo of the cutoff around its rows — a strip of the grid whose
        periodic convolution by FFT is exact on the tile, since τ vanishes beyond the halo."""
        C, H, W = self.grid(d)
        if tile is None:
            return self._sums(terms, ind // (H * W), ind % (H * W), C, (H, W))
        rows, width = (H, W) if H > 1 else (W, 1)
        r0, r1 = tile.start // width, tile.stop // width
        halo = max(0, math.ceil(self.cutoff / self.dx) - 1)  # rows at offsets with τ > 0
        strip = r1 - r0 + 2 * halo
        if strip >= rows:  # the halo covers the grid: its sums, restricted
            return self.gridded_sums(terms, ind, d)[..., tile]
        pos = ind % (H * W)
        row = (pos // width - (r0 - halo)) % rows  # row in the strip
        keep = row < strip
        pos = row[keep] * width + pos[keep] % width
        sums = self._sums(terms[:, keep], ind[keep] // (H * W), pos, C, (strip, width))
        return sums[..., halo * width : (halo + r1 - r0) * width]

    def _sums(
        self, terms: torch.Tensor, level: torch.Tensor, pos: torch.Tensor, C: int, shape
    ) -> torch.Tensor:
        """``gridded_sums`` on a periodic grid ``shape`` (H, W), observation j at ``pos[j]`` of
        level ``level[j]``: [n, C_a, H·W]."""
        n, G = len(terms), shape[0] * shape[1]
        if C == 1 or self.cross_level == 1.0:  # one level set: sum all levels onto the H·W positions
            gridded = terms.new_zeros(n, 1, G).index_add_(2, pos, terms[:, None])
        else:  # each level its own: mix the levels with λ [C, C]
            gridded = terms.new_zeros(n, C * G).index_add_(1, level * G + pos, terms)
            mix = torch.full((C, C), self.cross_level, dtype=terms.dtype, device=terms.device)
            gridded = mix.fill_diagonal_(1.0) @ gridded.view(n, C, G)
        return self.local_sums(gridded.view(*gridded.shape[:2], *shape)).flatten(2)

    @staticmethod
    def member_basis(M: int, dtype: torch.dtype, device) -> torch.Tensor:
        """Member coordinates in 1⊥ (anomalies sum to zero): U [M, K = M − 1] orthonormal, Uᵀ1 = 0."""
        return torch.linalg.qr(torch.eye(M, M - 1, dtype=dtype, device=device) - 1.0 / M).Q

    @staticmethod
    def point_anomalies(x: torch.Tensor, ca: int, G: int) -> torch.Tensor:
        """Anomalies x [K, d] regrouped by local analysis: [C_a, G, c, K], x[a, g] the c state points
        that analysis (a, g) updates (the inverse is ``.permute(3, 0, 2, 1).reshape(-1, d)``)."""
        return x.reshape(x.shape[0], ca, -1, G).permute(1, 3, 2, 0).contiguous()

    @torch.no_grad()
    def regress(
        self, xb: torch.Tensor, observed: torch.Tensor, increments: torch.Tensor, precision: torch.Tensor
    ) -> torch.Tensor:
        """Localised ensemble regression of the increments at observed components onto every component.

        xb [M, d] forecast anomalies, ``observed`` [p] flat state indices, ``increments`` δ [M, p]
        (analysis − forecast of each member there), ``precision`` c [p] (1/σo² for linear h; the
        regression's ridge). With y_j = √c_j Uᵀ xb[:, j] [K] (K = M − 1 coordinates of 1⊥, as in
        ``analyse``) and per point g the weights w_j = τ λ of observation j,

            A_g = (M − 1) I + Σ_j w_j y_j y_jᵀ,   B_g = A_g⁻¹ Σ_j w_j y_j (√c_j δ_j)ᵀ   [K, M],
            Δx_g = x_gᵀ B_g   [M]   (x_g = Uᵀ xb[:, g]).

        Without localisation (push-through identity) Δx_g = C_go (C_oo + R)⁻¹ δ, C the ensemble
        covariances: the linear regression of x_g on the observed x_o, ridge-regularised by R = diag(1/c).
        Sums by ``gridded_sums``, one batched Cholesky solve per chunk of points. Returns Δx [M, d]."""
        M, d = xb.shape
        dt = xb.dtype
        U = self.member_basis(M, dt, xb.device)
        root = precision.to(dt).sqrt()
        yb = (U.T @ xb[:, observed]) * root  # [K, p]
        dd = increments.to(dt) * root  # [M, p]
        K = M - 1
        il = torch.tril_indices(K, K, device=xb.device)
        terms = torch.cat([yb[il[0]] * yb[il[1]], (yb[:, None, :] * dd[None]).reshape(K * M, -1)])
        sums = self.gridded_sums(terms, observed, d)  # [L + K·M, C_a, G]
        ca, G = sums.shape[1:]
        x = self.point_anomalies(U.T @ xb, ca, G)  # [C_a, G, c, K]
        out = x.new_empty(*x.shape[:-1], M)  # [C_a, G, c, M]
        L = len(il[0])
        step = max(1, self.chunk_elements // (M * (M + x.shape[2])))
        for a in range(ca):
            for g0 in range(0, G, step):
                s = sums[:, a, g0 : g0 + step].T  # [n, L + K·M]
                A = s.new_zeros(len(s), K, K)
                A[:, il[0], il[1]] = s[:, :L]
                A.diagonal(dim1=1, dim2=2).add_(K)
                B = torch.cholesky_solve(s[:, L:].reshape(-1, K, M), torch.linalg.cholesky(A))
                out[a, g0 : g0 + step] = x[a, g0 : g0 + step] @ B
        return out.permute(3, 0, 2, 1).reshape(M, d)

    # analysis ---------------------------------------------------------------
    @staticmethod
    def transform(s: torch.Tensor, xb: torch.Tensor, rho: float) -> torch.Tensor:
        """Local analysis of n points from their local sums s [n, K(K+1)/2 + K] (packed lower
        triangle of A − ρI, then b; ρ = M − 1) and the forecast anomalies xb [n, c, K] of the c state
        points that each analysis updates: [n, c, K + 1], the anomalies xbᵀW then the increment xbᵀw̄.

        With A = V Λ Vᵀ and u = xbᵀ V: xbᵀ W = (u (ρ/Λ)^{1/2}) Vᵀ and xbᵀ w̄ = u Λ⁻¹ Vᵀ b."""
        n, _, K = xb.shape
        il = torch.tril_indices(K, K, device=s.device)
        a = s.new_zeros(n, K, K)
        a[:, il[0], il[1]] = s[:, :-K]
        a.diagonal(dim1=1, dim2=2).add_(rho)
        lam, v = torch.linalg.eigh(a)  # reads the lower triangle
        u = xb @ v
        coef = (s[:, None, -K:].contiguous() @ v) / lam[:, None, :]  # (Λ⁻¹ Vᵀ b)ᵀ, [n, 1, K]
        return torch.cat([(u * (rho / lam).sqrt()[:, None, :]) @ v.mT, (u * coef).sum(-1, keepdim=True)], -1)

    @staticmethod
    def mean_increment(s: torch.Tensor, xb: torch.Tensor, M: int) -> torch.Tensor:
        """The increment xbᵀ w̄ of the local analysis mean alone (``transform``'s last column, by
        Cholesky, A w̄ = b, ρ = M − 1) at the c points of n analyses, repeated for the M members:
        [n, c, M]."""
        n, c, K = xb.shape
        il = torch.tril_indices(K, K, device=s.device)
        a = s.new_zeros(n, K, K)
        a[:, il[0], il[1]] = s[:, :-K]
        a.diagonal(dim1=1, dim2=2).add_(M - 1)
        w = torch.cholesky_solve(s[:, -K:, None], torch.linalg.cholesky(a))  # [n, K, 1]
        return (xb @ w).expand(n, c, M)

    @property
    def processing(self) -> Processing:
        """Inflation before the analysis; RTPP, then RTPS after it (``filters.processing``)."""
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
        """Analysis ensemble [M, d] from the forecast ensemble ``prior`` [M, d] and obs ``y`` [p];
        diagnostics: ``inflation``, the factor the forecast anomalies were multiplied by.

        With ``comm`` (R ranks, ``shard=state``) every rank passes the whole prior and all
        observations; rank r analyses the grid rows of tile r (``tile``) from the observations
        within a halo of the cutoff (``ensemble_space``), and rank 0 returns the gathered analysis
        (None elsewhere): one rank's result to rounding (the strip's FFT in place of the grid's)."""
        if device is not None:
            prior, y = prior.to(device), y.to(device)
        if comm is not None and comm.size > 1 and not math.isfinite(self.cutoff):
            raise ValueError("filter.ranks: the global ETKF (filter.cutoff=inf) runs on one rank")
        processing = self.processing
        prior, inflation = processing.before(prior, y, operator)
        post = self._analyse(prior, y, operator, comm)
        if post is None:
            return Analysis(None, {"inflation": inflation})
        return Analysis(processing.after(post, prior, operator), {"inflation": inflation})

    def _analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        comm: Collective | None = None,
    ) -> torch.Tensor | None:
        """The local analyses [M, d] of the (inflated) forecast ``prior`` [M, d], before RTPP/RTPS:
        ``mda`` of them in turn (multiple data assimilation, Emerick & Reynolds 2013, with the
        square root), each with σo √(mda · obs_inflation) and Yb = h(X) − ȳ of the ensemble it
        updates; for a linear h and no localisation the result does not depend on ``mda``.
        With ``comm``: rank r's tile, summed over the ranks between passes (zeros elsewhere: exact)
        and gathered on rank 0 after the last (None on the other ranks)."""
        M, d = prior.shape
        R, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        self.grid(d)  # the state fits the grid
        if operator.indices.numel() == 0:
            return prior.clone() if rank == 0 else None
        factor = self.mda * self.obs_inflation
        sigma = None if factor == 1 else torch.full_like(y, operator.sigma * math.sqrt(factor))
        ensemble = prior
        tile = self.tile(d, R, rank) if R > 1 else None
        for k in range(self.mda):
            mean, U, sums, x = self.ensemble_space(ensemble, y, operator, sigma, tile)
            out = self.local_analyses(sums, x, lambda s, xb: self.transform(s, xb, M - 1))  # [M, C, G_r]
            C, G_r = out.shape[1:]
            if tile is not None:  # this tile's forecast mean, [1, C, G_r]
                mean = mean.reshape(1, C, -1)[..., tile]
            update = mean.reshape(1, C, G_r) + out[-1:] + (U @ out[:-1].reshape(M - 1, -1)).reshape(M, C, G_r)
            update = update.to(prior.dtype)
            if tile is None:
                ensemble = update.reshape(M, d)
            elif k + 1 < self.mda:  # every rank needs the whole ensemble for the next pass
                full = update.new_zeros(M, C, d // C)
                full[..., tile] = update
                ensemble = comm.allreduce(full).reshape(M, d)  # zeros elsewhere: exact
            else:
                ensemble = comm.gather(update.contiguous(), dim=2)
                ensemble = None if ensemble is None else ensemble.to(prior.device).reshape(M, d)
        return ensemble

    def tile(self, d: int, ranks: int, rank: int) -> slice:
        """The grid positions (of H·W) that rank ``rank`` of ``ranks`` analyses: a block of rows of
        the grid (of the x axis for a grid of one row), contiguous in the flattened positions."""
        _, H, W = self.grid(d)
        rows, width = (H, W) if H > 1 else (W, 1)
        if ranks > rows:
            raise ValueError(
                f"filter.ranks: {ranks} ranks for a grid of {rows} rows: each rank needs at least one row"
            )
        r = block(rows, ranks, rank)
        return slice(r.start * width, r.stop * width)

    def ensemble_space(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        sigma: torch.Tensor | None = None,
        tile: slice | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the local analyses need, for all of them at once (K = M − 1 coordinates of 1⊥):
        the forecast mean [1, d], the member basis U [M, K], the local sums [L + K, C_a, G] (packed
        lower triangle of Σ_j w_j y_j y_jᵀ, then Σ_j w_j y_j δ_j, y_j = Uᵀ Yb_j / σ_j, δ scaled by
        1/σ_j) and the forecast anomalies Uᵀ Xb of the points each analysis updates [C_a, G, c, K].
        σ_j = ``sigma`` [p] (default: σo for every observation). ``tile``: the sums and anomalies of
        those positions only (G → the tile's), from the observations within the halo."""
        M, d = prior.shape
        mean = prior.mean(0, keepdim=True)
        xb = prior - mean
        hx = operator(prior)
        ybar = hx.mean(0)
        U = self.member_basis(M, hx.dtype, hx.device)  # [M, K]
        sig = float(operator.sigma) if sigma is None else sigma.to(hx)
        yb, dy = U.T @ (hx - ybar) / sig, (y.to(hx) - ybar) / sig  # Uᵀ Yb, δ scaled by 1/σo: [K, p], [p]
        il = torch.tril_indices(M - 1, M - 1, device=hx.device)
        terms = torch.cat([yb[il[0]] * yb[il[1]], yb * dy])  # P_j (packed), q_j: [L + K, p]
        sums = self.gridded_sums(terms, operator.indices.to(hx.device), d, tile)  # [L + K, C_a, G]
        ca = sums.shape[1]
        G = d // self.grid(d)[0] if math.isfinite(self.cutoff) else 1  # H·W, or 1 for the global ETKF
        x = self.point_anomalies(U.T @ xb.to(U.dtype), ca, G)
        return mean, U, sums, x if tile is None else x[:, tile]

    def local_analyses(
        self, sums: torch.Tensor, x: torch.Tensor, analyse, positions: slice = slice(None)
    ) -> torch.Tensor:
        """``analyse(s [n, L + K], x [n, c, K]) -> [n, c, M]`` on chunks of the local analyses
        (``ensemble_space``'s sums and anomalies) at the grid ``positions`` (default: all G),
        batched; the results as fields [M, C, G'] (C = C_a·c levels, G' positions)."""
        sums, x = sums[:, :, positions], x[:, positions]
        ca, G, c, K = x.shape
        M = K + 1
        out = x.new_empty(ca, G, c, M)
        step = max(1, self.chunk_elements // (M * (M + c)))
        for a in range(ca):
            for g0 in range(0, G, step):
                out[a, g0 : g0 + step] = analyse(sums[:, a, g0 : g0 + step].T, x[a, g0 : g0 + step])
        return out.permute(3, 0, 2, 1).reshape(M, ca * c, G)


REGISTER = {"letkf": LETKF}
