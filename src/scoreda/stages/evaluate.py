"""Scores against the truth: ``evaluate`` (one cycle → ``scores.json``) and ``report`` (the run).

``report`` writes ``metrics.csv`` (one row per cycle), ``summary.json`` (time means over cycles
after ``burn_in``, spread–skill ratios, wall times per stage) and the PNGs in ``plots/``:
RMSE/spread against time, spread–skill, rank histogram, time-mean error and spread spectra (2-D
models), fields and kinetic-energy spectra of the last cycle.

Channels. A model that names its state channels (``channel_names``, ``channel_units``: the
two-layer QG) gets every score per channel as well (``rmse_analysis_u1``, … in metrics.csv,
``mean_rmse_analysis_u1``, … in summary.json, ``plots/rmse_spread_<name>.png``), and its
un-suffixed headline scores, rank histogram and spectra are over the channels in ``model.units``
only (e.g. PV [1/s] and velocities [m/s] in one state: the velocities are not pooled with the PV).
Models without channel names are scored over all levels, as before.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from scoreda import metrics, plotting
from scoreda.io import write_text
from scoreda.shocks import shock_std
from scoreda.stages.common import (
    DIAGNOSTICS,
    Run,
    check_divergence,
    dynamics,
    main,
    read_timings,
    write_json,
)
from scoreda.stages.nature import read_observations

COLUMNS = ("cycle", "time_hours", *metrics.SCORE_NAMES, "shock_std")
SPECTRA = tuple(f"{q}_spectrum_{k}" for q in ("error", "spread") for k in ("forecast", "analysis"))


def _square(run: Run) -> bool:
    return run.shape[1] == run.shape[2] > 1


def channels(run: Run) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(names, units) of the state's channels when the model scores them one by one
    (``Grid.per_level_scores``), else None."""
    g = run.grid
    return (g.level_names, g.level_units) if g.per_level_scores else None


def headline(run: Run) -> list[int] | None:
    """Channels of the un-suffixed scores: those in ``model.units`` (None: all channels)."""
    info = channels(run)
    if info is None:
        return None
    sel = [c for c, u in enumerate(info[1]) if u == run.cfg.model.units]
    return None if len(sel) in (0, len(info[1])) else sel


def diagnostic_names(attrs: dict) -> list[str]:
    """The filter's diagnostics among an analysis file's attributes (``Analysis.diagnostics``, listed in
    its ``diagnostics`` attribute; ``inflation`` alone in files written before that list)."""
    if DIAGNOSTICS in attrs:
        listed = str(np.asarray(attrs[DIAGNOSTICS]).reshape(-1)[0])
        return [k for k in listed.split(",") if k]
    return [k for k in ("inflation",) if k in attrs]


def columns(run: Run) -> tuple[str, ...]:
    """Columns of metrics.csv: COLUMNS, then ``<score>_<channel>`` for named channels."""
    info = channels(run)
    names = () if info is None else info[0]
    return COLUMNS + tuple(f"{k}_{n}" for n in names for k in metrics.SCORE_NAMES)


