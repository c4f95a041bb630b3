"""The variational family (seed 000): the Matérn GMRF prior, 3D-Var by conjugate gradients
(``filter=var3d``) against closed forms, and message passing (``filter=gmrf_mp``) against 3D-Var.
Several ranks: ``test_ensf_mpi.py`` (cases ``gmrf-*`` of ``ensf_mpi_cases.py``)."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CYCLE, tiny  # noqa: E402

from scoreda.filters.gmrf_mp import GMRFMessagePassing, Stencil
from scoreda.filters.matern import MaternPrior, fit_matern
from scoreda.filters.var3d import Var3D
from scoreda.metrics import isotropic_spectrum
from scoreda.observations import PointObservation, observed_indices

SQG = dict(shape=(2, 64, 64), spacing=(312.5, 312.5))  # the SQG model's 64² grid, km


def dense(Q: MaternPrior) -> torch.Tensor:
    """Q as a dense matrix from its stencil, [d, d]."""
    C, H, W = Q.shape
    offsets, coef = Q.stencil()
    out = torch.zeros(C, H, W, C, H, W, dtype=torch.float64)
    idx = torch.arange(C * H * W).reshape(C, H, W)
    for (dl, dy, dx), c in zip(offsets, coef, strict=True):
        cols = idx.roll((-dl, -dy, -dx), (0, 1, 2))  # column of (l + dl, y + dy, x + dx)
        out.view(C * H * W, -1)[idx.flatten(), cols.flatten()] += c[:, None, None].expand(C, H, W).flatten()
    return out.reshape(C * H * W, -1)


@pytest.mark.parametrize(
    ("C", "vertical", "sigma"), [(1, 0.0, (2.0,)), (2, 0.5, (1.0, 3.0)), (3, 0.3, (1.0, 2.0, 0.5))]
)
def test_the_stencil_is_the_fourier_precision_and_sigma_the_marginal_std(C, vertical, sigma):
    Q = MaternPrior((C, 8, 10), (1.5, 2.0), 3.0, sigma, 2, vertical)
    d = C * 80
    A = dense(Q)
    assert (A - A.T).abs().max() <= 1e-15 * A.abs().max()
    fourier = Q.apply(torch.eye(d, dtype=torch.float64).reshape(d, C, 8, 10)).reshape(d, d)
    assert (fourier - A).abs().max() <= 1e-13 * A.abs().max()
    std = torch.linalg.inv(A).diagonal().reshape(C, -1).sqrt()
    assert torch.allclose(std, torch.tensor(sigma, dtype=torch.float64)[:, None].expand(C, 80), rtol=1e-10)
    r = torch.randn(2, C, 8, 10, dtype=torch.float64)
    assert (Q.apply(Q.solve(r)) - r).abs().max() < 1e-12


def test_fit_matern_recovers_the_prior_from_its_spectrum_and_from_draws():
    Q = MaternPrior(SQG["shape"], SQG["spacing"], 900.0, (2.0, 2.0))
    ell, sigma = fit_matern(Q.spectrum(), **SQG)
    assert ell == pytest.approx(900.0, rel=1e-4) and sigma == pytest.approx(2.0, rel=1e-4)
    draws = Q.sample(200, torch.Generator().manual_seed(0)).numpy().reshape(-1, 64, 64)
    _, E = isotropic_spectrum(draws, 20000e3)
    ell, sigma = fit_matern(E, **SQG)
    assert ell == pytest.approx(900.0, rel=0.03) and sigma == pytest.approx(2.0, rel=0.02)


def _problem(shape, observed, sigma_o=0.5, members=3, seed=0, transform="linear"):
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    truth = torch.randn(d, generator=g, dtype=torch.float64)
    prior = truth + torch.randn(members, d, generator=g, dtype=torch.float64)
    op = PointObservation(observed, sigma=sigma_o, d=d, transform=transform)
    return prior, op.sample(truth, g), op


def test_var3d_with_every_point_observed_is_the_fourier_closed_form():
    """Q + σo⁻² I is diagonal in Fourier space: δ̂(k) = σo⁻² / (d² λ(k)^α + σo⁻²) · (y − x_b)^(k), with
    λ(k) = κ² + (4/Δ²)(sin²(πk_y/H) + sin²(πk_x/W)), κ² = 2/ℓ², written out here; one CG step."""
    H = W = 32
    prior, y, op = _problem((1, H, W), torch.arange(H * W))
    f = Var3D(length_scale=3.0, sigma=2.0, shape=(1, H, W), spacing=(1.0, 1.0), perturb=False, tol=1e-12)
    out = f.analyse(prior, y, op)
    k = torch.fft.fftfreq(H, dtype=torch.float64)
    lam = 2.0 / 9.0 + 4 * torch.sin(math.pi * k[:, None]) ** 2 + 4 * torch.sin(math.pi * k[None, :]) ** 2
    var = (1.0 / lam**2).mean()  # the marginal variance of L⁻², so d² = var / σ²
    q = var / 4.0 * lam**2
    r = 1 / 0.25
    innov = torch.fft.fft2((y - prior).reshape(-1, H, W))
    expected = prior + torch.fft.ifft2(r / (q + r) * innov).real.reshape(3, -1)
    assert (out.ensemble - expected).abs().max() < 1e-12
    assert out.diagnostics["iterations"] == 2  # the first step solves it, the second changes nothing


def test_var3d_equals_the_dense_solve_with_coupled_levels_and_stations():
    shape = (2, 10, 12)
    d = math.prod(shape)
    observed = torch.randperm(d, generator=torch.Generator().manual_seed(3))[:50].sort().values
    prior, y, op = _problem(shape, observed)
    f = Var3D(length_scale=2.5, sigma_levels=[1.0, 3.0], vertical=0.4, shape=shape, perturb=False, tol=1e-13)
    out = f.analyse(prior, y, op)
    A = dense(f.prior(d))
    A[observed, observed] += 4.0
    rhs = torch.zeros(3, d, dtype=torch.float64)
    rhs[:, observed] = 4.0 * (y - prior[:, observed])
    assert (out.ensemble - prior - torch.linalg.solve(A, rhs.T).T).abs().max() < 1e-10


def test_gmrf_mp_converges_to_var3d_on_the_sqg_grid_with_every_fourth_point():
    """Seed 000's solver on SQG's 2×64² grid (312.5 km), a Matérn truth, every 4th point along y and x
    observed (512 of 8192), σo = 1 K: message passing's analysis within 1e-4 of 3D-Var's (relative to
    the increment), and the compiled step the torch step's numbers."""
    g = torch.Generator().manual_seed(0)
    keys = dict(length_scale=900.0, sigma=3.0, perturb=False, **SQG)
    Q = Var3D(**keys).prior(8192)
    truth = Q.sample(1, g).reshape(-1)
    prior = truth + Q.sample(2, g).reshape(2, -1)
    op = PointObservation(observed_indices("subsample", SQG["shape"], every=4), sigma=1.0, d=8192)
    y = op.sample(truth, g)
    ref = Var3D(**keys, tol=1e-12).analyse(prior, y, op).ensemble
    out = GMRFMessagePassing(**keys, tol=1e-7, max_iter=3000).analyse(prior, y, op)
    rel = ((out.ensemble - ref).norm() / (ref - prior).norm()).item()
    assert rel <= 1e-4, rel
    assert (ref - truth).square().mean() < 0.6 * (prior - truth).square().mean()  # it assimilates

    small = MaternPrior((2, 12, 10), (1.0, 1.0), 2.0, (1.0, 2.0), 2, 0.5)
    curv = torch.rand(1, 2, 12, 10, generator=g, dtype=torch.float64)
    h = torch.randn(3, 2, 12, 10, generator=g, dtype=torch.float64)
    runs = [
        GMRFMessagePassing(kernel=k, max_iter=200, tol=1e-30).iterate(Stencil(small, 12), curv, h, None, None)
        for k in ("torch", "fused")
    ]
    assert torch.allclose(runs[0][0], runs[1][0], rtol=1e-13, atol=0)


