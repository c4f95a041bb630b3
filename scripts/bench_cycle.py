"""Benchmark of the cycle's own cost: what Parsl and the stage hand-offs add per cycle beyond the
stages' compute (issue 19, item 5; target ≤ 0.3 s a cycle here).

Each case runs ``workflows/cycle.py`` twice in fresh run directories, with n₁ and n₂ cycles. The
slope of the workflow's wall time, (W₂ − W₁)/(n₂ − n₁), is the time of one more cycle with every
start-up cost (Python, Parsl, the spin-up) cancelled; from it the script subtracts the stages on the
critical path of a cycle — forecast and analysis, from the runs' own ``timings/`` — and reports the
rest as the overhead a cycle (nature and evaluate run beside the forecasts; where they do not fit
beside them they show up here). Cases: Lorenz-96 with the LETKF (stages of milliseconds: the
overhead dominates) and the quickstart's SQG with the EnSF. Table on stdout, JSON to ``--out``:

    .venv/bin/python scripts/bench_cycle.py [--quick] [--out runs/bench/bench_cycle.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scoreda.io import write_text

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "l96-letkf": ["experiment=filters_l96", "arm=l96_letkf_tuned", "burn_in=0"],
    "sqg-ensf": ["experiment=quickstart", "burn_in=0"],
}
CYCLES = {"l96-letkf": (40, 160), "sqg-ensf": (10, 30)}


def run(overrides: list[str], cycles: int, run_dir: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "workflows" / "cycle.py"), *overrides, f"cycles={cycles}"]
    cmd += [f"run_dir={run_dir}", "progress=false"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench_cycle: {' '.join(overrides)} failed:\n{p.stderr[-2000:]}")
    stages: dict[str, list[float]] = {}
    for f in (run_dir / "timings").glob("*.json"):
        t = json.loads(f.read_text())
        stages.setdefault(t["stage"], []).append(t["seconds"])
    return {"cycles": cycles, "wall_s": wall, "stages": {k: sum(v) for k, v in stages.items()}}


def bench(name: str, cycles: tuple[int, int], work: Path) -> dict:
    a, b = (run(CASES[name], n, work / f"{name}-{n}") for n in cycles)
    slope = (b["wall_s"] - a["wall_s"]) / (b["cycles"] - a["cycles"])
    per_cycle = {k: (b["stages"].get(k, 0.0) - a["stages"].get(k, 0.0)) / (b["cycles"] - a["cycles"])
                 for k in set(a["stages"]) | set(b["stages"])}  # fmt: skip
    critical = per_cycle.get("forecast", 0.0) + per_cycle.get("analysis", 0.0)
    return {
        "case": name,
        "runs": [a, b],
        "wall_per_cycle_s": slope,
        "stage_per_cycle_s": per_cycle,
        "overhead_per_cycle_s": slope - critical,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Lorenz-96 only, 20 and 60 cycles")
    ap.add_argument("--out", default="runs/bench/bench_cycle.json")
    args = ap.parse_args()
    load = os.getloadavg()
    names = ["l96-letkf"] if args.quick else list(CASES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cycles = (20, 60) if args.quick else CYCLES[name]
            rows.append(bench(name, cycles, Path(tmp)))
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": load,
        "loadavg_end": os.getloadavg(),
    }
    print(f"# {env['date']}  load {load[0]:.1f}→{env['loadavg_end'][0]:.1f}")
    head = f"{'case':10} {'cycles':>9} {'wall/cycle[s]':>13} {'forecast[s]':>11} {'analysis[s]':>11} "
    print(head + f"{'nature[s]':>9} {'overhead[s]':>11}")
    for r in rows:
        s = r["stage_per_cycle_s"]
        n = "–".join(str(x["cycles"]) for x in r["runs"])
        line = f"{r['case']:10} {n:>9} {r['wall_per_cycle_s']:>13.3f} {s.get('forecast', 0):>11.3f} "
        print(
            line
            + f"{s.get('analysis', 0):>11.3f} {s.get('nature', 0):>9.3f} {r['overhead_per_cycle_s']:>11.3f}"
        )
    write_text(args.out, json.dumps({"env": env, "rows": rows}, indent=1, default=statistics.mean))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
