"""Two-level surface quasi-geostrophic (SQG) model (Tulloch & Smith 2009), batched torch.

State: potential temperature θ [K] at z=0 and z=H, tensor ``[M, 2, N, N]`` (float32),
doubly periodic square of side L. Interior PV is zero, so θ at the two boundaries determines
the streamfunction. With buoyancy b = gθ/θ0, κ = |k| and μ = κ N_b H / f (N_b² = nsq):

    ψ̂_0 = (g/(f θ0)) (H/μ) (θ̂_H / sinh μ − θ̂_0 / tanh μ)
    ψ̂_H = (g/(f θ0)) (H/μ) (θ̂_H / tanh μ − θ̂_0 / sinh μ)

and each level obeys ∂θ/∂t = −J(ψ, θ) + (θ_eq − θ)/τ_diab, with θ_eq the symmetric jet
θ_eq(y) = −(θ0/g) (f U μ_l / (2 l H)) cos(l y) / tanh(μ_l/2), l = 2π/L (zonal wind ±U/2 at the
boundaries). Time stepping: RK4, hyperdiffusion of order ``diff_order`` by an integrating factor
(e-folding time ``diff_efold`` at the grid cutoff π N/L), and a Jacobian dealiased by 3/2 zero
padding (equivalent to the 2/3 rule), its FFTs pruned to the nonzero part of the padded spectrum.

``jacobian="reference"`` is sqgturb (jswhit/sqgturb, the code behind the paper's nature run), mode
for mode, and our default. It multiplies the advection by (3/2)² = 2.25 (sqgturb skips the FFT
normalisation of the padded grid), and it keeps the modes sqgturb keeps. The Nyquist row l = −N/2
is an active mode: padded as l = −N/2 on the 3N/2 grid, kept by the truncation of the Jacobian,
forced, advected and hyperdiffused. The Nyquist column k = N/2 is carried too. It enters the padded
grid conjugated at k = +N/2 (sqgturb's "negative Nyquist frequency"), and the truncation drops its
Jacobian, so only relaxation and hyperdiffusion change it. Because the padded spectrum is not
Hermitian along its k = 0 column, that column is made Hermitian before each inverse FFT, as
numpy's and torch's CPU FFTs do implicitly, so CUDA gives the same numbers.

``jacobian="consistent"`` is the correctly normalised advection on the clean truncation. It drops
the Nyquist row and column, which have no Hermitian partner on the N grid, so the padded products
are exact. This is the textbook 3/2 rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

JACOBIAN_SCALE = {"reference": 2.25, "consistent": 1.0}
#: the cache a block of members' right-hand side should fit on CPU (a core's L2 here, and typical):
#: members advance independently, so blocks change no bit, and at 64² blocks of 4 members are ≈ 20 %
#: faster than 20 at once, at 128² single members 2.3× (scripts/bench_forecast.py)
CACHE_BYTES = 2 << 20


@dataclass(frozen=True)
class SQGParams:
    N: int = 64
    L: float = 20.0e6
    H: float = 10.0e3
    f: float = 1.0e-4
    nsq: float = 1.0e-4
    U: float = 30.0
    tdiab: float = 10.0 * 86400.0
    theta0: float = 300.0
    g: float = 9.8
    dt: float = 1200.0
    diff_efold: float = 86400.0
    diff_order: int = 8
    cycle_hours: float = 12.0
    jacobian: str = "reference"

    def __post_init__(self) -> None:
        """The checks of ``model=sqg``'s keys, one line naming the key."""
        if int(self.N) != self.N or self.N < 8 or self.N % 2:
            raise ValueError(f"model.N: must be an even number ≥ 8, got {self.N}")
        if self.jacobian not in JACOBIAN_SCALE:
            raise ValueError(f"model.jacobian: expected reference or consistent, got {self.jacobian!r}")
        if not self.dt > 0:
            raise ValueError(f"model.dt: must be positive, got {self.dt}")
        steps = self.steps_in(self.cycle_hours)
        if round(steps) < 1 or abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"model.dt: {self.dt} s must divide model.cycle_hours={self.cycle_hours} h")

    def steps_in(self, hours: float) -> float:
        """Model steps of ``dt`` seconds in ``hours``."""
        return hours * 3600.0 / self.dt


