"""Forecast models behind one protocol: ``step(x[M, C, H, W], n_steps) -> x``, batched over members."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Dynamics(Protocol):
    """A forecast model. State tensors are ``[member, level, y, x]`` (float32, any device)."""

    #: shape ``(C, H, W)`` of one member's state
    state_shape: tuple[int, int, int]
    #: model time steps between two observation times (one DA cycle)
    steps_per_cycle: int
    #: model time (seconds, or model units for Lorenz-96) of one step
    dt: float

    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance every member by ``n_steps`` model steps; returns a new tensor of the same shape."""
        ...


def model_science(model_cfg) -> dict:
    """The model config as a plain dict, plus ``revision`` where the model's numerics were changed
    after runs existed (SQG ``jacobian=reference``: 2, sqgturb's modes since issue 17). Hashed into
    run, spin-up and training-data keys, so that nothing made on an older revision is reused."""
    from omegaconf import OmegaConf

    c = dict(model_cfg) if isinstance(model_cfg, dict) else OmegaConf.to_container(model_cfg, resolve=True)
    if c["name"] == "sqg" and c.get("jacobian", "reference") == "reference":
        c["revision"] = 2
    return c


@functools.cache
def registry() -> dict[str, tuple[type, type]]:
    """``model.name`` -> (its parameter dataclass: keys, defaults and checks; the model class), from
    the ``REGISTER`` of every module of this package."""
    found = {}
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        found |= getattr(importlib.import_module(f"{__name__}.{mod.name}"), "REGISTER", {})
    return found


def model_params(model_cfg):
    """The checked parameter dataclass of a model config (``ValueError`` naming the key)."""
    if model_cfg["name"] not in registry():
        raise ValueError(
            f"model.name: unknown model {model_cfg['name']!r} (expected {', '.join(registry())})"
        )
    params = registry()[model_cfg["name"]][0]
    return params(**{f.name: model_cfg[f.name] for f in dataclasses.fields(params) if f.name in model_cfg})


def make_dynamics(model_cfg, device: str | torch.device = "cpu") -> Dynamics:
    """Build the ``Dynamics`` named by ``model_cfg.name`` (``registry``)."""
    model_params(model_cfg)  # checked, one line naming the key
    return registry()[model_cfg["name"]][1].from_config(model_cfg, device=device)
