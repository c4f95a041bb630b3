"""The EnSF's standardisation: the coordinates z the reverse SDE runs in, x = x̄ + S z.

- ``point`` (``PointBlock``): S = diag(s), s the ensemble std per state index, on one column block
  of the state; the likelihood curvature in z is diagonal, C = s² c (c = ``operator.curvature``).
- ``spectral`` (``SpectralBlock``): S = diag(s) C^½ with C the ensemble's homogeneous correlation
  (diagonal in Fourier space), on whole members; the curvature in z is not diagonal and the
  implicit step is solved by conjugate gradients (tolerance ``CG_TOL``, at most ``CG_ITER``).

Both give the integrator the same four things: ``x`` (the standardised members), ``to_state``,
``pull`` (the likelihood score into z) and ``implicit`` (the linearly implicit likelihood step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scoreda.observations import ObservationOperator, PointObservation

STANDARDISE = ("point", "spectral")
CG_TOL, CG_ITER = 1e-3, 50  # the spectral implicit step's conjugate gradients


@dataclass
class PointBlock:
    """One column block ``cols`` (local state indices): the standardised members x̃ [·, c] on it
    (``paired``: the rows being integrated; ``mixture``: all members, float64), mean/std [1, c], std² [1, c],
    the operator and y restricted to it, the linear curvature C = curvature(mean)·std² [c], and
    ``direct``: whether ∇log p(y|x) = (y − x)/σo² (see ``is_direct``)."""

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
    def make(cls, x, mean, std, y, operator, cols: slice, rows: slice, standardised: bool) -> PointBlock:
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
        return cls(cols, x_b, mean_b, std_b, std_b**2, op, y_b, curv, is_direct(op, y_b, mean_b))

    def to_state(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """x = mean + std·z into ``out``."""
        return torch.mul(z, self.std, out=out).add_(self.mean)

    def pull(self, lik: torch.Tensor, h: float) -> torch.Tensor:
        """h · std · ∇ₓlog p: the likelihood score in z (in place on ``lik``)."""
        return lik.mul_(h * self.std)

    def implicit(self, dz: torch.Tensor, coef: float, xz: torch.Tensor, work: Work) -> None:
        """dz ← dz / (1 + coef · C), C = curvature · std² per index (in place)."""
        if self.op.linear:  # C [c], the same for every member
            dz.div_(torch.mul(self.curv, coef, out=work.den).add_(1.0))
        else:
            dz.div_(self.op.curvature(xz).mul_(self.std_sq).mul_(coef).add_(1.0))


@dataclass
class SpectralBlock:
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
    def make(cls, local, mean, std, y, operator, grid, rows: slice, dtype=None) -> SpectralBlock:
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
        direct = is_direct(operator, y, mean)
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


def is_direct(op: ObservationOperator, y: torch.Tensor, probe: torch.Tensor) -> bool:
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


class Work:
    """Scratch buffers shaped like one block [m, c] (and [c])."""

    def __init__(self, like: torch.Tensor) -> None:
        self.score, self.xz, self.bz, self.lik = (torch.empty_like(like) for _ in range(4))
        self.den = torch.empty(like.shape[1], dtype=like.dtype, device=like.device)
