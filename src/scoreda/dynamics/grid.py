"""Each model's grid, in one place: positions, periodic lengths, level names and units.

A state is ``[member, level, y, x]``; :func:`model_grid` gives its coordinates without building
the model. Positions are cell positions x_i = i · L / N (doubly periodic, the origin at index 0), in
km for SQG and the two-layer QG (``model.L`` is in m) and in grid index for Lorenz-96 (state
``[M, 1, 1, size]``). :meth:`Grid.coords` and :func:`time_coords` are the coordinate variables
the checkpoint files carry (``(dims, values, attrs)``, CF attributes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scoreda.dynamics.qg2l import CHANNELS as QG2L_CHANNELS

#: the ``units`` of a variable whose levels have different units (see its ``level_units``)
MIXED_UNITS = "mixed (see level_units)"


@dataclass(frozen=True, eq=False)
class Grid:
    """The grid of a state ``[member, level, y, x]`` of shape ``(M, *shape)``."""

    shape: tuple[int, int, int]  # (C, H, W)
    y: np.ndarray  # [H] positions, length_units
    x: np.ndarray  # [W] positions, length_units
    length_units: str  # "km", or "1" (grid index)
    periodic_lengths: tuple[float, float]  # (Ly, Lx) of the doubly periodic domain, length_units
    level_names: tuple[str, ...]  # [C]
    level_units: tuple[str, ...]  # [C]
    long_name: str  # of the state
    standard_name: str | None = None  # CF standard name of the state, where one exists
    symbol: str | None = None  # of the state in plot labels ("θ": "θ at z=0")
    per_level_scores: bool = False  # scores per level/channel too (levels of different quantities)

    def __post_init__(self) -> None:
        C, H, W = self.shape
        if (self.y.shape, self.x.shape, len(self.level_names), len(self.level_units)) != ((H,), (W,), C, C):
            raise ValueError(f"grid: coordinates do not match the shape {self.shape}")
        self.x.setflags(write=False)
        self.y.setflags(write=False)

    @property
    def spacing(self) -> tuple[float, float]:
        """(dy, dx) in ``length_units``."""
        return self.periodic_lengths[0] / self.shape[1], self.periodic_lengths[1] / self.shape[2]

    @property
    def level_labels(self) -> tuple[str, ...]:
        """Plot labels of the levels: "θ at z=0" with a ``symbol``, else the level names."""
        return tuple(f"{self.symbol} at {n}" if self.symbol else n for n in self.level_names)

    @property
    def units(self) -> str:
        """The state's ``units``: the levels' common unit, else :data:`MIXED_UNITS`."""
        return self.level_units[0] if len(set(self.level_units)) == 1 else MIXED_UNITS

    @property
    def state_attrs(self) -> dict[str, str]:
        """CF attributes of the state variable: ``units``, ``long_name`` (and ``standard_name``)."""
        std = {"standard_name": self.standard_name} if self.standard_name else {}
        return {"units": self.units, "long_name": self.long_name} | std

    def coords(self, members: int) -> dict[str, tuple]:
        """Coordinate variables of a state with ``members`` members: ``member``, ``level``,
        ``level_units``, ``y``, ``x`` as name -> (dims, values, attrs)."""
        axis = {"1": "grid index"}.get(self.length_units, "position")
        return {
            "member": (("member",), np.arange(members), {"long_name": "ensemble member"}),
            "level": (("level",), np.array(self.level_names), {"long_name": "level or channel"}),
            "level_units": (("level",), np.array(self.level_units), {"long_name": "units of each level"}),
            "y": (("y",), self.y, {"units": self.length_units, "long_name": f"y {axis}", "axis": "Y"}),
            "x": (("x",), self.x, {"units": self.length_units, "long_name": f"x {axis}", "axis": "X"}),
        }

    def locate(self, indices: np.ndarray, dim: str = "location") -> dict[str, tuple]:
        """Coordinates of points given by flat indices into ``[C, H, W]`` (e.g. observations):
        ``index``, ``level``, ``y``, ``x`` along ``dim``, as name -> (dims, values, attrs)."""
        indices = np.asarray(indices)
        c, j, i = np.unravel_index(indices, self.shape)
        pos = {"units": self.length_units}
        return {
            "index": ((dim,), indices, {"long_name": "flat index into the state [level, y, x]"}),
            "level": ((dim,), np.array(self.level_names)[c], {"long_name": "level or channel"}),
            "y": ((dim,), self.y[j], pos | {"long_name": "y position"}),
            "x": ((dim,), self.x[i], pos | {"long_name": "x position"}),
        }

    def observed_attrs(self, indices: np.ndarray, transform: str = "linear") -> dict[str, str]:
        """``units`` and ``long_name`` of observations g(x[indices]) (flat indices into ``[C, H, W]``):
        the observed levels' units for g = identity; "1" for a transform (arctan of the value in them)."""
        levels = np.unique(np.asarray(indices) // (self.shape[1] * self.shape[2]))
        units = {self.level_units[c] for c in levels.tolist()}
        unit = units.pop() if len(units) == 1 else MIXED_UNITS
        if transform == "linear":
            return {"units": unit, "long_name": f"observed {self.long_name}"}
        return {"units": "1", "long_name": f"{transform} of the {self.long_name} in {unit}"}


def time_coords(cycle, hours, dims: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Coordinates ``cycle`` and ``time`` (hours since the start of cycling) of one cycle (scalars,
    ``dims=()``) or of several (arrays along ``dims=("time",)``).

    ``units: hours`` (no ``since``) is a UDUNITS time span; xarray 2026.9 reads it as a plain
    float, without a warning and without decoding it to a datetime or timedelta (it does
    that only when asked, ``decode_timedelta=True``).
    """
    return {
        "cycle": (dims, cycle, {"long_name": "assimilation cycle"}),
        "time": (dims, hours, {"units": "hours", "long_name": "model time since the start of cycling"}),
    }


def _periodic_km(n: int, length_m: float) -> tuple[np.ndarray, float]:
    length = float(length_m) / 1000.0
    return np.arange(n) * (length / n), length


def model_grid(model_cfg) -> Grid:
    """The :class:`Grid` of a model config (``scoreda.config.validate``'s ``model`` section)."""
    name = model_cfg.name
    if name == "sqg":
        x, length = _periodic_km(int(model_cfg.N), model_cfg.L)
        return Grid(
            shape=(2, x.size, x.size),
            y=x.copy(),
            x=x,
            length_units="km",
            periodic_lengths=(length, length),
            level_names=("z=0", "z=H"),
            level_units=(model_cfg.units,) * 2,
            long_name="potential temperature",
            standard_name="air_potential_temperature",
            symbol="θ",
        )
    if name == "qg2l":
        names, units = QG2L_CHANNELS[model_cfg.get("state", "pv")]
        x, length = _periodic_km(int(model_cfg.nx), model_cfg.L)
        velocity = " and velocity" if len(set(units)) > 1 else ""
        return Grid(
            shape=(len(names), x.size, x.size),
            y=x.copy(),
            x=x,
            length_units="km",
            periodic_lengths=(length, length),
            level_names=tuple(names),
            level_units=tuple(units),
            long_name=f"potential vorticity anomaly{velocity} of the two layers",
            per_level_scores=True,
        )
    if name == "lorenz96":
        size = int(model_cfg.size)
        return Grid(
            shape=(1, 1, size),
            y=np.zeros(1, dtype=np.int64),
            x=np.arange(size),
            length_units="1",
            periodic_lengths=(1.0, float(size)),
            level_names=("x",),
            level_units=(model_cfg.units,),
            long_name="Lorenz-96 variable",
        )
    raise ValueError(f"model.name: unknown model {name!r} (expected sqg, lorenz96 or qg2l)")
