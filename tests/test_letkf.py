"""Tests for the LETKF: the batched local analyses (FFT local sums) equal the plain per-point loop
``analyse_point_loop`` for several observation networks, both equal a global ETKF written here for
an infinite cutoff, and the Lorenz-96 benchmark error matches the published value."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from scoreda.dynamics.grid import model_grid
from scoreda.dynamics.lorenz96 import Lorenz96
from scoreda.filters import make_filter
from scoreda.filters.letkf import LETKF, gaspari_cohn
from scoreda.filters.reference import analyse_point_loop
from scoreda.observations import PointObservation, observed_indices
from scoreda.registry import model_config


def gc_reference(z: np.ndarray, c: float) -> np.ndarray:
    """Gaspari & Cohn (1999) eq. 4.10 with half-width c (zero from 2c on), written term by term."""
    r = np.abs(z) / c
    out = np.zeros_like(r)
    a = r <= 1
    ra = r[a]
    out[a] = -0.25 * ra**5 + 0.5 * ra**4 + 0.625 * ra**3 - 5.0 / 3.0 * ra**2 + 1.0
    b = (r > 1) & (r < 2)
    rb = r[b]
    out[b] = (
        rb**5 / 12.0 - 0.5 * rb**4 + 0.625 * rb**3 + 5.0 / 3.0 * rb**2 - 5.0 * rb + 4.0 - 2.0 / (3.0 * rb)
    )
    return out


def _case(shape, M, every, transform, seed=0, kind="subsample"):
    g = torch.Generator().manual_seed(seed)
    C, H, W = shape
    d = C * H * W
    truth = torch.randn(d, generator=g, dtype=torch.float64)
    prior = truth + 0.5 + torch.randn(M, d, generator=g, dtype=torch.float64)
    if kind == "subsample":
        ind = observed_indices("subsample", shape, every=every)
    else:  # stations on all levels, plus a few of them observed twice
        ind = observed_indices("stations", shape, n_stations=9, generator=g)
        ind = torch.cat([ind, ind[::4]])
    op = PointObservation(ind, sigma=0.7, d=d, transform=transform)
    return prior, op.sample(truth, g), op


def test_gaspari_cohn_convention():
    z = torch.linspace(0, 3, 301, dtype=torch.float64)
    got = gaspari_cohn(z, 2.0)
    np.testing.assert_allclose(got.numpy(), gc_reference(z.numpy(), 1.0), atol=1e-12)
    assert got[0] == 1 and float(gaspari_cohn(torch.tensor(1.0, dtype=torch.float64), 2.0)) == pytest.approx(
        5 / 24
    )
    assert (got[z >= 2] == 0).all()


@pytest.mark.parametrize(
    ("transform", "cross_level", "kind"),
    [("linear", 1.0, "subsample"), ("arctan", 0.4, "subsample"), ("linear", 0.4, "stations")],
    ids=["linear", "arctan-cross", "stations-duplicates-cross"],
)
def test_sqg_like_grid_equals_per_point_loop(transform, cross_level, kind):
    shape, L = (2, 8, 8), 8000.0  # km; dx = 1000 km
    prior, y, op = _case(shape, M=10, every=2, transform=transform, kind=kind)
    filt = LETKF(cutoff=3500.0, cross_level=cross_level, inflation=1.1, dx=L / 8, domain=(L, L), rtps=0.0)
    got = filt.analyse(prior, y, op).ensemble
    want = analyse_point_loop(filt, prior, y, op)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(filt.analyse(prior, y, op).ensemble, got)  # cached FFT of the taper table
    chunked = dataclasses.replace(filt, chunk_elements=1000)  # many FFT and eigh batches
    torch.testing.assert_close(chunked.analyse(prior, y, op).ensemble, got)
    table = filt.taper_table(8, 8)  # one table for the whole grid: GC of the periodic offset (i, j)
    i = np.minimum(np.arange(8), 8 - np.arange(8))
    np.testing.assert_allclose(
        table.numpy(), gc_reference(1000.0 * np.hypot(i[:, None], i), 1750.0), atol=1e-12
    )
    # float32 in, float32 out, close to the float64 analysis
    got32 = filt.analyse(prior.float(), y.float(), op).ensemble
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got, atol=1e-4, rtol=0)


def test_lorenz96_equals_per_point_loop():
    shape = (1, 1, 40)
    prior, y, op = _case(shape, M=7, every=2, transform="linear", seed=1)
    filt = LETKF.from_config(
        {"name": "letkf", "cutoff": 4 * 3.64, "inflation": 1.04, "rtpp": 0.3},
        model_grid(model_config("lorenz96", size=40)),
    )
    got = filt.analyse(prior, y, op).ensemble
    want = analyse_point_loop(filt, prior, y, op)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("loop", [False, True], ids=["batched", "point-loop"])
@pytest.mark.parametrize("cutoff", [math.inf, None])
def test_infinite_cutoff_is_global_etkf(cutoff, loop):
    shape = (2, 8, 8)
    prior, y, op = _case(shape, M=10, every=2, transform="linear", seed=2)
    filt = LETKF(cutoff=cutoff, dx=1.0, domain=(8.0, 8.0), rtps=0.0)
    got = analyse_point_loop(filt, prior, y, op) if loop else filt.analyse(prior, y, op).ensemble
    # global ETKF in matrix form
    x = prior.numpy()
    mean = x.mean(0)
    xb = x - mean
    hx = op(prior).numpy()
    yb, dy = hx - hx.mean(0), y.numpy() - hx.mean(0)
    M = x.shape[0]
    a = (M - 1) * np.eye(M) + yb @ yb.T / op.sigma**2
    pa = np.linalg.inv(a)
    wbar = pa @ yb @ dy / op.sigma**2
    lam, v = np.linalg.eigh((M - 1) * pa)
    want = mean + (v * np.sqrt(lam) @ v.T + wbar[:, None]).T @ xb
    torch.testing.assert_close(got, torch.from_numpy(want), atol=1e-5, rtol=0)


def test_mda_relinearises_and_is_one_analysis_for_a_linear_h():
    """``mda=4``: four analyses with σo·2 in turn. For a linear h without localisation they compose to
    the one-step analysis (member for member: the symmetric square roots of one family; measured
    4e-15); for arctan each pass relinearises h over the updated ensemble, so the result differs;
    mda < 1 is a one-line error."""
    prior, y, op = _case((2, 8, 8), M=10, every=2, transform="linear", seed=4)
    one = LETKF(cutoff=None, rtps=0.0).analyse(prior, y, op).ensemble
    four = LETKF(cutoff=None, rtps=0.0, mda=4).analyse(prior, y, op).ensemble
    torch.testing.assert_close(four, one, rtol=0, atol=1e-12)
    prior, y, op = _case((2, 8, 8), M=10, every=2, transform="arctan", seed=4)
    one = LETKF(cutoff=None, rtps=0.0).analyse(prior, y, op).ensemble
    four = LETKF(cutoff=None, rtps=0.0, mda=4).analyse(prior, y, op).ensemble
    assert float((four - one).abs().max()) > 1e-3
    with pytest.raises(ValueError, match=r"^filter\.mda: must be ≥ 1, got 0$"):
        LETKF(cutoff=None, mda=0)


def test_obs_inflation_is_the_update_with_r_inflated():
    """``obs_inflation=k``: the local analyses of an observation error σo √k (R × k), as with an
    operator of that σo (to round-off: σo √(mda k) is rounded once, not twice); ≤ 0 is a one-line
    error."""
    prior, y, op = _case((2, 8, 8), M=10, every=2, transform="arctan", seed=5)
    wide = dataclasses.replace(op, sigma=op.sigma * math.sqrt(3.0))
    kw = dict(cutoff=None, rtps=0.3, mda=2)
    got = LETKF(**kw, obs_inflation=3.0).analyse(prior, y, op).ensemble
    torch.testing.assert_close(got, LETKF(**kw).analyse(prior, y, wide).ensemble, rtol=0, atol=1e-12)
    assert float((got - LETKF(**kw).analyse(prior, y, op).ensemble).abs().max()) > 1e-2
    with pytest.raises(ValueError, match=r"^filter\.obs_inflation: must be positive, got 0$"):
        LETKF(cutoff=None, obs_inflation=0)


def test_relaxations_keep_the_mean_and_make_filter_builds_it():
    prior, y, op = _case((2, 8, 8), M=10, every=2, transform="linear", seed=3)
    base = LETKF(cutoff=3.0, dx=1.0, domain=(8.0, 8.0), rtps=0.0).analyse(prior, y, op).ensemble
    for kw in ({"rtpp": 0.5}, {"rtps": 0.5}):
        relaxed = (
            LETKF(cutoff=3.0, dx=1.0, domain=(8.0, 8.0), **({"rtps": 0.0} | kw))
            .analyse(prior, y, op)
            .ensemble
        )
        torch.testing.assert_close(relaxed.mean(0), base.mean(0))
        assert (relaxed.std(0) >= base.std(0) - 1e-9).all()
    cfg = OmegaConf.create({"name": "letkf", "cutoff": 2000.0, "cross_level": 1.0, "rtps": 0.3})
    filt = make_filter(cfg, model_grid(model_config("sqg", N=64, L=20.0e6)))
    assert isinstance(filt, LETKF) and filt.dx == pytest.approx(312.5) and filt.domain == (20000.0, 20000.0)
    assert filt.grid(2 * 64 * 64) == (2, 64, 64)
    qg = make_filter(cfg, model_grid(model_config("qg2l", nx=32, L=1.0e6)))
    assert qg.dx == pytest.approx(31.25)
    with pytest.raises(ValueError, match="cutoff"):
        LETKF(cutoff=-1.0, dx=1.0, domain=(8.0, 8.0), rtps=0.0)


@pytest.mark.slow
def test_lorenz96_benchmark_rmse():
    """DAPPER's Sakov et al. (2008) Lorenz-96 setting: LETKF, N=7, infl=1.04, loc_rad=4 → RMSE ≈ 0.22.

    DAPPER's GC taper has half-width c = 1.82·loc_rad (coefficient e^{-1/2} at loc_rad), so it
    reaches zero at 2c = 3.64·loc_rad: our cutoff is 14.56 grid points."""
    model = Lorenz96()
    g = torch.Generator().manual_seed(42)
    n_cycles, burn_in = 4000, 500
    truth = model.step(model.initial_state(g), 1000)
    ens = model.step(truth + torch.randn(7, 1, 1, 40, generator=g), 1000)  # climatological-ish members
    op = PointObservation(torch.arange(40), sigma=1.0, d=40)
    filt = LETKF(cutoff=4 * 3.64, inflation=1.04, dx=1.0, domain=(1.0, 40.0), rtps=0.0)
    errors = []
    for k in range(n_cycles):
        truth = model.step(truth, model.steps_per_cycle)
        ens = model.step(ens, model.steps_per_cycle)
        y = op.sample(truth.reshape(40).double(), g)
        post = filt.analyse(ens.reshape(7, 40).double(), y, op).ensemble
        ens = post.float().reshape(7, 1, 1, 40)
        if k >= burn_in:
            errors.append(float((post.mean(0) - truth.reshape(40)).pow(2).mean().sqrt()))
    rmse = float(np.mean(errors))
    print(f"Lorenz-96 LETKF analysis RMSE {rmse:.4f} over {len(errors)} cycles")
    assert abs(rmse - 0.22) <= 0.15 * 0.22