def hermitian_k0(xh: torch.Tensor) -> torch.Tensor:
    """The k = 0 column of a half spectrum [..., n, n/2+1] made Hermitian, c(l) ← (c(l) + c(−l)*)/2.

    An inverse real FFT keeps only this part of that column (pocketfft and MKL drop the rest; cuFFT
    does not promise to), so applying it first makes the transform the same on every backend.
    """
    out = xh.clone()
    out[..., :, 0] = hermitian(xh[..., :, 0])
    return out


def hermitian(col: torch.Tensor) -> torch.Tensor:
    """(c(l) + c(−l)*)/2 of a column c [..., n] indexed by l = 0, 1, …, −1 (FFT order)."""
    return 0.5 * (col + col.roll(-1, -1).flip(-1).conj())


class SQG:
    """Batched two-level SQG model; ``step(θ[M, 2, N, N], n_steps)`` on CPU or CUDA unchanged."""

    def __init__(self, params: SQGParams = SQGParams(), device: str | torch.device = "cpu"):
        p = params
        self.p = p
        self.device = torch.device(device)
        self.dt = float(p.dt)
        self.state_shape = (2, p.N, p.N)
        self.steps_per_cycle = int(round(p.steps_in(p.cycle_hours)))
        self._jac_scale = JACOBIAN_SCALE[p.jacobian]
        self._build_spectral()
        # members a block on CPU: ≈ 48 bytes a padded grid point and member in one right-hand side
        self.block_members = max(1, CACHE_BYTES // (48 * self.Np**2))

    @classmethod
    def from_config(cls, cfg, device: str | torch.device = "cpu") -> SQG:
        names = SQGParams.__dataclass_fields__
        return cls(SQGParams(**{k: cfg[k] for k in names if k in cfg}), device=device)

    # ------------------------------------------------------------------ set-up
    def _wavenumbers(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dimensional wavenumbers (k along x: rfft half, l along y: full) on an n×n grid."""
        two_pi_over_L = 2.0 * math.pi / self.p.L
        k = torch.fft.rfftfreq(n, 1.0 / n, dtype=torch.float64) * two_pi_over_L
        l = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64) * two_pi_over_L
        return k[None, :].expand(n, -1), l[:, None].expand(-1, n // 2 + 1)

    def _build_spectral(self) -> None:
        p, N, dev = self.p, self.p.N, self.device
        k, l = self._wavenumbers(N)
        kappa = torch.sqrt(k**2 + l**2)
        mu = kappa * math.sqrt(p.nsq) * p.H / p.f
        mu_safe = mu.clamp_min(1e-30)
        scale = (p.g / (p.f * p.theta0)) * p.H / mu_safe
        inv_sinh = torch.where(mu > 0, scale / torch.sinh(mu_safe), 0.0)
        inv_tanh = torch.where(mu > 0, scale / torch.tanh(mu_safe), 0.0)
        # ψ̂ = A θ̂ per wavenumber, A = [[-1/tanh, 1/sinh], [-1/sinh, 1/tanh]] · scale
        self.inv_tanh = inv_tanh.to(dev, torch.float32)
        self.inv_sinh = inv_sinh.to(dev, torch.float32)
        # modes carried: all (reference, as sqgturb), or without the Nyquist row and column (consistent)
        keep = (torch.fft.fftfreq(N, 1.0 / N).abs() < N // 2)[:, None] & (torch.arange(N // 2 + 1) < N // 2)[
            None, :
        ]
        self.sqgturb_modes = p.jacobian == "reference"
        self.keep = (keep | self.sqgturb_modes).to(dev)
        ktot_cut = math.pi * N / p.L
        self.hyperdiff = (
            torch.exp(-(p.dt / p.diff_efold) * (kappa / ktot_cut) ** p.diff_order).to(dev, torch.float32)
            * self.keep
        )
        # padded-grid derivative operators (3/2 rule): ik on the columns k ≤ N/2, il on the 3N/2 rows
        self.Np = 3 * N // 2
        kp, lp = self._wavenumbers(self.Np)
        self.ik_cols = (1j * kp[:, : N // 2 + 1]).to(dev, torch.complex64)
        self.il_rows = (1j * lp[:, : N // 2 + 1]).to(dev, torch.complex64)
        # relaxation target: symmetric jet, identical on both levels
        y = torch.arange(N, dtype=torch.float64) * (p.L / N)
        ljet = 2.0 * math.pi / p.L
        mu_l = ljet * math.sqrt(p.nsq) * p.H / p.f
        amp = (p.theta0 / p.g) * p.f * p.U * mu_l / (2.0 * ljet * p.H) / math.tanh(0.5 * mu_l)
        theta_eq = (-amp * torch.cos(ljet * y))[:, None].expand(N, N)
        self.theta_eq = torch.stack([theta_eq, theta_eq]).to(dev, torch.float32)
        self.theta_eq_hat = self.fft(self.theta_eq)

    # --------------------------------------------------------------- transforms
    @staticmethod
    def fft(x: torch.Tensor) -> torch.Tensor:
        """Grid → spectral, normalised so coefficients do not depend on the grid size."""
        return torch.fft.rfft2(x, norm="forward")

    @staticmethod
    def ifft(xh: torch.Tensor, n: int) -> torch.Tensor:
        return torch.fft.irfft2(xh, s=(n, n), norm="forward")

    def _pad(self, xh: torch.Tensor) -> torch.Tensor:
        """Spectral coefficients [..., N, N/2+1] zero-padded along l only → [..., 3N/2, N/2+1]: the
        columns k = 0…N/2 are all the 3/2-padded spectrum holds (beyond them it is zero, which the
        inverse FFT along x pads itself).

        Rows l = 0…N/2−1 and −N/2+1…−1, columns k = 0…N/2−1; with sqgturb's modes also the row
        l = −N/2, and the column k = N/2 conjugated (then the k = 0 column made Hermitian).
        """
        N, Np, h = self.p.N, self.Np, self.p.N // 2
        out = xh.new_zeros(*xh.shape[:-2], Np, h + 1)
        lo = h if self.sqgturb_modes else h - 1  # negative rows carried: l = −lo … −1
        out[..., :h, :h] = xh[..., :h, :h]
        out[..., Np - lo :, :h] = xh[..., N - lo :, :h]
        if self.sqgturb_modes:
            out[..., :h, h] = xh[..., :h, h].conj()
            out[..., Np - h :, h] = xh[..., N - h :, h].conj()
            out[..., :, 0] = hermitian(out[..., :, 0])
        return out

    def _truncate(self, cols: torch.Tensor) -> torch.Tensor:
        """The columns k = 0…N/2−1 of a padded spectrum [..., 3N/2, N/2] → [..., N, N/2+1]: the rows
        ``_pad`` fills; the k = N/2 column (the Jacobian there is dropped in both modes) zero."""
        N, Np, h = self.p.N, self.Np, self.p.N // 2
        lo = h if self.sqgturb_modes else h - 1
        out = cols.new_zeros(*cols.shape[:-2], N, h + 1)
        out[..., :h, :h] = cols[..., :h, :]
        out[..., N - lo :, :h] = cols[..., Np - lo :, :]
        return out

    def to_grid(self, th: torch.Tensor) -> torch.Tensor:
        """θ̂ [..., N, N/2+1] → θ [..., N, N] (k = 0 column made Hermitian first with sqgturb's modes)."""
        return self.ifft(hermitian_k0(th) if self.sqgturb_modes else th, self.p.N)

    # ------------------------------------------------------------------ physics
    def invert(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """Streamfunction ψ̂ [m²/s] at both levels from θ̂ [K]; shapes [..., 2, N, N/2+1]."""
        t0, t1 = theta_hat[..., 0, :, :], theta_hat[..., 1, :, :]
        psi0 = self.inv_sinh * t1 - self.inv_tanh * t0
        psi1 = self.inv_tanh * t1 - self.inv_sinh * t0
        return torch.stack([psi0, psi1], dim=-3)

    def tendency(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """dθ̂/dt = −J(ψ, θ)^ + (θ̂_eq − θ̂)/τ_diab, Jacobian on the 3/2-padded grid.

        The 2-D transforms are pruned to the nonzero part of the padded spectrum: inverse, an FFT
        along l on the N/2+1 columns k ≤ N/2 (of 3N/4+1), then a real one along x; forward, a real
        FFT along x, of which only the N/2 columns k < N/2 go on to the FFT along l. The same sums
        as the whole 2-D transforms of the zero-padded spectrum, to float32 rounding (3e-7)."""
        psi_hat = self.invert(theta_hat)
        both = self._pad(torch.stack([psi_hat, theta_hat]))  # [2, M, 2, Np, N/2+1]
        spec = both.new_empty(4, *both.shape[1:])  # ψ_x, θ_x, ψ_y, θ_y before the FFT along l
        torch.mul(both, self.ik_cols, out=spec[:2])
        torch.mul(both, self.il_rows, out=spec[2:])
        along_l = torch.fft.ifft(spec, dim=-2, norm="forward")
        psi_x, th_x, psi_y, th_y = torch.fft.irfft(along_l, n=self.Np, dim=-1, norm="forward")
        jac = torch.fft.rfft(psi_x * th_y - psi_y * th_x, dim=-1, norm="forward")[..., : self.p.N // 2]
        jac_hat = self._truncate(torch.fft.fft(jac, dim=-2, norm="forward"))
        return (self.theta_eq_hat - theta_hat) / self.p.tdiab - self._jac_scale * jac_hat

    def _rk4(self, th: torch.Tensor) -> torch.Tensor:
        dt = self.dt
        k1 = self.tendency(th)
        k2 = self.tendency(th + 0.5 * dt * k1)
        k3 = self.tendency(th + 0.5 * dt * k2)
        k4 = self.tendency(th + dt * k3)
        return self.hyperdiff * (th + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4))

    @torch.no_grad()
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance θ [M, 2, N, N] (K) by ``n_steps`` steps of ``dt`` seconds."""
        if x.shape[-3:] != self.state_shape:
            raise ValueError(f"SQG.step: expected [..., {self.state_shape}], got {tuple(x.shape)}")
        th = self.fft(x.to(self.device, torch.float32)) * self.keep
        blocks = th.split(self.block_members) if self.device.type == "cpu" else (th,)
        out = []
        for block in blocks:  # on CPU, members in blocks whose right-hand side stays in cache
            for _ in range(n_steps):
                block = self._rk4(block)
            out.append(block)
        return self.to_grid(torch.cat(out) if len(out) > 1 else out[0])

    # -------------------------------------------------------------- diagnostics
    def velocity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Geostrophic (u, v) = (−∂ψ/∂y, ∂ψ/∂x) [m/s] at both levels, shapes like ``x``."""
        N = self.p.N
        k, l = self._wavenumbers(N)
        psi = self.invert(self.fft(x.to(self.device, torch.float32)))
        ik, il = (1j * k).to(psi), (1j * l).to(psi)
        return -self.ifft(il * psi, N), self.ifft(ik * psi, N)

    def initial_state(self, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        """Small random noise (std 1 K, zero mean per level), [batch, 2, N, N].

        The relaxation builds the jet up from rest over ~τ_diab while baroclinic instability grows
        from the noise; starting from the full jet instead breaks it down violently. Spin up for
        ~100 days before use.
        """
        noise = torch.randn((batch, *self.state_shape), generator=generator, dtype=torch.float32)
        return noise - noise.mean(dim=(-2, -1), keepdim=True)


REGISTER = {"sqg": (SQGParams, SQG)}