def evaluate(run_dir, cycle: int) -> dict:
    """Scores of ``cycle`` (RMSE of the ensemble mean, spread, CRPS, rank histogram); cached as JSON.
    Raises ``Diverged`` (after writing them) when the analysis RMSE passes ``divergence``; the
    workflow stops there, so a cached cycle was checked when it was scored."""
    run = Run(run_dir)
    path = run.path(cycle, "scores")
    if path.is_file():
        try:
            out = json.loads(path.read_text())
            if out.get("config_hash") == run.hash and all(c in out for c in columns(run)):
                return out
        except ValueError:
            pass
    truth, fc = run.read(cycle, "truth"), run.read(cycle, "forecast")
    an, an_attrs = run.read_with_attrs(cycle, "analysis")
    out = {"cycle": cycle, "time_hours": cycle * run.cfg.model.cycle_hours, "config_hash": run.hash}
    names = diagnostic_names(an_attrs)  # the filter's diagnostics, logged and summarised with the scores
    out |= {k: float(np.asarray(an_attrs[k]).reshape(-1)[0]) for k in names} | {DIAGNOSTICS: names}
    info, sel = channels(run), headline(run)
    if info is not None:
        out |= metrics.channel_scores(fc, an, truth, info[0])
    if sel is not None:  # the headline channels only
        truth, fc, an = truth[:, sel], fc[:, sel], an[:, sel]
    out |= metrics.scores(fc, an, truth)
    out["shock_std"] = shock_std(run.cfg, cycle)
    out["rank_histogram"] = metrics.rank_histogram(an, truth, np.random.default_rng(cycle)).tolist()
    if _square(run):  # per-scale spread–skill: error and spread spectra
        L = run.cfg.model.get("L", 2 * np.pi)
        for kind, ens in (("forecast", fc), ("analysis", an)):
            out[f"error_spectrum_{kind}"] = metrics.error_spectrum(ens, truth, L)[1].tolist()
            out[f"spread_spectrum_{kind}"] = metrics.spread_spectrum(ens, L)[1].tolist()
    out["truth_std"] = float(truth.double().std())  # the scale of ``divergence``
    write_json(path, out)
    check_divergence(run, cycle, out["rmse_analysis"], out["truth_std"])  # after writing: they are real
    return out


def report(run_dir, cycles: int | None = None) -> dict:
    """metrics.csv, summary.json and plots for cycles 1..``cycles`` (default: the config's)."""
    run = Run(run_dir)
    cfg = run.cfg
    n = cycles or cfg.cycles
    rows = [evaluate(run.dir, k) for k in range(1, n + 1)]
    cols = columns(run)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows([[r[c] for c in cols] for r in rows])
    write_text(run.dir / "metrics.csv", buf.getvalue())
    burn = scored_from(cfg.burn_in, n) - 1
    after = [r for r in rows if r["cycle"] > burn]
    scored = [c for c in cols if c not in ("cycle", "time_hours", "shock_std")]
    summary = {f"mean_{c}": float(np.mean([r[c] for r in after])) for c in scored}
    for kind in ("forecast", "analysis"):  # √(mean spread² / mean squared error) over the scored cycles
        mse = np.mean([r[f"rmse_{kind}"] ** 2 for r in after])
        var = np.mean([r[f"spread_{kind}"] ** 2 for r in after])
        summary[f"spread_skill_{kind}"] = float(np.sqrt(var / mse))
    summary |= {
        "shocked_cycles": int(sum(r["shock_std"] > 0 for r in rows)),
        "cycles": n,
        "burn_in": burn,  # cycles left out here (burn_in, or 0 for a run no longer than it)
        "scored_cycles": f"{burn + 1}-{n}",
        "analysis_below_forecast_every_cycle": all(r["rmse_analysis"] < r["rmse_forecast"] for r in rows),
        "obs_sigma": cfg.observation.sigma,
        "units": cfg.model.units,
        "experiment": cfg.experiment_name,
        "filter": cfg.filter.name,
        "model": cfg.model.name,
        "rank_histogram": np.sum([r["rank_histogram"] for r in after], axis=0).tolist(),
        "wall_seconds": _timings(run.dir),
    }
    for name in after[-1].get(DIAGNOSTICS, ["inflation"]) if after else ():  # the filter's, e.g. inflation
        if all(name in r for r in after):
            values = [r[name] for r in after]
            summary |= {f"mean_{name}": float(np.mean(values)), f"max_{name}": float(np.max(values))}
    if _square(run):
        summary |= {q: np.mean([r[q] for r in after], axis=0).tolist() for q in SPECTRA}
    if (info := channels(run)) is not None:
        sel = headline(run) or range(len(info[0]))
        summary |= {
            "channels": list(info[0]),
            "channel_units": list(info[1]),
            "headline_channels": [info[0][c] for c in sel],
        }
    write_json(run.dir / "summary.json", summary)
    _plots(run, rows, summary, n)
    return summary


def scored_from(burn_in: int, cycles: int) -> int:
    """First cycle of the time means: ``burn_in`` + 1, or 1 when the run is no longer than its burn-in
    (``short_run_note``)."""
    return burn_in + 1 if burn_in < cycles else 1