@pytest.mark.parametrize("cls", [Var3D, GMRFMessagePassing])
def test_gauss_newton_reaches_the_minimum_with_an_arctan_operator(cls):
    """∇J(x) = Q (x − x_b) − Hᵀ R⁻¹ g'(x)(y − g(x)) vanishes at the analysis: 16 outer loops take it
    ≤ 1e-6 of its size at the background."""
    shape = (1, 16, 16)
    prior, y, op = _problem(
        shape, observed_indices("subsample", shape, every=2), sigma_o=0.2, members=2, transform="arctan"
    )
    f = cls(length_scale=1.5, sigma=1.0, shape=shape, perturb=False, outer=16, tol=1e-11, max_iter=5000)
    Q = f.prior(256)

    def grad(x):
        return Q.apply((x - prior).reshape(-1, *shape)).reshape(x.shape) - op.likelihood_score(x, y)

    out = f.analyse(prior, y, op).ensemble
    assert grad(out).norm() <= 1e-6 * grad(prior).norm()


def test_eda_perturbs_the_observations_around_y_and_one_member_is_deterministic():
    """Linear h: the analyses' mean is the analysis of the forecast mean (perturbations centred); the
    spread shrinks where observed; with one member nothing is perturbed."""
    shape = (1, 16, 16)
    observed = observed_indices("subsample", shape, every=2)
    prior, y, op = _problem(shape, observed, members=8)
    f = Var3D(length_scale=1.5, sigma=1.0, shape=shape, tol=1e-12)
    out = f.analyse(prior, y, op, torch.Generator().manual_seed(1)).ensemble
    mean = f.analyse(prior.mean(0, keepdim=True), y, op, torch.Generator().manual_seed(1)).ensemble
    assert (out.mean(0) - mean[0]).abs().max() < 1e-10
    assert out[:, observed].std(0).mean() < 0.6 * prior[:, observed].std(0).mean()
    deterministic = Var3D(length_scale=1.5, sigma=1.0, shape=shape, tol=1e-12, perturb=False)
    assert torch.equal(mean, deterministic.analyse(prior.mean(0, keepdim=True), y, op).ensemble)


