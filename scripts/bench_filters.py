"""Benchmark of the filters: vectorised EnSF and LETKF against the same math as plain Python loops.

Measures (issue 3, item 5), each case in its own process with ``--threads`` torch threads:

- EnSF, time per analysis: M = 20 members, 100 pseudo-time steps, all points observed (σo = 1,
  linear h), a synthetic Gaussian prior [M, d] (the time does not depend on the values), for
  Lorenz-96 d = 1e4, 1e5, 1e6 (and d = 40, where per-op overhead dominates) and SQG 64², 128²,
  256² (d = 2N²); ``prior_score=paired``, and ``mixture`` on SQG; on 1 process and on 2 MPI ranks
  (``shard=members`` and ``shard=state``, timed from a barrier, max over ranks). Peak RSS of the
  case (max over ranks), the bytes of the prior for reference, and the effective GB/s of the byte
  count ``ensf_bytes_per_step``.
- Beside each 1-process EnSF row: ``ensf_member_loop``, the same analysis one member at a time per
  pseudo-time step, and the speed-up loop time / vectorised time.
- LETKF on SQG 64²×2 (M = 20, all points observed σo = 1, GC cutoff 2000 km, RTPS 0.3): the first
  call (builds the taper FFT) apart from warm calls, against ``analyse_point_loop`` (loop over points).
- LEnSF on the same case (``LENSF_SETTINGS``), each row with the LETKF timed in the same process and
  the ratio of the two (issue 18's cost target: ≤ 3×).
- With CUDA: EnSF at d = 1e6 timed with CUDA events; achieved GB/s next to the device's copy GB/s.

Times: median of ``--repeats`` runs (fewer once a case's timed runs exceed ``--budget`` s) after one
warm-up analysis of 5 pseudo-time steps (same code and shapes). First the script checks that the
loop baseline equals ``EnSF.analyse`` (≤ 1e-5). Table on stdout, JSON with the environment to --out:

    .venv/bin/python scripts/bench_filters.py [--quick] [--sizes l96-1e4,sqg-64] [--repeats 3]
        [--budget 8] [--threads 1] [--out runs/bench/bench_filters.json]      (or: make bench)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from scoreda.dynamics.grid import model_grid
from scoreda.filters.ensf import KERNELS, EnSF
from scoreda.filters.reference import ensf_member_loop
from scoreda.io import write_text
from scoreda.observations import PointObservation
from scoreda.registry import model_config

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"l96-40": 40, "l96-1e4": 10**4, "l96-1e5": 10**5, "l96-1e6": 10**6}
SIZES.update({f"sqg-{n}": 2 * n * n for n in (64, 128, 256)})
QUICK = ("l96-1e4", "sqg-64")
MEMBERS, N_STEPS, WARMUP_STEPS = 20, 100, 5
LETKF_CFG = {"name": "letkf", "cutoff": 2000.0, "cross_level": 1.0, "rtps": 0.3}
#: the LEnSF rows: one Gaussian (the closed form), with the white part, a mixture through the ODE
LENSF_SETTINGS = (  # filter keys; "transform": the observations' (linear unless given)
    {"adaptive_white": False},
    {"adaptive_white": True, "desroziers": 0},
    {"adaptive_white": True, "desroziers": 1},
    {"adaptive_white": True, "desroziers": 1, "likelihood": "pointwise", "transform": "arctan"},
    {"adaptive_white": False, "bandwidth": 0.8, "start": "rotated", "n_steps": 10},
)


def loop_check(prior_score: str, transform: str = "linear") -> float:
    """max |ensf_member_loop − EnSF.analyse| on a small case (varying mean and spread, every other
    point observed, inflation and RTPS on)."""
    g = torch.Generator().manual_seed(3)
    d = 300
    spread = 0.5 + torch.rand(d, generator=g)
    prior = torch.sin(0.1 * torch.arange(d)) + spread * torch.randn(8, d, generator=g)
    op = PointObservation(torch.arange(0, d, 2), sigma=0.5, d=d, transform=transform)
    y = op.sample(spread * torch.randn(d, generator=g), g)
    ensf = EnSF(
        n_steps=20,
        prior_score=prior_score,
        rtps=0.3,
        inflation=1.1,
        adaptive_inflation=False,
        unobserved="none",
    )
    want = ensf.analyse(prior, y, op, torch.Generator().manual_seed(7)).ensemble
    got = ensf_member_loop(ensf, prior, y, op, torch.Generator().manual_seed(7))
    return float((got - want).abs().max())


def ensf_bytes_per_step(members: int, d: int, prior_score: str = "paired") -> int:
    """Bytes one pseudo-time step of ``filters.ensf.integrator.integrate`` (linear h) moves, from its
    torch ops; N = M·d, float32 z, x (float64 for mixture); each op reads its [M, d] inputs and writes
    its output once ([d]-sized rows and the index vector are not counted):
      noise ξ (counter_normal): int64 bits = row + col (8N); mix64: 2 rounds of shift, mask, xor,
        multiply (2·72N) + one without multiply (56N); uniforms → Box–Muller: 2×(shift, mask) and
        +1 on int64 (80N), 2 casts int64→f32 (24N), 6 f32 in-place ops and a product (60N):  372N
      paired prior score (αx − z)/β²: 28N  [mixture: z→f64, z·xᵀ, w·x, α·, →f32, −z, /β²: 92N]
      xz = mean + std·z: 16N;  likelihood Hᵀ(y − h(xz))/σ²: gather, −, /, zeros, scatter: 36N
      score + h·std·lik: 20N;  dz = Δt(σ²s − bz) + √Δt σ ξ: 56N;  dz/(1 + Δtσ²hC): 8N;  z + dz: 12N
    Total 548N (paired), 612N (mixture); a fused step would move 12N (read z, x, write z)."""
    per_element = 548 + (64 if prior_score == "mixture" else 0)
    return per_element * members * d


# --------------------------------------------------------------------------------- worker side


def problem(d: int, device="cpu", transform: str = "linear"):
    """Gaussian prior [M, d], observations y [d] of every point (σo = 1, linear; arctan: y = atan(y),
    σo = 0.05 as in filters_arctan) and the operator."""
    g = torch.Generator().manual_seed(0)
    prior, y = torch.randn(MEMBERS, d, generator=g), torch.randn(d, generator=g)
    sigma = 1.0 if transform == "linear" else 0.05
    op = PointObservation(torch.arange(d, device=device), sigma=sigma, d=d, transform=transform)
    return prior.to(device), (y if transform == "linear" else torch.atan(y)).to(device), op


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def bench_ensf(spec: dict, mpi) -> dict:
    prior, y, op = problem(spec["d"])
    shard = spec["shard"] if spec["ranks"] > 1 else "members"
    filt = EnSF(
        n_steps=spec["n_steps"],
        prior_score=spec.get("prior_score", "paired"),
        kernel=spec.get("kernel", "torch"),
        shard=shard,
        adaptive_inflation=False,
        unobserved="none",
    )

    def clock(fn) -> float:  # seconds from a common start, max over ranks
        if mpi is not None:
            mpi.comm.Barrier()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        return dt if mpi is None else max(mpi.comm.allgather(dt))

    def timings(analyse) -> dict:
        warm = clock(lambda: analyse(dataclasses.replace(filt, n_steps=WARMUP_STEPS)))
        times = []  # clock() agrees on every rank, so they all stop together
        while len(times) < spec["repeats"] and sum(times) <= spec["budget_s"]:
            times.append(clock(lambda: analyse(filt)))
        return {"warmup_s": warm, "times_s": times, "time_s": statistics.median(times)}

    gen = torch.Generator().manual_seed(1)
    out = timings(lambda f: f.analyse(prior, y, op, gen, comm=mpi).ensemble)
    out["peak_rss"] = peak_rss() if mpi is None else max(mpi.comm.allgather(peak_rss()))
    if spec["loop"]:
        loop = timings(lambda f: ensf_member_loop(f, prior, y, op, gen))
        out.update(loop_s=loop["time_s"], loop_times_s=loop["times_s"])
        out["speedup"] = loop["time_s"] / out["time_s"]
    return out


def bench_letkf(spec: dict, mpi=None) -> dict:
    """The LETKF on SQG n² (one process: against ``analyse_point_loop``; R ranks: tiles of grid rows,
    timed from a barrier, the slowest rank, peak RSS the largest rank's)."""
    from scoreda.filters import letkf, reference

    prior, y, op = problem(spec["d"])
    filt = letkf.LETKF.from_config(LETKF_CFG, model_grid(model_config("sqg", N=spec["n"], L=20.0e6)))
    if mpi is not None:

        def clock() -> float:
            mpi.comm.Barrier()
            t0 = time.perf_counter()
            filt.analyse(prior, y, op, comm=mpi)
            return max(mpi.comm.allgather(time.perf_counter() - t0))

        first = clock()
        times = [clock() for _ in range(spec["repeats"])]
        rss = max(mpi.comm.allgather(peak_rss()))
        out = {"first_s": first, "times_s": times, "time_s": statistics.median(times), "peak_rss": rss}
        out["note"] = f"first call {first:.3f} s; tiles of rows, halo of the cutoff"
        return out
    first, fast = wall(lambda: filt.analyse(prior, y, op).ensemble)  # a fresh LETKF: builds the taper's FFT
    times = [wall(lambda: filt.analyse(prior, y, op).ensemble)[0] for _ in range(spec["repeats"])]
    out = {"first_s": first, "times_s": times, "time_s": statistics.median(times), "peak_rss": peak_rss()}
    out["note"] = f"first call {first:.3f} s"
    if spec.get("loop", True):
        out["loop_s"], slow = wall(lambda: reference.analyse_point_loop(filt, prior, y, op))
        out.update(speedup=out["loop_s"] / out["time_s"], max_abs_diff=float((slow - fast).abs().max()))
        out["note"] += f"; max |loop - vectorised| {out['max_abs_diff']:.1e}"
    return out


def bench_lensf(spec: dict, mpi=None) -> dict:
    """LEnSF with ``spec["settings"]`` on the LETKF's case (its observations through ``transform`` if
    given), and the LETKF timed in the same process on the same case (warm calls of both,
    alternated): the ratio of their medians is the issue's cost measure."""
    from scoreda.filters import lensf, letkf

    settings = dict(spec["settings"])
    prior, y, op = problem(spec["d"], transform=settings.pop("transform", "linear"))
    grid = model_grid(model_config("sqg", N=spec["n"], L=20.0e6))
    base = letkf.LETKF.from_config(LETKF_CFG, grid)
    filt = lensf.LEnSF.from_config(LETKF_CFG | settings | {"name": "lensf"}, grid)
    gen = torch.Generator().manual_seed(0)
    for f in (base, filt):
        f.analyse(prior, y, op, gen)  # warm-up (taper FFT)
    times, base_times = [], []
    for _ in range(spec["repeats"]):
        times.append(wall(lambda: filt.analyse(prior, y, op, gen))[0])
        base_times.append(wall(lambda: base.analyse(prior, y, op))[0])
    out = {"times_s": times, "time_s": statistics.median(times), "peak_rss": peak_rss()}
    out["letkf_s"] = statistics.median(base_times)
    out["ratio_to_letkf"] = out["time_s"] / out["letkf_s"]
    keys = ", ".join(f"{k}={v}" for k, v in spec["settings"].items())
    out["note"] = f"{keys}; {out['ratio_to_letkf']:.2f}× the LETKF ({out['letkf_s']:.3f} s, same process)"
    return out


def wall(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def bench_gpu(spec: dict, mpi=None) -> dict:
    """One filter on the GPU (``spec["what"]``: ensf with its ``kernel`` and ``prior_score``, letkf,
    lensf), timed with CUDA events after a first call (kept apart: it compiles ``kernel=fused``'s
    step and builds the LETKF's taper); the device's copy bandwidth (read + write of 1 GiB)."""
    dev = torch.device("cuda")
    what = spec["what"]
    prior, y, op = problem(spec["d"], dev)  # indices on the device too: no host copies per step
    gen = torch.Generator().manual_seed(1)
    if what == "ensf":
        filt = EnSF(
            n_steps=spec["n_steps"], prior_score=spec["prior_score"], kernel=spec["kernel"],
            adaptive_inflation=False, unobserved="none",
        )  # fmt: skip
    else:
        from scoreda.filters import lensf, letkf

        grid = model_grid(model_config("sqg", N=spec["n"], L=20.0e6))
        settings = LETKF_CFG | (LENSF_SETTINGS[0] | {"name": "lensf"} if what == "lensf" else {})
        filt = (lensf.LEnSF if what == "lensf" else letkf.LETKF).from_config(settings, grid)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def cuda_time(fn, n: int = 1) -> float:
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n

    first = cuda_time(lambda: filt.analyse(prior, y, op, gen).ensemble)
    times = [cuda_time(lambda: filt.analyse(prior, y, op, gen).ensemble) for _ in range(spec["repeats"])]
    out = {"times_s": times, "time_s": statistics.median(times), "first_s": first, "peak_rss": peak_rss()}
    out.update(gpu_peak_bytes=torch.cuda.max_memory_allocated(), device=torch.cuda.get_device_name())
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    out["copy_gb_s"] = 2 * src.numel() / cuda_time(lambda: dst.copy_(src), 10) / 1e9
    return out


def gpu_cases(repeats: int) -> list[dict]:
    """The GPU rows: the EnSF at d = 10⁶ (torch and fused kernels, paired; fused mixture), the LETKF
    and the LEnSF (one Gaussian) on SQG 64² and 256²."""
    base = dict(filter="gpu", repeats=repeats, n_steps=N_STEPS, ranks=1, shard="-", loop=False)
    rows = [
        dict(base, what="ensf", case="l96-1e6", d=10**6, prior_score=score, kernel=kernel)
        for score, kernel in (("paired", "torch"), ("paired", "fused"), ("mixture", "fused"))
    ]
    for what in ("letkf", "lensf"):
        rows += [dict(base, what=what, case=f"sqg-{n}", d=SIZES[f"sqg-{n}"], n=n, prior_score="-",
                      kernel="-") for n in (64, 256)]  # fmt: skip
    return rows


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    mpi = None
    if spec["ranks"] > 1:
        from mpi4py import MPI

        from scoreda.stages.analysis import MPICollective

        mpi = MPICollective(MPI.COMM_WORLD)
    benches = {"ensf": bench_ensf, "letkf": bench_letkf, "lensf": bench_lensf, "gpu": bench_gpu}
    out = benches[spec["filter"]](spec, mpi)
    if mpi is None or mpi.rank == 0:
        print(json.dumps(out))


# --------------------------------------------------------------------------- orchestrator side


def make_cases(sizes: list[str], repeats: int, threads: int, budget: float) -> list[dict]:
    rows = []
    for name in sizes:
        base = dict(filter="ensf", case=name, d=SIZES[name], n_steps=N_STEPS, repeats=repeats)
        mixture = name.startswith("sqg") or name == "l96-1e6"
        for score in ("paired", "mixture") if mixture else ("paired",):
            for kernel in KERNELS:  # old and new side by side
                rows.append(dict(base, prior_score=score, kernel=kernel, loop=kernel == "torch"))
                rows += [
                    dict(base, prior_score=score, kernel=kernel, ranks=2, shard=s)
                    for s in ("members", "state")
                ]
    for name in [n for n in sizes if n.startswith("sqg")]:  # the LETKF on 1 and 2 ranks (tiles)
        n = int(name.split("-")[1])
        letkf = dict(filter="letkf", case=name, d=SIZES[name], n=n, repeats=repeats, loop=name == "sqg-64")
        rows += [letkf, dict(letkf, ranks=2, shard="state", loop=False)]
    if "sqg-64" in sizes:
        rows += [
            dict(filter="lensf", case="sqg-64", d=SIZES["sqg-64"], n=64, repeats=repeats, settings=settings)
            for settings in LENSF_SETTINGS
        ]
    if torch.cuda.is_available():
        rows += gpu_cases(repeats)
    defaults = dict(threads=threads, ranks=1, shard="-", loop=False, budget_s=budget, kernel="-")
    return [{**defaults, "prior_score": "paired" if r["filter"] == "ensf" else "-", **r} for r in rows]


def launch(spec: dict) -> dict:
    """Run one case in its own process(es); its row with the derived numbers."""
    # Every case goes through mpiexec, also on one rank: a child forked by this (large) process
    # would inherit its ru_maxrss; the children of mpiexec's proxy start afresh.
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(spec["ranks"]), sys.executable]
    cmd += [str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench case {spec} failed:\n{p.stderr[-3000:]}")
    row = {**spec, **json.loads(p.stdout.strip().splitlines()[-1])}
    row["state_bytes"] = 4 * MEMBERS * spec["d"]
    if spec["filter"] == "ensf":  # wall time per member, state index and pseudo-step (all ranks together)
        row["ns_element_step"] = row["time_s"] / (MEMBERS * spec["d"] * spec["n_steps"]) * 1e9
    if spec["filter"] == "ensf" and spec.get("kernel") != "fused" or spec.get("what") == "ensf":
        # effective bandwidth of the byte count; a fused step moves 12 bytes an element (z, x̃ in, z out)
        per_step = ensf_bytes_per_step(MEMBERS, spec["d"], row["prior_score"])
        per_step = 12 * MEMBERS * spec["d"] if spec.get("kernel") == "fused" else per_step
        row["gb_s"] = per_step * spec["n_steps"] / row["time_s"] / 1e9
    if spec["filter"] == "gpu":
        peak = row["gpu_peak_bytes"] / 2**30
        row["note"] = f"{spec['what']} on {row['device']}: first call {row['first_s']:.2f} s, copy "
        row["note"] += f"{row['copy_gb_s']:.0f} GB/s, GPU peak {peak:.2f} GiB"
        if "gb_s" in row:
            row["note"] += f", achieved/copy {row['gb_s'] / row['copy_gb_s']:.2f}"
    return row


def environment(threads: int) -> dict:
    torch.set_num_threads(threads)
    src = torch.ones(1 << 26)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s, _ = wall(lambda: [dst.copy_(src) for _ in range(3)])
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads_per_process": threads,
        "cpu": models[0] if models else platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_copy_gb_s": 3 * 2 * 4 * src.numel() / copy_s / 1e9,  # one process, read + write
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "host": platform.node(),
        "loadavg_start": os.getloadavg(),
    }


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def table(rows: list[dict]) -> str:
    head = (
        f"{'filter':6} {'case':8} {'d':>8} {'prior':8} {'kernel':6} {'ranks':>5} {'shard':8} {'time[s]':>8} "
    )
    head += (
        f"{'ns/el·st':>8} {'loop[s]':>8} {'speedup':>7} {'GB/s':>6} {'RSS[MiB]':>8} {'state[MiB]':>10}  notes"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['filter']:6} {r['case']:8} {r['d']:>8} {r['prior_score']:8} {r.get('kernel', '-'):6} "
            f"{r['ranks']:>5} {r['shard']:8} {r['time_s']:>8.3f} {_cell(r, 'ns_element_step', '8.2f'):>8} "
            f"{_cell(r, 'loop_s', '8.3f'):>8} {_cell(r, 'speedup', '7.1f'):>7} "
            f"{_cell(r, 'gb_s', '6.1f'):>6} {r['peak_rss'] / 2**20:>8.0f} {r['state_bytes'] / 2**20:>10.1f}"
            f"  {r.get('note', '')}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, 1 repeat")
    ap.add_argument("--sizes", help=f"comma-separated subset of {','.join(SIZES)}")
    ap.add_argument("--repeats", type=int, help="timed runs per case (default 3, 1 with --quick)")
    ap.add_argument("--budget", type=float, default=8.0, help="stop timing a case after this [s]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--out", default="runs/bench/bench_filters.json", help="JSON output")
    ap.add_argument("--gpu", action="store_true", help="only the GPU rows (scripts/gpu_check.sh)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # one case, JSON spec (internal)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.gpu:
        return main_gpu(args)
    sizes = args.sizes.split(",") if args.sizes else list(QUICK if args.quick else SIZES)
    if unknown := set(sizes) - set(SIZES):
        ap.error(f"--sizes: unknown {sorted(unknown)} (choose from {','.join(SIZES)})")
    repeats = args.repeats or (1 if args.quick else 3)
    env = environment(args.threads)
    check = {f"{s}-{tr}": loop_check(s, tr) for s in ("paired", "mixture") for tr in ("linear", "arctan")}
    print(f"loop baseline vs EnSF.analyse, max |diff|: {check}", file=sys.stderr)
    if max(check.values()) > 1e-5:
        raise SystemExit("ensf_member_loop differs from EnSF.analyse by more than 1e-5")
    rows = []
    for spec in make_cases(sizes, repeats, args.threads, args.budget):
        rows.append(launch(spec))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    if not torch.cuda.is_available():
        print("GPU row skipped: torch.cuda.is_available() is False")
    env["loadavg_end"] = os.getloadavg()
    print(f"# {env['date']}  torch {env['torch']}  {args.threads} thread(s)/process  {env['cpu']} ×"
          f"{env['cpu_count']}  copy {env['cpu_copy_gb_s']:.1f} GB/s  load {env['loadavg_start'][0]:.1f}"
          f"→{env['loadavg_end'][0]:.1f}")  # fmt: skip
    print(table(rows))
    write_text(args.out, json.dumps({"env": env, "loop_check": check, "rows": rows}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


def main_gpu(args) -> None:
    """``--gpu``: the GPU rows alone, a table and the JSON."""
    if not torch.cuda.is_available():
        raise SystemExit("bench_filters.py --gpu: no CUDA device (torch.cuda.is_available() is False)")
    env = environment(args.threads)
    rows = []
    for spec in gpu_cases(args.repeats or 3):
        rows.append(launch({**spec, "threads": args.threads, "budget_s": args.budget}))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    print(table(rows))
    write_text(args.out, json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
