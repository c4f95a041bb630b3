"""The two-layer QG model observed through velocity stations (issue 6, experiment=qg_stations):
the 6-channel state (q1, u1, v1, q2, u2, v2), the velocity-station operator, per-channel scores,
the experiment's composition, and a 2-cycle run of it with both filters."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

pytest.importorskip("pyqg")

from conftest import CYCLE, run_cycle  # noqa: E402

from scoreda import metrics  # noqa: E402
from scoreda.config import ConfigError, validate  # noqa: E402
from scoreda.dynamics.grid import model_grid  # noqa: E402
from scoreda.dynamics.qg2l import TwoLayerQG  # noqa: E402
from scoreda.io import read_dataset_file, read_state  # noqa: E402
from scoreda.observations import make_observation_operator, observed_indices  # noqa: E402
from scoreda.registry import model_config  # noqa: E402
from scoreda.science import science_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NX = 32


def cfg_of(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def models() -> tuple[TwoLayerQG, TwoLayerQG]:
    kw = {"name": "qg2l", "nx": NX, "dt": 3600.0}
    return TwoLayerQG.from_config(kw), TwoLayerQG.from_config(kw | {"state": "pv_velocity"})


@pytest.fixture(scope="module")
def pv() -> torch.Tensor:
    """Two PV states at the amplitude of a developed flow, [2, 2, NX, NX]."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn((2, 2, NX, NX), generator=g, dtype=torch.float64)
    q[:, 0] *= 2e-5
    q[:, 1] *= 2e-6
    return q.float()


def test_channels_and_shapes(models):
    pv_model, full = models
    assert pv_model.state_shape == (2, NX, NX) and full.state_shape == (6, NX, NX)
    assert full.channel_names == ("q1", "u1", "v1", "q2", "u2", "v2")
    assert full.channel_units == ("1/s", "m/s", "m/s", "1/s", "m/s", "m/s")
    assert pv_model.channel_names == ("q1", "q2")
    assert model_grid(model_config("qg2l", nx=16, state="pv_velocity")).shape == (6, 16, 16)
    assert model_grid(model_config("qg2l", nx=16)).shape == (2, 16, 16)


def test_step_recomputes_velocities_from_the_new_pv(models, pv):
    pv_model, full = models
    x = torch.zeros((2, 6, NX, NX))
    x[:, [0, 3]] = pv
    x[:, [1, 2, 4, 5]] = 7.0  # whatever the u, v channels hold is discarded
    y = full.step(x, 5)
    assert y.shape == (2, 6, NX, NX) and y.dtype == torch.float32
    # the PV channels are exactly what the PV-only model gives
    assert torch.equal(y[:, [0, 3]], pv_model.step(pv, 5))
    u, v = full.velocity(y)  # from the float32 PV; the step inverts the float64 one
    assert _rel(y[:, [1, 4]], u) < 1e-6 and _rel(y[:, [2, 5]], v) < 1e-6
    assert float(u.abs().max()) > 1e-2  # a developed flow: velocities of O(0.1) m/s, not zeros or 7
    assert float(u.abs().max()) < 1.0


def test_initial_state_pv_velocity(models):
    pv_model, full = models
    x = full.initial_state(torch.Generator().manual_seed(3), 2)
    q = pv_model.initial_state(torch.Generator().manual_seed(3), 2)
    assert x.shape == (2, 6, NX, NX)
    assert torch.equal(x[:, [0, 3]], q)
    u, v = full.velocity(x)
    assert torch.equal(x[:, [1, 4]], u) and torch.equal(x[:, [2, 5]], v)
    assert float(u[:, 0].abs().max()) > 0 and torch.all(x[:, 3] == 0)


def test_bad_state_names_the_key():
    with pytest.raises(ValueError, match=r"^model\.state: "):
        TwoLayerQG.from_config({"nx": 16, "state": "vorticity"})
    with pytest.raises(ConfigError, match=r"^model\.state: ") as e:
        validate(cfg_of("model=qg2l", "model.state=vorticity"))
    assert "\n" not in str(e.value)


