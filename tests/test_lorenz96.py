"""Lorenz-96: batching, fixed point, scale, chaos and config validation."""

from __future__ import annotations

import pytest
import torch

from scoreda.dynamics import Dynamics
from scoreda.dynamics.lorenz96 import Lorenz96, Lorenz96Params


def _spun_up(model: Lorenz96, batch: int, seed: int = 0, steps: int = 1000) -> torch.Tensor:
    x0 = model.initial_state(torch.Generator().manual_seed(seed), batch)
    return model.step(x0, steps)


def test_protocol_and_defaults():
    model = Lorenz96.from_config({"name": "lorenz96"})
    assert isinstance(model, Dynamics)
    assert model.state_shape == (1, 1, 40)
    assert model.steps_per_cycle == 5
    assert model.dt == 0.01 and model.F == 8.0
    x = model.initial_state(torch.Generator().manual_seed(0), 3)
    assert x.shape == (3, 1, 1, 40) and x.dtype == torch.float32 and x.device.type == "cpu"


def _reference_rk4(x: torch.Tensor, F: float, dt: float, n: int) -> torch.Tensor:
    """Independent float64 RK4 with torch.roll, as a check of the halo bookkeeping."""

    def f(z):
        return (torch.roll(z, -1, -1) - torch.roll(z, 2, -1)) * torch.roll(z, 1, -1) - z + F

    z = x.double()
    for _ in range(n):
        k1 = f(z)
        k2 = f(z + 0.5 * dt * k1)
        k3 = f(z + 0.5 * dt * k2)
        k4 = f(z + dt * k3)
        z = z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 40])
def test_matches_reference_rk4(size):
    model = Lorenz96(Lorenz96Params(size=size, F=8.0, dt=0.01))
    x = 8.0 + torch.randn((3, 1, 1, size), generator=torch.Generator().manual_seed(size))
    got = model.step(x, 20)
    want = _reference_rk4(x, 8.0, 0.01, 20)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    want_tendency = (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + 8.0
    assert torch.allclose(model.tendency(x), want_tendency, atol=1e-5)


def test_batch_equals_one_at_a_time():
    model = Lorenz96(Lorenz96Params(size=40))
    x = model.initial_state(torch.Generator().manual_seed(1), 5)
    x = model.step(x, 200)  # off the fixed point, so the dynamics are nonlinear
    together = model.step(x, 50)
    alone = torch.cat([model.step(x[i : i + 1], 50) for i in range(x.shape[0])])
    rel = (together - alone).norm() / alone.norm()
    assert rel <= 1e-6
    assert not torch.equal(together, x)  # a new tensor with new values, input left alone


def test_step_returns_new_tensor():
    model = Lorenz96()
    x = _spun_up(model, 2, steps=100)
    x_copy = x.clone()
    y = model.step(x, 1)
    assert y is not x and torch.equal(x, x_copy)
    assert model.step(x, 0) is not x


def test_tendency_zero_at_forcing():
    for size in (1, 4, 40, 1001):
        model = Lorenz96(Lorenz96Params(size=size, F=8.0))
        x = torch.full((3, 1, 1, size), 8.0)
        assert torch.count_nonzero(model.tendency(x)) == 0
        assert torch.equal(model.step(x, 10), x)


def test_million_variables():
    model = Lorenz96.from_config({"size": 1_000_000})
    x = model.initial_state(torch.Generator().manual_seed(2), 2)
    y = model.step(x, 2)
    assert y.shape == (2, 1, 1, 1_000_000) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_chaos_and_bounded():
    model = Lorenz96()
    x = _spun_up(model, 1, seed=3)
    assert x.abs().max() < 30
    assert x.std() > 2.0  # on the attractor, not near the fixed point
    pert = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    x2 = x + 1e-6 * pert / pert.norm()
    d0 = (x2 - x).norm()
    a, b = model.step(x, 1000), model.step(x2, 1000)  # 10 time units
    assert (a - b).norm() > 1e3 * d0  # grows ~e^{1.7 t}, saturates at attractor size
    assert a.abs().max() < 30 and b.abs().max() < 30
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


@pytest.mark.parametrize("dt", [0.03, 0.1])
def test_rejects_dt_not_dividing_cycle(dt):
    with pytest.raises(ValueError, match="model.dt"):
        Lorenz96.from_config({"dt": dt, "cycle_time": 0.05})


def test_other_cycle_lengths():
    assert Lorenz96.from_config({"dt": 0.005, "cycle_time": 0.05}).steps_per_cycle == 10
    assert Lorenz96.from_config({"dt": 0.01, "cycle_time": 0.15}).steps_per_cycle == 15


def test_omegaconf_config():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"name": "lorenz96", "size": 100, "F": 10.0})
    model = Lorenz96.from_config(cfg)
    assert model.state_shape == (1, 1, 100) and model.F == 10.0
