"""Tests of scoreda.metrics (known answers) and scoreda.plotting (PNGs are written)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scoringrules as sr
import torch

from scoreda import metrics, plotting


def test_rmse_known_answer():
    truth = np.zeros((2, 2, 2))
    ens = np.zeros((3, 2, 2, 2))
    # ensemble mean error: 3 at one of 8 points, 1 at another, 0 elsewhere -> mse = 10/8
    ens[:, 0, 0, 0] = [2.0, 3.0, 4.0]
    ens[:, 1, 1, 1] = [-1.0, -1.0, -1.0]
    assert metrics.rmse(ens, truth) == pytest.approx(math.sqrt(10 / 8))
    # truth with a leading length-1 axis and torch inputs are accepted
    assert metrics.rmse(torch.tensor(ens), torch.tensor(truth[None])) == pytest.approx(math.sqrt(10 / 8))


def test_spread_is_ddof1():
    ens = np.zeros((2, 1, 1, 2))
    ens[:, 0, 0, 0] = [0.0, 2.0]  # unbiased variance 2 (biased would be 1)
    ens[:, 0, 0, 1] = [1.0, 1.0]  # variance 0
    assert metrics.spread(ens) == pytest.approx(1.0)  # sqrt((2 + 0) / 2)
    with pytest.raises(ValueError):
        metrics.spread(ens[:1])


def _crps_fair_closed_form(x: np.ndarray, y: float) -> float:
    m = x.size
    return float(np.mean(np.abs(x - y)) - np.abs(x[:, None] - x[None, :]).sum() / (2 * m * (m - 1)))


def test_crps_two_members_matches_fair_closed_form():
    rng = np.random.default_rng(1)
    ens = rng.normal(size=(2, 2, 3, 3))
    truth = rng.normal(size=(2, 3, 3))
    expected = np.mean(
        [
            _crps_fair_closed_form(ens[:, c, i, j], truth[c, i, j])
            for c in range(2)
            for i in range(3)
            for j in range(3)
        ]
    )
    assert metrics.crps(ens, truth) == pytest.approx(expected, rel=1e-12)
    # the PWM form used by default equals scoringrules' "fair" path
    assert metrics.crps(ens, truth, estimator="fair") == pytest.approx(expected, rel=1e-12)
    # hand check: members 0 and 1, truth 0.3 -> 0.5 - 0.5 = 0 (standard estimator would give 0.25)
    assert metrics.crps(np.array([0.0, 1.0]).reshape(2, 1, 1, 1), np.full((1, 1, 1), 0.3)) == pytest.approx(
        0.0
    )


def test_crps_large_gaussian_ensemble():
    rng = np.random.default_rng(2)
    sigma, m = 1.7, 4000
    truth = rng.normal(scale=2.0, size=(1, 4, 4))
    ens = rng.normal(scale=sigma, size=(m, 1, 4, 4))
    z = truth / sigma
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    exact = sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    assert metrics.crps(ens, truth) == pytest.approx(float(exact.mean()), rel=0.02)


def test_rank_histogram_flat_and_complete():
    rng = np.random.default_rng(3)
    m = 10
    ens = rng.normal(size=(m, 2, 32, 32))
    truth = rng.normal(size=(2, 32, 32))
    counts = metrics.rank_histogram(ens, truth, rng=np.random.default_rng(4))
    assert counts.shape == (m + 1,)
    assert counts.dtype.kind == "i"
    n = truth.size
    assert counts.sum() == n
    expected = n / (m + 1)
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 29.6  # 10 degrees of freedom, p = 0.001


def test_rank_histogram_random_ties():
    m = 4
    ens = np.zeros((m, 1, 40, 40))
    truth = np.zeros((1, 40, 40))  # every member ties with the truth
    counts = metrics.rank_histogram(ens, truth, rng=np.random.default_rng(5))
    assert counts.sum() == truth.size
    assert np.all(np.abs(counts / truth.size - 1 / (m + 1)) < 0.05)
    # strictly ordered: truth above all members -> rank M everywhere
    counts = metrics.rank_histogram(ens - 1.0, truth)
    assert counts[m] == truth.size


def test_isotropic_spectrum_single_mode():
    n, L, amp = 32, 5.0, 2.0
    x = np.arange(n) * L / n
    field = amp * np.cos(3 * 2 * np.pi * x / L)[None, :] * np.ones((n, 1))  # varies along x only
    k, e = metrics.isotropic_spectrum(field, L)
    assert k.shape == e.shape == (n // 2,)
    np.testing.assert_allclose(k, np.arange(1, n // 2 + 1) * 2 * np.pi / L)
    assert e[2] == pytest.approx(0.25 * amp**2)  # n = 3: 0.5 * mean(field**2)
    assert np.all(np.abs(np.delete(e, 2)) < 1e-12)


@pytest.mark.parametrize("n", [32, 33])
def test_isotropic_spectrum_parseval(n):
    rng = np.random.default_rng(6)
    field = rng.normal(loc=0.3, size=(3, 2, n, n))
    _, e_all = metrics.isotropic_spectrum(field, full=True)
    assert e_all.sum() == pytest.approx(0.5 * np.mean(field**2), rel=1e-6)
    # the returned part excludes the mean and the corners, and is a prefix of the full spectrum
    _, e = metrics.isotropic_spectrum(field)
    np.testing.assert_allclose(e, e_all[1 : n // 2 + 1])
    # KE spectrum is the sum of the two components
    k, ke = metrics.ke_spectrum(field, 2 * field)
    np.testing.assert_allclose(ke, 5 * e)


def test_error_spectrum_parseval_with_rmse():
    rng = np.random.default_rng(7)
    ens = rng.normal(size=(5, 2, 16, 16))
    truth = rng.normal(size=(2, 16, 16))
    _, e = metrics.error_spectrum(ens, truth)
    err = ens.mean(axis=0) - truth
    _, e_direct = metrics.isotropic_spectrum(err)
    np.testing.assert_allclose(e, e_direct)
    _, e_all = metrics.isotropic_spectrum(err, full=True)
    assert e_all.sum() == pytest.approx(0.5 * metrics.rmse(ens, truth) ** 2)


def test_spectral_slope():
    k = np.arange(1, 65) * 2 * np.pi / 7.0
    e = 3.0 * k ** (-5 / 3)
    assert metrics.spectral_slope(k, e, k[3], k[40]) == pytest.approx(-5 / 3, abs=1e-10)
    with pytest.raises(ValueError):
        metrics.spectral_slope(k, e, 1e6, 2e6)


def test_scores_keys():
    rng = np.random.default_rng(8)
    truth = rng.normal(size=(2, 8, 8))
    fc = truth + rng.normal(size=(6, 2, 8, 8))
    an = truth + 0.3 * rng.normal(size=(6, 2, 8, 8))
    s = metrics.scores(fc, an, truth)
    assert set(s) == {f"{a}_{b}" for a in ("rmse", "spread", "crps") for b in ("forecast", "analysis")}
    assert all(isinstance(v, float) for v in s.values())
    assert s["rmse_analysis"] < s["rmse_forecast"]
    assert s["crps_analysis"] < s["crps_forecast"]


# --------------------------------------------------------------------------------------- plotting


def _nonempty_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_scores(tmp_path):
    t = np.arange(20) * 12.0
    table = {
        "cycle": np.arange(20),
        "time_hours": t,
        "rmse_forecast": 2.0 + np.exp(-t / 50),
        "rmse_analysis": 1.0 + np.exp(-t / 50),
        "spread_forecast": 1.8 + 0.5 * np.exp(-t / 40),
        "spread_analysis": 0.9 + 0.5 * np.exp(-t / 40),
        "obs_error": 1.5,
    }
    path = plotting.plot_scores(table, tmp_path / "sub" / "scores.png", title="test")
    assert _nonempty_png(path)


def test_plot_fields(tmp_path):
    rng = np.random.default_rng(9)
    truth = rng.normal(size=(2, 32, 32))
    obs = truth + 0.5 * rng.normal(size=truth.shape)
    obs[rng.random(obs.shape) > 0.2] = np.nan
    fields = {"truth": truth, "observation": obs, "forecast mean": 0.8 * truth, "analysis mean": 0.9 * truth}
    path = plotting.plot_fields(fields, tmp_path / "a" / "b" / "fields.png")
    assert _nonempty_png(path)
    # a level with no observation at all, and a single-level [H, W] field, still plot
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plotting.plot_fields(
            {"obs": np.full((2, 8, 8), np.nan), "x": truth[0, :8, :8]}, tmp_path / "f2.png"
        )
    assert _nonempty_png(path)


def test_plot_spectra(tmp_path):
    k = np.arange(1, 33) * 2 * np.pi / 20.0e6
    spectra = {"truth": (k, 1e-6 * k ** (-5 / 3)), "analysis": (k, 0.8e-6 * k ** (-2.0))}
    path = plotting.plot_spectra(spectra, tmp_path / "spectra.png")
    assert _nonempty_png(path)


def test_plot_rank_histogram(tmp_path):
    counts = np.random.default_rng(10).integers(80, 120, size=11)
    path = plotting.plot_rank_histogram(counts, tmp_path / "rank.png")
    assert _nonempty_png(path)


def test_crps_scoringrules_signature():
    # guard against a scoringrules API change in the arguments we rely on
    out = sr.crps_ensemble(np.zeros(3), np.zeros((2, 3)), m_axis=0, estimator="pwm", backend="numpy")
    assert np.asarray(out).shape == (3,)


def test_spread_spectrum_parseval_with_spread():
    ens = np.random.default_rng(8).normal(size=(6, 2, 16, 16))
    _, e = metrics.spread_spectrum(ens)
    anom = ens - ens.mean(axis=0)
    _, e_all = metrics.isotropic_spectrum(anom, full=True)
    assert e_all.sum() * 6 / 5 == pytest.approx(0.5 * metrics.spread(ens) ** 2)
    np.testing.assert_allclose(e, e_all[1:9] * 6 / 5)


def test_plot_spread_skill(tmp_path):
    r = np.random.default_rng(11).uniform(0.5, 1.5, size=(4, 30))
    table = dict(
        zip(("rmse_forecast", "rmse_analysis", "spread_forecast", "spread_analysis"), r, strict=True)
    )
    assert _nonempty_png(plotting.plot_spread_skill(table, tmp_path / "ss.png"))
