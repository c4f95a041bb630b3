"""Tune a filter on short cycled runs: one run per combination of the ``--grid`` values, then the
table of their time means over cycles 21..N (``scripts/results_table.py``), for docs/results.md's
tuning records. A finished run (its summary.json) is not run again; a failed one gets a row with
its last line (a diverged or non-finite run is a result of the tuning, not an error of this script).

    .venv/bin/python scripts/tune.py experiment=filters_shocks filter=letkf filter.adaptive_inflation=true \\
        --grid filter.cutoff=700,1000,1500 --grid filter.rtps=0,0.3 --cycles 60 --out runs/tune/shocks \\
        [--jobs 2]

Run directories: <out>/<key-value_key-value>, each with its log, run.log.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from results_table import COLUMNS, window_row  # noqa: E402


def combinations(grid: list[str]) -> list[list[str]]:
    """The Hydra overrides of every combination of ``KEY=v1,v2,...`` entries."""
    axes = []
    for entry in grid:
        key, sep, values = entry.partition("=")
        if not sep or not values:
            raise SystemExit(f"tune: --grid: expected KEY=v1,v2,..., got {entry!r}")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)]


def name(combo: list[str]) -> str:
    """The run directory's name: the combination's last key parts and values, cutoff-1000_rtps-0.3
    (no '=': a Hydra value cannot hold one unquoted)."""
    parts = [o.partition("=") for o in combo]
    return "_".join(f"{k.split('.')[-1]}-{v}" for k, _, v in parts) or "base"


def run(overrides: list[str], combo: list[str], cycles: int, run_dir: Path) -> str | None:
    """One cycled run; None when it finished, else its last line."""
    if (run_dir / "summary.json").is_file():
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "workflows" / "cycle.py"), *overrides, *combo]
    cmd += [f"cycles={cycles}", f"run_dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    with open(run_dir / "run.log", "w") as log:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if p.returncode == 0:
        return None
    lines = [line for line in (run_dir / "run.log").read_text().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {p.returncode}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "overrides", nargs="*", help="Hydra overrides every run gets (experiment=..., filter=...)"
    )
    ap.add_argument("--grid", action="append", default=[], help="KEY=v1,v2,...: the values to try")
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--first", type=int, default=21, help="the first scored cycle of the means")
    ap.add_argument("--out", type=Path, required=True, help="folder of the run directories")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    args = ap.parse_args()
    if args.cycles < args.first:
        raise SystemExit(f"tune: --cycles {args.cycles} ends before --first {args.first}")
    combos = combinations(args.grid)
    dirs = [args.out.resolve() / name(c) for c in combos]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        failed = list(pool.map(lambda c, d: run(args.overrides, c, args.cycles, d), combos, dirs))
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for d, error in zip(dirs, failed, strict=True):
        r = window_row(d, args.first, args.cycles)
        if r is None:
            r = ["", d.name, f"failed: {error}"] + [""] * (len(COLUMNS) - 3)
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
