"""PNG figures of scores, fields, spectra and rank histograms.

Figures are built with :class:`matplotlib.figure.Figure` and saved through the Agg canvas
directly, never through pyplot: nothing is registered with pyplot's figure manager and the global
backend is left untouched, so these functions are safe in headless jobs, threads and notebooks
alike. Every function creates its own figure, creates the parent directories of ``path``, saves a
PNG at 110 dpi, releases the figure and returns the path written.

One colour per quantity (``COLORS``: truth, observation, forecast, analysis) and one line style per
statistic (``LINESTYLES``: error of the ensemble mean solid, ensemble spread dashed, the ensemble
mean's own field dotted) in every figure; :func:`style` maps a curve's label to both. Time series
shade the burn-in (cycles not scored) in ``COLORS["burn-in"]``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scoreda.io.atomic import atomic_output

__all__ = [
    "COLORS",
    "LINESTYLES",
    "plot_fields",
    "plot_rank_histogram",
    "plot_scores",
    "plot_spectra",
    "plot_spread_skill",
    "style",
]

DPI = 110
#: One colour per quantity, the same in every figure.
COLORS: dict[str, str] = {
    "truth": "black",
    "observation": "tab:red",  # σo line, observed points on the truth panel
    "forecast": "tab:orange",
    "analysis": "tab:blue",
    "reference": "0.35",  # 1:1 line, flat rank level, k^slope line
    "shock": "tab:purple",  # cycles whose truth got a model shock
    "burn-in": "0.88",  # shading of the cycles left out of the time means
}
#: One line style per statistic, the same in every figure.
LINESTYLES: dict[str, str] = {
    "error": "-",  # RMSE / error spectrum of the ensemble mean
    "spread": "--",  # ensemble spread
    "mean": ":",  # the ensemble mean's own field (e.g. its energy spectrum)
    "state": "-",  # truth
    "obs_error": ":",  # σo
    "reference": "-.",  # 1:1, k^slope
}
FIELD_CMAP = "viridis"  # states (truth, observation, ensemble means): one sequential scale a row
ERROR_CMAP = "RdBu_r"  # errors (mean − truth): one diverging scale a row, symmetric about zero
_QUANTITIES = ("truth", "observation", "forecast", "analysis")
_STATISTICS = {"rmse": "error", "error": "error", "spread": "spread", "mean": "mean", "σo": "obs_error"}


def style(label: str) -> dict[str, Any]:
    """``{"color", "linestyle"}`` of a curve from the words of its label: the colour of the first of
    truth / observation / forecast / analysis named (``COLORS``), the line style of the first of
    RMSE or error / spread / mean / σo (``LINESTYLES``; a state when none). ``{}`` when the label
    names no quantity (the caller's colour cycle then applies)."""
    words = re.findall(r"[\wσ]+", label.lower())
    quantity = next((w for w in words if w in _QUANTITIES), None)
    if quantity is None:
        return {}
    statistic = next((_STATISTICS[w] for w in words if w in _STATISTICS), "state")
    return {"color": COLORS[quantity], "linestyle": LINESTYLES[statistic]}


def _shade_burn_in(ax: Any, burn_in_hours: float, t_end: float | None = None, label: bool = True) -> None:
    """Shade model time 0 … ``burn_in_hours`` (the cycles left out of the time means), with a legend
    entry; a burn-in as long as the run (``t_end``) shades all of it and says so."""
    if burn_in_hours <= 0:
        return
    whole = t_end is not None and burn_in_hours >= t_end
    text = "burn-in: the whole run" if whole else "burn-in (not in the time means)"
    end = t_end if whole else burn_in_hours
    ax.axvspan(0.0, end, color=COLORS["burn-in"], lw=0, zorder=0, label=text if label else None)


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _new_figure(figsize: tuple[float, float], **kw: Any) -> Figure:
    fig = Figure(figsize=figsize, **kw)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    fig.clear()
    return path


class _PlainLogFormatter(ticker.LogFormatter):
    """Label the ticks that :class:`~matplotlib.ticker.LogFormatter` labels, as plain numbers."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _label_125(plain: bool) -> ticker.FuncFormatter:
    """Log-axis labels at 1, 2 and 5 × 10ⁿ only (never crowded), as plain numbers or a × 10ⁿ."""

    def label(x: float, pos: int | None = None) -> str:
        if not np.isfinite(x) or x <= 0:
            return ""
        e = int(np.floor(np.log10(x) + 1e-9))
        m = round(x / 10.0**e, 6)
        if m not in (1.0, 2.0, 5.0):
            return ""
        if plain:
            return f"{x:g}"
        return f"$10^{{{e}}}$" if m == 1 else f"${m:g}\\times10^{{{e}}}$"

    return ticker.FuncFormatter(label)


def plot_scores(
    table: dict[str, Any],
    path: str | Path,
    title: str = "",
    units: str = "K",
    logy: bool = True,
    burn_in_hours: float = 0.0,
) -> Path:
    """RMSE (solid) and spread (dashed) of forecast and analysis against time in hours.

    ``table`` holds arrays ``time_hours``, ``rmse_forecast``, ``rmse_analysis``,
    ``spread_forecast``, ``spread_analysis`` (``cycle`` is accepted and ignored) and optionally a
    float ``obs_error`` (σo), drawn as a horizontal line in the observation colour, and an array
    ``shock_std`` (model shocks of the truth, 0 = none), drawn as ticks at the cycles shocked. The
    time axis starts at 0 (the initial ensemble); model time up to ``burn_in_hours`` (the cycles left
    out of the time means) is shaded, all of it when the burn-in is as long as the run. Log y-axis
    unless ``logy=False``.
    """
    t = _np(table["time_hours"])
    fig = _new_figure((7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for kind in ("forecast", "analysis"):
        for stat, lw in (("RMSE", 1.6), ("spread", 1.4)):
            label = f"{stat} {kind}"
            ax.plot(t, _np(table[f"{stat.lower()}_{kind}"]), lw=lw, label=label, **style(label))
    sigma_o = table.get("obs_error")
    if sigma_o is not None:
        ax.axhline(
            float(sigma_o),
            color=COLORS["observation"],
            ls=LINESTYLES["obs_error"],
            lw=1.4,
            label=f"σo = {float(sigma_o):.3g}" + ("" if units in ("", "1") else f" {units}"),
        )
    shocks = _np(table.get("shock_std", np.zeros_like(t)))
    if np.any(shocks > 0):
        ax.plot(
            t[shocks > 0],
            np.full(np.count_nonzero(shocks > 0), 1.0),
            "|",
            color=COLORS["shock"],
            ms=8,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="model shock",
        )
    t_end = float(t.max()) if t.size else None
    _shade_burn_in(ax, burn_in_hours, t_end)
    if logy:
        ax.set_yscale("log")
        # plain numbers ("0.6", "2") instead of "6×10⁻¹", on the ticks matplotlib chooses to label
        ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("model time (hours)")
    ax.set_ylabel(f"RMSE, spread ({units})")
    if t_end is not None:
        ax.set_xlim(0.0, t_end if t_end > 0 else 1.0)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(loc="best", fontsize="small", ncol=2)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _limits(arrays: list[np.ndarray], symmetric: bool) -> tuple[float, float]:
    """Shared colour limits of a set of panels: their range, or ±max |value| when ``symmetric``."""
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    lo = min(float(a.min()) for a in finite)
    hi = max(float(a.max()) for a in finite)
    if symmetric:
        m = max(-lo, hi)
        return (-m, m) if m > 0 else (-1.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _levels(fields: dict[str, Any]) -> list[np.ndarray]:
    arrays = []
    for name, field in fields.items():
        a = _np(field)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"field {name!r} must be [C, H, W], got shape {a.shape}")
        arrays.append(a)
    return arrays


def plot_fields(
    fields: dict[str, Any],
    path: str | Path,
    level_names: tuple[str, ...] | list[str] = ("z=0", "z=H"),
    units: str = "K",
    title: str = "",
    errors: dict[str, Any] | None = None,
    length: float | None = None,
    length_units: str = "km",
    stations: Any = None,
) -> Path:
    """Grid of image panels: one row per level, one column per named state field, then one per
    named error field.

    Each field is ``[C, H, W]`` (``[H, W]`` is taken as one level). In each row the state fields
    (``fields``: truth, observation, ensemble means) share one sequential colour scale and the error
    fields (``errors``: e.g. analysis mean − truth) one diverging scale symmetric about zero, each with
    its colorbar labelled with the level and ``units``; NaN (e.g. unobserved points) is left blank.
    Axes are x and y of the cell positions i·``length``/W in ``length_units`` (grid index when
    ``length`` is None), y upwards. ``stations``, a boolean ``[C, H, W]`` mask of the observed grid
    points, marks them on the first state panel (in the observation colour).
    """
    names, errs = list(fields), list(errors or {})
    arrays, err_arrays = _levels(fields), _levels(errors or {})
    mask = None if stations is None else np.asarray(stations, dtype=bool)
    if mask is not None and mask.ndim == 2:
        mask = mask[None]
    n_rows = max(a.shape[0] for a in arrays + err_arrays)
    ns, n_cols = len(names), len(names) + len(errs)
    width = 2.6 * n_cols + (1.2 if errs else 0.6) + 0.3
    fig = _new_figure((width, 2.45 * n_rows + 0.5 + (0.3 if title else 0.0)), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    H, W = max(a.shape[1] for a in arrays + err_arrays), max(a.shape[2] for a in arrays + err_arrays)
    dx = 1.0 if length is None else length / W
    extent = (-dx / 2, (W - 0.5) * dx, -dx / 2, (H - 0.5) * dx)
    axis_unit = "grid index" if length is None else length_units
    cmaps = (
        matplotlib.colormaps[FIELD_CMAP].with_extremes(bad=(0, 0, 0, 0)),
        matplotlib.colormaps[ERROR_CMAP].with_extremes(bad=(0, 0, 0, 0)),
    )
    for r in range(n_rows):
        level = level_names[r] if r < len(level_names) else f"level {r}"
        for group, (cols, panel_names, group_arrays) in enumerate(
            ((range(ns), names, arrays), (range(ns, n_cols), errs, err_arrays))
        ):
            row = [a[r] for a in group_arrays if a.shape[0] > r]
            vmin, vmax = _limits(row, symmetric=group == 1)
            im = None
            for c, name, a in zip(cols, panel_names, group_arrays, strict=True):
                ax = axes[r, c]
                if a.shape[0] <= r:
                    ax.set_axis_off()
                    continue
                im = ax.imshow(
                    np.ma.masked_invalid(a[r]),
                    origin="lower",
                    cmap=cmaps[group],
                    vmin=vmin,
                    vmax=vmax,
                    interpolation="nearest",
                    extent=extent,
                )
                if r == 0:
                    ax.set_title(name, fontsize="medium")
                if c == 0 and mask is not None and r < mask.shape[0] and mask[r].any():
                    _mark_stations(ax, mask[r], dx)
                    if r == 0:
                        ax.set_title(f"{name}, observed points", fontsize="medium")
            if im is not None:
                cb = fig.colorbar(im, ax=list(axes[r, cols.start : cols.stop]), shrink=0.9, pad=0.02)
                cb.set_label(f"{level}{' error' if group else ''} ({units})")
        axes[r, 0].set_ylabel(f"{level}\ny ({axis_unit})")
    for c in range(n_cols):
        axes[-1, c].set_xlabel(f"x ({axis_unit})")
    for ax in axes.flat:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        ax.yaxis.set_major_locator(ticker.MaxNLocator(4))
        ax.label_outer()
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _mark_stations(ax: Any, observed: np.ndarray, dx: float) -> None:
    """Dots at the observed cells, sized by the mean distance between them."""
    iy, ix = np.nonzero(observed)
    spacing = np.sqrt(observed.size / iy.size)  # cells between neighbouring observed points
    cell_pt = 2.6 * 72 / observed.shape[1]  # a cell's width in points (panels are ≈ 2.6 in)
    ms = float(np.clip(0.35 * spacing * cell_pt, 1.5, 5.0))
    ax.plot(
        ix * dx,
        iy * dx,
        "o",
        ms=ms,
        mfc=COLORS["observation"],
        mec="white",
        mew=0.4,
        ls="none",
        label="observed points",
    )


def _slope_label(slope: float) -> str:
    frac = Fraction(slope).limit_denominator(12)
    if abs(float(frac) - slope) < 1e-9:
        text = str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    else:
        text = f"{slope:.3g}"
    return f"$k^{{{text}}}$"


def plot_spectra(
    spectra: dict[str, tuple[Any, Any]],
    path: str | Path,
    slope: float | None = -5 / 3,
    units: str = "m²/s²",
    title: str = "",
    k_units: str = "rad/m",
) -> Path:
    """Log-log spectra ``{label: (k, E)}`` with a labelled reference line ``∝ k^slope``.

    Each curve's colour and line style come from its label (:func:`style`: "truth", "forecast
    error", "analysis spread", "analysis mean", …). Non-positive values are not drawn. The reference
    line (grey, dash-dotted) spans the middle of the first curve's wavenumber range (from 20% to 75%
    of it in log k), a factor 3 above the best fit of that slope to the curve there; ``slope=None``
    omits it. With ``k_units="rad/m"`` the top axis gives the wavelength 2π/k in km.
    """
    fig = _new_figure((6.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    first: tuple[np.ndarray, np.ndarray] | None = None
    for label, (k, e) in spectra.items():
        k, e = _np(k), _np(e)
        ok = (k > 0) & (e > 0) & np.isfinite(e)
        ax.loglog(k[ok], e[ok], lw=1.6, label=label, **style(label))
        if first is None and np.count_nonzero(ok) >= 2:
            first = (k[ok], e[ok])
    if slope is not None and first is not None:
        k0, e0 = first
        lk = np.log(k0)
        lo, hi = np.exp(lk.min() + 0.2 * np.ptp(lk)), np.exp(lk.min() + 0.75 * np.ptp(lk))
        kref = np.geomspace(lo, hi, 20)
        # parallel to a least-squares line of fixed slope through the curve over that range
        sel = (k0 >= lo) & (k0 <= hi)
        sel = sel if np.any(sel) else np.ones_like(k0, dtype=bool)
        offset = np.mean(np.log(e0[sel]) - slope * np.log(k0[sel]))
        ax.loglog(
            kref,
            3.0 * np.exp(offset) * kref**slope,
            color=COLORS["reference"],
            ls=LINESTYLES["reference"],
            lw=1.4,
            label=_slope_label(slope),
        )
    ax.set_xlabel(f"wavenumber k ({k_units})")
    ax.xaxis.set_major_formatter(_label_125(plain=False))  # "3×10⁻⁷ 4×10⁻⁷ …" would overlap
    ax.xaxis.set_minor_formatter(_label_125(plain=False))
    if k_units == "rad/m":
        top = ax.secondary_xaxis("top", functions=(_wavelength_km, _wavelength_km))
        top.set_xlabel("wavelength 2π/k (km)")
        top.xaxis.set_major_formatter(_label_125(plain=True))
        top.xaxis.set_minor_formatter(_label_125(plain=True))
    ax.set_ylabel(f"E(k) ({units})")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _wavelength_km(k: Any) -> np.ndarray:
    """2π/k in km for k in rad/m (its own inverse); inf at k ≤ 0."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(k > 0, 2.0 * np.pi / (1e3 * k), np.inf)


