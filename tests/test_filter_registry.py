"""The contract every registered filter keeps (``scoreda.filters.registry``): one module and one config
file, its dataclass fields are the config's keys and defaults, and it analyses through the protocol."""

from dataclasses import MISSING
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.dynamics.grid import model_grid
from scoreda.filters import LAUNCH_KEYS, Analysis, Capabilities, config_fields, make_filter, registry
from scoreda.observations import PointObservation
from scoreda.registry import FILTERS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(name: str, weights_overrides: dict):
    """``filter=<name>`` on a 16² SQG grid (``sda``, ``diffda`` given a small network's weights)."""
    extra = weights_overrides.get(name, [])
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return validate(compose("config", overrides=[f"filter={name}", "model.N=16", *extra]))


@pytest.mark.parametrize("name", sorted(registry()))
def test_the_class_is_the_config(name, weights_overrides):
    """configs/filter/<name>.yaml composes to the launch keys plus exactly the class's config fields,
    each at the class's default (the file sets nothing else; sda's ``weights`` names the same file as
    the default through ``scorenet.out_dir``, diffda's the default preset's; both overridden here)."""
    cls = registry()[name]
    assert (CONFIGS / "filter" / f"{name}.yaml").is_file()
    cfg = _cfg(name, weights_overrides).filter
    fields = {f.name: f.default for f in config_fields(cls)}
    if name in weights_overrides:
        fields["weights"] = weights_overrides[name][0].removeprefix("filter.weights=")
    assert set(cfg) == set(LAUNCH_KEYS) | set(fields)
    assert all(default is not MISSING for default in fields.values()), "every key has a default"
    assert {k: cfg[k] for k in fields} == fields
    assert set(FILTERS[name].__dataclass_fields__) == set(cfg)


@pytest.mark.parametrize("name", sorted(registry()))
def test_each_filter_analyses_through_the_protocol(name, weights_overrides):
    cfg = _cfg(name, weights_overrides)
    filt = make_filter(cfg.filter, model_grid(cfg.model))
    assert isinstance(filt.capabilities, Capabilities)
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2 * 16 * 16, generator=g)
    prior = truth + torch.randn(6, truth.numel(), generator=g)
    op = PointObservation(torch.arange(0, truth.numel(), 2), sigma=0.5, d=truth.numel())
    out = filt.analyse(prior, op.sample(truth, g), op, torch.Generator().manual_seed(1))
    assert isinstance(out, Analysis) and out.ensemble.shape == prior.shape
    assert torch.isfinite(out.ensemble).all()
    assert all(isinstance(v, float) for v in out.diagnostics.values())


def test_a_key_of_another_filter_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^filter\.n_steps: not a key of filter=letkf"):
        make_filter({"name": "letkf", "n_steps": 10})
