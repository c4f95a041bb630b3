"""Tests for scoreda.config: every YAML in configs/ composes and validates; bad values are refused
with one line naming the key; science_keys covers exactly what changes the numbers."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from scoreda.config import ConfigError, divergence_bound, validate
from scoreda.io import config_hash
from scoreda.science import science_keys

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _options() -> list[tuple[str, str]]:
    return [
        (group.name, option.stem)
        for group in sorted(p for p in CONFIGS.iterdir() if p.is_dir())
        for option in sorted(group.glob("*.yaml"))
    ]


def test_config_tree_has_the_expected_groups():
    groups = {g for g, _ in _options()}
    assert {"model", "observation", "filter", "forecaster", "platform", "logger", "experiment"} <= groups


@pytest.mark.parametrize(("group", "option"), _options(), ids=[f"{g}={o}" for g, o in _options()])
def test_every_config_composes_and_validates(group, option, tmp_path, weights_overrides):
    extra = []
    if group == "filter" and option in weights_overrides:  # needs a network's weights
        extra = weights_overrides[option]
    if (group, option) == ("forecaster", "vit") or (group == "arm" and option.startswith("vit")):
        # needs weights; any existing file passes validation
        (tmp_path / "w.pt").touch()
        extra = [f"surrogate.checkpoint={tmp_path / 'w.pt'}"]
    if (group, option) in (("observation", "velocity_stations"), ("scorenet", "diffda_qg_cpu")):
        extra = ["model=qg2l", "model.state=pv_velocity"]  # channels of the QG state
    if group == "tuning":  # <experiment>_<filter>, chosen by config.yaml's defaults, never by hand
        exp = max(
            (e.stem for e in (CONFIGS / "experiment").glob("*.yaml") if option.startswith(f"{e.stem}_")),
            key=len,
        )
        filt = option[len(exp) + 1 :]
        cfg = _compose(f"experiment={exp}", f"filter={filt}")
        tuned = OmegaConf.load(CONFIGS / "tuning" / f"{option}.yaml").filter
        assert cfg.filter.name == filt and all(cfg.filter[k] == v for k, v in tuned.items())
        if filt not in weights_overrides:  # a tuned network's file: tests/test_qg_stations.py
            validate(cfg)
        return
    cfg = validate(_compose(f"{group}={option}", *extra))
    if group == "experiment":
        assert cfg.experiment_name == option
    elif group == "arm":  # an experiment's own arm drops its prefix: shocks_letkf_tuned → letkf_tuned
        assert option in (cfg.arm, f"{option.split('_')[0]}_{cfg.arm}")
    else:
        assert cfg[group].name == option  # each option file names itself
    if (group, option) == ("filter", "none"):  # no keys but the launch keys
        assert set(cfg.filter) == {"name", "ranks", "shard"}


def test_a_free_run_is_never_stopped_by_divergence():
    """``divergence`` bounds a filter's error; a free run (filter=none, e.g. paper_fig4's ViT only,
    which drifts to ≈ 60 K) is scored to the end whatever the key says."""
    from types import SimpleNamespace

    from scoreda.stages.common import Diverged, check_divergence

    free, letkf = validate(_compose("filter=none")), validate(_compose("filter=letkf"))
    assert (free.divergence, divergence_bound(free), divergence_bound(letkf)) == (5.0, None, 5.0)
    check_divergence(SimpleNamespace(cfg=free, dir="runs/x"), 3, 60.0, 1.0)  # 60σ: goes on
    with pytest.raises(Diverged, match=r"cycle 3: analysis RMSE 60 K > divergence=5"):
        check_divergence(SimpleNamespace(cfg=letkf, dir="runs/x"), 3, 60.0, 1.0)


def test_default_config_validates():
    cfg = validate(_compose())
    assert (cfg.model.name, cfg.observation.name, cfg.filter.name) == ("sqg", "full", "ensf")
    assert cfg.members == 20 and "hydra" not in cfg


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["members=-3"], "members:"),
        (["members=abc"], "members:"),
        (["filter.name=foo"], "filter.name:"),
        (["observation=subsample", "observation.every=5"], "observation.every:"),
        (["filter.n_steps=0"], "filter.n_steps:"),
        (["model.dt=1000"], "model.dt:"),
        (["filter.rtps=1.5"], "filter.rtps:"),
        (["filter.unobserved=nearest"], "filter.unobserved:"),
        (["filter.rtps_unobserved=2"], "filter.rtps_unobserved:"),
        (["filter.standardise=wavelet"], "filter.standardise:"),
        (["filter.standardise=spectral", "filter.shard=state", "filter.ranks=2"], "filter.shard:"),
        (["observation.sigma=0"], "observation.sigma:"),
        (["filter.ranks=50"], "filter.ranks:"),
        (
            ["filter=letkf", "filter.ranks=2", "filter.shard=members"],
            "filter.shard: filter=letkf runs on several",
        ),
        (
            ["filter=letkf", "filter.ranks=2", "filter.cutoff=inf"],
            "filter.cutoff: the global filter=letkf (cutoff=inf)",
        ),
        (["filter=letkf", "filter.ranks=80", "members=100"], "filter.ranks: 80 ranks for a grid of 64 rows"),
        (["filter.kernel=fused", "observation=arctan"], "filter.kernel: fused takes linear observations"),
        (["filter=none", "filter.ranks=2", "filter.shard=state"], "filter.ranks: filter=none runs on one"),
        (["members=1"], "members: filter=ensf needs ≥ 2"),
        (["filter=gmrf_mp", "members=0"], "members: must be ≥ 1"),
        (["surrogate.step_hours=5"], "surrogate.step_hours:"),
        (["surrogate.step_hours=0"], "surrogate.step_hours:"),
        (["pretrain.frame_hours=5"], "pretrain.frame_hours:"),
        (["surrogate.step_hours=3", "pretrain.frame_hours=2"], "pretrain.frame_hours:"),
        (["pretrain.frame_hours=0.5"], "pretrain.frame_hours:"),  # 1800 s is 1.5 model steps
        (["pretrain.rollout_steps=-1"], "pretrain.rollout_steps:"),
        (["+bogus=1"], "bogus:"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_validate_rejects_with_one_line_naming_the_key(overrides, key):
    cfg = _compose(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(key), msg
    assert len(msg) > len(key) + 1  # says what is wrong


def test_validate_rejects_unknown_key():
    cfg = _compose("+filter.bogus=1")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("filter"), msg
    assert "filter.bogus" in msg


def test_ranks_need_members_only_when_sharding_members():
    with pytest.raises(ConfigError, match=r"^filter\.ranks: 50 ranks for 20 members"):
        validate(_compose("filter.ranks=50"))
    assert validate(_compose("filter.ranks=50", "filter.shard=state")).filter.ranks == 50


def _science_hash(*overrides: str) -> str:
    return config_hash(science_keys(validate(_compose(*overrides))))


@pytest.mark.parametrize(
    "override",
    ["cycles=70", "platform.workers=1", "platform.retries=3", "logger=wandb", "run_dir=/elsewhere/run"],
)
def test_science_keys_ignore_what_does_not_change_the_numbers(override):
    assert _science_hash(override) == _science_hash()


@pytest.mark.parametrize(
    "override",
    [
        "seed=1",
        "filter.eps_beta=0.25",
        "members=10",
        "model.N=32",
        "filter.standardise=spectral",
        "filter.cap_spread=true",
    ],
)
def test_science_keys_change_with_the_science(override):
    assert _science_hash(override) != _science_hash()
