"""Scores of an ensemble against the truth, and isotropic spectra.

Conventions (used by every function here):

* ``ens`` is an ensemble ``[M, C, H, W]`` (member, level, y, x); ``truth`` is ``[C, H, W]`` or
  ``[1, C, H, W]``. numpy arrays or torch tensors are accepted (tensors are detached and copied to
  the CPU); all arithmetic is done in float64 and results are returned as Python floats or numpy
  arrays.
* "grid mean" means the plain, unweighted mean over all C·H·W grid points (levels included). The
  grid is a uniform doubly periodic square, so no area weights are needed.
* Ensemble statistics are taken over the member axis (axis 0) at each grid point first; the grid
  mean is taken afterwards, and a square root (for RMSE and spread) last.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scoringrules as sr

__all__ = [
    "SCORE_NAMES",
    "channel_scores",
    "crps",
    "error_spectrum",
    "isotropic_spectrum",
    "ke_spectrum",
    "rank_histogram",
    "rmse",
    "scores",
    "spectral_slope",
    "spread",
    "spread_spectrum",
]


#: keys of :func:`scores`, in the order of ``metrics.csv``
SCORE_NAMES = (
    "rmse_forecast",
    "rmse_analysis",
    "spread_forecast",
    "spread_analysis",
    "crps_forecast",
    "crps_analysis",
)


def _as_np(x: Any) -> np.ndarray:
    """numpy float64 copy/view of an array or torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _ens_truth(ens: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble ``[M, ...]`` and truth with the ensemble's trailing shape (leading 1 removed)."""
    e = _as_np(ens)
    t = _as_np(truth)
    if t.ndim == e.ndim:
        if t.shape[0] != 1:
            raise ValueError(f"truth with a leading axis must have length 1, got shape {t.shape}")
        t = t[0]
    if t.shape != e.shape[1:]:
        raise ValueError(f"truth shape {t.shape} does not match ensemble shape {e.shape} (member axis 0)")
    return e, t


def rmse(ens: Any, truth: Any) -> float:
    """Root-mean-square error of the ensemble mean.

    ``sqrt( mean_{c,y,x} ( xbar[c,y,x] - truth[c,y,x] )² )`` with ``xbar = (1/M) Σ_m ens[m]``.
    The ensemble mean is formed first; the grid mean is over all C·H·W points (levels pooled);
    the square root is taken of the grid-mean squared error (not a mean of per-level RMSEs).
    """
    e, t = _ens_truth(ens, truth)
    err = e.mean(axis=0) - t
    return float(np.sqrt(np.mean(err**2)))


def spread(ens: Any) -> float:
    """Ensemble spread: square root of the grid-mean unbiased ensemble variance.

    ``sqrt( mean_{c,y,x} s²[c,y,x] )`` with ``s² = (1/(M-1)) Σ_m (ens[m] - xbar)²`` (ddof=1) at each
    grid point. With this estimator the spread matches the RMSE of the ensemble mean for a
    statistically consistent ensemble only up to the factor sqrt((M+1)/M). One member (a
    deterministic run): 0.
    """
    e = _as_np(ens)
    if e.shape[0] == 1:
        return 0.0
    return float(np.sqrt(np.mean(np.var(e, axis=0, ddof=1))))


def crps(ens: Any, truth: Any, *, estimator: str = "pwm") -> float:
    """Grid-mean continuous ranked probability score of the ensemble (fair estimator).

    At each grid point the *fair* (unbiased, Ferro 2014) estimator

        CRPS = (1/M) Σ_i |x_i - y| - (1/(2 M (M-1))) Σ_{i,j} |x_i - x_j|

    is computed by ``scoringrules.crps_ensemble`` in one vectorised call (member axis
    ``m_axis=0``), and the result is averaged over all C·H·W points. The default
    ``estimator="pwm"`` (probability-weighted-moment form, on the sorted ensemble) is
    algebraically identical to ``estimator="fair"`` but costs O(M log M) time and O(M) memory per
    point instead of the O(M²) pairwise differences of the ``"fair"`` code path; any other
    scoringrules estimator name may be passed (``"nrg"`` gives the standard, biased estimator with
    1/(2M²)). The fair estimator is unbiased for the CRPS of the distribution the members are
    drawn from, so ensembles of different size are scored comparably. One member (a deterministic
    run): the CRPS of a point forecast, the mean absolute error.
    """
    e, t = _ens_truth(ens, truth)
    if e.shape[0] == 1:
        return float(np.mean(np.abs(e[0] - t)))
    per_point = sr.crps_ensemble(t, e, m_axis=0, estimator=estimator, backend="numpy")
    return float(np.mean(per_point))


def rank_histogram(ens: Any, truth: Any, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rank (Talagrand) histogram of the truth within the ensemble, counted over all grid points.

    At each grid point the rank of the truth is the number of members strictly below it plus a
    uniform random integer in ``[0, n_tie]``, where ``n_tie`` is the number of members exactly
    equal to it (random tie breaking, drawn from ``rng``; ``rng=None`` uses
    ``np.random.default_rng(0)`` so the result is reproducible). Returns integer counts of length
    M+1 (index r = truth has rank r, 0 = below all members) summing to C·H·W.
    """
    e, t = _ens_truth(ens, truth)
    if rng is None:
        rng = np.random.default_rng(0)
    m = e.shape[0]
    below = np.sum(e < t, axis=0)
    ties = np.sum(e == t, axis=0)
    rank = below + rng.integers(0, ties + 1)
    return np.bincount(rank.ravel(), minlength=m + 1).astype(np.int64)


def _shell_index(n: int) -> np.ndarray:
    """Integer shell index round(|(i, j)|) of every fft2 mode on an n×n grid."""
    idx = np.fft.fftfreq(n, 1.0 / n)  # integer wavenumber indices 0, 1, ..., -1
    mag = np.hypot(idx[:, None], idx[None, :])
    # |index| = sqrt(integer) is never exactly half-integer, so rounding is unambiguous.
    return np.rint(mag).astype(np.int64)


def isotropic_spectrum(
    field: Any, L: float = 2 * np.pi, *, full: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic (shell-summed) energy spectrum of ``field[..., H, W]`` on a doubly periodic square.

    With ``f̂ = fft2(field) / (H·W)`` (so Σ_modes |f̂|² = mean(field²), Parseval) and integer mode
    indices (i, j) in ``fftfreq`` order, the shell index of a mode is ``round(sqrt(i² + j²))``.
    For each shell n

        E_n = 0.5 · Σ_{modes in shell n} |f̂|²,

    averaged (arithmetic mean) over all leading axes of ``field``. E_n is the energy *per shell*
    (a sum, not a density): divide by Δk = 2π/L for a density per unit wavenumber. Summed over all
    shells n = 0 … round(N/√2) (mean and corner modes included), ``Σ_n E_n = 0.5 · mean(field²)``
    with the mean over every element of ``field``.

    Returns ``(k, E)`` with ``k_n = n · 2π/L`` for n = 1 … N//2: the mean (n = 0) and the corner
    shells beyond N/2, which are not complete circles, are dropped. With ``full=True`` all shells
    n = 0 … round(N/√2) are returned instead (used to check Parseval). Requires H == W.
    """
    f = _as_np(field)
    if f.ndim < 2 or f.shape[-1] != f.shape[-2]:
        raise ValueError(f"field must be [..., N, N] (square), got shape {f.shape}")
    n = f.shape[-1]
    fh = np.fft.fft2(f.reshape((-1, n, n))) / (n * n)
    power = np.mean(np.abs(fh) ** 2, axis=0)  # mean over leading axes, [N, N]
    shell = _shell_index(n)
    e = 0.5 * np.bincount(shell.ravel(), weights=power.ravel())
    nn = np.arange(e.size)
    if not full:
        keep = slice(1, n // 2 + 1)
        nn, e = nn[keep], e[keep]
    return nn * (2 * np.pi / L), e


def ke_spectrum(u: Any, v: Any, L: float = 2 * np.pi) -> tuple[np.ndarray, np.ndarray]:
    """Kinetic-energy spectrum: ``isotropic_spectrum(u) + isotropic_spectrum(v)``.

    Per shell, ``E_n = 0.5 Σ_{shell n} (|û|² + |v̂|²)`` averaged over the leading axes; returns
    ``(k, E)`` for n = 1 … N//2 with ``k_n = n · 2π/L`` (see :func:`isotropic_spectrum`).
    """
    k, eu = isotropic_spectrum(u, L)
    _, ev = isotropic_spectrum(v, L)
    return k, eu + ev


def spectral_slope(k: Any, E: Any, kmin: float, kmax: float) -> float:
    """Least-squares slope of log E against log k over ``kmin ≤ k ≤ kmax``.

    Ordinary (unweighted) least squares of ``log E`` on ``log k`` using the points in the range
    with ``k > 0`` and ``E > 0``; needs at least two such points.
    """
    k = _as_np(k)
    e = _as_np(E)
    sel = (k >= kmin) & (k <= kmax) & (k > 0) & (e > 0)
    if np.count_nonzero(sel) < 2:
        raise ValueError(f"fewer than two usable points in [{kmin}, {kmax}]")
    slope, _ = np.polyfit(np.log(k[sel]), np.log(e[sel]), 1)
    return float(slope)


def error_spectrum(ens: Any, truth: Any, L: float = 2 * np.pi) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic spectrum of the ensemble-mean error, ``isotropic_spectrum(xbar - truth, L)``.

    ``xbar = (1/M) Σ_m ens[m]`` is ``[C, H, W]``; the spectrum is averaged over the C levels, so
    ``Σ_{all shells} E_n = 0.5 · rmse(ens, truth)²``. Returns ``(k, E)`` for n = 1 … N//2.
    """
    e, t = _ens_truth(ens, truth)
    return isotropic_spectrum(e.mean(axis=0) - t, L)


def spread_spectrum(ens: Any, L: float = 2 * np.pi) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic spectrum of the ensemble spread: ``M/(M−1) · isotropic_spectrum(ens − xbar)``.

    The anomalies' spectrum averaged over members and levels, with the unbiased factor, so that
    ``Σ_{all shells} E_n = 0.5 · spread(ens)²`` — directly comparable with :func:`error_spectrum`
    for a spread–skill check per scale. ``ens`` is ``[M, C, N, N]``; returns ``(k, E)``, n = 1 … N//2.
    """
    e = _as_np(ens)
    k, E = isotropic_spectrum(e - e.mean(axis=0), L)
    return k, E * e.shape[0] / max(e.shape[0] - 1, 1)  # one member: zeros


def scores(forecast: Any, analysis: Any, truth: Any) -> dict[str, float]:
    """RMSE, spread and CRPS of a forecast and an analysis ensemble against the same truth.

    Keys: ``rmse_forecast``, ``rmse_analysis`` (:func:`rmse`), ``spread_forecast``,
    ``spread_analysis`` (:func:`spread`), ``crps_forecast``, ``crps_analysis`` (:func:`crps`,
    fair estimator); all Python floats.
    """
    out: dict[str, float] = {}
    for name, ens in (("forecast", forecast), ("analysis", analysis)):
        out[f"rmse_{name}"] = rmse(ens, truth)
        out[f"spread_{name}"] = spread(ens)
        out[f"crps_{name}"] = crps(ens, truth)
    return out


def channel_scores(forecast: Any, analysis: Any, truth: Any, names: tuple[str, ...]) -> dict[str, float]:
    """:func:`scores` of each channel (level) c on its own: keys ``<score>_<names[c]>``, e.g.
    ``rmse_analysis_u1`` = sqrt( mean_{y,x} (xbar[c] − truth[c])² ). ``forecast``, ``analysis``
    ``[M, C, H, W]``, truth ``[C, H, W]`` or ``[1, C, H, W]``; ``len(names) == C``."""
    f, a = _as_np(forecast), _as_np(analysis)
    _, t = _ens_truth(f, truth)
    if len(names) != f.shape[1]:
        raise ValueError(f"{len(names)} channel names for {f.shape[1]} channels")
    out: dict[str, float] = {}
    for c, name in enumerate(names):
        out |= {f"{k}_{name}": v for k, v in scores(f[:, c], a[:, c], t[c]).items()}
    return out
