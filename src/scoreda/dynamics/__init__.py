"""Forecast models behind one protocol: ``step(x[M, C, H, W], n_steps) -> x``, batched over members."""

from __future__ import annotations

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


def make_dynamics(model_cfg, device: str | torch.device = "cpu") -> Dynamics:
    """Build the ``Dynamics`` named by ``model_cfg.name`` (``sqg``, ``lorenz96``, ``qg2l``)."""
    name = model_cfg.name
    if name == "sqg":
        from scoreda.dynamics.sqg import SQG

        return SQG.from_config(model_cfg, device=device)
    if name == "lorenz96":
        from scoreda.dynamics.lorenz96 import Lorenz96

        return Lorenz96.from_config(model_cfg, device=device)
    if name == "qg2l":
        from scoreda.dynamics.qg2l import TwoLayerQG

        return TwoLayerQG.from_config(model_cfg)
    raise ValueError(f"model.name: unknown model {name!r} (expected sqg, lorenz96 or qg2l)")