def plot_spread_skill(table: dict[str, Any], path: str | Path, title: str = "", units: str = "K") -> Path:
    """Spread against RMSE of the ensemble mean, one point per cycle, forecast and analysis.

    ``table`` holds arrays ``rmse_{forecast,analysis}`` and ``spread_{forecast,analysis}``; the
    1:1 line is where a statistically consistent ensemble lies (up to √((M+1)/M)).
    """
    fig = _new_figure((5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    hi = 0.0
    for kind in ("forecast", "analysis"):
        r, sp = _np(table[f"rmse_{kind}"]), _np(table[f"spread_{kind}"])
        ratio = np.sqrt(np.mean(sp**2) / np.mean(r**2)) if r.size else np.nan
        ax.plot(r, sp, ".", color=COLORS[kind], alpha=0.6, label=f"{kind} (spread/RMSE {ratio:.2f})")
        hi = max(hi, float(np.max(r, initial=0)), float(np.max(sp, initial=0)))
    ax.plot(
        [0, 1.05 * hi],
        [0, 1.05 * hi],
        color=COLORS["reference"],
        ls=LINESTYLES["reference"],
        lw=1.0,
        label="1:1",
    )
    ax.set_xlim(0, 1.05 * hi or 1)
    ax.set_ylim(0, 1.05 * hi or 1)
    ax.set_xlabel(f"RMSE of the ensemble mean ({units})")
    ax.set_ylabel(f"ensemble spread ({units})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title or "spread–skill, one point per cycle")
    return _save(fig, path)


def plot_rank_histogram(counts: Any, path: str | Path, title: str = "") -> Path:
    """Bar chart (analysis colour) of rank-histogram relative frequencies with the flat level 1/(M+1).

    ``counts`` has length M+1 (from :func:`scoreda.metrics.rank_histogram`).
    """
    c = _np(counts)
    total = c.sum()
    freq = c / total if total > 0 else c
    ranks = np.arange(c.size)
    fig = _new_figure((6.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(ranks, freq, width=0.85, color=COLORS["analysis"], alpha=0.8)
    ax.axhline(
        1.0 / c.size,
        color=COLORS["reference"],
        ls=LINESTYLES["reference"],
        lw=1.2,
        label=f"flat, 1/(M+1) = 1/{c.size}",
    )
    ax.set_xlabel("rank of truth among members (0 = below all)")
    ax.set_ylabel("relative frequency")
    ax.set_xlim(-0.6, c.size - 0.4)
    if c.size <= 21:
        ax.set_xticks(ranks)
    top = max(float(np.max(freq)) if c.size else 0.0, 1.0 / max(c.size, 1))
    ax.set_ylim(0.0, 1.25 * top)  # headroom so the legend never covers a bar
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(title or f"rank histogram ({int(total)} points)")
    return _save(fig, path)


def plot_scaling(rows: list[dict], path: str | Path) -> Path:
    """Scaling study in the seed paper's layout (Fig. 7: ViT training, Fig. 8: a filter's weak scaling).

    Left: throughput (ViT: tokens/s, all devices) or time per analysis (a filter) against devices (ranks),
    one line per series, log-log, with the ideal line from each series' smallest run; right: the
    efficiency against devices (1 = ideal). ``rows`` come from ``workflows/scaling.py`` (``collect``).
    """
    weak = "per_rank" in rows[0]  # an analysis study (rows with a state size per rank)
    series: dict[str, list[dict]] = {}
    for r in rows:
        name = (
            f"{r.get('filter', '')} d/rank={r['per_rank']:.0e}".lstrip()
            if weak
            else f"{r['preset']} {r['strategy']}"
        )
        series.setdefault(name, []).append(r)
    fig = _new_figure((10.0, 4.0), layout="constrained")
    ax, eff = fig.subplots(1, 2)
    for name, pts in series.items():
        pts = sorted(pts, key=lambda r: r["ranks"])
        n = np.array([r["ranks"] for r in pts], dtype=float)
        y = np.array([r["time_s"] if weak else r["tokens_s"] for r in pts])
        (line,) = ax.plot(n, y, "o-", label=name)
        ideal = np.full_like(n, y[0]) if weak else y[0] * n / n[0]
        ax.plot(n, ideal, ":", color=line.get_color(), lw=1)
        eff.plot(n, [r["efficiency"] for r in pts], "o-", color=line.get_color(), label=name)
    for a in (ax, eff):
        a.set_xscale("log", base=2)
        a.set_xlabel("devices (ranks)")
        a.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_yscale("log")
    ax.set_ylabel("seconds per analysis" if weak else "tokens / s (all devices)")
    ax.set_title(
        "analysis weak scaling (dotted: ideal)" if weak else "ViT training throughput (dotted: ideal)"
    )
    eff.axhline(1.0, color="k", ls="--", lw=1)
    eff.set_ylim(0.0, 1.15 * max(1.0, max(r["efficiency"] for r in rows)))
    eff.set_ylabel("efficiency")
    eff.set_title("weak-scaling efficiency t(1)/t(n)" if weak else "throughput per device vs fewest ranks")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_experiment_rmse(
    panels: dict[str, dict[str, dict[str, Any]]],
    path: str | Path,
    units: str = "K",
    burn_in_hours: float = 0.0,
) -> Path:
    """Analysis RMSE against model time, one panel per experiment (seed 002 Fig. 4's layout).

    ``panels[experiment][label] = {"hours": [T], "rmse": [T], "color": ..., "mean": float}``; log
    y-axis shared by the panels, the first ``burn_in_hours`` (not scored) shaded.
    """
    fig = _new_figure((5.2 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (name, lines) in zip(axes, panels.items(), strict=True):
        for label, s in lines.items():
            ax.plot(
                _np(s["hours"]),
                _np(s["rmse"]),
                color=s.get("color"),
                lw=1.0,
                label=f"{label} ({s['mean']:.3g})",
            )
        _shade_burn_in(ax, burn_in_hours, label=ax is axes[0])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_xlabel("model time [h]")
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title=f"time-mean analysis RMSE [{units}]", title_fontsize=8)
    axes[0].set_ylabel(f"analysis RMSE [{units}]")
    return _save(fig, path)
