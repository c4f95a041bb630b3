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


def test_one_member_is_a_point_forecast():
    """A deterministic run (members=1): spread 0, the CRPS the mean absolute error, a zero spread
    spectrum — never NaN."""
    rng = np.random.default_rng(0)
    ens, truth = rng.normal(size=(1, 2, 8, 8)), rng.normal(size=(2, 8, 8))
    assert metrics.spread(ens) == 0.0
    assert metrics.crps(ens, truth) == pytest.approx(np.abs(ens[0] - truth).mean())
    assert not metrics.spread_spectrum(ens)[1].any()


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
    table = _score_table() | {"cycle": np.arange(1, 21)}
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


# ------------------------------------------------------------- plotting: colours, burn-in, field axes


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions build, kept (not saved, not cleared) for inspection."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(plotting, "_save", keep)
    return kept


def _lines(fig) -> dict:
    return {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}


def _score_table(n=20):
    t = np.arange(1, n + 1) * 12.0
    return {
        "time_hours": t,
        "rmse_forecast": 2.0 + np.exp(-t / 50),
        "rmse_analysis": 1.0 + np.exp(-t / 50),
        "spread_forecast": 1.8 + 0.5 * np.exp(-t / 40),
        "spread_analysis": 0.9 + 0.5 * np.exp(-t / 40),
        "obs_error": 1.5,
    }


def test_one_colour_per_quantity_across_plots(figures):
    from matplotlib.colors import to_rgba

    table = _score_table()
    plotting.plot_scores(table, "scores.png")
    k = np.arange(1, 17) * 2 * np.pi / 20.0e6
    spectra = {f"{kind} {q}": (k, k**-2.0) for q in ("error", "spread") for kind in ("forecast", "analysis")}
    plotting.plot_spectra(spectra, "spectra.png", slope=None)
    ke = {name: (k, k**-3.0) for name in ("truth", "forecast mean", "analysis mean", "analysis error")}
    plotting.plot_spectra(ke, "ke.png")
    plotting.plot_spread_skill(table, "ss.png")
    plotting.plot_rank_histogram(np.full(5, 10), "rank.png")
    scores, spec, ke_fig, ss, rank = figures
    s, e, k_lines = _lines(scores), _lines(spec), _lines(ke_fig)
    c = {q: to_rgba(plotting.COLORS[q]) for q in ("truth", "observation", "forecast", "analysis")}
    assert len(set(c.values())) == 4  # four distinct colours
    for kind in ("forecast", "analysis"):
        # the same colour for a quantity in the time series, the error/spread spectra, the KE spectrum
        assert to_rgba(s[f"RMSE {kind}"].get_color()) == c[kind]
        assert to_rgba(s[f"spread {kind}"].get_color()) == c[kind]
        assert to_rgba(e[f"{kind} error"].get_color()) == c[kind]
        assert to_rgba(e[f"{kind} spread"].get_color()) == c[kind]
        assert to_rgba(k_lines[f"{kind} mean"].get_color()) == c[kind]
        assert to_rgba(_lines(ss)[next(x for x in _lines(ss) if x.startswith(kind))].get_color()) == c[kind]
        # error solid, spread dashed, the mean's own field dotted, in every plot
        assert s[f"RMSE {kind}"].get_linestyle() == e[f"{kind} error"].get_linestyle() == "-"
        assert s[f"spread {kind}"].get_linestyle() == e[f"{kind} spread"].get_linestyle() == "--"
        assert k_lines[f"{kind} mean"].get_linestyle() == ":"
    assert to_rgba(k_lines["analysis error"].get_color()) == c["analysis"]
    assert to_rgba(k_lines["truth"].get_color()) == c["truth"]
    assert to_rgba(s["σo = 1.5 K"].get_color()) == c["observation"]
    assert to_rgba(rank.axes[0].patches[0].get_facecolor()) == pytest.approx(to_rgba(c["analysis"], 0.8))
    # a label naming no quantity keeps matplotlib's colour cycle
    assert plotting.style("k^-5/3") == {}
    assert plotting.style("RMSE analysis") == {"color": plotting.COLORS["analysis"], "linestyle": "-"}


def _spans(ax):
    return [p for p in ax.patches if p.get_label().startswith("burn-in")]


def test_plot_scores_shades_the_burn_in(figures):
    table = _score_table(20)  # cycles 1..20, 12 h apart
    plotting.plot_scores(table, "a.png", burn_in_hours=36.0)  # burn_in = 3 cycles
    plotting.plot_scores(table, "b.png", burn_in_hours=0.0)
    plotting.plot_scores(table, "c.png", burn_in_hours=300.0)  # longer than the run (240 h)
    plotting.plot_scores(
        {k: v[:1] if k != "obs_error" else v for k, v in table.items()}, "d.png", burn_in_hours=24
    )
    (a,), (b,), (c,), (d,) = (f.axes for f in figures)
    (span,) = _spans(a)
    x0, x1 = span.get_x(), span.get_x() + span.get_width()
    assert (x0, x1) == (0.0, 36.0) and a.get_xlim() == (0.0, 240.0)
    legend = [t.get_text() for t in a.get_legend().get_texts()]
    assert "burn-in (not in the time means)" in legend
    assert _spans(b) == [] and not any("burn-in" in t.get_text() for t in b.get_legend().get_texts())
    (span,) = _spans(c)  # the whole run shaded, and said so
    assert (span.get_x(), span.get_x() + span.get_width()) == (0.0, 240.0)
    assert span.get_label() == "burn-in: the whole run"
    assert _spans(d)[0].get_label() == "burn-in: the whole run"  # one cycle, no crash