def test_velocity_stations_observe_exactly_the_velocity_channels():
    o = OmegaConf.load(ROOT / "configs" / "observation" / "velocity_stations.yaml")
    shape = (6, 64, 64)
    op = make_observation_operator(o, shape, torch.Generator().manual_seed(0))
    assert op.n_obs == 4 * 256 and op.sigma == 0.005 and op.linear
    ch, pos = op.indices // 4096, op.indices % 4096
    assert torch.equal(ch, torch.tensor([1, 2, 4, 5]).repeat_interleave(256))
    assert all(torch.equal(pos[:256], pos[k * 256 : (k + 1) * 256]) for k in range(4))  # one network
    assert pos[:256].unique().numel() == 256
    # the same stations as without `channels` (the draw does not depend on it)
    everything = observed_indices(
        "stations", shape, n_stations=256, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(everything[:256], pos[:256])
    # h(x) reads channel c at station s: value 10·c + s/4096
    x = (10.0 * torch.arange(6.0)[:, None] + torch.arange(4096.0)[None] / 4096).reshape(1, -1)
    hx = op(x)[0]
    assert torch.allclose(hx, 10.0 * ch.float() + pos.float() / 4096)


def test_channels_with_subsample_and_identity():
    idx = observed_indices("subsample", (3, 4, 4), every=2, channels=[2, 0])
    assert idx.tolist() == [0, 2, 8, 10, 32, 34, 40, 42]  # sorted: channel 0, then channel 2
    assert observed_indices("identity", (3, 2, 2), channels=[1]).tolist() == [4, 5, 6, 7]
    assert torch.equal(observed_indices("identity", (3, 2, 2), channels=None), torch.arange(12))


@pytest.mark.parametrize("channels", [[1, 6], [2, 2], [], [-1]])
def test_bad_channels_are_one_line_naming_the_key(channels):
    with pytest.raises(ValueError, match=r"^observation\.channels: ") as e:
        observed_indices("stations", (6, 8, 8), n_stations=4, channels=channels)
    assert "\n" not in str(e.value)
    cfg = cfg_of("experiment=qg_stations", f"observation.channels={channels}")
    with pytest.raises(ConfigError, match=r"^observation\.channels: ") as e:
        validate(cfg)
    assert "\n" not in str(e.value)


def test_new_keys_at_their_defaults_keep_the_config_hash():
    """Runs made before model.state and observation.channels existed keep their science keys."""
    keys = science_keys(validate(cfg_of("model=qg2l", "observation=stations")))
    assert "state" not in keys["model"] and "channels" not in keys["observation"]
    keys = science_keys(validate(cfg_of("experiment=qg_stations")))
    assert keys["model"]["state"] == "pv_velocity" and keys["observation"]["channels"] == [1, 2, 4, 5]


def test_channel_scores():
    """Per-channel RMSE/spread/CRPS: channel c has mean error c + 1 and members ±s_c about the mean."""
    truth = np.zeros((3, 4, 4))
    s = np.array([0.5, 1.0, 2.0])
    ens = (np.arange(1.0, 4.0) + s * np.array([-1.0, 1.0])[:, None])[:, :, None, None] * np.ones((2, 3, 4, 4))
    out = metrics.channel_scores(ens, ens, truth, ("a", "b", "c"))
    for c, name in enumerate("abc"):
        assert out[f"rmse_analysis_{name}"] == pytest.approx(c + 1)
        assert out[f"spread_forecast_{name}"] == pytest.approx(s[c] * math.sqrt(2))  # ddof = 1
        # fair CRPS of two members at m ± s, truth 0 (m > s): m − |x1 − x2| / 2 = m − s
        assert out[f"crps_analysis_{name}"] == pytest.approx(c + 1 - s[c])
    with pytest.raises(ValueError, match="channel names"):
        metrics.channel_scores(ens, ens, truth, ("a", "b"))
    # W&B gets them beside the headline scores and λ; not the spectra, histogram or hash
    from scoreda.tracking import logged

    scores = {"cycle": 3, "config_hash": "x", "rank_histogram": [1, 2], "inflation": 1.2}
    scores |= metrics.scores(ens, ens, truth) | out | {"error_spectrum_analysis": [0.1]}
    sent = logged(scores)
    assert sent["rmse_analysis_c"] == pytest.approx(3.0) and sent["inflation"] == 1.2
    assert set(sent) == {"cycle", "inflation", *metrics.SCORE_NAMES, *out}


@pytest.mark.parametrize("filt", ["ensf", "letkf", "lensf", "var3d", "gmrf_mp", "none"])
def test_experiment_composes(filt):
    c = validate(cfg_of("experiment=qg_stations", f"filter={filt}"))
    assert (c.model.name, c.model.nx, c.model.state, c.model.cycle_hours) == ("qg2l", 64, "pv_velocity", 12)
    assert (c.members, c.cycles, c.burn_in) == (20, 300, 20)
    o = c.observation
    assert (o.name, o.kind, o.n_stations, list(o.channels), o.sigma) == (
        "velocity_stations",
        "stations",
        256,
        [1, 2, 4, 5],
        0.005,
    )
    assert model_grid(c.model).shape == (6, 64, 64)
    assert c.run_dir == f"runs/qg_stations/{filt}" and c.experiment_name == "qg_stations"
    # each filter's tuned keys: configs/tuning/qg_stations_<filter>.yaml
    if filt == "none":
        assert set(c.filter) == {"name", "ranks", "shard"}
    elif filt in ("var3d", "gmrf_mp"):
        assert "cutoff" not in c.filter and c.filter.length_scale == 50.0
        assert list(c.filter.sigma_levels) == [5e-6, 0.05, 0.05, 5e-6, 0.05, 0.05]
    else:
        assert c.filter.cutoff == 75.0  # km: tuned on 60-cycle runs
    if filt == "letkf":
        assert c.filter.rtps == 0.3
    if filt == "ensf":
        assert (c.filter.unobserved, c.filter.rtps_unobserved) == ("regress", 0.5)


SMALL = [
    "model.nx=32",
    "model.dt=3600",
    "model.spinup_cycles=2000",  # developed: u1 std ≈ 0.055 m/s at 32²
    "model.member_spacing_cycles=4",
    "members=8",
    "cycles=2",
    "burn_in=0",
    "observation.n_stations=256",  # the experiment's station spacing, 62.5 km
]


@pytest.mark.slow
def test_two_cycles_with_every_filter(tmp_path):
    cmd = [*CYCLE, "-m", "experiment=qg_stations"]
    cmd += [
        "filter=ensf,letkf,var3d",
        *SMALL,
        f"run_dir={tmp_path}/${{filter.name}}",
        f"hydra.sweep.dir={tmp_path}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for filt in ("ensf", "letkf", "var3d"):
        run = tmp_path / filt
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        assert [int(r["cycle"]) for r in rows] == [1, 2]
        for r in rows:
            if filt == "var3d":  # a prior without balance: the observed velocities move, the PV does not
                for name in ("q1", "q2"):
                    assert r[f"rmse_analysis_{name}"] == r[f"rmse_forecast_{name}"]
            # the headline is the PV over both layers: the pooled RMSE of q1 and q2
            pooled = math.sqrt((float(r["rmse_analysis_q1"]) ** 2 + float(r["rmse_analysis_q2"]) ** 2) / 2)
            assert float(r["rmse_analysis"]) == pytest.approx(pooled, rel=1e-6)
            assert 1e-8 < float(r["rmse_analysis"]) < 1e-4  # 1/s
            assert 1e-4 < float(r["rmse_analysis_u1"]) < 0.2  # m/s
            for name in ("u1", "v1") if filt != "var3d" else ():  # the observed velocities are corrected
                assert float(r[f"rmse_analysis_{name}"]) < float(r[f"rmse_forecast_{name}"])
        if filt == "var3d":  # ... by 3D-Var on average over the two cycles (u1 cycle 1: 0.01505 → 0.01508)
            for name in ("u1", "v1"):
                mean = {
                    k: np.mean([float(r[f"rmse_{k}_{name}"]) for r in rows]) for k in ("analysis", "forecast")
                }
                assert mean["analysis"] < mean["forecast"]
        s = json.loads((run / "summary.json").read_text())
        assert s["headline_channels"] == ["q1", "q2"] and s["units"] == "1/s"
        assert s["channels"] == ["q1", "u1", "v1", "q2", "u2", "v2"]
        assert s["mean_rmse_analysis_u1"] == pytest.approx(
            np.mean([float(r["rmse_analysis_u1"]) for r in rows])
        )
        for png in ("fields.png", "fields_m_per_s.png", "rmse_spread_u1.png", "ke_spectrum.png"):
            assert (run / "plots" / png).stat().st_size > 10_000


def test_diffda_composes_with_the_qg_network(diffda_qg_weights, diffda_weights):
    c = cfg_of("experiment=qg_stations", "filter=diffda")  # configs/tuning/qg_stations_diffda.yaml
    assert (
        c.filter.weights == "runs/scorenet/diffda_qg_cpu/weights.pt"
        and c.run_dir == "runs/qg_stations/diffda"
    )
    c = validate(cfg_of("experiment=qg_stations", "filter=diffda", f"filter.weights={diffda_qg_weights}"))
    assert c.filter.guidance == "inpaint"
    with pytest.raises(ConfigError, match="^filter.weights: "):  # SQG's 2-channel network
        validate(cfg_of("experiment=qg_stations", "filter=diffda", f"filter.weights={diffda_weights}"))


@pytest.mark.slow
def test_two_cycles_with_diffda(tmp_path, diffda_qg_weights):
    """``filter=diffda`` on the 6-channel state (a tiny conditional network): finite analyses, the
    observed velocities drawn to the stations (σo = 0.005 m/s, well below the forecast's error)."""
    rows = run_cycle(
        tmp_path, "experiment=qg_stations", "filter=diffda", f"filter.weights={diffda_qg_weights}", *SMALL
    )
    assert [int(r["cycle"]) for r in rows] == [1, 2]
    for r in rows:
        assert 1e-8 < float(r["rmse_analysis"]) < 1e-4 and float(r["spread_analysis"]) > 0  # 1/s
    for cycle in ("000001", "000002"):  # at the stations the analysis is nearer the truth
        files = {k: tmp_path / "cycles" / cycle / f"{k}.h5" for k in ("analysis", "forecast", "truth", "obs")}
        truth, obs = read_state(files["truth"])[0][0], read_dataset_file(files["obs"])[0]
        at = np.unravel_index(obs["index"], truth.shape)
        err = {
            k: np.sqrt(((read_state(files[k])[0].mean(0)[at] - truth[at]) ** 2).mean())
            for k in ("analysis", "forecast")
        }
        assert err["analysis"] < err["forecast"] and err["analysis"] < 0.01, err  # σo = 0.005 m/s