def short_run_note(burn_in: int, cycles: int) -> str | None:
    """The one line that says a run is no longer than its burn-in (None when it is longer)."""
    if burn_in < cycles:
        return None
    return (
        f"note: cycles={cycles} ≤ burn_in={burn_in}: the time means are taken over all {cycles} cycles"
        " (a longer run leaves the burn-in out)"
    )


def _timings(run_dir: Path) -> dict:
    per_stage: dict[str, list[float]] = {}
    for t in read_timings(run_dir):
        per_stage.setdefault(t["stage"], []).append(t["seconds"])
    return {
        s: {"total": float(np.sum(v)), "mean": float(np.mean(v)), "count": len(v)}
        for s, v in per_stage.items()
    }


def _observed_channels(run: Run) -> list[int]:
    ch = run.cfg.observation.channels
    return list(range(run.shape[0])) if ch is None else list(ch)


def _plots(run: Run, rows: list[dict], summary: dict, n: int) -> None:
    """The PNGs of ``plots/``. Colours and line styles are ``plotting.COLORS`` / ``LINESTYLES`` in all
    of them; the time series shade the cycles left out of the time means (``summary["burn_in"]``)."""
    cfg, plots = run.cfg, run.dir / "plots"
    table = {c: np.array([r[c] for r in rows]) for c in columns(run)}
    info, sel = channels(run), headline(run)
    linear, observed = cfg.observation.transform == "linear", _observed_channels(run)
    same_units = sel is None or set(observed) <= set(sel)  # σo is in the headline's units
    table["obs_error"] = cfg.observation.sigma if linear and same_units else None
    burn = int(summary.get("burn_in", cfg.burn_in))  # cycles left out of the time means
    burn_hours = burn * cfg.model.cycle_hours
    title = f"{cfg.experiment_name}: {cfg.model.name}, {cfg.filter.name}, {cfg.members} members"
    head = "" if sel is None else f" ({', '.join(info[0][c] for c in sel)})"
    plotting.plot_scores(
        table, plots / "rmse_spread.png", title=title + head, units=cfg.model.units, burn_in_hours=burn_hours
    )
    for c, name in enumerate(info[0] if info is not None else ()):
        ct = {k: table[f"{k}_{name}"] for k in metrics.SCORE_NAMES} | {"time_hours": table["time_hours"]}
        ct["obs_error"] = cfg.observation.sigma if linear and c in observed else None
        path = plots / f"rmse_spread_{name}.png"
        plotting.plot_scores(ct, path, title=f"{title}: {name}", units=info[1][c], burn_in_hours=burn_hours)
    plotting.plot_spread_skill(
        {c: table[c][burn:] for c in metrics.SCORE_NAMES},
        plots / "spread_skill.png",
        title=f"spread–skill, cycles {summary['scored_cycles']}",
        units=cfg.model.units,
    )
    if _square(run):
        k = metrics.isotropic_spectrum(np.zeros(run.shape[1:]), cfg.model.get("L", 2 * np.pi))[0]
        spectra = {}
        for q in SPECTRA:  # error_spectrum_forecast → "forecast error"
            stat, kind = q.split("_spectrum_")
            spectra[f"{kind} {stat}"] = (k, summary[q])
        plotting.plot_spectra(
            spectra,
            plots / "error_spread_spectra.png",
            slope=None,
            units=f"{cfg.model.units}²",
            title=f"error and spread spectra, mean over cycles {summary['scored_cycles']}",
        )
    plotting.plot_rank_histogram(
        summary["rank_histogram"],
        plots / "rank_histogram.png",
        title=f"analysis rank histogram, cycles {summary['scored_cycles']}",
    )
    if run.shape[1] > 1:  # 2-D models
        _field_plots(run, n, observed, info)