def test_plot_fields_axes_errors_and_stations(figures):
    rng = np.random.default_rng(12)
    truth = 10 + rng.normal(size=(2, 16, 16))
    fmean, amean = truth + rng.normal(size=truth.shape), truth + 0.3 * rng.normal(size=truth.shape)
    fields = {"truth": truth, "analysis mean": amean}
    errors = {"forecast mean − truth": fmean - truth, "analysis mean − truth": amean - truth}
    observed = np.zeros(truth.shape, dtype=bool)
    observed[:, ::4, ::4] = True  # every 4th point: 16 a level
    plotting.plot_fields(fields, "f.png", ("z=0", "z=H"), "K", "t", errors, 20000.0, stations=observed)
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 8  # 2 levels × (2 states + 2 errors)
    assert len(fig.axes) - len(panels) == 4  # a colourbar per scale per level: state and error
    cbar_labels = {ax.get_ylabel() for ax in fig.axes if not ax.images}
    assert cbar_labels == {"z=0 (K)", "z=0 error (K)", "z=H (K)", "z=H error (K)"}
    grid = np.array(panels).reshape(2, 4)
    assert [ax.get_title() for ax in grid[0]] == ["truth, observed points", *list(fields)[1:], *errors]
    dx = 20000.0 / 16
    for ax in grid.flat:
        assert ax.images[0].get_extent() == pytest.approx([-dx / 2, 20000 - dx / 2, -dx / 2, 20000 - dx / 2])
    assert all(ax.get_xlabel() == "x (km)" for ax in grid[1])
    assert grid[0, 0].get_ylabel() == "z=0\ny (km)" and grid[1, 0].get_ylabel() == "z=H\ny (km)"
    for r in range(2):
        state, err = [ax.images[0] for ax in grid[r, :2]], [ax.images[0] for ax in grid[r, 2:]]
        lo, hi = min(truth[r].min(), amean[r].min()), max(truth[r].max(), amean[r].max())
        assert all(im.get_clim() == pytest.approx((lo, hi)) for im in state)  # one state scale a row
        m = max(np.abs(fmean[r] - truth[r]).max(), np.abs(amean[r] - truth[r]).max())
        assert all(im.get_clim() == pytest.approx((-m, m)) for im in err)  # symmetric, shared
        assert err[0].get_cmap().name.startswith(plotting.ERROR_CMAP)
        assert state[0].get_cmap().name.startswith(plotting.FIELD_CMAP)
        (marks,) = grid[r, 0].get_lines()  # the observed points, at their cells' positions
        assert len(marks.get_xdata()) == 16
        np.testing.assert_allclose(sorted(set(marks.get_xdata())), np.arange(0, 16, 4) * dx)
        assert marks.get_markerfacecolor() == plotting.COLORS["observation"]
        assert not any(ax.get_lines() for ax in grid[r, 1:])


@pytest.mark.parametrize("observation", ["full", "subsample"])
def test_report_field_plots_show_errors_and_observed_points(tmp_path, monkeypatch, observation):
    """A tiny SQG run through the stages: fields.png gets the error panels and km axes; every point
    observed → an observation panel, every 4th → the observed points on the truth panel instead;
    the time series shade the burn-in."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from scoreda.config import validate
    from scoreda.stages.analysis import analysis
    from scoreda.stages.common import write_config
    from scoreda.stages.evaluate import report
    from scoreda.stages.forecast import forecast
    from scoreda.stages.nature import nature

    calls = {}
    for name in ("plot_fields", "plot_scores", "plot_spectra", "plot_spread_skill", "plot_rank_histogram"):
        monkeypatch.setattr(
            plotting, name, lambda *a, _n=name, **kw: calls.setdefault(_n, []).append((a, kw))
        )
    run_dir = tmp_path / "run"
    overrides = ["model.N=16", "members=4", "cycles=2", "burn_in=1", "model.spinup_cycles=2"]
    overrides += ["model.member_spacing_cycles=1", "filter.n_steps=5", f"observation={observation}"]
    overrides += ["observation.every=4"] if observation == "subsample" else []
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = validate(compose("config", overrides=[*overrides, f"run_dir={run_dir}"]))
    write_config(run_dir, cfg)
    for k in range(3):
        nature(run_dir, k)
    for k in (1, 2):
        forecast(run_dir, k)
        analysis(run_dir, k)
    report(run_dir)
    ((args, kw),) = calls["plot_fields"]
    fields, errors, length, stations = args[0], args[5], args[6], kw["stations"]
    assert list(errors) == ["forecast mean − truth", "analysis mean − truth"] and length == 20000.0
    assert errors["analysis mean − truth"].shape == (2, 16, 16)
    if observation == "full":
        assert list(fields) == ["truth", "observation", "analysis mean"] and stations is None
    else:
        assert list(fields) == ["truth", "analysis mean"]
        assert stations.shape == (2, 16, 16) and stations.sum() == 2 * 16  # 4 × 4 points a level
    ((_, kw),) = calls["plot_scores"]
    assert kw["burn_in_hours"] == 12.0  # cycle 1 of 2
