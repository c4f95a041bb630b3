"""Seed 000's experiment at its size: one analysis of a 3.75-million-point field (1936² periodic grid).

Truth: a draw of the Matérn GMRF prior (σ = 2.78 K, the seed's prior RMSE; ``--length-scale`` in grid
lengths); observations: random stations (``--fraction`` of the points) with σo = 1e-3 K (the seed's
error); background: the prior mean, 0. Methods: the prior mean, ``filter=var3d`` (one rank) and
``filter=gmrf_mp`` on 1 and 2 MPI ranks (``mpiexec``), each in its own process so that its peak RSS
is its own. Prints a table beside the seed's and writes JSON.

    python scripts/seed000.py                  # 1936², ranks 1 and 2 → runs/bench/bench_seed000.json
    python scripts/seed000.py --n 256 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from scoreda.filters.gmrf_mp import GMRFMessagePassing
from scoreda.filters.var3d import Var3D
from scoreda.io import write_text
from scoreda.observations import PointObservation

SEED_TABLE = {"prior": (2.78, None), "var3d": (2.33, 16.0), "gmrf_mp": (1.23, 115.0)}  # RMSE K, s (GPU)


def problem(args):
    """(truth [1, d], y [p], operator, prior keys): the same on every rank (seeded)."""
    shape = (1, args.n, args.n)
    d = args.n * args.n
    keys = dict(length_scale=args.length_scale, sigma=args.sigma, shape=shape, perturb=False)
    g = torch.Generator().manual_seed(args.seed)
    truth = Var3D(**keys).prior(d).sample(1, g).reshape(1, d)
    stations = torch.randperm(d, generator=g)[: int(args.fraction * d)].sort().values
    op = PointObservation(stations, sigma=args.sigma_o, d=d)
    return truth, op.sample(truth[0], g), op, keys


def worker(args) -> None:
    """One method in this process (under mpiexec for gmrf_mp on several ranks); rank 0 prints JSON."""
    torch.set_num_threads(1)
    comm = None
    if args.ranks > 1:
        from mpi4py import MPI

        from scoreda.stages.analysis import MPICollective

        comm = MPICollective(MPI.COMM_WORLD)
    truth, y, op, keys = problem(args)
    prior = torch.zeros_like(truth)
    if args.method == "var3d":
        filt = Var3D(**keys, tol=args.tol_var3d, max_iter=5000)
    else:
        filt = GMRFMessagePassing(
            **keys, tol=args.tol, max_iter=args.max_iter, levels=args.levels, precision=args.precision
        )
    t0 = time.perf_counter()
    out = filt.analyse(prior, y, op, comm=comm) if args.method != "prior" else None
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss in KiB)
    peaks = [rss] if comm is None else comm.comm.gather(rss, root=0)
    if comm is None or comm.rank == 0:
        x = prior if out is None else out.ensemble
        rmse = float((x - truth).square().mean().sqrt())
        diag = {} if out is None else out.diagnostics
        print(json.dumps({"rmse": rmse, "wall_s": wall, "peak_rss_gib": peaks, **diag}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1936)
    ap.add_argument("--length-scale", type=float, default=4.0, help="Matérn ℓ, grid lengths")
    ap.add_argument("--sigma", type=float, default=2.78, help="prior marginal std, K")
    ap.add_argument("--fraction", type=float, default=0.1, help="of the points observed")
    ap.add_argument("--sigma-o", type=float, default=1e-3, help="observation error std, K")
    ap.add_argument("--tol", type=float, default=1e-4, help="gmrf_mp's filter.tol")
    ap.add_argument("--tol-var3d", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=20000)
    ap.add_argument("--levels", type=int, default=1)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/bench_seed000.json"))
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        args.ranks = args.ranks[0]
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = {}
    runs = [("prior", 1), ("var3d", 1)] + [("gmrf_mp", r) for r in args.ranks]
    for method, ranks in runs:
        cmd = [sys.executable, __file__, *common_args(args), "--method", method, "--ranks", str(ranks)]
        if ranks > 1:
            cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *cmd]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{method} on {ranks} rank(s) failed:\n{p.stderr[-2000:]}")
        rows[f"{method}/{ranks}"] = json.loads(p.stdout.strip().splitlines()[-1])
    load = os.getloadavg()[0]
    print(f"seed 000 at {args.n}² ({args.n**2 / 1e6:.2f} M points), ℓ = {args.length_scale} grid lengths, "
          f"{args.fraction:.0%} observed, σo = {args.sigma_o} K; load average {load:.2f}")  # fmt: skip
    print("| method | ranks | RMSE (K) | wall (s) | iterations | peak RSS per rank (GiB) | seed 000 (GPU) |")
    print("|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        method, ranks = key.split("/")
        seed = SEED_TABLE[method]
        print(
            f"| {method} | {ranks} | {r['rmse']:.3f} | {r['wall_s']:.1f} | {int(r.get('iterations', 0))} |"
            f" {', '.join(f'{m:.2f}' for m in r['peak_rss_gib'])} | {seed[0]} K"
            + (f", {seed[1]:.0f} s |" if seed[1] else " |")
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"args": {k: str(v) for k, v in vars(args).items()}, "load": load, "rows": rows}
    write_text(args.out, json.dumps(doc, indent=1))  # atomic


def common_args(args) -> list[str]:
    """The problem's options, for the worker processes."""
    return [
        "--n", str(args.n), "--length-scale", str(args.length_scale), "--sigma", str(args.sigma),
        "--fraction", str(args.fraction), "--sigma-o", str(args.sigma_o), "--tol", str(args.tol),
        "--tol-var3d", str(args.tol_var3d), "--max-iter", str(args.max_iter), "--levels", str(args.levels),
        "--precision", args.precision, "--seed", str(args.seed),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
