"""EnSF: linear-Gaussian posterior, reproducibility, stability with sharp likelihoods; its
counter-based noise; the pieces of sharding (blocks, observation operators on a slice)."""

import math

import pytest
import torch
from scipy import stats

from scoreda.filters.ensf import EnSF
from scoreda.filters.processing import inflate, relax_spread
from scoreda.filters.sharding import block, check_sharding
from scoreda.observations import make_observation_operator
from scoreda.seeding import _GAMMA, counter_bits, counter_normal, mix64_int, stream_seed


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
    ana = (
        EnSF(prior_score=prior_score, eps_beta=0.5, adaptive_inflation=False, unobserved="none")
        .analyse(prior, y, op, torch.Generator().manual_seed(1))
        .ensemble
    )
    err = rms(ana.mean(0) - mean_kf)
    assert err < rms(prior.mean(0) - mean_kf)  # moved toward the posterior
    assert err <= 1.5 * rms(std_kf) / M**0.5, (err, rms(std_kf) / M**0.5)
    assert 0.9 <= rms(ana.std(0)) / rms(std_kf) <= 1.35
    assert rms(ana.mean(0) - truth) <= 1.10 * rms(mean_kf - truth)


def test_seeded_analysis_is_reproducible():
    prior, _, y, op, _, _ = linear_gaussian(1.0, d=300)
    f = EnSF(prior_score="mixture", adaptive_inflation=False, unobserved="none")
    a1 = f.analyse(prior, y, op, torch.Generator().manual_seed(7)).ensemble
    a2 = f.analyse(prior, y, op, torch.Generator().manual_seed(7)).ensemble
    a3 = f.analyse(prior, y, op, torch.Generator().manual_seed(8)).ensemble
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)


