"""Observation operators and the likelihood score."""

import math

import pytest
import torch

from scoreda.observations import (
    ObservationParams,
    make_observation_operator,
    observed_indices,
    slice_observation_operator,
)

SHAPE = (2, 8, 8)


def test_identity_subsample_stations_indices():
    assert observed_indices("identity", SHAPE).tolist() == list(range(128))
    sub = observed_indices("subsample", SHAPE, every=4)
    assert sub.numel() == 2 * 2 * 2
    assert sub.tolist() == [0, 4, 32, 36, 64, 68, 96, 100]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    st1 = observed_indices("stations", SHAPE, n_stations=10, generator=g1)
    st2 = observed_indices("stations", SHAPE, n_stations=10, generator=g2)
    assert torch.equal(st1, st2) and st1.numel() == 20  # fixed by the seed, both levels
    assert torch.equal(st1[10:] - st1[:10], torch.full((10,), 64))  # same positions on each level


def test_bad_subsample_and_stations_name_the_key():
    with pytest.raises(ValueError, match="observation.every"):
        observed_indices("subsample", SHAPE, every=3)
    with pytest.raises(ValueError, match="observation.n_stations"):
        observed_indices("stations", SHAPE, n_stations=0)
    with pytest.raises(ValueError, match="observation.kind"):
        observed_indices("radar", SHAPE)


@pytest.mark.parametrize(
    "kind,transform",
    [("identity", "linear"), ("subsample", "linear"), ("identity", "arctan"), ("stations", "arctan")],
)
def test_likelihood_score_is_gradient_of_log_likelihood(kind, transform):
    cfg = {"kind": kind, "every": 2, "n_stations": 7, "sigma": 0.7, "transform": transform}
    op = make_observation_operator(cfg, SHAPE, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 128, generator=g, dtype=torch.float64)
    y = op.sample(torch.randn(128, generator=g, dtype=torch.float64), g)
    score = op.likelihood_score(x, y)
    # closed form Hᵀ g'(x) (y − g(x)) / σ²
    gx = x[:, op.indices]
    dg = torch.ones_like(gx) if transform == "linear" else 1.0 / (1.0 + gx**2)
    expect = torch.zeros_like(x)
    expect[:, op.indices] = dg * (y - op(x)) / 0.7**2
    assert torch.allclose(score, expect, atol=1e-12)
    curv = op.curvature(x)
    expect_c = torch.zeros(x.shape if transform == "arctan" else x.shape[1:], dtype=x.dtype)
    expect_c[..., op.indices] = (dg if transform == "arctan" else dg[0]) ** 2 / 0.7**2
    assert torch.allclose(curv, expect_c, atol=1e-12)


def test_synthetic_observation_errors_have_sigma():
    op = make_observation_operator({"kind": "identity", "sigma": 2.0}, (1, 100, 100))
    truth = torch.zeros(10000)
    y = op.sample(truth, torch.Generator().manual_seed(0))
    assert abs(float(y.std()) - 2.0) < 0.05


def test_to_grid_places_observations_and_nan_elsewhere():
    op = make_observation_operator({"kind": "subsample", "every": 4, "sigma": 1.0}, SHAPE)
    grid = op.to_grid(torch.arange(8.0), SHAPE)
    assert int(torch.isfinite(grid).sum()) == 8
    assert grid[1, 4, 4] == 7.0 and torch.isnan(grid[0, 1, 1])


@pytest.mark.parametrize("shape", [(2, 8, 12), (1, 1, 40), (3, 6, 6)])
@pytest.mark.parametrize(
    "cfg",
    [
        {"kind": "identity"},
        {"kind": "subsample", "every": 2},
        {"kind": "identity", "channels": [0]},
        {"kind": "subsample", "every": 2, "channels": [0]},
        {"kind": "stations", "n_stations": 5},
    ],
)
def test_a_slice_of_the_operator_without_the_whole_index_vector(shape, cfg):
    """``slice_observation_operator`` = the whole operator restricted, and its offset in y = the
    observations before the slice; ``n_observed`` = p."""
    whole = make_observation_operator(cfg, shape, torch.Generator().manual_seed(1))
    assert ObservationParams.from_config(cfg).n_observed(shape) == whole.n_obs
    d = math.prod(shape)
    for start, stop in [(0, d), (0, 1), (3, 17), (5, d), (d - 1, d), (7, 8), (13, 29)]:
        sub, keep = whole.restrict(start, stop)
        got, lo = slice_observation_operator(cfg, shape, slice(start, stop), torch.Generator().manual_seed(1))
        assert torch.equal(got.indices, sub.indices) and got.d == stop - start
        assert lo == int((whole.indices < start).sum())