@pytest.mark.parametrize(
    ("cls", "keys", "message"),
    [
        (Var3D, dict(sigma_levels=[1.0]), r"^filter\.sigma_levels: expected 2 values"),
        (Var3D, dict(length_scale=0.0), r"^filter\.length_scale: must be positive"),
        (Var3D, dict(alpha=1), r"^filter\.alpha: must be an integer ≥ 2"),
        (GMRFMessagePassing, dict(reweight=0.0), r"^filter\.reweight: must not be 0"),
        (GMRFMessagePassing, dict(kernel="cuda"), r"^filter\.kernel: expected fused or torch"),
        (GMRFMessagePassing, dict(damping=1.5), r"^filter\.damping: must be in \(0, 1\]"),
    ],
)
def test_bad_keys_are_one_line_errors_naming_the_key(cls, keys, message):
    with pytest.raises(ValueError, match=message):
        cls(shape=(2, 16, 16), **keys)


def test_too_many_ranks_and_diverging_messages_are_named():
    f = GMRFMessagePassing(shape=(1, 16, 16), levels=1)
    with pytest.raises(ValueError, match=r"^filter\.ranks: 9 ranks for 16 rows"):
        f.tiles(f.prior(256), 9)
    shape = (1, 16, 16)
    prior, y, op = _problem(shape, observed_indices("subsample", shape, every=4), members=1)
    plain_bp = GMRFMessagePassing(
        length_scale=3.0, sigma=3.0, shape=shape, reweight=1.0, damping=1.0, max_iter=4000
    )
    with pytest.raises(FloatingPointError, match="filter=gmrf_mp: the messages diverged"):
        plain_bp.analyse(prior, y, op)


def test_one_member_is_a_deterministic_var3d_cycle(tmp_path):
    """``members=1``: 3D-Var without perturbed observations, through the whole cycle; spread 0, the
    CRPS the absolute error, the analysis better than its forecast."""
    run = tmp_path / "det"
    overrides = [o for o in tiny(1, 10, "cycles=2", "progress=false") if not o.startswith("filter.n_steps")]
    cmd = [*CYCLE, *overrides, "filter=var3d", "filter.length_scale=2000", f"run_dir={run}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["cycle"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["spread_analysis"]) == 0.0 and float(r["rmse_analysis"]) < float(r["rmse_forecast"])


def test_seed000_script_runs_small(tmp_path):
    """``scripts/seed000.py`` at 32² on 1 and 2 ranks: a table and JSON; message passing within 1 % of
    3D-Var's RMSE, both below the prior's, and the two-rank run one rank's."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "seed000.py"
    out = tmp_path / "s.json"
    p = subprocess.run(
        [sys.executable, str(script), "--n", "32", "--fraction", "0.2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| gmrf_mp | 2 |" in p.stdout
    rows = json.loads(out.read_text())["rows"]
    prior, var3d = rows["prior/1"]["rmse"], rows["var3d/1"]["rmse"]
    assert var3d < 0.8 * prior
    assert abs(rows["gmrf_mp/1"]["rmse"] - var3d) <= 0.01 * var3d
    assert (
        rows["gmrf_mp/2"]["rmse"] == rows["gmrf_mp/1"]["rmse"] and len(rows["gmrf_mp/2"]["peak_rss_gib"]) == 2
    )
