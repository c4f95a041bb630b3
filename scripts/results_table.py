"""Markdown table of finished runs' time means (their summary.json), for docs/results.md.

    python scripts/results_table.py runs/filters_*/*
    python scripts/results_table.py --cycles 21-60 runs/filters_perfect/ensf runs/diag/spectral

One row per run directory: experiment, filter, scored cycles, analysis RMSE / spread / CRPS,
forecast RMSE, spread–skill of the analysis, shocked cycles, and the time per cycle. With
``--cycles A-B`` the means are over cycles A..B of each run's ``cycles/*/scores.json`` (to compare
runs of different lengths: a run's first cycles do not depend on how many follow), and the time
per cycle is the whole run's (empty for a run that has no summary.json).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml

COLUMNS = (
    "experiment", "filter", "cycles", "analysis RMSE", "analysis spread", "analysis CRPS",
    "forecast RMSE", "spread/RMSE (analysis)", "shocked cycles", "s per cycle",
)  # fmt: skip


def cells(
    experiment, name, cycles, means: dict, skill: float, shocked: int, per_cycle: str, u: str
) -> list[str]:
    """One table row; ``means`` has the time means rmse_analysis, spread_analysis, crps_analysis,
    rmse_forecast."""
    return [
        experiment,
        name,
        cycles,
        *(f"{means[k]:.3f} {u}" for k in ("rmse_analysis", "spread_analysis", "crps_analysis")),
        f"{means['rmse_forecast']:.3f} {u}",
        f"{skill:.2f}",
        str(shocked),
        per_cycle,
    ]


def seconds_per_cycle(summary: dict) -> str:
    return f"{sum(v['total'] for v in summary['wall_seconds'].values()) / summary['cycles']:.1f}"


def row(run: Path) -> list[str]:
    """The row of a finished run, from its summary.json (cycles after ``burn_in``)."""
    s = json.loads((run / "summary.json").read_text())
    means = {
        k: s[f"mean_{k}"] for k in ("rmse_analysis", "spread_analysis", "crps_analysis", "rmse_forecast")
    }
    skill, per_cycle = s["spread_skill_analysis"], seconds_per_cycle(s)
    return cells(
        s["experiment"],
        run.name,
        s["scored_cycles"],
        means,
        skill,
        s["shocked_cycles"],
        per_cycle,
        s["units"],
    )


def window_row(run: Path, first: int, last: int) -> list[str] | None:
    """The row of ``run`` with means over cycles first..last (None if any of them is not scored);
    spread/RMSE is √(mean spread² / mean RMSE²), as in summary.json."""
    files = [run / "cycles" / f"{c:06d}" / "scores.json" for c in range(first, last + 1)]
    if not all(f.is_file() for f in files):
        return None
    sc = [json.loads(f.read_text()) for f in files]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    units = {"sqg": "K", "qg2l": "1/s"}.get(cfg["model"]["name"], "")
    means = {k: statistics.fmean(x[k] for x in sc) for k in sc[0] if isinstance(sc[0][k], float)}
    skill = math.sqrt(
        statistics.fmean(x["spread_analysis"] ** 2 for x in sc)
        / statistics.fmean(x["rmse_analysis"] ** 2 for x in sc)
    )
    summary = run / "summary.json"
    per_cycle = seconds_per_cycle(json.loads(summary.read_text())) if summary.is_file() else ""
    shocked = sum(x.get("shock_std", 0.0) > 0 for x in sc)
    return cells(cfg["experiment_name"], run.name, f"{first}-{last}", means, skill, shocked, per_cycle, units)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--cycles", help="A-B: means over cycles A..B of the per-cycle scores")
    args = ap.parse_args()
    if args.cycles:
        try:
            first, last = (int(v) for v in args.cycles.split("-"))
        except ValueError:
            raise SystemExit(f"results_table: --cycles: expected A-B, got {args.cycles!r}") from None
        rows = [r for r in (window_row(Path(p), first, last) for p in args.runs) if r is not None]
    else:
        rows = [row(Path(p)) for p in args.runs if (Path(p) / "summary.json").is_file()]
    if not rows:
        raise SystemExit("results_table: no run directory with the cycles asked for among the arguments")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
