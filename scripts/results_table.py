"""Markdown table of finished runs' time means (their summary.json), for docs/results.md.

    python scripts/results_table.py runs/filters_*/*

One row per run directory: experiment, filter, scored cycles, analysis RMSE / spread / CRPS,
forecast RMSE, spread–skill of the analysis, shocked cycles, and the time per cycle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    "experiment", "filter", "cycles", "analysis RMSE", "analysis spread", "analysis CRPS",
    "forecast RMSE", "spread/RMSE (analysis)", "shocked cycles", "s per cycle",
)  # fmt: skip


def row(run: Path) -> list[str]:
    s = json.loads((run / "summary.json").read_text())
    u = s["units"]
    stages = sum(v["total"] for v in s["wall_seconds"].values())
    return [
        s["experiment"],
        run.name,
        s["scored_cycles"],
        f"{s['mean_rmse_analysis']:.3f} {u}",
        f"{s['mean_spread_analysis']:.3f} {u}",
        f"{s['mean_crps_analysis']:.3f} {u}",
        f"{s['mean_rmse_forecast']:.3f} {u}",
        f"{s['spread_skill_analysis']:.2f}",
        str(s["shocked_cycles"]),
        f"{stages / s['cycles']:.1f}",
    ]


def main(paths: list[str]) -> None:
    runs = [Path(p) for p in paths if (Path(p) / "summary.json").is_file()]
    if not runs:
        sys.exit("results_table: no run directory with a summary.json among the arguments")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in runs:
        print("| " + " | ".join(row(r)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
