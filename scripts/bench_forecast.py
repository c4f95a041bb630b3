"""Benchmark of the forecast models: SQG (``jacobian=reference``) member-steps of RK4 per second.

Per case (model, N, members, device): the time of one ensemble step of RK4 (4 right-hand sides;
each the 8 inverse and 2 forward FFTs of the 3N/2-padded grid per member, pruned to its nonzero
part: ``SQG.tendency``; on CPU in blocks of ``SQG.block_members`` members), as ms per member-step
and per right-hand side, the median of ``--repeats`` runs of ``--steps`` steps after one warm-up
(and the fastest: this machine is shared, and another tenant's load moves the median by 2× between
runs); beside it, the FFTs alone (the same calls on random spectra, in the same blocks: the floor
that torch's FFT library sets).
CPU (default): 64² and 128², 20 members, ``--threads`` torch threads (default 1). GPU (``--gpu``):
256², 20 and 100 members, CUDA events. Table on stdout, JSON to ``--out``:

    .venv/bin/python scripts/bench_forecast.py [--gpu] [--sizes 64,128] [--members 20]
        [--steps 6] [--repeats 3] [--threads 1] [--out runs/bench/bench_forecast.json]
        [--baseline REV] [--sqgturb DIR --python PY]

Side by side, in the same run: ``--baseline REV`` times ``src/scoreda/dynamics/sqg.py`` as it was
at git revision REV (loaded from ``git show``; e.g. the whole 2-D transforms before the pruned
ones), the runs of the two interleaved so that a change of load hits both; ``--sqgturb DIR`` times
jswhit/sqgturb (a clone kept out of this repository, one member, its own code: single precision,
dealiased, pyFFTW if ``--python`` has it, 1 thread) in a subprocess of ``--python`` (numpy ≥ 2), and
checks that the two agree after the timed steps (relative RMS difference, float32 round-off growing).
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
import types
from pathlib import Path

import torch

from scoreda.dynamics.sqg import SQG, SQGParams
from scoreda.io import write_text

ROOT = Path(__file__).resolve().parents[1]


def baseline_class(rev: str):
    """The ``SQG`` class of ``src/scoreda/dynamics/sqg.py`` at git revision ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/scoreda/dynamics/sqg.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"sqg_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"sqg.py@{rev}", "exec"), module.__dict__)
    return module.SQG


def row(model: str, n: int, members: int, device: str, steps: int, times: list[float]) -> dict:
    per = statistics.median(times) / (steps * members)
    return {
        "model": model,
        "N": n,
        "members": members,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "steps": steps,
        "times_s": times,
        "ms_member_step": 1e3 * per,
        "ms_member_step_min": 1e3 * min(times) / (steps * members),
        "ms_rhs": 1e3 * per / 4,
        "member_steps_per_s": 1.0 / per,
    }


def bench(n: int, members: int, steps: int, repeats: int, device: str, baseline: str | None = None) -> list:
    """Rows for the current SQG (and the ``baseline`` revision's, runs interleaved)."""
    models = {"sqg": SQG(SQGParams(N=n), device=device)}
    if baseline:
        models[f"sqg@{baseline}"] = baseline_class(baseline)(SQGParams(N=n), device=device)
    x = models["sqg"].initial_state(torch.Generator().manual_seed(0), members).to(device) * 5.0
    for model in models.values():
        model.step(x, 1)  # warm-up (and FFT plans)
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.step(x, steps)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return [row(name, n, members, device, steps, t) for name, t in times.items()]


def bench_fft_floor(n: int, members: int, steps: int, repeats: int, device: str) -> dict:
    """The FFTs alone of ``SQG.tendency`` (same shapes and calls, on random spectra, in the same
    member blocks as ``SQG.step``): the floor of a right-hand side with torch's FFT library, as a row
    like ``bench``'s (4 right-hand sides a step)."""
    h, Np = n // 2, 3 * n // 2
    block = min(members, SQG(SQGParams(N=n)).block_members) if device == "cpu" else members
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(4, block, 2, Np, h + 1, dtype=torch.complex64, generator=g).to(device)
    grid = torch.randn(block, 2, Np, Np, generator=g).to(device)
    blocks = -(-members // block)

    def rhs_ffts() -> None:
        torch.fft.irfft(torch.fft.ifft(spec, dim=-2, norm="forward"), n=Np, dim=-1, norm="forward")
        torch.fft.fft(torch.fft.rfft(grid, dim=-1, norm="forward")[..., :h], dim=-2, norm="forward")

    rhs_ffts()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4 * steps * blocks):
            rhs_ffts()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    r = row("FFTs alone", n, blocks * block, device, steps, times)
    r["note"] = "the pruned transforms of the RHS, nothing else"
    return r


