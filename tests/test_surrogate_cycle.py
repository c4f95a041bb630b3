"""The ViT surrogate in the workflows: offline pre-training (Parsl + torchrun, 2 ranks) and the cycle
with forecaster=vit, online fine-tuning with lag 0 and lag 1, weights per cycle, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.stages.common import Run, write_config
from scoreda.stages.train import forecast_weights, weights_path
from scoreda.surrogate import build_vit, load_weights, save_weights

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = (
    "surrogate.img_size=16",
    "surrogate.embed_dim=32",
    "surrogate.depth=2",
    "surrogate.heads=2",
    "surrogate.batch_size=4",
)
TINY = (
    "model.N=16",
    "members=4",
    "burn_in=0",
    "model.spinup_cycles=4",
    "model.member_spacing_cycles=1",
    "filter.n_steps=10",
    "progress=false",
    *TINY_VIT,
)


def env():
    return {**os.environ, "WANDB_MODE": "offline", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def run(cmd, timeout=600):
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny pre-training through the real workflow: 2 ranks under torchrun, DeepSpeed ZeRO-2; a 3-h
    surrogate on 1-h frames, its last 2 steps on the 4-step rollout to 12 h."""
    out_dir = tmp_path_factory.mktemp("pretrain")
    cmd = [
        sys.executable,
        str(ROOT / "workflows" / "pretrain.py"),
        *TINY,
        f"pretrain.out_dir={out_dir}",
        "pretrain.trajectories=3",
        "pretrain.held_out=1",
        "pretrain.length=6",
        "pretrain.decorrelate_cycles=1",
        "pretrain.steps=6",
        "surrogate.step_hours=3",
        "pretrain.frame_hours=1",
        "pretrain.rollout_steps=2",
        "parallel=zero2",
        "parallel.ranks=2",
    ]
    return out_dir, run(cmd).stdout


@pytest.mark.slow
def test_pretrain_workflow_writes_weights_and_report(pretrained):
    out_dir, stdout = pretrained
    assert "held-out 12-hour forecasts" in stdout and "ViT / persistence" in stdout
    model, mean, std, meta = load_weights(out_dir / "weights.pt")
    assert meta["steps"] == 6 and meta["parallel"] == "zero2" and meta["rollout_from"] == 4
    assert model.step_hours == 3.0 and mean.shape == std.shape == (2,) and (std > 0).all()
    train = json.loads((out_dir / "train.json").read_text())
    assert train["ranks"] == 2 and len(train["losses"]) == 6
    assert train["samples"] == 2 * (5 * 12 + 1 - 3)  # 2 runs of 61 hourly frames, pairs 3 h apart
    report = json.loads((out_dir / "report.json").read_text())
    assert report["pairs"] == 5  # one held-out trajectory over 5 cycles, forecasts from every cycle
    for start in ("exact", "noisy"):
        r = report[start]
        assert r["rmse_persistence"] > 0 and r["rmse_vit"] > 0
    # the SQG model reproduces its own nature run, but for the hidden Im θ̂(k=0, l=−N/2): the trajectory
    # restarts from its grid every hour, a forecast every 12 h (as sqgturb's advance(pv) does; test_sqg)
    assert report["exact"]["rmse_model"] < 1e-2  # K; 1.1e-3 measured
    assert report["noisy"]["rmse_model"] > 0.5  # from a perturbed start it does not


