"""Weak scaling of the sliced analysis stage (``filter.shard=state``, issue 19 item 2) on this machine.

For each case a Lorenz-96 run directory (M = 20 members, d = ranks × ``--per-rank`` state values, every
value observed with σo = 1, a synthetic forecast) is analysed by the real stage on R MPI ranks:

    mpiexec -n R python -m scoreda.stages.analysis ...      (here: this script's --worker, which wraps it)

Rank r reads only its hyperslab of forecast.h5 and obs.h5, analyses it (EnSF, ``kernel`` fused or
torch, ``prior_score`` paired, 100 steps) and writes its part; rank 0 writes analysis.h5 over the
parts. Per case: the stage's wall time (max over ranks, read to the written file), its parts (read,
analyse, write), and each rank's peak RSS above its RSS before the stage, in bytes and as a multiple
of its slice of the ensemble (4·M·d/R bytes): constant across R when memory falls as 1/R. One rank
goes the whole-state way (every rank would read everything), so its row is the reference.

    .venv/bin/python scripts/bench_sharding.py [--per-rank 1e6,1e7] [--ranks 1,2] [--kernel fused]
        [--out runs/bench/bench_sharding.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.io import write_text
from scoreda.observations import make_observation_operator
from scoreda.stages.common import Run, write_config
from scoreda.stages.nature import write_observations

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = 20


def peak_rss() -> int:
    """This process's peak resident memory so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_run(run_dir: Path, d: int, ranks: int, *overrides: str) -> Path:
    """A Lorenz-96 run directory of size ``d`` for ``ranks`` ranks (EnSF, shard=state, every value
    observed) with cycle 1's synthetic forecast [M, 1, 1, d] and observations written."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "model=lorenz96",
                f"model.size={d}",
                "observation=full",
                "filter=ensf",
                "filter.shard=state",
                f"filter.ranks={ranks}",
                f"members={MEMBERS}",
                f"run_dir={run_dir}",
                "logger=none",
                *overrides,
            ],
        )
    write_config(run_dir, validate(cfg))
    run = Run(run_dir)
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(d, generator=gen)
    forecast = truth + torch.randn(MEMBERS, d, generator=gen)
    run.write(1, "forecast", forecast.reshape(MEMBERS, 1, 1, d))
    del forecast
    op = make_observation_operator(run.cfg.observation, run.shape)
    write_observations(run, 1, op, op.sample(truth, gen))
    return run_dir


def launch(run_dir: Path, ranks: int, timeout: float = 3600) -> list[dict]:
    """The analysis stage of ``run_dir`` on ``ranks`` ranks (this script's ``--worker``); each
    rank's row: ``base``/``peak`` RSS bytes and ``wall_s``."""
    out = run_dir / "rss"
    out.mkdir(exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable]
    cmd += [str(Path(__file__).resolve()), "--worker", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"analysis on {ranks} rank(s) failed:\n{p.stderr[-3000:]}")
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(ranks)]


def worker(run_dir: Path) -> None:
    """One rank: the stage (``scoreda.stages.analysis.analysis``) between two RSS readings."""
    from scoreda.stages.analysis import analysis, communicator

    comm = communicator(Run(run_dir).cfg.filter.ranks)
    rank = 0 if comm is None else comm.rank
    base = peak_rss()
    if comm is not None:
        comm.comm.Barrier()
    t0 = time.perf_counter()
    analysis(run_dir, 1)
    row = {"rank": rank, "base": base, "peak": peak_rss(), "wall_s": time.perf_counter() - t0}
    (run_dir / "rss" / f"rank-{rank}.json").write_text(json.dumps(row))


def case(root: Path, per_rank: int, ranks: int, kernel: str) -> dict:
    """One row: make the run, time the stage, and summarise the ranks."""
    run_dir = root / f"d{per_rank}-r{ranks}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    make_run(run_dir, per_rank * ranks, ranks, f"filter.kernel={kernel}", "filter.prior_score=paired")
    setup = time.perf_counter() - t0
    rows = launch(run_dir, ranks)
    timing = json.loads((run_dir / "timings" / "analysis-000001.json").read_text())
    slice_bytes = 4 * MEMBERS * per_rank
    extra = [r["peak"] - r["base"] for r in rows]
    result = {
        "ranks": ranks,
        "d": per_rank * ranks,
        "per_rank": per_rank,
        "kernel": kernel,
        "wall_s": max(r["wall_s"] for r in rows),
        "stage_s": timing.get("seconds", timing.get("time_s")),
        "setup_s": setup,
        "rss_extra_bytes": extra,
        "rss_over_slice": [e / slice_bytes for e in extra],
        "files_bytes": sum(f.stat().st_size for f in (run_dir / "cycles" / "000001").iterdir()),
        "loadavg": os.getloadavg(),
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def table(rows: list[dict]) -> str:
    head = "| ranks | d | d / rank | kernel | stage wall [s] | efficiency | peak RSS − base per rank [GB]"
    head += " | ÷ slice of ensemble | load |"
    out = [head, "|" + "---|" * 9]
    for r in rows:
        ref = next((q for q in rows if q["per_rank"] == r["per_rank"] and q["ranks"] == 1), None)
        eff = f"{ref['wall_s'] / r['wall_s']:.2f}" if ref else "—"
        gb = ", ".join(f"{e / 1e9:.2f}" for e in r["rss_extra_bytes"])
        over = ", ".join(f"{x:.2f}" for x in r["rss_over_slice"])
        load = f"{r['loadavg'][0]:.2f}"
        out.append(
            f"| {r['ranks']} | {r['d']:.0e} | {r['per_rank']:.0e} | {r['kernel']} | {r['wall_s']:.2f} | {eff}"
            f" | {gb} | {over} | {load} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-rank", default="1e6,1e7", help="state values per rank, comma-separated")
    ap.add_argument("--ranks", default="1,2", help="rank counts, comma-separated")
    ap.add_argument("--kernel", default="fused", choices=("fused", "torch"))
    ap.add_argument("--dir", default="runs/bench/sharding", help="scratch run directories")
    ap.add_argument("--out", default="runs/bench/bench_sharding.json", help="JSON output")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # one rank of one case (internal)
    args = ap.parse_args()
    if args.worker:
        return worker(Path(args.worker))
    os.environ.setdefault("WANDB_MODE", "offline")
    rows = []
    for per_rank in (int(float(x)) for x in args.per_rank.split(",")):
        for ranks in (int(x) for x in args.ranks.split(",")):
            rows.append(case(ROOT / args.dir, per_rank, ranks, args.kernel))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    write_text(args.out, json.dumps({"rows": rows, "loadavg_end": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