@pytest.mark.parametrize("prior_score", ["paired", "mixture"])
def test_sharp_likelihood_stays_finite_with_semi_implicit_step(prior_score):
    """σo = 0.01 against unit prior spread: explicit Euler–Maruyama overflows (checked here), the
    linearly implicit likelihood step stays finite and lands on the observations."""
    prior, _, y, op, mean_kf, _ = linear_gaussian(1.0, d=500, sigma=0.01)
    g = torch.Generator().manual_seed(1)
    explicit = (
        EnSF(
            prior_score=prior_score,
            eps_beta=0.025,
            implicit=False,
            adaptive_inflation=False,
            unobserved="none",
        )
        .analyse(prior, y, op, g)
        .ensemble
    )
    assert not torch.isfinite(explicit).all()
    ana = (
        EnSF(prior_score=prior_score, eps_beta=0.025, adaptive_inflation=False, unobserved="none")
        .analyse(prior, y, op, torch.Generator().manual_seed(1))
        .ensemble
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
    ana = (
        EnSF(adaptive_inflation=False, unobserved="none")
        .analyse(prior, y, op, torch.Generator().manual_seed(1))
        .ensemble
    )
    assert torch.isfinite(ana).all()
    assert rms(ana.mean(0) - truth) < 0.5 * rms(prior.mean(0) - truth)


def test_partial_observations_leave_unobserved_points_to_the_prior():
    """Unobserved dimensions carry no likelihood: their analysis stays a draw near the prior."""
    prior, truth, _, _, _, _ = linear_gaussian(1.0, d=400)
    op = make_observation_operator({"kind": "subsample", "every": 2, "sigma": 0.5}, (1, 20, 20))
    y = op.sample(truth, torch.Generator().manual_seed(3))
    ana = (
        EnSF(adaptive_inflation=False, unobserved="none")
        .analyse(prior, y, op, torch.Generator().manual_seed(1))
        .ensemble
    )
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
        EnSF(prior_score="exact", adaptive_inflation=False, unobserved="none")
    with pytest.raises(ValueError, match="filter.n_steps"):
        EnSF(n_steps=0, adaptive_inflation=False, unobserved="none")


# ------------------------------------------------------------------------------ counter-based noise


def test_counter_bits_match_python_integer_reference():
    """The int64 tensor hash wraps like unsigned 64-bit arithmetic (checked against Python ints)."""
    key, step = stream_seed(3, 17, "analysis"), 42
    rows, cols = range(5, 9), range(1000, 1100)
    bits = counter_bits(key, step, rows, cols)
    k = mix64_int(mix64_int(key) + (step + 1) * _GAMMA)
    for i in rows:
        b = mix64_int(k + (i + 1) * _GAMMA)
        expect = [mix64_int(b + (j + 1) * _GAMMA) for j in cols]
        got = [v & (2**64 - 1) for v in bits[i - rows.start].tolist()]
        assert got == expect


def test_counter_normal_moments_and_distribution():
    """10⁶ draws: mean, variance, skewness, excess kurtosis within 5 standard errors of N(0, 1); KS test."""
    x = counter_normal(1234, 7, range(0, 200), range(0, 5000), dtype=torch.float64).reshape(-1)
    n = x.numel()
    assert abs(float(x.mean())) < 5 / math.sqrt(n)
    assert abs(float(x.var()) - 1) < 5 * math.sqrt(2 / n)
    xs = x.numpy()
    assert abs(stats.skew(xs)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(xs)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(xs[:200_000], "norm").pvalue > 1e-4
    assert float(x.abs().max()) < 5.8  # 24-bit uniforms cut the tails at √(2 ln 2²⁴)


@pytest.mark.parametrize(
    "neighbour",
    [
        lambda k, s, r, c: counter_normal(k, s, range(r.start, r.stop), range(c.start + 1, c.stop + 1)),
        lambda k, s, r, c: counter_normal(k, s, range(r.start + 1, r.stop + 1), range(c.start, c.stop)),
        lambda k, s, r, c: counter_normal(k, s + 1, r, c),
        lambda k, s, r, c: counter_normal(k + 1, s, r, c),
        lambda k, s, r, c: counter_normal(
            k, s, range(r.start + 1, r.stop + 1), range(c.start - 1, c.stop - 1)
        ),
    ],
    ids=["next-state-index", "next-member", "next-step", "next-key", "diagonal"],
)
def test_counter_normal_neighbours_are_uncorrelated(neighbour):
    key, step, rows, cols = 99, 3, range(0, 100), range(1, 4001)
    a = counter_normal(key, step, rows, cols, dtype=torch.float64).reshape(-1)
    b = neighbour(key, step, rows, cols).double().reshape(-1)
    rho = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(rho) < 5 / math.sqrt(a.numel()), rho
    # dependence beyond correlation: |a| and |b| (variance clustering) uncorrelated too
    rho_abs = float(torch.corrcoef(torch.stack([a.abs(), b.abs()]))[0, 1])
    assert abs(rho_abs) < 5 / math.sqrt(a.numel()), rho_abs


def test_counter_normal_blocks_equal_the_whole():
    """Any split over members or state indices draws exactly the numbers of the whole array."""
    whole = counter_normal(5, 11, range(0, 20), range(0, 1000))
    for parts in (2, 3, 7):
        for r in range(parts):
            rows, cols = block(20, parts, r), block(1000, parts, r)
            assert torch.equal(counter_normal(5, 11, rows, range(0, 1000)), whole[rows])
            assert torch.equal(counter_normal(5, 11, range(0, 20), cols), whole[:, cols])
    assert torch.equal(counter_normal(5, 11, range(0, 20), range(0, 1000)), whole)
    assert not torch.equal(counter_normal(5, 12, range(0, 20), range(0, 1000)), whole)


# ----------------------------------------------------------------------------------- sharding pieces


def test_blocks_cover_the_range_contiguously():
    for n, parts in ((20, 3), (7, 7), (1000, 3), (5, 2)):
        blocks = [block(n, parts, k) for k in range(parts)]
        assert [b.start for b in blocks[1:]] == [b.stop for b in blocks[:-1]]
        assert blocks[0].start == 0 and blocks[-1].stop == n
        assert max(b.stop - b.start for b in blocks) - min(b.stop - b.start for b in blocks) <= 1


def test_sharding_needs_one_member_or_state_index_per_rank():
    with pytest.raises(ValueError, match=r"^filter\.ranks: 3 ranks for 2 members"):
        check_sharding("members", 2, 100, 3)
    with pytest.raises(ValueError, match=r"^filter\.ranks: 4 ranks for a state of 3 values"):
        check_sharding("state", 20, 3, 4)
    check_sharding("state", 2, 100, 3)
    with pytest.raises(ValueError, match="filter.shard"):
        EnSF(shard="both", adaptive_inflation=False, unobserved="none")


@pytest.mark.parametrize("transform", ["linear", "arctan"])
@pytest.mark.parametrize("kind", ["identity", "subsample", "stations"])
def test_observation_operator_restricted_to_a_state_slice(kind, transform):
    """On x[a:b] the restricted operator gives the slice of the full likelihood score and curvature."""
    shape, d = (2, 8, 8), 128
    cfg = {"kind": kind, "sigma": 0.3, "every": 2, "n_stations": 10, "transform": transform}
    op = make_observation_operator(cfg, shape, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, d, generator=g)
    y = op(torch.randn(d, generator=g))
    score, curv = op.likelihood_score(x, y), op.curvature(x)
    covered = []
    for a, b in ((0, 37), (37, 38), (38, 100), (100, 128), (5, 5)):
        sub, keep = op.restrict(a, b)
        assert sub.d == b - a and sub.n_obs == keep.numel()
        covered.append(keep)
        if b > a:
            assert torch.allclose(sub.likelihood_score(x[:, a:b], y[keep]), score[:, a:b])
            assert torch.allclose(sub.curvature(x[:, a:b]), curv[..., a:b])
    assert torch.equal(torch.cat(covered).sort().values, torch.arange(op.n_obs))


def test_innovation_inflation_recovers_a_missing_error_variance():
    from scoreda.filters.processing import innovation_inflation
    from scoreda.observations import PointObservation

    g = torch.Generator().manual_seed(3)
    M, d, sigma = 20, 20000, 1.0
    op = PointObservation(indices=torch.arange(d), sigma=sigma, d=d)
    prior = torch.randn(M, d, generator=g, dtype=torch.float64)  # spread 1 about a zero mean
    # truth off the ensemble mean by N(0, 3²) (a model error the spread does not know about)
    truth = 3.0 * torch.randn(d, generator=g, dtype=torch.float64)
    y = truth + sigma * torch.randn(d, generator=g, dtype=torch.float64)
    lam = innovation_inflation(prior, y, op)
    assert lam == pytest.approx(3.0, rel=0.05)  # E‖d‖²/p = 9 + var(mean) + σo² ≈ λ²·1 + σo²
    calibrated = truth + torch.randn(M, d, generator=g, dtype=torch.float64)
    assert innovation_inflation(calibrated, y, op) < 1.1  # never deflates, ≈ 1 when consistent


def test_adaptive_inflation_reaches_only_the_observed_components():
    """λ from the innovations multiplies the observed anomalies; unobserved ones stay; with every
    component observed it is the plain inflation (the same bits)."""
    from scoreda.filters.processing import inflate_prior, innovation_inflation

    g = torch.Generator().manual_seed(5)
    prior = torch.randn(20, 64, generator=g)
    truth = 3.0 * torch.randn(64, generator=g)  # far off the ensemble: λ ≈ 3
    part = make_observation_operator({"kind": "subsample", "every": 2, "sigma": 1.0}, (1, 8, 8))
    lam = innovation_inflation(prior, part(truth), part)
    assert lam > 2.0
    got, applied = inflate_prior(prior, part(truth), part, 1.0, True, observed_only=True)
    assert applied == lam
    seen = torch.zeros(64, dtype=torch.bool)
    seen[part.indices] = True
    assert torch.equal(got[:, ~seen], prior[:, ~seen])
    assert torch.allclose(got[:, seen].std(0), lam * prior[:, seen].std(0), rtol=1e-5)
    assert torch.allclose(got.mean(0), prior.mean(0), atol=1e-6)
    full = make_observation_operator({"kind": "identity", "sigma": 1.0}, (1, 8, 8))
    lam = innovation_inflation(prior, full(truth), full)
    got, applied = inflate_prior(prior, full(truth), full, 1.1, True, observed_only=True)
    lam = innovation_inflation(inflate(prior, 1.1), full(truth), full)
    assert torch.equal(got, inflate(inflate(prior, 1.1), lam))
    assert applied == pytest.approx(1.1 * lam)  # recorded as the analysis' ``inflation``
    # the filters return the factor with the analysis
    ensf = EnSF(n_steps=2, adaptive_inflation=True, inflation=1.1, unobserved="none")
    assert ensf.analyse(prior, full(truth), full).diagnostics["inflation"] == pytest.approx(1.1 * lam)
    assert EnSF(n_steps=2, adaptive_inflation=False, unobserved="none").analyse(
        prior, full(truth), full
    ).diagnostics == {"inflation": 1.0}


def _letkf_grid(cutoff: float, n: int = 16):
    from scoreda.filters.letkf import LETKF

    return LETKF(cutoff=cutoff, dx=1.0, domain=(float(n), float(n)), rtps=0.0)


def test_regression_is_the_ridge_regression_of_the_observed_increments():
    """Global (cutoff ∞): Δx = C_xo (C_oo + R)⁻¹ δ from the ensemble covariances; with a cutoff, a
    point farther than it from every observation is not moved."""
    g = torch.Generator().manual_seed(0)
    M, d = 10, 2 * 16 * 16
    xb = torch.randn(M, d, generator=g, dtype=torch.float64)
    xb -= xb.mean(0)
    obs = torch.arange(0, d, 7)
    inc = torch.randn(M, len(obs), generator=g, dtype=torch.float64)
    sig = 0.7
    prec = torch.full((len(obs),), sig**-2, dtype=torch.float64)
    got = _letkf_grid(math.inf).regress(xb, obs, inc, prec)
    c = xb.T @ xb / (M - 1)
    ref = c[:, obs] @ torch.linalg.solve(c[obs][:, obs] + sig**2 * torch.eye(len(obs), dtype=c.dtype), inc.T)
    assert torch.allclose(got, ref.T, atol=1e-10)
    # local: observations only in the 4×4 corner of a 16×16 grid, cutoff 3 grid steps
    corner = torch.tensor([i * 16 + j for i in range(4) for j in range(4)])
    got = _letkf_grid(3.0).regress(xb, corner, inc[:, : len(corner)], prec[: len(corner)])
    far = torch.tensor([10 * 16 + 10, 16 * 16 + 8 * 16 + 9])  # (10, 10) on level 0, (8, 9) on level 1
    assert got[:, far].abs().max() < 1e-12  # zero up to the FFT's rounding
    assert got[:, corner].abs().max() > 0.1


def smooth_ensemble(M: int = 20, n: int = 16, length: float = 2.5, seed: int = 0):
    """Members and a truth drawn from one spatially correlated Gaussian field on a periodic n×n grid
    (white noise smoothed by a Gaussian kernel of ``length`` grid steps, unit variance), 2 levels."""
    g = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(n) * n
    kern = torch.exp(-0.5 * (2 * math.pi * length / n) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    white = torch.randn(M + 1, 2, n, n, generator=g, dtype=torch.float64)
    field = torch.fft.ifft2(torch.fft.fft2(white) * kern).real
    field = (field / field.std()).float().reshape(M + 1, -1)
    return field[:M] + 1.0, field[M] + 1.0


def test_unobserved_points_learn_from_the_observed_ones():
    """Every 4th point observed on a correlated field: ``regress`` moves the unobserved points
    toward the truth (error × 0.7 or less), ``none`` leaves them at the prior's error; both analyse
    the observed points alike; ``rtps_unobserved`` gives back part of the spread the regression took."""
    prior, truth = smooth_ensemble()
    op = make_observation_operator({"kind": "subsample", "every": 4, "sigma": 0.3}, (2, 16, 16))
    y = op.sample(truth, torch.Generator().manual_seed(1))
    seen = torch.zeros(prior.shape[1], dtype=torch.bool)
    seen[op.indices] = True
    runs = {}
    for mode in ("none", "regress"):
        ensf = EnSF(unobserved=mode, localiser=_letkf_grid(12.0), adaptive_inflation=True)
        runs[mode] = ensf.analyse(prior, y, op, torch.Generator().manual_seed(2)).ensemble
    err0 = rms(prior.mean(0)[~seen] - truth[~seen])
    assert err0 > 0.8
    assert rms(runs["none"].mean(0)[~seen] - truth[~seen]) > 0.9 * err0
    assert rms(runs["regress"].mean(0)[~seen] - truth[~seen]) < 0.7 * err0
    assert torch.equal(runs["none"][:, seen], runs["regress"][:, seen])
    # the regression alone takes the spread to 0.26 of the prior's; rtps_unobserved = 0.5 halfway back
    sharp = EnSF(
        unobserved="regress", rtps_unobserved=0.0, localiser=_letkf_grid(12.0), adaptive_inflation=True
    )
    sharp = sharp.analyse(prior, y, op, torch.Generator().manual_seed(2)).ensemble
    assert torch.allclose(sharp.mean(0), runs["regress"].mean(0), atol=1e-5)
    s0, s_half, s_prior = (float(x.std(0)[~seen].mean()) for x in (sharp, runs["regress"], prior))
    assert s0 < 0.35 * s_prior
    assert s_half == pytest.approx(0.5 * (s0 + s_prior), rel=0.1)


@pytest.mark.parametrize("prior_score", ["paired", "mixture"])
def test_regress_is_a_no_op_when_everything_is_observed(prior_score):
    prior, truth = smooth_ensemble()
    op = make_observation_operator({"kind": "identity", "sigma": 0.5}, (2, 16, 16))
    y = op.sample(truth, torch.Generator().manual_seed(1))
    out = [
        EnSF(n_steps=20, prior_score=prior_score, unobserved=mode, localiser=loc, adaptive_inflation=True)
        .analyse(prior, y, op, torch.Generator().manual_seed(2))
        .ensemble
        for mode, loc in (("none", None), ("regress", _letkf_grid(6.0)))
    ]
    assert torch.equal(out[0], out[1])


def test_regress_without_a_grid_is_a_clear_error():
    prior, truth = smooth_ensemble()
    op = make_observation_operator({"kind": "subsample", "every": 2, "sigma": 0.5}, (2, 16, 16))
    with pytest.raises(ValueError, match="filter.unobserved=regress"):
        EnSF(n_steps=2, unobserved="regress", adaptive_inflation=False).analyse(prior, op(truth), op)
    with pytest.raises(ValueError, match="filter.unobserved"):
        EnSF(unobserved="kriging", adaptive_inflation=False)
    with pytest.raises(ValueError, match="filter.rtps_unobserved"):
        EnSF(rtps_unobserved=1.5, adaptive_inflation=False)