def _field_plots(run: Run, n: int, observed: list[int], info) -> None:
    """fields*.png of cycle ``n``: truth (with the observed points when not every point is observed),
    the observations (when every point is), the analysis mean, and the errors of the forecast and
    analysis means; ke_spectrum.png when the model has a velocity."""
    cfg, plots = run.cfg, run.dir / "plots"
    truth, fc, an = run.read(n, "truth"), run.read(n, "forecast"), run.read(n, "analysis")
    y, op = read_observations(run, n)
    obs_grid = op.to_grid(y, run.shape).numpy() if cfg.observation.transform == "linear" else None
    t, f_mean, a_mean = truth[0].numpy(), fc.mean(0).numpy(), an.mean(0).numpy()
    seen = None if obs_grid is None else np.isfinite(obs_grid)
    dense = seen is not None and bool(seen[observed].all())
    fields = {"truth": t} | ({"observation": obs_grid} if dense else {}) | {"analysis mean": a_mean}
    errors = {"forecast mean − truth": f_mean - t, "analysis mean − truth": a_mean - t}
    stations = seen if seen is not None and not dense else None
    g = run.grid
    km = g.periodic_lengths[1] if g.length_units == "km" else None  # cell positions i·L/N in km
    time = f"cycle {n} (t = {n * cfg.model.cycle_hours:g} h)"
    if info is None:
        names = run.grid.level_labels
        plotting.plot_fields(
            fields, plots / "fields.png", names, cfg.model.units, time, errors, km, stations=stations
        )
    else:  # one figure per unit: fields.png (model.units), fields_<unit>.png (the others)
        for unit in dict.fromkeys(info[1]):
            ch = [c for c, u in enumerate(info[1]) if u == unit]
            part = {k: v[ch] for k, v in fields.items() if k != "observation" or set(ch) & set(observed)}
            name = "fields" if unit == cfg.model.units else "fields_" + unit.replace("/", "_per_")
            plotting.plot_fields(
                part,
                plots / f"{name}.png",
                [info[0][c] for c in ch],
                unit,
                time,
                {k: v[ch] for k, v in errors.items()},
                km,
                stations=None if stations is None else stations[ch],
            )
    model = dynamics(run)
    if hasattr(model, "velocity"):
        spectra = {}
        for name, x in (
            ("truth", truth),
            ("forecast mean", fc.mean(0, keepdim=True)),
            ("analysis mean", an.mean(0, keepdim=True)),
        ):
            u, v = model.velocity(x.to(cfg.device))
            spectra[name] = metrics.ke_spectrum(u.cpu(), v.cpu(), L=cfg.model.L)
        spectra["forecast error"] = _error_ke(model, fc, truth, cfg)
        spectra["analysis error"] = _error_ke(model, an, truth, cfg)
        plotting.plot_spectra(spectra, plots / "ke_spectrum.png", title=f"kinetic energy, cycle {n}")


def _error_ke(model, ens, truth, cfg):
    """Kinetic-energy spectrum of the velocity of (ensemble mean − truth)."""
    u, v = model.velocity((ens.mean(0, keepdim=True) - truth).to(cfg.device))
    return metrics.ke_spectrum(u.cpu(), v.cpu(), L=cfg.model.L)


def summary_lines(summary: dict) -> list[tuple[str, str]]:
    """(label, value) rows of the end-of-run table."""
    u = "" if summary["units"] in ("", "1") else summary["units"]
    per_channel = [
        (
            f"analysis RMSE / spread {name}",
            f"{summary[f'mean_rmse_analysis_{name}']:.4g}"
            f" / {summary[f'mean_spread_analysis_{name}']:.4g} {unit}",
        )
        for name, unit in zip(summary.get("channels", ()), summary.get("channel_units", ()), strict=True)
    ]
    return [
        ("scored cycles", summary["scored_cycles"]),
        ("analysis RMSE", f"{summary['mean_rmse_analysis']:.4g} {u}".rstrip()),
        ("analysis spread", f"{summary['mean_spread_analysis']:.4g} {u}".rstrip()),
        ("forecast RMSE", f"{summary['mean_rmse_forecast']:.4g} {u}".rstrip()),
        ("forecast spread", f"{summary['mean_spread_forecast']:.4g} {u}".rstrip()),
        ("analysis CRPS", f"{summary['mean_crps_analysis']:.4g} {u}".rstrip()),
        ("observation error σo", f"{summary['obs_sigma']:g}"),
        ("analysis < forecast every cycle", str(summary["analysis_below_forecast_every_cycle"])),
        *per_channel,
    ]


if __name__ == "__main__":
    main(evaluate, "Evaluate stage: scores of cycle K against the truth (writes scores.json).")
