"""The model grids (scoreda.dynamics.grid): coordinates, periodic lengths, level names and units."""

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from test_cli import CONFIGS

from scoreda.config import validate
from scoreda.dynamics import make_dynamics
from scoreda.dynamics.grid import MIXED_UNITS, model_grid, time_coords


def _model(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return validate(compose("config", overrides=list(overrides))).model


def test_sqg_grid_in_km():
    m = _model("model.N=16")
    g = model_grid(m)
    assert g.shape == (2, 16, 16) and g.length_units == "km"
    assert np.allclose(g.x, np.arange(16) * 1250.0) and np.array_equal(g.x, g.y)  # L/N = 20000 km / 16
    assert g.periodic_lengths == (20000.0, 20000.0) and g.spacing == (1250.0, 1250.0)
    assert g.level_names == ("z=0", "z=H") and g.level_units == ("K", "K")
    assert g.state_attrs == {
        "units": "K",
        "long_name": "potential temperature",
        "standard_name": "air_potential_temperature",
    }
    with pytest.raises(ValueError, match="read-only"):
        g.x[0] = 1.0


@pytest.mark.parametrize("state", ["pv", "pv_velocity"])
def test_qg2l_grid_channels(state):
    m = _model("model=qg2l", "model.nx=8", f"model.state={state}")
    g = model_grid(m)
    assert g.shape == make_dynamics(m).state_shape
    assert np.allclose(g.x, np.arange(8) * 125.0) and g.periodic_lengths == (1000.0, 1000.0)  # 1000 km
    assert g.standard_name is None and "standard_name" not in g.state_attrs
    if state == "pv":
        assert g.level_names == ("q1", "q2") and g.units == "1/s"
    else:  # the velocities are in m/s: one units attribute cannot say it, level_units does
        assert g.level_names == ("q1", "u1", "v1", "q2", "u2", "v2")
        assert g.level_units == ("1/s", "m/s", "m/s", "1/s", "m/s", "m/s") and g.units == MIXED_UNITS
        coords = g.coords(members=3)
        assert coords["level_units"][1].tolist() == list(g.level_units)
        loc = g.locate(np.array([0, 8 * 8 + 9, 5 * 64 + 63]))  # q1 (0,0); u1 (1,1); v2 (7,7)
        assert loc["level"][1].tolist() == ["q1", "u1", "v2"]
        assert loc["y"][1].tolist() == [0.0, 125.0, 875.0] and loc["x"][1].tolist() == [0.0, 125.0, 875.0]
        assert g.observed_attrs(np.array([64, 128]))["units"] == "m/s"  # u1, v1 stations
        assert g.observed_attrs(np.array([0, 64]))["units"] == MIXED_UNITS


def test_lorenz96_grid_in_index_units():
    m = _model("model=lorenz96", "model.size=40")
    g = model_grid(m)
    assert g.shape == (1, 1, 40) and g.length_units == "1"
    assert g.x.tolist() == list(range(40)) and g.y.tolist() == [0] and g.x.dtype.kind == "i"
    assert g.periodic_lengths == (1.0, 40.0) and g.spacing == (1.0, 1.0)
    assert g.level_names == ("x",) and g.state_attrs == {"units": "1", "long_name": "Lorenz-96 variable"}
    arctan = g.observed_attrs(np.arange(40), "arctan")
    assert arctan == {"units": "1", "long_name": "arctan of the Lorenz-96 variable in 1"}


def test_time_coords():
    dims, hours, attrs = time_coords(3, 36.0)["time"]
    assert dims == () and hours == 36.0 and attrs["units"] == "hours"
    cycles = np.arange(3)
    c = time_coords(cycles, cycles * 12.0, ("time",))
    assert c["cycle"][0] == ("time",) and c["time"][1].tolist() == [0.0, 12.0, 24.0]
