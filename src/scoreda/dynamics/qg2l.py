"""Two-layer quasi-geostrophic model (pyqg ``QGModel``) behind the ``Dynamics`` protocol.

State (``state``): ``pv`` — the potential-vorticity anomaly q [1/s] of the upper and lower layer,
tensor ``[M, 2, ny, nx]``; ``pv_velocity`` — seed 003's x = (q¹, u¹, v¹, q², u², v²), ``[M, 6, ny, nx]``
(q [1/s], u, v [m/s]: pyqg's anomaly velocities, without the background U1, U2). Float32; pyqg
works in float64; doubly periodic domain L × W. Only q is prognostic: with ``pv_velocity`` a step
advances the q channels and recomputes (u, v) = (−∂ψ/∂y, ∂ψ/∂x) from the new q, so whatever the
u, v channels held before (an analysis, say) is discarded. With F1 = rd⁻²/(1+δ),
F2 = δ F1, δ = H1/H2, the streamfunction follows from

    q1 = ∇²ψ1 + F1 (ψ2 − ψ1),        q2 = ∇²ψ2 + F2 (ψ1 − ψ2),

and each layer is advected by its velocity plus the background zonal flow U1, U2:

    ∂t q1 + J(ψ1, q1) + U1 ∂x q1 + (β + F1 (U1 − U2)) ∂x ψ1 = ssd
    ∂t q2 + J(ψ2, q2) + U2 ∂x q2 + (β − F2 (U1 − U2)) ∂x ψ2 = −r_ek ∇²ψ2 + ssd

(ssd: pyqg's exponential spectral filter, ``filterfac``). pyqg steps with third-order
Adams–Bashforth, started by one forward-Euler and one AB2 step.

The 2LQG of seed paper 003 (score-based DA for a two-layer QG model): "a torus-like 1000 km
periodic domain", simulated with pyqg on "512×512 spatial bins" with "the integration timestep
set to 15 min", coarsened to 256² and "5 years" of spin-up "from random initial conditions". The
paper does not list the physical constants; its released generation script builds
``pyqg.QGModel(nx=512, dt=900 s, tmax=...)`` and so uses pyqg's defaults, which are ours:

    L = W = 1000 km, β = 1.5e-11 m⁻¹ s⁻¹, rd = 15 km, δ = H1/H2 = 0.25, H1 = 500 m (H2 = 2000 m),
    U1 = 0.025 m/s, U2 = 0 (mean shear 0.025 m/s), r_ek = 5.787e-7 s⁻¹ (bottom drag, ≈ 20 days),
    filterfac = 23.6, dt = 900 s.

Our default grid is 64² (``nx``), not the paper's 512²; observations every ``cycle_hours`` = 12 h
(48 steps). pyqg's own default step at 64², 7200 s, is also stable and 8× cheaper.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class QG2LParams:
    nx: int = 64
    L: float = 1.0e6
    beta: float = 1.5e-11
    rd: float = 15000.0
    delta: float = 0.25
    H1: float = 500.0
    U1: float = 0.025
    U2: float = 0.0
    rek: float = 5.787e-7
    filterfac: float = 23.6
    dt: float = 900.0
    cycle_hours: float = 12.0
    ntd: int = 1
    state: str = "pv"  # pv: (q1, q2) | pv_velocity: (q1, u1, v1, q2, u2, v2), seed 003's state

    def __post_init__(self) -> None:
        """The checks of ``model=qg2l``'s keys, one line naming the key."""
        if int(self.nx) != self.nx or self.nx < 4 or self.nx % 2:
            raise ValueError(f"model.nx: must be an even number ≥ 4, got {self.nx}")
        if not self.dt > 0:
            raise ValueError(f"model.dt: must be positive, got {self.dt}")
        steps = self.steps_in(self.cycle_hours)
        if round(steps) < 1 or abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise ValueError(f"model.dt: {self.dt} s must divide model.cycle_hours={self.cycle_hours} h")
        if self.state not in CHANNELS:
            raise ValueError(f"model.state: expected {' or '.join(CHANNELS)}, got {self.state!r}")

    def steps_in(self, hours: float) -> float:
        """Model steps of ``dt`` seconds in ``hours``."""
        return hours * 3600.0 / self.dt

    def pyqg_kwargs(self) -> dict:
        """Keyword arguments of ``pyqg.QGModel`` for this setup (square domain, nx = ny)."""
        kw = asdict(self)
        kw.pop("cycle_hours")
        kw.pop("state")
        kw["nx"], kw["ntd"] = int(kw["nx"]), int(kw["ntd"])
        return kw


