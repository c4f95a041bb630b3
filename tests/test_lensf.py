"""The localised ensemble score filter (``filter=lensf``): with one Gaussian (bandwidth 1) it is the
LETKF, member for member; from rotated starts it keeps the LETKF's mean and covariance; with a
mixture prior it samples the mixture's exact posterior on a bimodal case where the LETKF cannot."""

import math

import pytest
import torch
from test_letkf import _case

from scoreda.filters.lensf import LEnSF
from scoreda.filters.letkf import LETKF
from scoreda.observations import PointObservation

GEOMETRY = dict(cutoff=3.0, dx=1.0, domain=(8.0, 8.0))


@pytest.mark.parametrize("transform", ["linear", "arctan"])
@pytest.mark.parametrize("cross_level, n_steps", [(1.0, 1), (0.5, 7)])
def test_one_gaussian_is_the_letkf_member_for_member(transform, cross_level, n_steps):
    """bandwidth = 1: the transport's steps telescope to x̄ + Xbᵀ(w̄ + W) for any n_steps. In float64
    both compute the same K×K (K = 9) eigenproblems in another order, so they agree to ~1e-13 of the
    unit spread; 1e-9 leaves room for the conditioning of eigh."""
    prior, y, op = _case((2, 8, 8), M=10, every=2, transform=transform, seed=4)
    keys = dict(rtps=0.2, rtpp=0.3, inflation=1.1)
    want = LETKF(**GEOMETRY, cross_level=cross_level, **keys).analyse(prior, y, op).ensemble
    localiser = LETKF(**GEOMETRY, cross_level=cross_level)  # its geometry only
    got = LEnSF(n_steps=n_steps, localiser=localiser, **keys).analyse(prior, y, op).ensemble
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("start", ["members", "rotated"])
def test_the_transport_at_one_gaussian_is_the_square_root(start):
    """The probability-flow ODE (used for b² < 1) against the closed form ``analyse`` takes at b² = 1
    from the members' own starts: member for member, or with the members mixed by the rotation."""
    prior, y, op = _case((2, 8, 8), M=10, every=2, transform="linear", seed=4)
    filt = LEnSF(localiser=LETKF(**GEOMETRY), n_steps=3)
    mean, U, sums, x = filt.localiser.ensemble_space(prior, y, op)
    s, xb = sums[:, 0].T, x[0]
    members = 3.0 * U  # √K U, K = 9
    R = filt.rotation(9, torch.Generator().manual_seed(3)) if start == "rotated" else torch.eye(9).double()
    got = filt.transport(s, xb, members=members, starts=members @ R)
    want = filt.square_root(s, xb, U)
    if start == "rotated":  # the same mean and covariance at every point
        got, want = got - got.mean(-1, keepdim=True), want - want.mean(-1, keepdim=True)
        torch.testing.assert_close(got @ got.mT, want @ want.mT, rtol=0, atol=1e-9)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def _kalman(prior, y, op, white):
    """Mean and covariance of the exact Gaussian posterior with B = Pᶠ + σ_w² I (linear h, global)."""
    xb = prior - prior.mean(0)
    d = prior.shape[1]
    B = xb.T @ xb / (len(prior) - 1) + white * torch.eye(d, dtype=prior.dtype)
    H = torch.eye(d, dtype=prior.dtype)[op.indices]
    gain = B @ H.T @ torch.linalg.inv(H @ B @ H.T + op.sigma**2 * torch.eye(len(y), dtype=prior.dtype))
    return prior.mean(0) + gain @ (y - H @ prior.mean(0)), B - gain @ H @ B


@pytest.mark.parametrize("every", [1, 2])
def test_the_white_part_gives_the_exact_posterior_of_the_hybrid_prior(every):
    """White part σ_w² = 2.5 without localisation: the prior is Pᶠ + σ_w² I, and integrating e out
    then drawing it given ũ is exact for points observed once, so the analysis mean is the Kalman
    mean to round-off (float64: 1e-10), observed and unobserved points alike; the covariance is
    exact in expectation: each entry within 4.5 standard errors of a sample covariance of 2000
    draws, ((Σ_ii Σ_jj + Σ_ij²)/M)^½ (measured with noise seeds 0–7: at most 3.05)."""
    prior, y, op = _case((1, 4, 4), M=2000, every=every, transform="linear", seed=6)
    filt = LEnSF(white=2.5, rtps=0.0, localiser=LETKF(cutoff=None, rtps=0.0))
    got = filt.analyse(prior, y, op, torch.Generator().manual_seed(0))
    mean, cov = _kalman(prior, y, op, 2.5)
    torch.testing.assert_close(got.ensemble.mean(0), mean, rtol=0, atol=1e-10)
    var = cov.diagonal()
    standard_error = ((var[:, None] * var[None, :] + cov**2) / len(prior)).sqrt()
    assert float(((got.ensemble.T.cov() - cov) / standard_error).abs().max()) < 4.5
    assert got.diagnostics["white"] == 2.5
    none = LEnSF(rtps=0.0, localiser=LETKF(cutoff=None, rtps=0.0)).analyse(prior, y, op)
    assert (none.ensemble.mean(0) - mean).abs().max() > 0.1  # without it: the ensemble's posterior


