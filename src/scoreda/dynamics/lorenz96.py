"""Lorenz-96 model (Lorenz 1996), batched torch, any dimension.

State: ``d`` variables on a periodic ring, tensor ``[M, 1, 1, d]`` (float32), so that it fits the
``[member, level, y, x]`` layout of the other models (one level, one row). Each variable obeys

    dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F,        i = 0 … d−1 (indices mod d),

integrated with classical fourth-order Runge–Kutta with step ``dt`` (model time units; one unit is
roughly five days of atmospheric error growth). The index shifts are slices of a copy of the
state padded with a periodic halo (x_{d−2}, x_{d−1} in front, x_0 behind), so one step is a few
vectorised passes over memory whatever ``d`` and ``M`` are, on CPU or CUDA, with no loop over
variables or members.

Standard benchmark setting (the defaults): d = 40, F = 8, dt = 0.01, observations every 0.05 time
units (``steps_per_cycle = 5``). At F = 8 the system is chaotic: the leading Lyapunov exponent is
about 1.7 per time unit, and a spun-up state has mean ≈ 2.3 and standard deviation ≈ 3.6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Lorenz96Params:
    size: int = 40
    F: float = 8.0
    dt: float = 0.01
    cycle_time: float = 0.05

    def __post_init__(self) -> None:
        """The checks of ``model=lorenz96``'s keys, one line naming the key."""
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"model.size: must be a positive integer, got {self.size}")
        if not self.dt > 0:
            raise ValueError(f"model.dt: must be positive, got {self.dt}")
        if not self.cycle_time > 0:
            raise ValueError(f"model.cycle_time: must be positive, got {self.cycle_time}")
        steps = self.cycle_time / self.dt
        if round(steps) < 1 or abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise ValueError(f"model.dt: must divide model.cycle_time={self.cycle_time}, got {self.dt}")

    def steps_in(self, hours: float) -> float | None:
        """Model steps in ``hours``: None, Lorenz-96 time has no hours."""
        return None


class Lorenz96:
    """Batched Lorenz-96 model; ``step(x[M, 1, 1, d], n_steps)`` on CPU or CUDA unchanged."""

    def __init__(self, params: Lorenz96Params = Lorenz96Params(), device: str | torch.device = "cpu"):
        p = params
        steps = p.cycle_time / p.dt
        self.p = p
        self.size = int(p.size)
        self.F = float(p.F)
        self.dt = float(p.dt)
        self.device = torch.device(device)
        self.state_shape = (1, 1, self.size)
        self.steps_per_cycle = int(round(steps))

    @classmethod
    def from_config(cls, cfg, device: str | torch.device = "cpu") -> Lorenz96:
        """Build from a mapping (dict or omegaconf DictConfig); unknown keys (``name``, …) are ignored."""
        names = Lorenz96Params.__dataclass_fields__
        return cls(Lorenz96Params(**{k: cfg[k] for k in names if k in cfg}), device=device)

    # ------------------------------------------------------------------ physics
    def _fill_halo(self, xp: torch.Tensor) -> None:
        """Periodic halo of a padded state ``xp[..., d+3]`` = (x_{d−2}, x_{d−1}, x_0 … x_{d−1}, x_0)."""
        d = self.size
        xp[..., 0:1].copy_(xp[..., 2 + (d - 2) % d : 3 + (d - 2) % d])
        xp[..., 1:2].copy_(xp[..., 2 + (d - 1) % d : 3 + (d - 1) % d])
        xp[..., d + 2 : d + 3].copy_(xp[..., 2:3])

    def _tendency_padded(self, xp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """dx/dt into ``out[..., d]`` from the padded state ``xp[..., d+3]`` (halo filled)."""
        d = self.size
        torch.sub(xp[..., 3 : d + 3], xp[..., 0:d], out=out)  # x_{i+1} − x_{i−2}
        out.mul_(xp[..., 1 : d + 1])  # · x_{i−1}
        return out.sub_(xp[..., 2 : d + 2]).add_(self.F)

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """dx/dt for ``x[..., d]`` (any leading shape): (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F."""
        xp = x.new_empty(*x.shape[:-1], self.size + 3)
        xp[..., 2 : self.size + 2].copy_(x)
        self._fill_halo(xp)
        return self._tendency_padded(xp, torch.empty_like(x))

    @torch.no_grad()
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance ``x[M, 1, 1, d]`` by ``n_steps`` RK4 steps of ``dt``; returns a new float32 tensor.

        Works in four preallocated buffers (state, padded stage state, stage tendency, RK4 sum) with
        in-place and ``out=`` operations: at d = 1e6 allocating fresh tensors every stage costs more
        (page faults on the CPU) than the arithmetic itself.
        """
        if tuple(x.shape[-3:]) != self.state_shape:
            raise ValueError(f"Lorenz96.step: expected [..., {self.state_shape}], got {tuple(x.shape)}")
        d, dt = self.size, self.dt
        y = x.to(self.device, torch.float32).clone(memory_format=torch.contiguous_format)
        if n_steps == 0:
            return y
        xp = y.new_empty(*y.shape[:-1], d + 3)
        stage = xp[..., 2 : d + 2]
        k, acc = torch.empty_like(y), torch.empty_like(y)
        for _ in range(n_steps):
            stage.copy_(y)
            self._fill_halo(xp)
            acc.copy_(self._tendency_padded(xp, k))  # k1
            for coef, weight in ((0.5, 2.0), (0.5, 2.0), (1.0, 1.0)):  # k2, k3, k4
                torch.add(y, k, alpha=coef * dt, out=stage)
                self._fill_halo(xp)
                acc.add_(self._tendency_padded(xp, k), alpha=weight)
            y.add_(acc, alpha=dt / 6.0)
        return y

    def initial_state(self, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        """F plus 0.01·N(0, 1) noise, ``[batch, 1, 1, d]`` on the CPU (float32).

        x ≡ F is an unstable fixed point; the noise lets the chaos develop. Spin up (a few hundred
        steps, i.e. several time units) before using the state as a truth or ensemble member.
        """
        noise = torch.randn((batch, *self.state_shape), generator=generator, dtype=torch.float32)
        return self.F + 0.01 * noise


REGISTER = {"lorenz96": (Lorenz96Params, Lorenz96)}
