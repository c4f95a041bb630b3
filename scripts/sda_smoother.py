"""SDA as a smoother over a window of a cycled run (issue 21, seed 003's experiment): M trajectories
of the L states of cycles start … start+L−1 sampled given all their observations, against the truth
and against the analyses of the filters that ran the same cycles (same model, seed, truth and
observations). Per state and channel: RMSE of the smoother's sample mean and of each filter's
analysis mean, and the samples' spread; the headline is the experiment's (the PV over both layers
for the two-layer QG). Writes ``OUT/smoother.json`` and ``OUT/smoother.png`` (the upper-layer PV of
the truth, two samples and the first filter's analysis; RMSE against time).

    python scripts/sda_smoother.py runs/qg_smoother/ensf runs/qg_smoother/letkf \\
        --weights runs/scorenet/sda_qg_cpu/weights.pt --start 21 --length 20 --out runs/qg_smoother/sda

The first run gives the truth, the observations and the operator; the others must have the same
truth. The network (``workflows/train_score.py scorenet=sda_qg_cpu ...``) is one over windows of
2k+1 states one cycle apart (``scoreda.learned.smoother``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from scoreda.learned.smoother import GUIDANCE, smooth
from scoreda.learned.weights import load_scorenet
from scoreda.stages.common import Run, write_json
from scoreda.stages.evaluate import channels, headline
from scoreda.stages.nature import observation_operator, read_observations


def rmse(x: torch.Tensor, truth: torch.Tensor, sel: list[int]) -> float:
    """RMS of x − truth over the channels ``sel`` and the grid; x, truth [C, H, W]."""
    return float((x[sel] - truth[sel]).double().square().mean().sqrt())


def scores(mean: torch.Tensor, truth: torch.Tensor, names: list[str], head: list[int]) -> dict:
    """{"headline": …, <channel>: …} of one state [C, H, W]."""
    return {"headline": rmse(mean, truth, head)} | {n: rmse(mean, truth, [c]) for c, n in enumerate(names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories of the same experiment and seed")
    ap.add_argument("--weights", required=True, help="a window network's weights.pt")
    ap.add_argument("--start", type=int, default=21, help="first cycle of the window")
    ap.add_argument("--length", type=int, default=20, help="L: states in the window")
    ap.add_argument("--samples", type=int, default=4, help="M: trajectories sampled")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--corrections", type=int, default=1)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--guidance", choices=GUIDANCE, default="kalman")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args()

    runs = [Run(r) for r in a.runs]
    run, cycles = runs[0], list(range(a.start, a.start + a.length))
    net, schedule, mean, std, meta = load_scorenet(a.weights)
    C, H, W = run.shape
    if net.condition or net.channels % C or (net.channels // C) % 2 == 0:
        raise SystemExit(f"--weights: {a.weights} is not a network over windows of {C}-channel states")
    k = (net.channels // C - 1) // 2
    hours = float(run.cfg.model.cycle_hours)
    if meta.get("every_hours", hours) != hours:
        raise SystemExit(
            f"--weights: its windows are {meta['every_hours']} h apart, the run's cycles {hours} h"
        )
    truth = torch.stack([run.read(c, "truth")[0] for c in cycles])  # [L, C, H, W]
    for r in runs[1:]:
        if not all(torch.equal(r.read(c, "truth")[0], truth[i]) for i, c in enumerate(cycles)):
            raise SystemExit(
                f"{r.dir}: its truth differs from {run.dir}'s over cycles {cycles[0]}–{cycles[-1]}"
            )
    op = observation_operator(run)
    y = torch.stack([read_observations(run, c)[0] for c in cycles])  # [L, p]
    t0 = time.perf_counter()
    xs = smooth(
        (net, schedule, mean, std),
        k,
        op,
        y,
        (C, H, W),
        a.samples,
        torch.Generator().manual_seed(a.seed),
        a.guidance,
        a.gamma,
        a.steps,
        a.corrections,
    )
    seconds = time.perf_counter() - t0
    info = channels(run)
    names = list(info[0]) if info else [f"level{c}" for c in range(C)]
    head = headline(run) or list(range(C))
    sda_mean, spread = xs.mean(0), xs.std(0)
    out = {
        "cycles": cycles,
        "k": k,
        "samples": a.samples,
        "steps": a.steps,
        "corrections": a.corrections,
        "guidance": a.guidance,
        "gamma": a.gamma,
        "seconds": seconds,
        "weights": str(a.weights),
        "headline_channels": [names[c] for c in head],
        "sda": [scores(sda_mean[i], truth[i], names, head) for i in range(a.length)],
        "sda_spread": [
            {"headline": float(spread[i][head].double().square().mean().sqrt())} for i in range(a.length)
        ],
        "filters": {},
    }
    for r in runs:
        mean_a = [r.read(c, "analysis").mean(0) for c in cycles]
        out["filters"][str(r.cfg.filter.name) + ":" + str(r.dir)] = [
            scores(mean_a[i], truth[i], names, head) for i in range(a.length)
        ]
    mid = a.length // 2
    out["mid"] = {"cycle": cycles[mid], "sda": out["sda"][mid]} | {
        name: rows[mid] for name, rows in out["filters"].items()
    }
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    write_json(outdir / "smoother.json", out)
    print(f"SDA smoother, {a.samples} samples of {a.length} states (k = {k}), {seconds:.0f} s")
    print(f"{'':>40} {'mid-window':>12} {'window mean':>12}")
    rows = {"sda (smoother)": out["sda"]} | out["filters"]
    for name, rs in rows.items():
        mean_all = sum(r["headline"] for r in rs) / len(rs)
        print(f"{name:>40} {rs[mid]['headline']:12.4g} {mean_all:12.4g}")
    figure(outdir / "smoother.png", truth, xs, rows, cycles, names)


def figure(path: Path, truth, xs, rows: dict, cycles: list[int], names: list[str]) -> None:
    """The upper-layer first channel of the truth and two samples every few states; RMSE against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = truth.shape[0]
    cols = list(range(0, L, max(1, L // 6)))[:6]
    fig, ax = plt.subplots(4, len(cols), figsize=(2.2 * len(cols), 9), squeeze=False)
    lim = float(truth[:, 0].abs().max())
    for j, i in enumerate(cols):
        for r, (label, field) in enumerate(
            [("truth", truth[i, 0]), ("sample 1", xs[0, i, 0]), ("sample 2", xs[-1, i, 0])]
        ):
            ax[r, j].imshow(field, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
            ax[r, j].set_xticks([])
            ax[r, j].set_yticks([])
            if j == 0:
                ax[r, j].set_ylabel(f"{label}\n{names[0]}")
        ax[0, j].set_title(f"cycle {cycles[i]}")
    gs = ax[3, 0].get_gridspec()
    for a_ in ax[3]:
        a_.remove()
    line = fig.add_subplot(gs[3, :])
    for name, rs in rows.items():
        line.plot(cycles, [r["headline"] for r in rs], label=Path(name.split(":")[-1]).name)
    line.set_xlabel("cycle")
    line.set_ylabel("analysis RMSE")
    line.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
