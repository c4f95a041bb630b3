"""Unchanged behaviour across a refactor, checked side by side against another commit.

    .venv/bin/python scripts/compare_refactor.py --ref 59f52bf

checks out ``--ref`` in a temporary git worktree and computes, under its ``src/`` and under this
tree's, (1) the EnSF and LETKF analyses of fixed inputs on the SQG grid (a smooth 21-member
ensemble, seed 3; observations of every point, every 4th point and arctan, seed 7; filter seed 11)
for the cases in ``CASES``, compared with ``torch.equal`` along with their diagnostics, and (2) the
science hash (or the one-line error) of every combination of experiment × model × filter ×
observation × a few overrides (this tree's ``configs/`` for both). Prints one line per case and
exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: case -> (observation, filter section)
CASES = {
    "ensf_paired": ("all", dict(name="ensf")),
    "ensf_mixture": ("all", dict(name="ensf", prior_score="mixture", n_steps=30)),
    "ensf_regress_cap": ("every4", dict(name="ensf", rtps=0.3, cap_spread=True)),
    "ensf_unobserved_none": ("every4", dict(name="ensf", unobserved="none", rtps=0.5)),
    "ensf_spectral": ("every4", dict(name="ensf", standardise="spectral", n_steps=20, cap_spread=True)),
    "ensf_arctan": ("arctan", dict(name="ensf", inflation=1.1)),
    "ensf_adaptive": ("every4", dict(name="ensf", rtps=0.5)),
    "letkf_all": ("all", dict(name="letkf")),
    "letkf_rtpp_rtps": ("every4", dict(name="letkf", rtpp=0.5, rtps=0.2, adaptive_inflation=True)),
    "letkf_arctan": ("arctan", dict(name="letkf", inflation=1.05, cross_level=0.5)),
    "letkf_adaptive": ("every4", dict(name="letkf", adaptive_inflation=True, rtpp=0.3)),
}
OBSERVATIONS = {
    "all": dict(kind="identity", sigma=1.0),
    "every4": dict(kind="subsample", every=4, sigma=1.0),
    "arctan": dict(kind="identity", sigma=0.05, transform="arctan"),
}
OVERRIDES = [
    [],
    ["filter.ranks=2"],
    ["members=1"],
    ["cycles=0"],
    ["device=tpu"],
    ["model.cycle_hours=-1"],
    ["model.member_spacing_cycles=0"],
    ["filter.rtps=2"],
    ["shocks.fraction=2"],
    ["forecaster.name=x"],
    ["filter.unobserved=none", "filter.cap_spread=true"],
]


def analyses(out: Path) -> None:
    """The analyses of ``CASES`` under the ``scoreda`` on sys.path, saved to ``out`` (.pt)."""
    import torch

    from scoreda.dynamics.grid import model_grid
    from scoreda.filters import make_filter
    from scoreda.observations import make_observation_operator
    from scoreda.registry import model_config

    torch.set_num_threads(1)
    grid = model_grid(model_config("sqg"))
    C, H, W = grid.shape
    M = 21
    noise = torch.randn(M + 1, C, H, W, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k2 = torch.fft.fftfreq(H)[:, None] ** 2 + torch.fft.rfftfreq(W)[None, :] ** 2
    f = torch.fft.irfft2(torch.fft.rfft2(noise) * torch.exp(-k2 / 0.005), s=(H, W)).float()
    f = f / f.std() * 3.0
    truth, ens = f[0].reshape(-1), f[1:].reshape(M, -1) + 0.5 * f[:1].reshape(1, -1)
    mean = ens.mean(0, keepdim=True)
    tight = mean + 0.1 * (ens - mean)  # under-dispersed: adaptive inflation acts
    results = {}
    for case, (obs, cfg) in CASES.items():
        op = make_observation_operator(OBSERVATIONS[obs], grid.shape)
        hx = op(truth[None])[0]
        y = hx + op.sigma * torch.randn(hx.shape, generator=torch.Generator().manual_seed(7))
        prior = tight if case.endswith("adaptive") else ens
        a = make_filter(cfg, grid).analyse(prior.clone(), y, op, torch.Generator().manual_seed(11))
        results[case] = (a.ensemble, a.diagnostics)
    torch.save(results, out)


def hashes(out: Path) -> None:
    """Science hash or error line of every combination, as JSON {overrides: result} in ``out``."""
    from hydra import compose, initialize_config_dir

    from scoreda.config import validate
    from scoreda.io import config_hash

    try:
        from scoreda.science import science_keys
    except ImportError:  # before the module existed
        from scoreda.config import science_keys

    configs = ROOT / "configs"
    exps = [None] + sorted(p.stem for p in (configs / "experiment").glob("*.yaml"))
    groups = [exps, [None, "sqg", "lorenz96", "qg2l"], [None, "ensf", "letkf", "none"]]
    groups.append([None, "subsample", "arctan", "stations"])
    res = {}
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        for e, m, f, o, extra in itertools.product(*groups, OVERRIDES):
            if e and (m or o) and extra:
                continue
            names = zip(("experiment", "model", "filter", "observation"), (e, m, f, o), strict=True)
            ov = [f"{g}={v}" for g, v in names if v] + extra
            try:
                got = config_hash(science_keys(validate(compose("config", overrides=ov))))
            except Exception as err:  # noqa: BLE001 (the error line is the result)
                got = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            res[" ".join(ov)] = got
    out.write_text(json.dumps(res, indent=0))


def compute(src: Path, out: Path) -> subprocess.Popen:
    """Start the computation under ``src`` (one thread; the two trees run side by side)."""
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "--compute", str(out)], env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", help="the commit to compare against")
    ap.add_argument("--compute", help=argparse.SUPPRESS)  # internal: write results to this folder
    args = ap.parse_args()
    if args.compute:
        out = Path(args.compute)
        analyses(out / "analyses.pt")
        hashes(out / "hashes.json")
        return 0
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wt = tmp / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(wt), args.ref], check=True
        )
        try:
            procs = [compute(src, tmp / name) for name, src in (("ref", wt / "src"), ("head", ROOT / "src"))]
            if any(p.wait() != 0 for p in procs):
                raise SystemExit("compare_refactor: a computation failed (its traceback is above)")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=True)
        a, b = (torch.load(tmp / n / "analyses.pt") for n in ("ref", "head"))
        bad = 0
        for case in CASES:
            same = torch.equal(a[case][0], b[case][0]) and a[case][1] == b[case][1]
            bad += not same
            print(f"{case:22} {'torch.equal' if same else 'DIFFERS'}  diagnostics {b[case][1]}")
        ha, hb = (json.loads((tmp / n / "hashes.json").read_text()) for n in ("ref", "head"))
        diff = [k for k in ha if ha[k] != hb.get(k)]
        n_err = sum(v.startswith("ConfigError") for v in hb.values())
        valid = len(hb) - n_err
        print(f"science hashes: {len(hb)} combinations ({valid} valid, {n_err} errors), {len(diff)} differ")
        for k in diff[:10]:
            print(f"  {k}: {ha[k]} -> {hb.get(k)}")
        return 1 if bad or diff else 0


if __name__ == "__main__":
    sys.exit(main())
