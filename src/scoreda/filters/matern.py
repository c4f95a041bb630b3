"""A Gaussian Markov random field prior on the model's periodic grid: the Matérn/SPDE precision.

Fields x [..., C, H, W] (C levels on an H×W doubly periodic grid of spacing (dy, dx)). With the
5-point Laplacian Δ along each axis longer than one point, the level Laplacian of the complete
graph D_z = C I − 11ᵀ (so with C = 2 the two levels are coupled through their difference) and

    L = κ² I − Δ + γ κ² D_z,   κ = √(2ν) / ℓ,   ν = α − 1   (a Matérn-ν field in 2-D, Lindgren et al. 2011),

the prior precision is Q = D L^α D, D = diag(d_l) per level. ``length_scale`` ℓ is the Matérn length
(the seed-000 convention: exp-like decay over ≈ ℓ), ``vertical`` γ ≥ 0 couples the levels (0:
independent), and d_l = √v / σ_l with v the diagonal of L^{-α} (the same at every point and level),
so that ``sigma`` σ_l is the exact marginal std of the discrete field on level l.

L is a circulant on every level and commutes with D_z, so Q is diagonal in (horizontal wavenumber
k, level mode c): with s(k) = (4/dy²) sin²(π k_y/H) + (4/dx²) sin²(π k_x/W) and the eigenvalues μ_c of
D_z (0 for the level mean, C for the others; orthonormal eigenvectors V [C, C]),

    L̂(k) = V diag(κ² + s(k) + γκ² μ_c) Vᵀ,   Q̂(k) = D V diag(λ_c(k)^α) Vᵀ D.

``apply`` and ``solve`` use that (rfft2 and a C×C product per wavenumber); ``stencil`` gives Q's
non-zeros as offsets (level, y, x) with their coefficients, for message passing; ``fit_matern``
fits (ℓ, σ) to an isotropic error spectrum (``metrics.isotropic_spectrum``, what ``scores.json``
holds per cycle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MaternPrior:
    """Q = D L^α D on a [C, H, W] grid of spacing (dy, dx) (module docstring)."""

    shape: tuple[int, int, int]  # (C, H, W)
    spacing: tuple[float, float]  # (dy, dx), the unit of length_scale
    length_scale: float
    sigma: tuple[float, ...]  # marginal std per level [C]
    alpha: int = 2
    vertical: float = 0.0

    def __post_init__(self) -> None:
        if self.alpha < 2:
            raise ValueError(f"filter.alpha: must be an integer ≥ 2, got {self.alpha}")
        if not self.length_scale > 0:
            raise ValueError(f"filter.length_scale: must be positive, got {self.length_scale}")
        if len(self.sigma) != self.shape[0] or not all(s > 0 for s in self.sigma):
            raise ValueError(
                f"filter.sigma: expected {self.shape[0]} positive values (one per level), got {self.sigma}"
            )
        if not self.vertical >= 0:
            raise ValueError(f"filter.vertical: must be ≥ 0, got {self.vertical}")

    @property
    def kappa2(self) -> float:
        """κ² = 2ν / ℓ², ν = α − 1."""
        return 2.0 * (self.alpha - 1) / self.length_scale**2

    def coarsened(self, factor: int) -> MaternPrior:
        """The same prior (κ, σ, γ) on the grid coarsened by ``factor`` along each axis longer than one."""
        C, H, W = self.shape
        fy, fx = (factor if H > 1 else 1), (factor if W > 1 else 1)
        return MaternPrior(
            (C, H // fy, W // fx),
            (self.spacing[0] * fy, self.spacing[1] * fx),
            self.length_scale,
            self.sigma,
            self.alpha,
            self.vertical,
        )

    # Fourier form -------------------------------------------------------------
    def laplacian_symbol(self, full: bool = False) -> torch.Tensor:
        """s(k) ≥ 0 of −Δ on the rfft2 modes, [H, W//2 + 1] float64 (``full``: the fft2 modes, [H, W];
        0 along an axis of one point)."""
        _, H, W = self.shape
        ky = torch.fft.fftfreq(H, dtype=torch.float64)
        kx = (torch.fft.fftfreq if full else torch.fft.rfftfreq)(W, dtype=torch.float64)
        sy = (
            (4.0 / self.spacing[0] ** 2) * torch.sin(math.pi * ky) ** 2
            if H > 1
            else torch.zeros(1, dtype=torch.float64)
        )
        sx = (
            (4.0 / self.spacing[1] ** 2) * torch.sin(math.pi * kx) ** 2
            if W > 1
            else torch.zeros(1, dtype=torch.float64)
        )
        return sy[:, None] + sx[None, :]

    def level_modes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ [C], V [C, C]): eigenvalues and orthonormal eigenvectors (columns) of D_z = C I − 11ᵀ."""
        C = self.shape[0]
        mu, V = torch.linalg.eigh(C * torch.eye(C, dtype=torch.float64) - 1.0)
        return mu.clamp_min(0.0), V

    def eigenvalues(self, full: bool = False) -> torch.Tensor:
        """λ_c(k)^α [C, H, W//2 + 1] (float64): L^α's eigenvalue on level mode c and rfft2 wavenumber k
        (``full``: fft2 wavenumbers, [C, H, W])."""
        mu, _ = self.level_modes()
        lam = self.kappa2 * (1.0 + self.vertical * mu)[:, None, None] + self.laplacian_symbol(full)[None]
        return lam**self.alpha

    def scales(self) -> torch.Tensor:
        """d_l [C] (float64): √v / σ_l, v = diag(L^{-α}) = (1/HW) Σ_k Σ_c V_lc² / λ_c(k)^α."""
        _, H, W = self.shape
        _, V = self.level_modes()
        per_mode = (1.0 / self.eigenvalues(full=True)).mean((1, 2))  # [C]
        v = (V**2) @ per_mode  # [C], all equal by symmetry
        return v.sqrt() / torch.tensor(self.sigma, dtype=torch.float64)

    def _spectral(self, x: torch.Tensor, power: float, scale: torch.Tensor) -> torch.Tensor:
        """D' V diag(λ^{α·power}) Vᵀ D' x with D' = diag(scale) on the levels; x [..., C, H, W]."""
        _, V = self.level_modes()
        dt, dev = x.dtype, x.device
        s = scale.to(dev, dt)[:, None, None]
        f = torch.fft.rfft2(x * s)
        V = V.to(dev, f.dtype)
        f = torch.einsum("lc,...lhw->...chw", V, f)  # to level modes
        f = f * (self.eigenvalues() ** power).to(dev, dt)
        f = torch.einsum("lc,...chw->...lhw", V, f)
        return torch.fft.irfft2(f, s=x.shape[-2:]) * s

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Q x for fields x [..., C, H, W]."""
        return self._spectral(x, 1.0, self.scales())

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """Q⁻¹ r for fields r [..., C, H, W]."""
        return self._spectral(r, -1.0, 1.0 / self.scales())

    def shifted_inverse(self, shift: torch.Tensor) -> torch.Tensor:
        """(Q̂(k) + diag(shift))⁻¹ per rfft2 mode, [H, W//2 + 1, C, C] float64; ``shift`` [C] ≥ 0
        (e.g. the mean observation precision per level: a preconditioner of Q + Hᵀ R⁻¹ H)."""
        _, V = self.level_modes()
        d = self.scales()
        lam = self.eigenvalues().permute(1, 2, 0)  # [H, Wr, C]
        q = d[:, None] * ((V * lam[..., None, :]) @ V.T) * d[None, :]  # D V Λ Vᵀ D per mode
        return torch.linalg.inv(q + torch.diag_embed(shift.to(torch.float64)))

    @staticmethod
    def apply_modes(inverse: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The product of per-mode C×C matrices ``inverse`` [H, Wr, C, C] with fields r [..., C, H, W]."""
        f = torch.fft.rfft2(r)
        f = torch.einsum("hwlc,...chw->...lhw", inverse.to(r.device, r.dtype).to(f.dtype), f)
        return torch.fft.irfft2(f, s=r.shape[-2:])

    # stencil ------------------------------------------------------------------
    def stencil(self) -> tuple[list[tuple[int, int, int]], torch.Tensor]:
        """Q's non-zeros around a point: offsets (dl, dy, dx) (dl in 0..C−1, the level offset modulo C;
        dy, dx in −α..α) with the coefficients [len(offsets), C] (float64) between level l at a point
        and level (l + dl) mod C at the point + (dy, dx). The first offset is (0, 0, 0), the
        diagonal. Requires H, W > 2α (or = 1): no offset wraps onto another."""
        C, H, W = self.shape
        for n, axis in ((H, "y"), (W, "x")):
            if n != 1 and n <= 2 * self.alpha:
                raise ValueError(
                    f"filter: the grid has {n} points along {axis}; the GMRF stencil needs > {2 * self.alpha}"
                )
        dy2, dx2 = self.spacing[0] ** -2, self.spacing[1] ** -2
        centre = self.kappa2 + (2 * dy2 if H > 1 else 0.0) + (2 * dx2 if W > 1 else 0.0)
        L = {(0, 0, 0): centre + self.vertical * self.kappa2 * (C - 1)}
        if H > 1:
            L[(0, 1, 0)] = L[(0, -1, 0)] = -dy2
        if W > 1:
            L[(0, 0, 1)] = L[(0, 0, -1)] = -dx2
        for dl in range(1, C):
            L[(dl, 0, 0)] = -self.vertical * self.kappa2
        power = dict(L)
        for _ in range(self.alpha - 1):  # L^α by repeated convolution of stencils
            nxt: dict[tuple[int, int, int], float] = {}
            for (a, b, c), u in power.items():
                for (e, f, g), w in L.items():
                    key = ((a + e) % C, b + f, c + g)
                    nxt[key] = nxt.get(key, 0.0) + u * w
            power = nxt
        scale = 1e-14 * abs(power[(0, 0, 0)])
        offsets = [(0, 0, 0)] + sorted(o for o, v in power.items() if o != (0, 0, 0) and abs(v) > scale)
        d = self.scales()
        levels = torch.arange(C)
        coef = torch.stack(
            [power[o] * d * d[(levels + o[0]) % C] for o in offsets]
        )  # [E + 1, C]: d_l d_l' (L^α)_o
        return offsets, coef

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws x ~ N(0, Q⁻¹), [n, C, H, W] float64: x = D⁻¹ V Λ^{−α/2} Vᵀ ε (ε white)."""
        eps = torch.randn(n, *self.shape, generator=generator, dtype=torch.float64)
        return (
            self._spectral(eps, -0.5, torch.ones(self.shape[0], dtype=torch.float64))
            / self.scales()[:, None, None]
        )

    def spectrum(self) -> np.ndarray:
        """The expected ``metrics.isotropic_spectrum`` (shells n = 1 … N//2) of a draw, averaged over the
        levels; square grids."""
        from scoreda.metrics import _shell_index

        C, H, W = self.shape
        if H != W:
            raise ValueError("spectrum: the grid must be square")
        _, V = self.level_modes()
        # E|f̂(k)|² on level l (f̂ = fft2 / HW): Σ_c V_lc² / (λ_c(k)^α d_l²) / HW; mean over the levels
        var = (
            torch.einsum("lc,chw->lhw", V**2, 1.0 / self.eigenvalues(full=True))
            / self.scales()[:, None, None] ** 2
        )
        power = var.mean(0).numpy() / (H * W)
        shell = _shell_index(H)
        e = 0.5 * np.bincount(shell.ravel(), weights=power.ravel())
        return e[1 : H // 2 + 1]


def fit_matern(
    spectrum: np.ndarray,
    shape: tuple[int, int, int],
    spacing: tuple[float, float],
    alpha: int = 2,
    vertical: float = 0.0,
) -> tuple[float, float]:
    """(ℓ, σ) of the ``MaternPrior`` whose expected isotropic spectrum (``MaternPrior.spectrum``) is
    nearest to ``spectrum`` (shells 1 … N//2 of ``metrics.isotropic_spectrum``, e.g. the mean of
    ``scores.json``'s ``error_spectrum_forecast``) in log space: σ² in closed form for each ℓ on a
    log grid, then a golden-section refinement of ℓ."""
    target = np.log(np.maximum(np.asarray(spectrum, dtype=np.float64), 1e-300))
    unit = tuple(1.0 for _ in range(shape[0]))

    def misfit(log_l: float) -> tuple[float, float]:
        shape_n = np.log(MaternPrior(shape, spacing, math.exp(log_l), unit, alpha, vertical).spectrum())
        log_var = float(np.mean(target - shape_n))
        return float(np.mean((target - shape_n - log_var) ** 2)), log_var

    h = max(spacing)
    grid = np.linspace(math.log(0.25 * h), math.log(h * max(shape[1:])), 48)
    i = int(np.argmin([misfit(g)[0] for g in grid]))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, e = b - ratio * (b - a), a + ratio * (b - a)
        if misfit(c)[0] < misfit(e)[0]:
            b = e
        else:
            a = c
    log_l = 0.5 * (a + b)
    return math.exp(log_l), math.exp(0.5 * misfit(log_l)[1])
