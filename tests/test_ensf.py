"""EnSF: linear-Gaussian posterior, reproducibility, stability with sharp likelihoods."""

import pytest
import torch

from scoreda.filters import inflate, relax_spread
from scoreda.filters.ensf import EnSF
from scoreda.observations import make_observation_operator


def linear_gaussian(prior_std: float, d: int = 2000, M: int = 20, sigma: float = 1.0, seed: int = 0):
    """Prior members N(3, prior_std²) per dimension, every dimension observed with error σ."""
    g = torch.Generator().manual_seed(seed)
    prior = prior_std * torch.randn(M, d, generator=g) + 3.0
    truth = prior_std * torch.randn(d, generator=g) + 3.0
    op = make_observation_operator({"kind": "identity", "sigma": sigma}, (1, 1, d))
    y = op.sample(truth, g)
    m, v = prior.mean(0), prior.var(0)
    mean_kf = m + v / (v + sigma**2) * (y - m)  # Kalman posterior of the ensemble's own Gaussian
    std_kf = (v * sigma**2 / (v + sigma**2)).sqrt()
    return prior, truth, y, op, mean_kf, std_kf


def rms(x):
    return float(x.pow(2).mean().sqrt())


@pytest.mark.parametrize("prior_score", ["paired", "mixture"])
@pytest.mark.parametrize("prior_std", [0.5, 1.0, 2.0])
def test_linear_gaussian_analysis_moves_to_kalman_posterior(prior_score, prior_std):
    """The analysis mean lands on the Kalman mean up to Monte-Carlo error.

    EnSF draws M fresh posterior samples, so its mean differs from the exact posterior mean by
    about σ_a/√M per dimension even when its distribution is exact; the tolerance is 1.5 σ_KF/√M
    (measured: 0.8–1.2 σ_KF/√M over these cases, d = 2000 so the RMS is itself precise). The
    spread is within [0.9, 1.35]× the Kalman spread (measured 1.03–1.24: ε_β = 0.5 keeps some
    diffusion noise at t = ε), and the RMSE against the truth within 10 % of the Kalman filter's.
    """
    prior, truth, y, op, mean_kf, std_kf = linear_gaussian(prior_std)
    M = prior.shape[0]
    ana = EnSF(prior_score=prior_score, eps_beta=0.5).analyse(prior, y, op, torch.Generator().manual_seed(1))
    err = rms(ana.mean(0) - mean_kf)
    assert err < rms(prior.mean(0) - mean_kf)  # moved toward the posterior
    assert err <= 1.5 * rms(std_kf) / M**0.5, (err, rms(std_kf) / M**0.5)
    assert 0.9 <= rms(ana.std(0)) / rms(std_kf) <= 1.35
    assert rms(ana.mean(0) - truth) <= 1.10 * rms(mean_kf - truth)


def test_seeded_analysis_is_reproducible():
    prior, _, y, op, _, _ = linear_gaussian(1.0, d=300)
    f = EnSF(prior_score="mixture")
    a1 = f.analyse(prior, y, op, torch.Generator().manual_seed(7))
    a2 = f.analyse(prior, y, op, torch.Generator().manual_seed(7))
    a3 = f.analyse(prior, y, op, torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)


@pytest.mark.parametrize("prior_score", ["paired", "mixture"])
def test_sharp_likelihood_stays_finite_with_semi_implicit_step(prior_score):
    """σo = 0.01 against unit prior spread: explicit Euler–Maruyama overflows (checked here), the
    linearly implicit likelihood step stays finite and lands on the observations."""
    prior, _, y, op, mean_kf, _ = linear_gaussian(1.0, d=500, sigma=0.01)
    g = torch.Generator().manual_seed(1)
    explicit = EnSF(prior_score=prior_score, eps_beta=0.025, implicit=False).analyse(prior, y, op, g)
    assert not torch.isfinite(explicit).all()
    ana = EnSF(prior_score=prior_score, eps_beta=0.025).analyse(
        prior, y, op, torch.Generator().manual_seed(1)
    )
    assert torch.isfinite(ana).all()
    assert rms(ana.mean(0) - mean_kf) < 0.01


def test_nonlinear_arctan_observations_reduce_error():
    """h(x) = arctan(x) (likelihood score by autograd): the analysis beats the forecast."""
    g = torch.Generator().manual_seed(0)
    d, M = 1000, 20
    prior = 0.8 * torch.randn(M, d, generator=g)
    truth = 0.8 * torch.randn(d, generator=g)
    op = make_observation_operator({"kind": "identity", "sigma": 0.1, "transform": "arctan"}, (1, 1, d))
    y = op.sample(truth, g)
    ana = EnSF().analyse(prior, y, op, torch.Generator().manual_seed(1))
    assert torch.isfinite(ana).all()
    assert rms(ana.mean(0) - truth) < 0.5 * rms(prior.mean(0) - truth)


def test_partial_observations_leave_unobserved_points_to_the_prior():
    """Unobserved dimensions carry no likelihood: their analysis stays a draw near the prior."""
    prior, truth, _, _, _, _ = linear_gaussian(1.0, d=400)
    op = make_observation_operator({"kind": "subsample", "every": 2, "sigma": 0.5}, (1, 20, 20))
    y = op.sample(truth, torch.Generator().manual_seed(3))
    ana = EnSF().analyse(prior, y, op, torch.Generator().manual_seed(1))
    observed = torch.zeros(400, dtype=torch.bool)
    observed[op.indices] = True
    assert rms(ana.mean(0)[observed] - truth[observed]) < 0.75 * rms(
        prior.mean(0)[observed] - truth[observed]
    )
    assert rms(ana.mean(0)[~observed] - prior.mean(0)[~observed]) < 0.5


def test_rtps_and_inflation():
    g = torch.Generator().manual_seed(0)
    prior = 2.0 * torch.randn(30, 50, generator=g)
    analysis = 0.5 * torch.randn(30, 50, generator=g)
    full = relax_spread(analysis, prior, 1.0)
    assert torch.allclose(full.std(0), prior.std(0), rtol=1e-5)
    assert torch.allclose(full.mean(0), analysis.mean(0), atol=1e-6)
    half = relax_spread(analysis, prior, 0.5)
    assert torch.allclose(half.std(0), 0.5 * (prior.std(0) + analysis.std(0)), rtol=1e-5)
    assert torch.allclose(inflate(prior, 1.1).std(0), 1.1 * prior.std(0), rtol=1e-5)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="filter.prior_score"):
        EnSF(prior_score="exact")
    with pytest.raises(ValueError, match="filter.n_steps"):
        EnSF(n_steps=0)