def test_adaptive_white_finds_a_shock_and_corrects_it():
    """The forecast mean is off by white noise of variance 9 that the ensemble (spread 1) does not
    know: the innovations give σ_w² ≈ 9 − 1 (the ensemble's own variance is taken as part of the
    error; 1024 observations: within 1.5), and the analysis error is near that of a per-point update
    (σo·3/(σo² + 9)^½ ≈ 0.68 at σo = 0.7), far below the LETKF's."""
    g = torch.Generator().manual_seed(7)
    prior, _, op = _case((1, 32, 32), M=20, every=1, transform="linear", seed=7)
    truth = prior.mean(0) + 3.0 * torch.randn(prior.shape[1], generator=g, dtype=torch.float64)
    y = op.sample(truth, g)
    letkf = LETKF(cutoff=6.0, dx=1.0, domain=(32.0, 32.0), rtps=0.0)
    got = LEnSF(adaptive_white=True, rtps=0.0, localiser=letkf).analyse(prior, y, op, g)
    assert got.diagnostics["white"] == pytest.approx(8.0, abs=1.5)
    rmse = float((got.ensemble.mean(0) - truth).square().mean().sqrt())
    base = float((letkf.analyse(prior, y, op).ensemble.mean(0) - truth).square().mean().sqrt())
    assert rmse < 0.75 and base > 1.7  # measured: 0.664 and 1.890


def test_rotated_starts_keep_the_letkf_mean_and_covariance():
    prior, y, op = _case((2, 8, 8), M=10, every=2, transform="linear", seed=5)
    want = LETKF(**GEOMETRY, rtps=0.0).analyse(prior, y, op).ensemble
    filt = LEnSF(start="rotated", localiser=LETKF(**GEOMETRY, rtps=0.0), rtps=0.0)
    got = filt.analyse(prior, y, op, torch.Generator().manual_seed(2)).ensemble
    assert (got - want).abs().max() > 0.1  # other members
    torch.testing.assert_close(got.mean(0), want.mean(0), rtol=0, atol=1e-9)
    ga, wa = got - got.mean(0), want - want.mean(0)
    torch.testing.assert_close(ga.T @ ga, wa.T @ wa, rtol=0, atol=1e-8)  # the whole covariance


def _bimodal(M=400):
    """One state value, members from ½N(−2, 0.3²) + ½N(2, 0.3²), one observation y = 1, σo = 0.5."""
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(M, generator=g) < 0.5, -2.0, 2.0) + 0.3 * torch.randn(M, generator=g)
    op = PointObservation(torch.tensor([0]), sigma=0.5, d=1)
    return x.double()[:, None], torch.tensor([1.0], dtype=torch.float64), op


def _exact(prior, y, sigma, b2):
    """Mean and std of the posterior of the mixture prior (1/M) Σ N(x̄ + a(x_m − x̄), b² σf²) in
    closed form (a Gaussian mixture)."""
    M = len(prior)
    x, xbar, sf2 = prior[:, 0], prior.mean(), prior.var()
    a = math.sqrt((1 - b2) * M / (M - 1))
    centre, v = xbar + a * (x - xbar), b2 * sf2
    s = 1 / (1 / v + 1 / sigma**2)
    mu = s * (centre / v + y / sigma**2)
    w = torch.softmax(-0.5 * (y - centre) ** 2 / (v + sigma**2), 0)
    mean = (w * mu).sum()
    return float(mean), float(((w * (s + mu**2)).sum() - mean**2).sqrt())


@pytest.mark.parametrize("b2", [0.3, 0.1])
def test_a_mixture_prior_samples_its_exact_posterior_from_rotated_starts(b2):
    """The LETKF's Gaussian posterior has mean 0.944 here; the mixture's posterior moves toward the
    mode near the observation (1.054 at b² = 0.3, 1.302 at 0.1). 400 members from rotated starts,
    40 steps: mean within 0.02 and std within 0.03 of it (measured with rotation seeds 1–3: at most
    0.011 and 0.018 off); from the members' own starts the mixture is not reweighted (mean 0.22 and
    0.67 off), and the LETKF's Gaussian is 0.11 and 0.36 off."""
    prior, y, op = _bimodal()
    mean, sd = _exact(prior, y, op.sigma, b2)
    letkf = LETKF(cutoff=None, rtps=0.0)
    filt = LEnSF(bandwidth=b2, n_steps=40, start="rotated", rtps=0.0, localiser=letkf)
    got = filt.analyse(prior, y, op, torch.Generator().manual_seed(1)).ensemble[:, 0]
    assert float(got.mean()) == pytest.approx(mean, abs=0.02)
    assert float(got.std()) == pytest.approx(sd, abs=0.03)
    own = LEnSF(bandwidth=b2, n_steps=40, rtps=0.0, localiser=letkf).analyse(prior, y, op).ensemble
    assert abs(float(own.mean()) - mean) > 0.15
    assert abs(float(letkf.analyse(prior, y, op).ensemble.mean()) - mean) > 0.08


def test_bad_keys_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^filter\.bandwidth: must be in \(0, 1\]"):
        LEnSF(bandwidth=0.0)
    with pytest.raises(ValueError, match=r"^filter\.start: expected members or rotated"):
        LEnSF(start="noise")
    with pytest.raises(ValueError, match=r"^filter\.white: must be ≥ 0"):
        LEnSF(white=-1.0)
    with pytest.raises(ValueError, match=r"^filter=lensf: no localiser"):
        LEnSF().analyse(
            torch.zeros(3, 4), torch.zeros(1), PointObservation(torch.tensor([0]), sigma=1.0, d=4)
        )
