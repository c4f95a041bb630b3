"""Local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007) with R-localisation.

Forecast ensemble X [M, d] (after multiplicative inflation of its anomalies by ``inflation``),
mean x̄, anomalies Xb = X − x̄ (rows are members). Observations go through the operator member by
member, so nonlinear h is handled in observation space:

    Yb = h(X) − ȳ,   ȳ = mean_m h(X_m),   δ = y − ȳ.

For every state point, with the local diagonal weights  w_j = GC(r_j) · λ_j / σo²  on the
observations j of its stencil (r_j: horizontal distance, λ_j = 1 on the point's own level and
``cross_level`` on any other level),

    A  = (M − 1) I + Ybᵀ diag(w) Yb               (M×M, via torch.linalg.eigh: A = V Λ Vᵀ)
    P̃  = A⁻¹,   w̄ = P̃ Ybᵀ diag(w) δ,   W = [(M − 1) P̃]^{1/2} = V (M − 1)^{1/2} Λ^{−1/2} Vᵀ
    x_a,m = x̄ + Σ_k Xb_k (w̄_k + W_km)      (at that point).

This is Hunt et al.'s algorithm with ρ = 1 in (M − 1)I/ρ: inflation is applied to the forecast
anomalies before h, which for linear h equals their covariance inflation with ρ = inflation².
Afterwards the analysis anomalies are relaxed toward the (inflated) forecast anomalies: RTPP
(Zhang et al. 2004), Xa ← (1 − rtpp) Xa + rtpp Xb, then RTPS (``relax_spread``).

Geometry. A state is [C, H, W] flattened (levels, y, x) on a doubly periodic grid of spacing ``dx``
with periodic lengths ``domain = (Ly, Lx)`` (same unit as ``dx``; H = Ly/dx, W = Lx/dx). The
distance between a state point and an observation is the horizontal periodic distance between
their grid positions; the level enters only through ``cross_level``.

Gaspari–Cohn convention: ``cutoff`` is the distance at which the taper reaches zero, i.e. 2c in
Gaspari & Cohn (1999, eq. 4.10); GC(r) = f(r / c) with c = cutoff / 2, so GC(cutoff/2) = 5/24 ≈ 0.208.
Observations at distance ≥ cutoff are not in a point's stencil. (DAPPER's ``loc_rad`` R places
c = 1.82 R, so its radius R corresponds to cutoff = 3.64 R.) ``cutoff = inf`` (or ``None``) gives
the global ETKF: every point sees every observation with taper 1.

Batching. The stencil (padded list of the observations within the cutoff, and their GC tapers) is
computed once per horizontal grid position and cached per operator; all levels at one position
share it. Local analyses are batched over positions (chunks bounded in memory): gathers into
[n, K, M], one batched ``eigh`` on [n, M, M], no Python loop over points or members. When
``cross_level == 1`` (or C = 1) all levels at a position share one analysis, otherwise each level
has its own weights and analysis. Cost O(d_h · K · M² + d_h · M³) per level set (d_h = H·W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from scoreda.filters import inflate, relax_spread
from scoreda.observations import ObservationOperator


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
    cutoff: float | None = 2000.0  # distance where GC reaches zero (2c); inf / None = global ETKF
    cross_level: float = 1.0  # factor on the R⁻¹ weight of observations on another level
    inflation: float = 1.0  # multiplicative, on the forecast anomalies
    rtps: float = 0.0
    rtpp: float = 0.0
    dx: float = 1.0  # grid spacing (unit of cutoff)
    domain: tuple[float, float] | None = None  # periodic lengths (Ly, Lx); None: one row of d points
    chunk_elements: int = 1 << 23  # bound on n·K·M per batch of local analyses
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cutoff is None:
            self.cutoff = math.inf
        self.cutoff = float(self.cutoff)
        if not self.cutoff > 0:
            raise ValueError(f"filter.cutoff: must be positive, got {self.cutoff}")
        if not self.cross_level >= 0:
            raise ValueError(f"filter.cross_level: must be ≥ 0, got {self.cross_level}")
        if not self.inflation >= 1:
            raise ValueError(f"filter.inflation: must be ≥ 1, got {self.inflation}")
        if not 0 <= self.rtps <= 1:
            raise ValueError(f"filter.rtps: must be in [0, 1], got {self.rtps}")
        if not 0 <= self.rtpp <= 1:
            raise ValueError(f"filter.rtpp: must be in [0, 1], got {self.rtpp}")
        if not self.dx > 0:
            raise ValueError(f"filter.dx: must be positive, got {self.dx}")
        if self.domain is not None:
            self.domain = (float(self.domain[0]), float(self.domain[1]))
        if math.isfinite(self.cutoff) and self.domain is None:
            raise ValueError("LETKF: a finite cutoff needs the grid geometry (domain); use from_config")

    @classmethod
    def from_config(cls, filter_cfg, model_cfg=None) -> LETKF:
        """Keys of ``filter_cfg``; ``dx`` and ``domain`` (km, or index units for Lorenz-96) from the model."""
        kw = {
            f.name: filter_cfg[f.name]
            for f in fields(cls)
            if f.init and f.name in filter_cfg and f.name not in ("dx", "domain")
        }
        if model_cfg is not None:
            name = model_cfg["name"]
            if name == "sqg":
                size_km = float(model_cfg["L"]) / 1000.0
                kw["dx"], kw["domain"] = size_km / int(model_cfg["N"]), (size_km, size_km)
            elif name == "qg2l":
                size_km = float(model_cfg["L"]) / 1000.0
                kw["dx"], kw["domain"] = size_km / int(model_cfg["nx"]), (size_km, size_km)
            elif name == "lorenz96":
                kw["dx"], kw["domain"] = 1.0, (1.0, float(model_cfg["size"]))
            else:
                raise ValueError(f"model.name: the LETKF knows no geometry for {name!r}")
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

    def stencil(self, indices: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(idx [G, K], taper [G, K], obs_level [p+1]) for observed flat ``indices`` [p].

        Row g lists the observations within the cutoff of horizontal position g (G = H·W), padded
        with index p (a dummy observation of taper 0). With an infinite cutoff G = 1: one row with
        every observation, shared by all positions. Cached per (indices, d)."""
        indices = indices.detach().cpu().long()
        key = (d, indices.numel())
        hit = self._cache.get(key)
        if hit is not None and torch.equal(hit[0], indices):
            return hit[1]
        C, H, W = self.grid(d)
        p = indices.numel()
        obs_level = torch.cat([indices // (H * W), torch.tensor([-1])])
        if not math.isfinite(self.cutoff):
            idx = torch.arange(p)[None, :]
            taper = torch.ones(1, p, dtype=torch.float64)
        else:
            pos = indices % (H * W)
            oi, oj = (pos // W).double(), (pos % W).double()
            G = H * W
            chunk = max(1, (1 << 22) // max(p, 1))
            rows, cols, tapers = [], [], []
            for g0 in range(0, G, chunk):
                g = torch.arange(g0, min(G, g0 + chunk))
                di = ((g // W).double()[:, None] - oi[None, :]).abs()
                dj = ((g % W).double()[:, None] - oj[None, :]).abs()
                di, dj = torch.minimum(di, H - di), torch.minimum(dj, W - dj)
                dist = self.dx * torch.sqrt(di * di + dj * dj)
                r, o = (dist < self.cutoff).nonzero(as_tuple=True)  # row-major: grouped by row
                rows.append(r + g0)
                cols.append(o)
                tapers.append(gaspari_cohn(dist[r, o], self.cutoff))
            r, o, t = torch.cat(rows), torch.cat(cols), torch.cat(tapers)
            counts = torch.bincount(r, minlength=G)
            K = int(counts.max()) if r.numel() else 0
            slot = torch.arange(r.numel()) - (torch.cumsum(counts, 0) - counts)[r]
            idx = torch.full((G, K), p, dtype=torch.long)
            taper = torch.zeros(G, K, dtype=torch.float64)
            idx[r, slot] = o
            taper[r, slot] = t
        out = (idx, taper, obs_level)
        self._cache.clear()
        self._cache[key] = (indices.clone(), out)
        return out

    # analysis ---------------------------------------------------------------
    @staticmethod
    def transform(yl: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """Local ETKF weights w̄ 1ᵀ + W, [n, M, M], from Yb [n, K, M], weights [n, K], δ [n, K]."""
        M = yl.shape[-1]
        z = yl * w.sqrt()[..., None]
        a = z.transpose(1, 2) @ z
        a.diagonal(dim1=-2, dim2=-1).add_(M - 1)
        lam, v = torch.linalg.eigh(a)
        b = ((yl * (w * dy)[..., None]).sum(1))[:, :, None]  # Ybᵀ diag(w) δ, [n, M, 1]
        wbar = v @ ((v.transpose(1, 2) @ b) / lam[:, :, None])
        sq = (v * ((M - 1) / lam).sqrt()[:, None, :]) @ v.transpose(1, 2)
        return sq + wbar

    @torch.no_grad()
    def analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Analysis ensemble [M, d] from the forecast ensemble ``prior`` [M, d] and obs ``y`` [p]."""
        prior = inflate(prior, self.inflation)
        M, d = prior.shape
        C, H, W = self.grid(d)
        if operator.indices.numel() == 0:
            return relax_spread(prior.clone(), prior, self.rtps)
        mean = prior.mean(0, keepdim=True)
        xb = prior - mean
        hx = operator(prior)
        ybar = hx.mean(0)
        # observation-space anomalies as rows [p+1, M], with a zero dummy row for the padding
        yb = torch.cat([(hx - ybar).T, hx.new_zeros(1, M)])
        dy = torch.cat([y.to(hx) - ybar, hx.new_zeros(1)])
        idx, taper, obs_level = (t.to(prior.device) for t in self.stencil(operator.indices, d))
        taper = taper.to(hx.dtype) / float(operator.sigma) ** 2
        G, K = idx.shape
        shared = C == 1 or self.cross_level == 1.0
        level_sets = [None] if shared else list(range(C))
        xb_g = xb.reshape(M, C, H * W)
        out = torch.empty(M, C, H * W, dtype=prior.dtype, device=prior.device)
        chunk = max(1, self.chunk_elements // max(1, K * M))
        for c in level_sets:
            levels = slice(None) if c is None else slice(c, c + 1)
            for g0 in range(0, G, chunk):
                rows = idx[g0 : g0 + chunk]
                w = taper[g0 : g0 + chunk]
                if c is not None:
                    same = obs_level[rows] == c
                    w = w * torch.where(same, w.new_tensor(1.0), w.new_tensor(self.cross_level))
                t = self.transform(yb[rows], w, dy[rows]).to(prior.dtype)  # [n, M, M]
                if G == 1:  # global: one transform for every position
                    out[:, levels] = torch.einsum("kcg,km->mcg", xb_g[:, levels], t[0])
                else:
                    g1 = g0 + rows.shape[0]
                    local = xb_g[:, levels, g0:g1].permute(2, 1, 0) @ t  # [n, c, M]
                    out[:, levels, g0:g1] = local.permute(2, 1, 0)
        xa = mean + out.reshape(M, d)
        if self.rtpp:
            amean = xa.mean(0, keepdim=True)
            xa = amean + (1.0 - self.rtpp) * (xa - amean) + self.rtpp * xb
        return relax_spread(xa, prior, self.rtps)