#: channel names and units of each ``state`` (the PV channels are those in 1/s)
CHANNELS = {
    "pv": (("q1", "q2"), ("1/s", "1/s")),
    "pv_velocity": (("q1", "u1", "v1", "q2", "u2", "v2"), ("1/s", "m/s", "m/s", "1/s", "m/s", "m/s")),
}


def build_pyqg_model(params: QG2LParams):
    """A quiet ``pyqg.QGModel``: no logging, no diagnostic accumulation, global numpy RNG untouched.

    pyqg 0.7.2 cannot switch diagnostics off through ``diagnostics_list`` (anything but ``'all'``
    raises AttributeError), so we deactivate them all and push the averaging start to +∞, which also
    skips the per-step derived-field computation. Its constructor draws a random initial condition
    from the global numpy RNG and calls the deprecated ``set_q`` (and pyfftw's deprecated aligned
    allocator); the RNG state is restored and those two DeprecationWarnings are silenced.
    """
    import pyqg

    rng_state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Method deprecated", category=DeprecationWarning)
            # pyfftw ≥ 0.13 deprecates n_byte_align_empty, which pyqg's kernel still calls
            warnings.filterwarnings(
                "ignore", message="This function is deprecated in favour of", category=DeprecationWarning
            )
            m = pyqg.QGModel(**params.pyqg_kwargs(), log_level=0, tavestart=float("inf"))
    finally:
        np.random.set_state(rng_state)
    for diag in m.diagnostics.values():
        diag["active"] = False
    return m


