"""What ``filter=diffda``'s samples look like, against the truth: held-out pairs of a conditional
network, each pair's forecast f given as all M members and y = the truth at the experiment's
observed points + σo noise. Per pair and channel, RMS over the observed and the other grid points:
the forecast's error, the analysis mean's error, and the samples' spread (a correct posterior's
spread equals its mean's error). Prints a table; ``--out`` writes it as JSON.

    python scripts/diffda_samples.py runs/scorenet/diffda_qg_cpu experiment=qg_stations
    python scripts/diffda_samples.py runs/scorenet/diffda_qg_cpu experiment=qg_stations filter.steps=64

Overrides after the network's directory compose the experiment (``filter=diffda`` and
``filter.weights`` of that directory are set here).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.dynamics.grid import model_grid
from scoreda.filters import make_filter
from scoreda.stages.common import Run, write_config
from scoreda.stages.nature import observation_operator
from scoreda.stages.train_score import load_pairs

ROOT = Path(__file__).resolve().parents[1]


def rms(v: torch.Tensor) -> float:
    return float(v.double().pow(2).mean().sqrt())


def measure(
    weights: str | Path, overrides: list[str], r: torch.Tensor, f: torch.Tensor, members: int, seed: int = 0
) -> list[dict]:
    """One row per (pair, channel) of the pairs (errors r, forecasts f) [N, C, H, W]: errors and
    spread at / away from the observed points of the experiment that ``overrides`` compose."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["filter=diffda", f"filter.weights={weights}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        write_config(tmp, validate(cfg))
        run = Run(tmp)
        op, filt = observation_operator(run), make_filter(run.cfg.filter, model_grid(run.cfg.model))
    C, H, W = f.shape[1:]
    observed = torch.zeros(C * H * W, dtype=torch.bool)
    observed[op.indices] = True
    observed = observed.view(C, H, W).any(0)  # a point where any channel is observed
    g, rows = torch.Generator().manual_seed(seed), []
    for i in range(len(f)):
        truth, fc = (f[i] + r[i]).double(), f[i].double()
        y = op(truth.reshape(1, -1))[0] + op.sigma * torch.randn(op.n_obs, generator=g, dtype=torch.float64)
        t0 = time.perf_counter()
        a = filt.analyse(fc.reshape(1, -1).repeat(members, 1), y, op, g)
        seconds = time.perf_counter() - t0
        a = a.ensemble.view(members, C, H, W)
        mean, spread = a.mean(0), a.std(0)
        for c in range(C):
            row = {"pair": i, "channel": c, "seconds": seconds}
            for where, m in (("observed", observed), ("between", ~observed)):
                row[f"forecast_{where}"] = rms((fc[c] - truth[c])[m])
                row[f"analysis_{where}"] = rms((mean[c] - truth[c])[m])
                row[f"spread_{where}"] = rms(spread[c][m])
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net_dir", help="a conditional network's directory (scorenet.out_dir)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides: the experiment, filter keys")
    ap.add_argument("--pairs", type=int, nargs="+", default=[50, 200], help="held-out pair indices")
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--out", help="JSON file of the rows")
    a = ap.parse_args()
    r, f = load_pairs(a.net_dir, held_out=True)
    rows = measure(Path(a.net_dir) / "weights.pt", a.overrides, r[a.pairs], f[a.pairs], a.members)
    for w in rows:
        w["pair"] = a.pairs[w["pair"]]
    print("pair ch  forecast obs/between  analysis obs/between  spread obs/between  spread/error between")
    for w in rows:
        print(
            f"{w['pair']:4d} {w['channel']:2d}  {w['forecast_observed']:.3g}/{w['forecast_between']:.3g}"
            f"  {w['analysis_observed']:.3g}/{w['analysis_between']:.3g}"
            f"  {w['spread_observed']:.3g}/{w['spread_between']:.3g}"
            f"  {w['spread_between'] / w['analysis_between']:.2f}"
        )
    print(f"{rows[0]['seconds']:.1f} s an analysis of {a.members} members")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
