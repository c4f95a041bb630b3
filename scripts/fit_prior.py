"""Fit the Matérn GMRF prior of ``filter=var3d`` / ``filter=gmrf_mp`` to a run's forecast errors.

Reads the isotropic spectra of the forecast-mean error (``error_spectrum_forecast`` of every scored
cycle's ``scores.json`` after ``--skip`` cycles), averages them and fits (ℓ, σ) of the prior on the
run's grid (``filters.matern.fit_matern``): the keys to pass, and the fitted spectrum beside the mean.

    python scripts/fit_prior.py runs/filters_every4/none --skip 20
    filter.length_scale=1234.5 filter.sigma=2.345
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from scoreda.filters.matern import MaternPrior, fit_matern
from scoreda.stages.common import Run


def fitted(run_dir: str, skip: int, alpha: int = 2) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(ℓ, σ, mean spectrum, the fit's spectrum) of the run's forecast errors after ``skip`` cycles."""
    run = Run(run_dir)
    spectra = [
        json.loads(p.read_text())["error_spectrum_forecast"]
        for p in sorted(run.dir.glob("cycles/[0-9]*/scores.json"))
        if int(p.parent.name) > skip
    ]
    if not spectra:
        raise SystemExit(f"{run_dir}: no scores.json after cycle {skip}")
    mean = np.mean(np.asarray(spectra, dtype=np.float64), axis=0)
    spacing = run.grid.spacing
    ell, sigma = fit_matern(mean, run.shape, spacing, alpha)
    model = MaternPrior(run.shape, spacing, ell, (sigma,) * run.shape[0], alpha).spectrum()
    return ell, sigma, mean, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--skip", type=int, default=20, help="cycles to leave out (burn-in)")
    ap.add_argument("--alpha", type=int, default=2)
    args = ap.parse_args()
    ell, sigma, mean, model = fitted(args.run, args.skip, args.alpha)
    print("shell | forecast error E_n | fitted prior E_n")
    for n, (e, m) in enumerate(zip(mean, model, strict=True), 1):
        print(f"{n:5d} | {e:.4g} | {m:.4g}")
    print(f"filter.length_scale={ell:.1f} filter.sigma={sigma:.4g}")


if __name__ == "__main__":
    main()
