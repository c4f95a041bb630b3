"""Benchmark of a run directory's I/O: what validating every file on every run costs, and opening a
run as data.

Synthesizes a run of ``--cycles`` complete cycles at the quickstart's size (SQG 64²×2, 20 members, every
point observed): cycle 0, then truth, obs, forecast and analysis files and ``scores.json`` per cycle,
written by the stages' own writers (``Run.write``, ``write_observations``), values from a seeded normal
(the cost does not depend on them). Then times, each ``--repeats`` times (median):

- ``verify``: ``scoreda.stages.verify.verify_complete``, what ``workflows/cycle.py`` does before any
  work on every run (shape, dtype, attributes, fletcher32 checksums, finiteness, station indices);
- ``open_run``: ``scoreda.open_run(run, "analysis")`` (lazy), and computing the RMSE of its ensemble
  mean against ``open_run(run, "truth")`` over all cycles.

Table on stdout, JSON (with the machine's load average) to ``--out``:

    .venv/bin/python scripts/bench_io.py [--cycles 300] [--repeats 3] [--out runs/bench/bench_io.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import scoreda
from scoreda.config import validate
from scoreda.io import write_text
from scoreda.stages.common import Run, write_config, write_json
from scoreda.stages.nature import observation_operator, write_observations
from scoreda.stages.verify import verify_complete

ROOT = Path(__file__).resolve().parents[1]


def synthesize(run_dir: Path, cycles: int) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=quickstart", f"cycles={cycles}", f"run_dir={run_dir}"])
    write_config(run_dir, validate(cfg))
    run = Run(run_dir)
    g = torch.Generator().manual_seed(0)
    M, shape = run.cfg.members, run.shape
    op = observation_operator(run)
    run.write(0, "truth", 8 * torch.randn((1, *shape), generator=g))
    run.write(0, "analysis", 8 * torch.randn((M, *shape), generator=g))
    for k in range(1, cycles + 1):
        truth = 8 * torch.randn((1, *shape), generator=g)
        write_observations(run, k, op, op.sample(truth.reshape(-1), g))
        run.write(k, "truth", truth)
        run.write(k, "forecast", truth + torch.randn((M, *shape), generator=g))
        run.write(k, "analysis", truth + 0.7 * torch.randn((M, *shape), generator=g), inflation=1.1)
        write_json(run.path(k, "scores"), {"cycle": k, "config_hash": run.hash})


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/bench/bench_io.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-io-") as tmp:
        run_dir = Path(tmp) / "run"
        t_write, _ = timed(lambda: synthesize(run_dir, args.cycles), 1)
        size = sum(f.stat().st_size for f in run_dir.rglob("*.h5"))
        t_verify, (bad, done) = timed(lambda: verify_complete(run_dir, args.cycles), args.repeats)
        assert done == args.cycles and not bad, (done, bad)
        t_open, ds = timed(lambda: scoreda.open_run(run_dir, "analysis"), args.repeats)

        def rmse():
            an, truth = scoreda.open_run(run_dir, "analysis"), scoreda.open_run(run_dir, "truth")
            err = an.state.mean("member") - truth.state.isel(member=0)
            return ((err**2).mean(["level", "y", "x"]) ** 0.5).compute()

        t_rmse, r = timed(rmse, args.repeats)
        assert r.sizes["time"] == args.cycles + 1
    files = 4 * args.cycles + 2
    rows = [
        ("write (the stages' writers)", t_write, files),
        ("verify every complete cycle", t_verify, files),
        ("open_run analysis (lazy)", t_open, args.cycles + 1),
        ("RMSE of the mean over all cycles", t_rmse, 2 * (args.cycles + 1)),
    ]
    load = os.getloadavg()
    print(f"run: {args.cycles} cycles, SQG 64²×2, 20 members, {files} files, {size / 2**20:.0f} MiB")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.repeats}")
    print(f"{'operation':36s} {'seconds':>9s} {'files':>6s} {'ms/file':>8s}")
    for name, t, n in rows:
        print(f"{name:36s} {t:9.2f} {n:6d} {1e3 * t / n:8.2f}")
    result = {
        "cycles": args.cycles,
        "files": files,
        "mib": size / 2**20,
        "seconds": {name: t for name, t, _ in rows},
        "load_average": load,
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    write_text(out, json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
