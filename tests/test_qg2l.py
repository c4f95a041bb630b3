"""Two-layer QG (pyqg) wrapper: batching, agreement with pyqg itself, stability, velocities."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pyqg = pytest.importorskip("pyqg")

from scoreda.dynamics import Dynamics  # noqa: E402
from scoreda.dynamics.qg2l import QG2LParams, TwoLayerQG  # noqa: E402

NX = 32  # small grid keeps the tests fast; the physics and code path are those of 64²


@pytest.fixture(scope="module")
def model() -> TwoLayerQG:
    return TwoLayerQG.from_config({"name": "qg2l", "nx": NX, "dt": 3600.0})


@pytest.fixture(scope="module")
def developed(model) -> torch.Tensor:
    """Three states with O(1) nonlinearity: random PV at the amplitude of a developed flow."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn((3, 2, NX, NX), generator=g, dtype=torch.float64)
    q[:, 0] *= 2e-5
    q[:, 1] *= 2e-6
    return q.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_protocol_and_defaults():
    m = TwoLayerQG.from_config({"name": "qg2l"})
    assert isinstance(m, Dynamics)
    assert m.state_shape == (2, 64, 64)
    assert m.dt == 900.0 and m.steps_per_cycle == 48
    p = m.model
    got = (p.L, p.beta, p.rd, p.delta, p.U1, p.U2, p.rek, p.filterfac)
    assert got == (1e6, 1.5e-11, 15000.0, 0.25, 0.025, 0.0, 5.787e-7, 23.6)
    assert tuple(p.Hi) == (500.0, 2000.0)
    x = m.initial_state(torch.Generator().manual_seed(0), 2)
    assert x.shape == (2, 2, 64, 64) and x.dtype == torch.float32
    assert torch.all(x[:, 1] == 0) and 0 < float(x[:, 0].max()) < 2e-6


def test_config_validation():
    with pytest.raises(ValueError, match="model.dt"):
        TwoLayerQG.from_config({"nx": 16, "dt": 7000.0})
    with pytest.raises(ValueError, match="model.nx"):
        TwoLayerQG.from_config({"nx": 15})
    assert TwoLayerQG(QG2LParams(nx=16, dt=7200.0, cycle_hours=24)).steps_per_cycle == 12


def test_construction_leaves_global_numpy_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    TwoLayerQG.from_config({"nx": 16})
    assert np.random.rand() == expected


def test_batch_equals_one_at_a_time(model, developed):
    n = 10
    together = model.step(developed, n)
    # in reverse order, so member i's neighbour in the loop differs between the two runs
    alone = torch.cat([model.step(developed[i : i + 1], n) for i in reversed(range(3))]).flip(0)
    assert together.shape == developed.shape and together.dtype == torch.float32
    assert _rel(together, alone) <= 1e-6
    assert _rel(together, developed) > 1e-3  # it did move


def test_matches_fresh_pyqg_model(model, developed):
    n = 12
    got = model.step(developed, n)
    for i in range(developed.shape[0]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ref = pyqg.QGModel(nx=NX, dt=3600.0, log_level=0)
        ref.q = developed[i].double().numpy()
        for _ in range(n):
            ref._step_forward()
        assert _rel(got[i], torch.from_numpy(ref.q)) <= 1e-6


def test_short_run_stays_finite(model):
    x = model.initial_state(torch.Generator().manual_seed(1), 2)
    y = model.step(x, 200)
    assert torch.isfinite(y).all()
    assert float(y.abs().max()) < 1e-3  # far below anything a blown-up run would give


def test_velocity_shapes(model, developed):
    u, v = model.velocity(developed)
    assert u.shape == developed.shape and v.shape == developed.shape
    assert u.dtype == torch.float32 and v.dtype == torch.float32
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    # geostrophic flow has zero mean; ``full`` adds the background (U1, U2) to u only
    assert float(u.double().mean(dim=(-2, -1)).abs().max()) < 1e-9
    uf, vf = model.velocity(developed, full=True)
    assert torch.allclose(uf[:, 0] - u[:, 0], torch.tensor(0.025), atol=1e-6)
    assert torch.equal(uf[:, 1], u[:, 1]) and torch.equal(vf, v)


def test_velocity_matches_spectral_inversion(model, developed):
    """u = −∂ψ/∂y, v = ∂ψ/∂x with ψ from q by the two-layer inversion, done here in numpy."""
    p = model.model
    q = developed[0].double().numpy()
    qh = np.fft.rfft2(q)
    k = 2 * np.pi / p.L * np.fft.rfftfreq(NX, 1.0 / NX)[None, :]
    l = 2 * np.pi / p.W * np.fft.fftfreq(NX, 1.0 / NX)[:, None]
    k2 = k**2 + l**2
    F1, F2 = p.F1, p.F2
    det = k2 * (k2 + F1 + F2)
    det[0, 0] = np.inf
    ph1 = -((k2 + F2) * qh[0] + F1 * qh[1]) / det
    ph2 = -(F2 * qh[0] + (k2 + F1) * qh[1]) / det
    ph = np.stack([ph1, ph2])
    u_ref = np.fft.irfft2(-1j * l * ph, s=(NX, NX))
    v_ref = np.fft.irfft2(1j * k * ph, s=(NX, NX))
    u, v = model.velocity(developed[:1])
    assert _rel(u[0], torch.from_numpy(u_ref)) < 1e-5
    assert _rel(v[0], torch.from_numpy(v_ref)) < 1e-5