class TwoLayerQG:
    """pyqg two-layer QG model; ``step(x[M, C, nx, nx], n_steps)`` with C = 2 (``state=pv``) or 6
    (``state=pv_velocity``). CPU only; loops over members.

    One ``pyqg.QGModel`` instance is reused: for each member its PV is set, the Adams–Bashforth
    history is cleared (the next step is forward Euler, as in a freshly built model) and pyqg's own
    ``_step_forward`` is called ``n_steps`` times. So every call to ``step`` restarts the multistep
    scheme: ``step(x, a + b)`` and ``step(step(x, a), b)`` agree only to the scheme's accuracy,
    and each member's result is what a fresh ``pyqg.QGModel`` gives from that member's PV.
    Input may be on any device; output is a CPU float32 tensor. Not thread-safe (one pyqg
    instance): to run members in parallel, give each thread or process its own ``TwoLayerQG``.
    """

    def __init__(self, params: QG2LParams = QG2LParams()):
        p = params
        steps = p.cycle_hours * 3600.0 / p.dt
        self.p = p
        self.dt = float(p.dt)
        self.channel_names, self.channel_units = CHANNELS[p.state]
        self._pv = [c for c, u in enumerate(self.channel_units) if u == "1/s"]  # q1, q2
        self.state_shape = (len(self.channel_names), int(p.nx), int(p.nx))
        self.steps_per_cycle = int(round(steps))
        self._m = build_pyqg_model(p)

    @classmethod
    def from_config(cls, cfg, device: str = "cpu") -> TwoLayerQG:
        """Build from a mapping (dict or omegaconf DictConfig); unknown keys (``name``, …) are ignored.
        pyqg runs on the CPU whatever ``device``."""
        names = QG2LParams.__dataclass_fields__
        return cls(QG2LParams(**{k: cfg[k] for k in names if k in cfg}))

    @property
    def model(self):
        """The underlying ``pyqg.QGModel`` (its state is whatever the last member left)."""
        return self._m

    # ---------------------------------------------------------------- helpers
    def _as_numpy(self, x: torch.Tensor) -> np.ndarray:
        """PV [M, 2, ny, nx] (float64 numpy) of a state [M, C, ny, nx]."""
        if tuple(x.shape[-3:]) != self.state_shape or x.dim() != 4:
            raise ValueError(f"TwoLayerQG: expected [M, {self.state_shape}], got {tuple(x.shape)}")
        return np.ascontiguousarray(x[:, self._pv].detach().to("cpu", torch.float64).numpy())

    def _assemble(self, q: np.ndarray, u: np.ndarray | None, v: np.ndarray | None) -> torch.Tensor:
        """The state [M, C, ny, nx] float32 from PV and (``pv_velocity``) velocities [M, 2, ny, nx]."""
        if self.p.state == "pv":
            return torch.from_numpy(q.astype(np.float32))
        x = np.stack([q[:, 0], u[:, 0], v[:, 0], q[:, 1], u[:, 1], v[:, 1]], axis=1)
        return torch.from_numpy(x.astype(np.float32))

    def _load(self, q: np.ndarray) -> None:
        """Set one member's PV and reset the time scheme so nothing of the previous member remains."""
        m = self._m
        m.dt = self.dt  # pyqg's dt setter resets the Adams–Bashforth level to forward Euler
        m.dqhdt_p[...] = 0.0  # views onto the kernel's tendency history
        m.dqhdt_pp[...] = 0.0
        m.q = np.ascontiguousarray(q)  # copies into the kernel and updates qh

    # ------------------------------------------------------------------ model
    @torch.no_grad()
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance ``x[M, C, ny, nx]`` by ``n_steps`` steps of ``dt`` s; new CPU float32 tensor.

        The PV channels are stepped by pyqg; with ``pv_velocity`` the u, v channels are those of the
        new PV (one inversion after the last step: pyqg's own u, v lag one step behind its q).
        """
        q = self._as_numpy(x)
        out = np.empty_like(q)
        vel = self.p.state == "pv_velocity"
        u, v = (np.empty_like(q), np.empty_like(q)) if vel else (None, None)
        m = self._m
        for i in range(q.shape[0]):
            self._load(q[i])
            for _ in range(n_steps):
                m._step_forward()
            out[i] = m.q
            if vel:
                m._invert()
                u[i], v[i] = m.u, m.v
        return self._assemble(out, u, v)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Geostrophic (u, v) = (−∂ψ/∂y, ∂ψ/∂x) [m/s] of each layer, each ``[M, 2, ny, nx]`` float32,
        from the PV channels of the state ``x[M, C, ny, nx]`` (u, v channels, if any, are ignored).

        These are pyqg's ``u, v`` (anomalies, as in the seed paper's state); ``full=True`` adds the
        background zonal flow (U1, U2) to u.
        """
        q = self._as_numpy(x)
        u, v = np.empty_like(q), np.empty_like(q)
        m = self._m
        for i in range(q.shape[0]):
            m.q = np.ascontiguousarray(q[i])
            m._invert()
            u[i] = m.ufull if full else m.u
            v[i] = m.v
        return torch.from_numpy(u.astype(np.float32)), torch.from_numpy(v.astype(np.float32))

    def initial_state(self, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        """Small random PV like pyqg's own start, ``[batch, C, ny, nx]`` on the CPU (float32).

        Upper layer 1e-7·U(0,1) noise plus 1e-6·U(0,1) stripes that vary in x only; lower layer zero;
        with ``pv_velocity`` the velocities of that PV (the same random draws as ``pv``).
        Baroclinic instability of the mean shear grows from it; spin up for several model years
        (the seed paper used 5) before using the state. At 64² the statistics level off after about
        3 years: spatial std of q ≈ 8e-6 s⁻¹ (upper) and 1.1e-6 s⁻¹ (lower), of u ≈ 0.046 and
        0.008 m/s.
        """
        _, ny, nx = self.state_shape
        noise = torch.rand((batch, ny, nx), generator=generator, dtype=torch.float64)
        stripes = torch.rand((batch, 1, nx), generator=generator, dtype=torch.float64)
        q1 = 1e-7 * noise + 1e-6 * stripes.expand(batch, ny, nx)
        q = torch.stack([q1, torch.zeros_like(q1)], dim=1).to(torch.float32)
        if self.p.state == "pv":
            return q
        qn = q.double().numpy()
        x = torch.zeros((batch, *self.state_shape), dtype=torch.float32)
        x[:, self._pv] = q
        u, v = self.velocity(x)
        return self._assemble(qn, u.double().numpy(), v.double().numpy())


REGISTER = {"qg2l": (QG2LParams, TwoLayerQG)}