# The sqgturb subprocess (run by ``--python``, which need not have torch): time ``advance`` of one
# member by ``steps`` RK4 steps. argv: sqgturb clone, work directory, steps, repeats.
SQGTURB_CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
sqgturb, work, steps, repeats = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, sqgturb)
from sqgturb import SQG
p = json.loads((work / "params.json").read_text())
scale = p["g"] / (p["f"] * p["theta0"])  # θ [K] → sqgturb's PV units
pv = (np.load(work / "state.npy") * scale).astype(np.float32)
kw = {k: p[k] for k in ("f", "nsq", "L", "H", "U", "tdiab", "diff_order", "diff_efold", "dt")}
m = SQG(pv, r=0.0, symmetric=True, dealias=True, precision="single", threads=1, **kw)
m.timesteps = steps
m.advance(pv)  # warm-up (pyFFTW plans)
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    out = m.advance(pv)
    times.append(time.perf_counter() - t0)
try:
    import pyfftw
    fft = "pyFFTW"
except ImportError:
    fft = "numpy FFT"
np.save(work / "out.npy", np.asarray(out, np.float64) / scale)
(work / "times.json").write_text(json.dumps({"times": times, "fft": fft, "numpy": np.__version__}))
"""


def bench_sqgturb(sqgturb: str, python: str, n: int, steps: int, repeats: int) -> dict:
    """sqgturb, one member, from our spun-up-like state; its row, with the relative RMS difference
    from our ``step`` of the same state by the same steps."""
    import numpy as np

    model = SQG(SQGParams(N=n))
    x = model.step(model.initial_state(torch.Generator().manual_seed(0), 1) * 5.0, 30)[0]
    with tempfile.TemporaryDirectory() as work:
        np.save(Path(work, "state.npy"), x.numpy().astype(np.float64))
        params = {k: getattr(model.p, k) for k in ("f", "nsq", "L", "H", "U", "tdiab", "diff_order")}
        params |= {k: getattr(model.p, k) for k in ("diff_efold", "dt", "theta0", "g")}
        Path(work, "params.json").write_text(json.dumps(params))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [python, "-c", SQGTURB_CHILD, sqgturb, work, str(steps), str(repeats)]
        subprocess.run(cmd, check=True, env=env)
        info = json.loads(Path(work, "times.json").read_text())
        theirs = torch.from_numpy(np.load(Path(work, "out.npy")))
    ours = model.step(x[None], steps)[0].double()
    r = row("sqgturb", n, 1, "cpu", steps, info["times"])
    r["note"] = f"{info['fft']}, numpy {info['numpy']}"
    r["rel_diff_vs_ours"] = float((ours - theirs).norm() / theirs.norm())
    return r


def table(rows: list[dict]) -> str:
    head = f"{'model':16} {'N':>4} {'members':>7} {'device':24} {'ms/member-step':>14} {'min':>7} "
    head += f"{'ms/RHS':>8} {'steps/s':>9}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        note = r.get("note", "")
        if "rel_diff_vs_ours" in r:
            note += f"; rel. RMS diff from ours after {r['steps']} steps {r['rel_diff_vs_ours']:.1e}"
        lines.append(
            f"{r['model']:16} {r['N']:>4} {r['members']:>7} {r['device'][:24]:24} "
            f"{r['ms_member_step']:>14.3f} {r['ms_member_step_min']:>7.3f} {r['ms_rhs']:>8.3f}"
            f" {r['member_steps_per_s']:>9.0f}  {note}"
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
    ap.add_argument("--baseline", help="git revision whose sqg.py runs beside the current one")
    ap.add_argument("--sqgturb", help="a clone of jswhit/sqgturb to time beside ours (one member)")
    ap.add_argument("--python", default=sys.executable, help="the Python (numpy ≥ 2) that runs sqgturb")
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
            rows += bench(n, m, args.steps, args.repeats, device, args.baseline)
            rows.append(bench_fft_floor(n, m, args.steps, args.repeats, device))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        if args.sqgturb:
            rows.append(bench_sqgturb(args.sqgturb, args.python, n, args.steps, args.repeats))
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
