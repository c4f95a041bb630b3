"""EnSF with ``standardise=spectral`` (homogeneous correlations per wavenumber) and ``cap_spread``:
observations spread to their unobserved neighbours, scales weighed against σo, stability of the
conjugate-gradient implicit step, nonlinear observations, errors for what it cannot do."""

import pytest
import torch
from test_ensf import rms, smooth_ensemble

from scoreda.filters.ensf import EnSF
from scoreda.filters.processing import cap_spread
from scoreda.observations import make_observation_operator

GRID = (2, 16, 16)


def observed(n: int, every: int, sigma: float, scale: float = 1.0, transform: str = "linear", length=None):
    """Prior, truth, obs y, operator and the observed mask on a correlated field on 2×n×n."""
    prior, truth = smooth_ensemble(n=n, length=length or n / 6)
    prior, truth = scale * prior, scale * truth
    kind = {"kind": "subsample", "every": every} if every > 1 else {"kind": "identity"}
    op = make_observation_operator({**kind, "sigma": sigma, "transform": transform}, (2, n, n))
    y = op.sample(truth, torch.Generator().manual_seed(1))
    seen = torch.zeros(prior.shape[1], dtype=torch.bool)
    seen[op.indices] = True
    return prior, truth, y, op, seen


def analyse(prior, y, op, n: int, **kw):
    return (
        EnSF(grid=(2, n, n), **({"adaptive_inflation": False, "unobserved": "none"} | kw))
        .analyse(prior, y, op, torch.Generator().manual_seed(2))
        .ensemble
    )


def test_every_4th_point_observed_corrects_the_unobserved_points():
    """Measured: prior error 1.05; point 1.07 at the unobserved points (untouched), spectral 0.35;
    at the observed points both ≈ 0.29."""
    prior, truth, y, op, seen = observed(16, 4, 0.3)
    err0 = rms(prior.mean(0)[~seen] - truth[~seen])
    point = analyse(prior, y, op, 16, adaptive_inflation=True, unobserved="none")
    spec = analyse(prior, y, op, 16, adaptive_inflation=True, unobserved="none", standardise="spectral")
    assert rms(point.mean(0)[~seen] - truth[~seen]) > 0.95 * err0
    assert rms(spec.mean(0)[~seen] - truth[~seen]) < 0.45 * err0
    assert rms(spec.mean(0)[seen] - truth[seen]) < 1.15 * rms(point.mean(0)[seen] - truth[seen])


@pytest.mark.parametrize("prior_score", ["paired", "mixture"])
def test_full_observations_are_filtered_scale_by_scale(prior_score):
    """Every point observed with σo = 0.5 on a smooth field: the per-point update keeps the
    observation noise of every scale (0.46), the spectral one keeps it only where the prior has
    variance (0.15)."""
    prior, truth, y, op, _ = observed(16, 1, 0.5)
    point = analyse(prior, y, op, 16, prior_score=prior_score, adaptive_inflation=True)
    spec = analyse(prior, y, op, 16, prior_score=prior_score, adaptive_inflation=True, standardise="spectral")
    assert rms(spec.mean(0) - truth) < 0.5 * rms(point.mean(0) - truth)
    assert rms(spec.mean(0) - truth) < 0.2


def test_sharp_sparse_likelihood_is_stable():
    """σo = 0.01 against a prior spread of 10 at every 2nd point: the curvature in z is far from the
    preconditioner's diagonal; the conjugate-gradient implicit step keeps the analysis finite and on
    the observations."""
    prior, truth, y, op, seen = observed(32, 2, 0.01, scale=10.0)
    ana = analyse(prior, y, op, 32, standardise="spectral", adaptive_inflation=True)
    assert bool(ana.isfinite().all())
    assert rms(ana.mean(0)[seen] - truth[seen]) < 0.05
    assert rms(ana.mean(0)[~seen] - truth[~seen]) < 0.05 * rms(prior.mean(0) - truth)


def test_arctan_observations_reduce_the_error():
    prior, truth, y, op, seen = observed(16, 2, 0.05, scale=3.0, transform="arctan")
    spec = analyse(prior, y, op, 16, standardise="spectral", adaptive_inflation=True)
    assert bool(spec.isfinite().all())
    assert rms(spec.mean(0) - truth) < 0.3 * rms(prior.mean(0) - truth)


def test_cap_spread_never_widens_a_component():
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(20, 500, generator=g)
    analysis = torch.randn(20, 500, generator=g) * torch.linspace(0.2, 2.0, 500) + 1.0
    capped = cap_spread(analysis, prior)
    assert torch.allclose(capped.mean(0), analysis.mean(0), atol=1e-6)
    assert bool((capped.std(0) <= prior.std(0) * (1 + 1e-5)).all())
    narrow = analysis.std(0) < prior.std(0)
    assert torch.allclose(capped[:, narrow], analysis[:, narrow])
    # in the filter: unobserved points keep at most the (inflated) forecast spread
    prior, truth, y, op, seen = observed(16, 4, 0.3)
    kw = dict(adaptive_inflation=False, unobserved="none")
    wide = analyse(prior, y, op, 16, **kw)
    assert float(wide.std(0)[~seen].mean()) > 1.1 * float(prior.std(0)[~seen].mean())  # (1 + ε_β)^½
    held = analyse(prior, y, op, 16, cap_spread=True, **kw)
    assert bool((held.std(0) <= prior.std(0) * (1 + 1e-5)).all())


def test_what_spectral_cannot_do_is_a_clear_error():
    prior, truth, y, op, _ = observed(16, 4, 0.3)
    with pytest.raises(ValueError, match="filter.standardise: expected point or spectral"):
        EnSF(standardise="wavelet", adaptive_inflation=False, unobserved="none")
    with pytest.raises(ValueError, match="filter.standardise=spectral: no grid"):
        EnSF(n_steps=2, standardise="spectral", adaptive_inflation=False, unobserved="none").analyse(
            prior, y, op
        )
    with pytest.raises(ValueError, match="does not fit the grid"):
        EnSF(
            n_steps=2, standardise="spectral", grid=(1, 8, 8), adaptive_inflation=False, unobserved="none"
        ).analyse(prior, y, op)


def test_from_config_takes_the_grid_of_the_model():
    from omegaconf import OmegaConf

    from scoreda.dynamics.grid import model_grid
    from scoreda.filters import make_filter
    from scoreda.registry import model_config

    cfg = OmegaConf.create({"name": "ensf", "standardise": "spectral", "unobserved": "none", "n_steps": 20})
    sqg = make_filter(cfg, model_grid(model_config("sqg", N=16, L=20.0e6)))
    assert sqg.grid == (2, 16, 16)
    l96 = make_filter(cfg, model_grid(model_config("lorenz96", size=40)))
    assert l96.grid == (1, 1, 40)  # a 1-D periodic grid: the DFT along it
    g = torch.Generator().manual_seed(0)
    x = torch.cumsum(torch.randn(21, 40, generator=g), 1)  # correlated neighbours
    prior, truth = x[:20], x[20]
    op = make_observation_operator({"kind": "subsample", "every": 2, "sigma": 0.3}, (1, 1, 40))
    ana = l96.analyse(prior, op.sample(truth, g), op, torch.Generator().manual_seed(1)).ensemble
    assert rms(ana.mean(0) - truth) < 0.5 * rms(prior.mean(0) - truth)