def _tiny_pretrain(out_dir: Path, *extra: str) -> tuple[dict, str]:
    """A tiny pre-training through its stage functions (train as its own single process, as the workflow
    runs it): 2 SQG runs of 3 cycles as hourly frames, a 6-h ViT step; train.json and the train stdout."""
    from omegaconf import OmegaConf

    from scoreda.io import write_text
    from scoreda.stages import pretrain

    overrides = [*TINY, f"pretrain.out_dir={out_dir}", "pretrain.trajectories=2", "pretrain.held_out=1"]
    overrides += ["pretrain.length=3", "pretrain.decorrelate_cycles=0", "surrogate.step_hours=6", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = validate(compose("config", overrides=overrides))
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    pretrain.trajectory(out_dir)
    out = run([sys.executable, "-m", "scoreda.stages.pretrain", "train", "--out-dir", str(out_dir)])
    return json.loads((out_dir / "train.json").read_text()), out.stdout


def test_pretrain_trains_all_steps_without_a_time_limit(tmp_path):
    """The default has no time limit: exactly pretrain.steps steps, the rolled-out phase from step
    steps − rollout_steps, whatever the machine's load."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        assert validate(compose("config")).pretrain.max_minutes is None
        with pytest.raises(ValueError, match="pretrain.max_minutes"):
            validate(compose("config", overrides=["pretrain.max_minutes=0"]))
    train, stdout = _tiny_pretrain(tmp_path, "pretrain.steps=3", "pretrain.rollout_steps=1")
    assert train["steps"] == len(train["losses"]) == 3
    assert train["rollout_from"] == 2
    assert train["stopped_early"] is False and train["reason"] is None
    assert "stopped early" not in stdout


def test_pretrain_time_limit_stops_early_and_says_so(tmp_path):
    """pretrain.max_minutes=0.001 (60 ms) stops at a step boundary long before 1000 steps; the training
    job prints it in one line, train.json and report.json record it."""
    from scoreda.stages import pretrain

    train, stdout = _tiny_pretrain(tmp_path, "pretrain.steps=1000", "pretrain.max_minutes=0.001")
    n = train["steps"]
    assert 1 <= n < 1000 and len(train["losses"]) == n
    reason = f"pretrain.max_minutes=0.001 reached at step {n} of 1000"
    assert train["stopped_early"] is True and train["reason"] == reason
    assert [line for line in stdout.splitlines() if "stopped early" in line] == [f"stopped early: {reason}"]
    report = pretrain.evaluate(tmp_path)
    assert report["train"]["steps"] == n
    assert report["train"]["stopped_early"] is True and report["train"]["reason"] == reason
    assert json.loads((tmp_path / "report.json").read_text())["train"]["reason"] == reason


def _weights(tmp_path, *extra) -> Path:
    """Random tiny weights in the pre-training format (the cycle only needs a valid file)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = validate(compose("config", overrides=[*TINY, *extra]))
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    save_weights(path, build_vit(cfg.surrogate), cfg.surrogate, torch.zeros(2), torch.full((2,), 5.0))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("lag", "step_hours"), [(0, 12), (1, 6)])
def test_cycle_with_online_fine_tuning(tmp_path, lag, step_hours):
    """6-h steps: the cycle forecasts with 2 ViT steps, the train stage fits the 2-step rollout."""
    w = _weights(tmp_path, f"surrogate.step_hours={step_hours}")
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "workflows" / "cycle.py"),
        *TINY,
        "cycles=3",
        f"run_dir={run_dir}",
        "forecaster=vit",
        f"surrogate.checkpoint={w}",
        "surrogate.online=true",
        f"surrogate.lag={lag}",
        "surrogate.finetune_steps=3",
        "surrogate.replay=2",
    ]
    run(cmd)
    r = Run(run_dir)
    for k in (1, 2, 3):
        model, _, _, meta = load_weights(weights_path(r, k))
        assert meta["cycle"] == k and len(meta["losses"]) == 3 and model.step_hours == step_hours
        assert meta["base"] == str(weights_path(r, k - 1) if k > 1 else w)
        assert meta["pairs"] == 4 * min(k, 2)  # members × cycles in the replay window
    # lag 0: forecast(k) uses the weights of cycle k−1; lag 1: of cycle k−2 (the checkpoint before)
    assert forecast_weights(r, 2) == (weights_path(r, 1) if lag == 0 else w)
    assert forecast_weights(r, 3) == weights_path(r, 2 - lag)
    w1 = load_weights(weights_path(r, 1))[0].state_dict()
    w0 = load_weights(w)[0].state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # fine-tuning changed the weights
    first = (run_dir / "metrics.csv").read_text()
    # resume: remove the last cycle's weights and forecast onwards; the same command recomputes them equal
    before = {k: v.clone() for k, v in load_weights(weights_path(r, 3))[0].state_dict().items()}
    weights_path(r, 3).unlink()
    for name in ("analysis.h5", "scores.json"):
        (run_dir / "cycles" / "000003" / name).unlink()
    run(cmd)
    after = load_weights(weights_path(r, 3))[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (run_dir / "metrics.csv").read_text() == first


def test_forecaster_vit_without_weights_is_one_line(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "workflows" / "cycle.py"),
        *TINY,
        f"run_dir={tmp_path / 'run'}",
        "forecaster=vit",
        f"surrogate.checkpoint={tmp_path / 'missing.pt'}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"config error: surrogate.checkpoint: no such file {str(tmp_path / 'missing.pt')!r}"
        " (python workflows/pretrain.py writes it)"
    ]
    assert not (tmp_path / "run").exists()


def test_surrogate_size_must_match_the_model(tmp_path):
    w = _weights(tmp_path)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        vit = ["forecaster=vit", f"surrogate.checkpoint={w}"]
        cfg = compose("config", overrides=[*TINY, "model.N=32", *vit])
    with pytest.raises(ValueError, match=r"^surrogate.img_size: the surrogate maps 2×16² states"):
        validate(cfg)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        ok = validate(compose("config", overrides=[*TINY, "forecaster=vit", f"surrogate.checkpoint={w}"]))
    write_config(tmp_path / "r", ok)  # the science hash covers the surrogate when it forecasts
    assert (tmp_path / "r" / "config.yaml").is_file()


def test_pretrain_branch_noise_is_in_the_model_units(tmp_path):
    """The two-layer QG's PV is ~1e-5 1/s: branching its nature runs by N(0, 1) noise blows them up,
    which is a one-line error naming ``pretrain.branch_std``; branched by 1e-6 1/s the runs are finite,
    distinct, and keyed apart from N(0, 1) branching (whose key, SQG's, is unchanged)."""
    from omegaconf import OmegaConf

    from scoreda.io import read_dataset_file, write_text
    from scoreda.stages import pretrain

    def config(*extra):
        overrides = ["model=qg2l", "model.nx=16", "model.dt=3600", "model.spinup_cycles=10"]
        overrides += ["pretrain.trajectories=2", "pretrain.held_out=1", "pretrain.length=2"]
        overrides += ["pretrain.decorrelate_cycles=1", *extra]
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = validate(compose("config", overrides=overrides))
        write_text(tmp_path / "config.yaml", OmegaConf.to_yaml(cfg))
        return cfg

    cfg = config()
    with pytest.raises(ValueError, match=r"^pretrain.branch_std: the runs branched by noise of std 1.0 1/s"):
        pretrain.trajectory(tmp_path, 12.0)
    assert not (tmp_path / "trajectory.h5").exists()
    small = config("pretrain.branch_std=1e-6")
    assert pretrain._trajectory_key(small) != pretrain._trajectory_key(cfg)
    state = read_dataset_file(pretrain.trajectory(tmp_path, 12.0))[0]["state"]
    assert state.shape == (2, 2, 2, 16, 16) and np.isfinite(state).all()
    assert 1e-7 < np.abs(state[0] - state[1]).max() and np.abs(state).max() < 1e-3
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        with pytest.raises(ValueError, match="pretrain.branch_std"):
            validate(compose("config", overrides=["pretrain.branch_std=0"]))
