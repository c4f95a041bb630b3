"""Benchmark of the forecast models: SQG (``jacobian=reference``) member-steps of RK4 per second.

Per case (model, N, members, device): the time of one ensemble step of RK4 (4 right-hand sides;
each 8 inverse and 2 forward real FFTs of the 3N/2-padded grid per member), as ms per member-step
and per right-hand side, the median of ``--repeats`` runs of ``--steps`` steps after one warm-up.
CPU (default): 64² and 128², 20 members, ``--threads`` torch threads (default 1). GPU (``--gpu``):
256², 20 and 100 members, CUDA events. Table on stdout, JSON to ``--out``:

    .venv/bin/python scripts/bench_forecast.py [--gpu] [--sizes 64,128] [--members 20]
        [--steps 6] [--repeats 3] [--threads 1] [--out runs/bench/bench_forecast.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

from scoreda.dynamics.sqg import SQG, SQGParams
from scoreda.io import write_text


def bench(n: int, members: int, steps: int, repeats: int, device: str) -> dict:
    model = SQG(SQGParams(N=n), device=device)
    x = model.initial_state(torch.Generator().manual_seed(0), members).to(device) * 5.0
    x = model.step(x, 1)  # warm-up (and FFT plans)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.step(x, steps)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    per = t / (steps * members)
    return {
        "model": "sqg",
        "N": n,
        "members": members,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "steps": steps,
        "times_s": times,
        "ms_member_step": 1e3 * per,
        "ms_rhs": 1e3 * per / 4,
        "member_steps_per_s": 1.0 / per,
    }


def table(rows: list[dict]) -> str:
    head = f"{'model':5} {'N':>4} {'members':>7} {'device':24} {'ms/member-step':>14} "
    head += f"{'ms/RHS':>8} {'steps/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:5} {r['N']:>4} {r['members']:>7} {r['device'][:24]:24} "
            f"{r['ms_member_step']:>14.3f} {r['ms_rhs']:>8.3f} {r['member_steps_per_s']:>9.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="256² on the GPU, 20 and 100 members")
    ap.add_argument("--sizes", help="comma-separated N (default 64,128; GPU: 256)")
    ap.add_argument("--members", help="comma-separated member counts (default 20; GPU: 20,100)")
    ap.add_argument("--steps", type=int, default=6, help="RK4 steps per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--out", default="runs/bench/bench_forecast.json")
    args = ap.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("bench_forecast.py --gpu: no CUDA device (torch.cuda.is_available() is False)")
    torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    sizes = [int(s) for s in (args.sizes or ("256" if args.gpu else "64,128")).split(",")]
    members = [int(m) for m in (args.members or ("20,100" if args.gpu else "20")).split(",")]
    load = os.getloadavg()
    rows = []
    for n in sizes:
        for m in members:
            rows.append(bench(n, m, args.steps, args.repeats, device))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": args.threads,
        "loadavg_start": load,
        "loadavg_end": os.getloadavg(),
    }
    end = env["loadavg_end"][0]
    print(f"# {env['date']}  torch {env['torch']}  {args.threads} thread(s)  load {load[0]:.1f}→{end:.1f}")
    print(table(rows))
    write_text(args.out, json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
