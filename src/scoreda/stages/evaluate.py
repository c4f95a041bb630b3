"""Scores against the truth: ``evaluate`` (one cycle → ``scores.json``) and ``report`` (the run).

``report`` writes ``metrics.csv`` (one row per cycle), ``summary.json`` (time means over cycles
after ``burn_in``, spread–skill ratios, wall times per stage) and the PNGs in ``plots/``:
RMSE/spread against time, spread–skill, rank histogram, time-mean error and spread spectra (2-D
models), fields and kinetic-energy spectra of the last cycle.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from scoreda import metrics, plotting
from scoreda.io import write_text
from scoreda.stages.common import Run, dynamics, main, read_timings, write_json
from scoreda.stages.nature import read_observations, shock_std

COLUMNS = ("cycle", "time_hours", *metrics.SCORE_NAMES, "shock_std")
SPECTRA = tuple(f"{q}_spectrum_{k}" for q in ("error", "spread") for k in ("forecast", "analysis"))


def _square(run: Run) -> bool:
    return run.shape[1] == run.shape[2] > 1


def evaluate(run_dir, cycle: int) -> dict:
    """Scores of ``cycle`` (RMSE of the ensemble mean, spread, CRPS, rank histogram); cached as JSON."""
    run = Run(run_dir)
    path = run.path(cycle, "scores")
    if path.is_file():
        try:
            out = json.loads(path.read_text())
            if out.get("config_hash") == run.hash:
                return out
        except ValueError:
            pass
    truth, fc, an = run.read(cycle, "truth"), run.read(cycle, "forecast"), run.read(cycle, "analysis")
    out = {"cycle": cycle, "time_hours": cycle * run.cfg.model.cycle_hours, "config_hash": run.hash}
    out |= metrics.scores(fc, an, truth)
    out["shock_std"] = shock_std(run.cfg, cycle)
    out["rank_histogram"] = metrics.rank_histogram(an, truth, np.random.default_rng(cycle)).tolist()
    if _square(run):  # per-scale spread–skill: error and spread spectra
        L = run.cfg.model.get("L", 2 * np.pi)
        for kind, ens in (("forecast", fc), ("analysis", an)):
            out[f"error_spectrum_{kind}"] = metrics.error_spectrum(ens, truth, L)[1].tolist()
            out[f"spread_spectrum_{kind}"] = metrics.spread_spectrum(ens, L)[1].tolist()
    write_json(path, out)
    return out


def report(run_dir, cycles: int | None = None) -> dict:
    """metrics.csv, summary.json and plots for cycles 1..``cycles`` (default: the config's)."""
    run = Run(run_dir)
    cfg = run.cfg
    n = cycles or cfg.cycles
    rows = [evaluate(run.dir, k) for k in range(1, n + 1)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows([[r[c] for c in COLUMNS] for r in rows])
    write_text(run.dir / "metrics.csv", buf.getvalue())
    after = [r for r in rows if r["cycle"] > cfg.burn_in]
    summary = {f"mean_{c}": float(np.mean([r[c] for r in after])) for c in metrics.SCORE_NAMES}
    for kind in ("forecast", "analysis"):  # √(mean spread² / mean squared error) over the scored cycles
        mse = np.mean([r[f"rmse_{kind}"] ** 2 for r in after])
        var = np.mean([r[f"spread_{kind}"] ** 2 for r in after])
        summary[f"spread_skill_{kind}"] = float(np.sqrt(var / mse))
    summary |= {
        "shocked_cycles": int(sum(r["shock_std"] > 0 for r in rows)),
        "cycles": n,
        "burn_in": cfg.burn_in,
        "scored_cycles": f"{cfg.burn_in + 1}-{n}",
        "analysis_below_forecast_every_cycle": all(r["rmse_analysis"] < r["rmse_forecast"] for r in rows),
        "obs_sigma": cfg.observation.sigma,
        "units": cfg.model.units,
        "experiment": cfg.experiment_name,
        "filter": cfg.filter.name,
        "model": cfg.model.name,
        "rank_histogram": np.sum([r["rank_histogram"] for r in after], axis=0).tolist(),
        "wall_seconds": _timings(run.dir),
    }
    if _square(run):
        summary |= {q: np.mean([r[q] for r in after], axis=0).tolist() for q in SPECTRA}
    write_json(run.dir / "summary.json", summary)
    _plots(run, rows, summary, n)
    return summary


def _timings(run_dir: Path) -> dict:
    per_stage: dict[str, list[float]] = {}
    for t in read_timings(run_dir):
        per_stage.setdefault(t["stage"], []).append(t["seconds"])
    return {
        s: {"total": float(np.sum(v)), "mean": float(np.mean(v)), "count": len(v)}
        for s, v in per_stage.items()
    }


def _plots(run: Run, rows: list[dict], summary: dict, n: int) -> None:
    cfg, plots = run.cfg, run.dir / "plots"
    table = {c: np.array([r[c] for r in rows]) for c in COLUMNS}
    table["obs_error"] = cfg.observation.sigma if cfg.observation.transform == "linear" else None
    title = f"{cfg.experiment_name}: {cfg.model.name}, {cfg.filter.name}, {cfg.members} members"
    plotting.plot_scores(table, plots / "rmse_spread.png", title=title, units=cfg.model.units)
    plotting.plot_spread_skill(
        {c: table[c][cfg.burn_in :] for c in metrics.SCORE_NAMES},
        plots / "spread_skill.png",
        title=f"spread–skill, cycles {summary['scored_cycles']}",
        units=cfg.model.units,
    )
    if _square(run):
        k = metrics.isotropic_spectrum(np.zeros(run.shape[1:]), cfg.model.get("L", 2 * np.pi))[0]
        spectra = {q.replace("_spectrum_", " "): (k, summary[q]) for q in SPECTRA}
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
    truth, fc, an = run.read(n, "truth"), run.read(n, "forecast"), run.read(n, "analysis")
    y, op = read_observations(run, n)
    obs_grid = op.to_grid(y, run.shape).numpy() if cfg.observation.transform == "linear" else None
    fields = {"truth": truth[0].numpy()}
    if obs_grid is not None:
        fields["observation"] = obs_grid
    fields |= {"forecast mean": fc.mean(0).numpy(), "analysis mean": an.mean(0).numpy()}
    if run.shape[1] > 1:  # 2-D models
        plotting.plot_fields(
            fields,
            plots / "fields.png",
            units=cfg.model.units,
            level_names=("z=0", "z=H") if cfg.model.name == "sqg" else ("upper", "lower"),
            title=f"cycle {n} (t = {n * cfg.model.cycle_hours:g} h)",
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
            spectra["analysis error"] = _error_ke(model, an, truth, cfg)
            plotting.plot_spectra(spectra, plots / "ke_spectrum.png", title=f"kinetic energy, cycle {n}")


def _error_ke(model, an, truth, cfg):
    u, v = model.velocity((an.mean(0, keepdim=True) - truth).to(cfg.device))
    return metrics.ke_spectrum(u.cpu(), v.cpu(), L=cfg.model.L)


def summary_lines(summary: dict) -> list[tuple[str, str]]:
    """(label, value) rows of the end-of-run table."""
    u = "" if summary["units"] in ("", "1") else summary["units"]
    return [
        ("scored cycles", summary["scored_cycles"]),
        ("analysis RMSE", f"{summary['mean_rmse_analysis']:.4g} {u}".rstrip()),
        ("analysis spread", f"{summary['mean_spread_analysis']:.4g} {u}".rstrip()),
        ("forecast RMSE", f"{summary['mean_rmse_forecast']:.4g} {u}".rstrip()),
        ("forecast spread", f"{summary['mean_spread_forecast']:.4g} {u}".rstrip()),
        ("analysis CRPS", f"{summary['mean_crps_analysis']:.4g} {u}".rstrip()),
        ("observation error σo", f"{summary['obs_sigma']:g}"),
        ("analysis < forecast every cycle", str(summary["analysis_below_forecast_every_cycle"])),
    ]


if __name__ == "__main__":
    main(evaluate, "Evaluate stage: scores of cycle K against the truth (writes scores.json).")
