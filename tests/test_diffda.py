"""DiffDA (issue 21, seed 004): the conditional network's weights, the soft inpainting mask, RePaint's
hold on the observations, ``filter=diffda`` in the cycle, and training the network from its pairs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ENV

from scoreda.filters.diffda import DiffDAFilter
from scoreda.io import read_dataset_file, read_state
from scoreda.learned.diffda import inpainting_targets, soft_mask
from scoreda.learned.params import ScoreNetParams, build_scorenet
from scoreda.learned.schedule import VPCosine
from scoreda.learned.weights import load_scorenet, save_scorenet
from scoreda.observations import PointObservation

ROOT = Path(__file__).resolve().parents[1]


def test_soft_mask_interpolates_around_the_observations():
    """At observed points the known value is the observation and w = 1; between them the normalised
    Gaussian average of the neighbours with w = exp(−r²/2ρ²) near one point; radius 0: the points."""
    mask = torch.zeros(1, 8, 8)
    mask[0, ::4, ::4] = 1
    values = torch.zeros(1, 1, 8, 8)
    values[0, 0, 0, 0], values[0, 0, 0, 4] = 1.0, 3.0
    known, w = inpainting_targets(values, mask, 1.0)
    assert known[0, 0, 0, 0] == 1 and known[0, 0, 0, 4] == 3 and (w[0, 0, ::4, ::4] == 1).all()
    assert torch.isclose(known[0, 0, 0, 2], torch.tensor(2.0), atol=1e-3)  # halfway: the mean
    near = math.exp(-0.5) + math.exp(-4.5)  # one point from (0, 0), three from (4, 0)
    assert torch.isclose(w[0, 0, 1, 0], torch.tensor(near), atol=1e-3)
    full = soft_mask(torch.ones(5, 6), 1.5)  # a constant field stays constant (periodic), ≥ G(0) = 1
    assert torch.allclose(full, full[0, 0].expand_as(full)) and full[0, 0] > 1
    hard_known, hard_w = inpainting_targets(values, mask, 0.0)
    assert torch.equal(hard_w[0], mask) and torch.equal(hard_known * mask, values * mask)


def test_conditional_weights_carry_the_forecast_normalisation(tmp_path):
    p = ScoreNetParams(channels=2, hidden=[8], blocks=[1], emb=8, condition=True)
    state = build_scorenet(p).state_dict()
    with pytest.raises(ValueError, match=r"w\.pt: a conditional network needs the condition's mean and std"):
        save_scorenet(tmp_path / "w.pt", state, p, torch.zeros(2), torch.ones(2))
    path = save_scorenet(
        tmp_path / "w.pt", state, p, torch.zeros(2), torch.ones(2), None, (torch.ones(2), 3 * torch.ones(2))
    )
    net, _, _, _, meta = load_scorenet(path)
    assert net.condition == 2 and net.inp.in_channels == 4
    assert torch.equal(meta["condition_std"], torch.full((2,), 3.0))
    with pytest.raises(ValueError, match=r"^scorenet\.condition: a conditional network takes one state"):
        ScoreNetParams(condition=True, window=1)
    with pytest.raises(ValueError, match=r"^scorenet\.init_error: must be \[lo, hi\]"):
        ScoreNetParams(init_error=[0.5, 0.1])


def _filter(weights: Path, **keys) -> DiffDAFilter:
    f = DiffDAFilter.from_config({"name": "diffda", "weights": str(weights), **keys})
    f.shape = (2, 16, 16)
    return f


@pytest.mark.parametrize(("noisy", "perturb"), [(False, False), (False, True), (True, False)])
def test_repaint_leaves_observed_values_at_the_observations(diffda_weights, noisy, perturb):
    """Every 4th point observed (σo = 0.5). Exact observations (``observation_noise=false``): each
    member's analysis equals y at the observed values to 2 % of σo (5× the final noise σ_0 = η = 1e-3
    times the errors' std 2); with perturbed observations each member is y + σo ε_m there
    (|x − y| < 5 σo) and the ensemble mean is within σo of y. Noisy observations (the default): imposed
    down to the level σo, the rest denoised by the network: the ensemble mean within σo of y (rms), the
    members spread around it by about σo (a sample of the posterior, not y itself)."""
    g = torch.Generator().manual_seed(0)
    d = 2 * 16 * 16
    truth = 20 * torch.randn(d, generator=g)
    prior = truth + 2 * torch.randn(8, d, generator=g)
    idx = (torch.arange(16)[:, None] % 4 == 0) & (torch.arange(16)[None] % 4 == 0)
    op = PointObservation(idx.expand(2, 16, 16).reshape(-1).nonzero().squeeze(1), sigma=0.5, d=d)
    y = op.sample(truth, g)
    keys = dict(steps=8, perturb=perturb, observation_noise=noisy)
    out = _filter(diffda_weights, **keys).analyse(prior, y, op, torch.Generator().manual_seed(1))
    x = out.ensemble
    assert torch.isfinite(x).all() and x.shape == prior.shape
    miss = x[:, op.indices] - y
    if noisy:  # posterior samples: the mean near y (0.35 σo here), members spread by ≈ σo (1.7 here)
        assert miss.mean(0).square().mean().sqrt() < op.sigma
        assert 0.5 * op.sigma < miss.std(0).mean() < 2 * op.sigma
    elif perturb:
        assert miss.abs().max() < 5 * op.sigma and miss.mean(0).abs().max() < op.sigma
        assert miss.std(0).mean() > 0.5 * op.sigma  # the members differ by the perturbations
    else:
        assert miss.abs().max() < 0.02 * op.sigma, miss.abs().max()
    again = _filter(diffda_weights, **keys).analyse(prior, y, op, torch.Generator().manual_seed(1))
    assert torch.equal(again.ensemble, x)  # the noise is the generator's


def test_diffda_refuses_what_it_cannot_use(tmp_path, scorenet_weights, diffda_weights):
    with pytest.raises(ValueError, match=r"^filter\.weights: .* is not a conditional network"):
        DiffDAFilter.from_config({"name": "diffda", "weights": str(scorenet_weights)})
    with pytest.raises(ValueError, match=r"^filter\.weights: .*none\.pt: no such score-network weights file"):
        DiffDAFilter.from_config({"name": "diffda", "weights": str(tmp_path / "none.pt")})
    for key, value in [("steps", 0), ("resample", 0), ("t_max", 0.0), ("eta", 2.0), ("mask_radius", -1.0)]:
        with pytest.raises(ValueError, match=rf"^filter\.{key}: "):
            DiffDAFilter(**{key: value})
    op = PointObservation(torch.arange(4), sigma=1.0, d=2 * 16 * 16, transform="arctan")
    with pytest.raises(ValueError, match=r"^filter=diffda: observations must be state values"):
        _filter(diffda_weights).analyse(torch.zeros(2, 512), torch.zeros(4), op)


DIFFDA_RUN = [  # README's `cycle.py experiment=filters_every4 filter=diffda`, small
    "experiment=filters_every4",
    "filter=diffda",
    "model.N=16",
    "members=4",
    "cycles=2",
    "burn_in=0",
    "model.spinup_cycles=4",
    "model.member_spacing_cycles=1",
    "filter.steps=8",
    "progress=false",
]


@pytest.mark.slow
def test_diffda_filter_runs_two_cycles(tmp_path, diffda_weights):
    """``filter=diffda`` in the cycle (every 4th point observed, a tiny network of white-noise errors):
    two finite analyses with spread, the observed values drawn to the observations (the analysis is
    closer to the truth than the forecast at observed points, within a few σo), and a rerun of the
    analysis stage is bit for bit the same file."""
    from conftest import run_cycle

    run = tmp_path / "run"
    rows = run_cycle(run, *DIFFDA_RUN, f"filter.weights={diffda_weights}")
    assert [int(r["cycle"]) for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(float(r["rmse_analysis"])) and 0 < float(r["spread_analysis"])
    path = run / "cycles" / "000002" / "analysis.h5"
    first, _ = read_state(path)
    truth = read_state(run / "cycles" / "000002" / "truth.h5")[0][0]
    forecast, _ = read_state(run / "cycles" / "000002" / "forecast.h5")
    obs, _ = read_dataset_file(run / "cycles" / "000002" / "obs.h5")
    at = np.unravel_index(obs["index"], truth.shape)
    err_a = np.sqrt(((first.mean(0)[at] - truth[at]) ** 2).mean())
    err_f = np.sqrt(((forecast.mean(0)[at] - truth[at]) ** 2).mean())
    assert err_a < err_f and err_a < 1.5, (err_a, err_f)  # σo = 1 K; 4 members: ≈ √(1 + 1/4)
    assert np.abs(first.mean(0)[at] - obs["obs"]).max() < 2.5  # y + the members' mean perturbation
    path.unlink()
    stage = [sys.executable, "-m", "scoreda.stages.analysis", "--run-dir", str(run), "--cycle", "2"]
    again = subprocess.run(stage, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    second, _ = read_state(path)
    assert first.shape == (4, 2, 16, 16) and np.array_equal(first, second)


@pytest.mark.slow
def test_train_score_workflow_trains_diffdas_conditional_network(tmp_path):
    """``workflows/train_score.py scorenet=diffda_cpu`` (small): forecasts of perturbed nature-run states
    (pairs.h5), 30 steps on one rank, a conditional weights file that ``filter=diffda`` loads, and a
    report against the Wiener filter of the forecast errors' spectrum."""
    from test_learned import SMALL

    out = tmp_path / "dd"
    cmd = [
        sys.executable,
        "workflows/train_score.py",
        "scorenet=diffda_cpu",
        *SMALL,
        f"scorenet.out_dir={out}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    pairs, attrs = read_dataset_file(out / "pairs.h5")
    assert pairs["forecast"].shape == (4, 19, 2, 16, 16) and attrs["lead_hours"] == 12.0
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["steps"] == 30 and all(math.isfinite(v) for v in report["net"] + report["wiener"])
    f = DiffDAFilter.from_config({"name": "diffda", "weights": str(out / "weights.pt")})
    assert f.network[0].condition == 2
    rs, fs = f.network[2][1], f.network[3][1]
    assert (rs > 0).all() and (fs > rs).all()  # the forecasts vary more than their errors


class WhiteErrors(torch.nn.Module):
    """The exact ε of errors r ~ N(0, I) whatever the forecast: E[ε | r_t] = σ_t r_t / (μ_t² + σ_t²)."""

    channels, condition, levels = 2, 2, 1

    def __init__(self, schedule: VPCosine):
        super().__init__()
        self.schedule = schedule

    def forward(self, r, t, cond):
        mu, sigma = (v[:, None, None, None] for v in self.schedule(t))
        return sigma * r / (mu**2 + sigma**2)


@pytest.mark.parametrize("transform", ["linear", "arctan"])
def test_kalman_guidance_samples_the_posterior_through_the_exact_operator(transform, diffda_weights):
    """``guidance=kalman`` with the exact ε of N(0, I) errors (errors' std 1 around the forecast f = 0):
    with linear observations of every 4th point (σo = 0.5) the members' mean is the Kalman posterior
    mean y/(1 + σo²) there within 4 Monte-Carlo standard errors and the prior's 0 elsewhere; through
    arctan (σo = 0.05 rad) the observed values' error falls to a third of the forecast's. Inpainting
    refuses arctan at config time, naming observation.transform."""
    schedule, M = VPCosine(1e-3), 64
    f = DiffDAFilter(steps=32, guidance="kalman", shape=(2, 16, 16))
    one = (torch.zeros(2), torch.ones(2))
    f.network = (WhiteErrors(schedule), schedule, one, one)
    g = torch.Generator().manual_seed(0)
    d = 2 * 16 * 16
    truth = torch.randn(d, generator=g)
    idx = (torch.arange(16)[:, None] % 4 == 0) & (torch.arange(16)[None] % 4 == 0)
    at = idx.expand(2, 16, 16).reshape(-1).nonzero().squeeze(1)
    sigma = 0.5 if transform == "linear" else 0.05
    op = PointObservation(at, sigma=sigma, d=d, transform=transform)
    y = op.sample(truth, g)
    x = f.analyse(torch.zeros(M, d), y, op, torch.Generator().manual_seed(1)).ensemble
    assert torch.isfinite(x).all()
    if transform == "linear":
        post_var = sigma**2 / (1 + sigma**2)
        err = (x[:, at].mean(0) - y / (1 + sigma**2)).square().mean().sqrt()
        assert err < 4 * (post_var / M) ** 0.5, err
        free = torch.ones(d, dtype=torch.bool)
        free[at] = False
        assert x[:, free].mean(0).square().mean().sqrt() < 4 / M**0.5
        assert 0.8 < x[:, free].var(0).mean() < 1.2
    else:
        assert (x.mean(0) - truth)[at].square().mean().sqrt() < truth[at].square().mean().sqrt() / 3
    from hydra import compose, initialize_config_dir

    from scoreda.config import validate

    base = ["filter=diffda", f"filter.weights={diffda_weights}", "model.N=16", "observation=arctan"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        with pytest.raises(ValueError, match=r"^observation\.transform: filter=diffda takes observations of"):
            validate(compose("config", overrides=base))
        validate(compose("config", overrides=[*base, "filter.guidance=kalman"]))


def test_the_samples_script_measures_analysis_and_spread_against_the_truth(diffda_weights):
    """``scripts/diffda_samples.py``'s measurement (results.md: why ``qg_stations`` is missed) on
    white pairs (errors of std 2 K around forecasts of std 20 K, as the tiny network knows), every 4th
    point observed with σo = 1 K: one row per pair and channel, the forecast's error what was put in,
    the observed values pulled to the observations, samples with spread."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("diffda_samples", ROOT / "scripts" / "diffda_samples.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    g = torch.Generator().manual_seed(0)
    r, f = 2 * torch.randn(2, 2, 16, 16, generator=g), 20 * torch.randn(2, 2, 16, 16, generator=g)
    over = ["experiment=filters_every4", "model.N=16", "filter.steps=8"]
    rows = script.measure(diffda_weights, over, r, f, members=4)
    assert [(w["pair"], w["channel"]) for w in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for w in rows:  # 16 observed points of 256 a channel
        assert (
            1.8 < math.sqrt((16 * w["forecast_observed"] ** 2 + 240 * w["forecast_between"] ** 2) / 256) < 2.2
        )
        assert w["analysis_observed"] < w["forecast_observed"] and w["analysis_observed"] < 1.1  # σo = 1
        assert w["spread_between"] > 1 and all(math.isfinite(v) for v in w.values())
