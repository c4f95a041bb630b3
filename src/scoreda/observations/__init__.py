"""Observation operators y = h(x) + ε, ε ~ N(0, σo² I), on flattened states x [M, d].

Every operator here selects observed entries of the state (all of them, every k-th grid point, or
random stations fixed from the seed; on all channels or on the listed ones, e.g. the velocities
of the two-layer QG state) and applies an elementwise transform g (identity or arctan):

    h(x) = g(x[idx]),   log p(y|x) = −½ ‖(y − h(x)) / σo‖²  (+ const)
    ∇x log p(y|x) = Hᵀ [g'(x[idx]) (y − g(x[idx])) / σo²]          (autograd for nonlinear g)

``curvature(x)`` is the diagonal of the Gauss–Newton Hessian of −log p, Hᵀ g'(x[idx])² / σo²; a
score filter uses it to treat the likelihood term semi-implicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch

TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "arctan": torch.atan,
}


LAYOUTS = ("identity", "subsample", "stations")  # where the observations are: observed_indices


@dataclass
class ObservationParams:
    """``observation=<name>``: the keys, defaults and checks of the observation section (its Hydra
    schema; configs/observation/*.yaml are presets of it). ``check(state_shape)`` adds the checks
    that need the model's grid; every error is one line naming the key."""

    name: str = "full"
    kind: str = "identity"  # identity | subsample | stations
    sigma: float = 1.0
    every: int = 1
    n_stations: int = 0
    transform: str = "linear"  # linear | arctan
    channels: list[int] | None = None  # observed state channels (levels); None: all

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"observation.kind: expected {', '.join(LAYOUTS)}, got {self.kind!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"observation.transform: expected {' or '.join(TRANSFORMS)}, got {self.transform!r}"
            )
        if not self.sigma > 0:
            raise ValueError(f"observation.sigma: must be positive, got {self.sigma}")

    @classmethod
    def from_config(cls, obs_cfg) -> ObservationParams:
        """From a config section or dict; missing keys take their defaults."""
        return cls(**{f.name: obs_cfg[f.name] for f in fields(cls) if f.name in obs_cfg})

    def indices(self, state_shape: tuple[int, int, int], generator: torch.Generator | None = None):
        """The observed flat indices on a [C, H, W] state (``observed_indices``)."""
        return observed_indices(
            self.kind,
            state_shape,
            every=int(self.every),
            n_stations=int(self.n_stations),
            generator=generator,
            channels=None if self.channels is None else list(self.channels),
        )

    def n_observed(self, state_shape: tuple[int, int, int]) -> int:
        """p, the number of observations on a [C, H, W] state, without building the indices."""
        C, H, W = state_shape
        levels = C if self.channels is None else len(self.channels)
        if self.kind == "stations":
            return levels * int(self.n_stations)
        ey, ex = _steps(self.kind, H, W, int(self.every))
        return levels * (H // ey) * (W // ex)

    def check(self, state_shape: tuple[int, int, int]) -> None:
        """The checks against the model's grid (every, n_stations, channels)."""
        self.indices(state_shape, torch.Generator().manual_seed(0))


@runtime_checkable
class ObservationOperator(Protocol):
    """h: R^d → R^p with Gaussian errors of standard deviation ``sigma``."""

    sigma: float
    indices: torch.Tensor  # [p] flat state indices that are observed
    linear: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [M, d] -> [M, p]
        ...

    def likelihood_score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [M, d]
        ...

    def curvature(self, x: torch.Tensor) -> torch.Tensor:  # [M, d] (or broadcastable)
        ...


@dataclass
class PointObservation:
    """Observe ``g(x[indices])``; ``g`` elementwise (``linear`` or ``arctan``)."""

    indices: torch.Tensor
    sigma: float
    d: int
    transform: str = "linear"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"observation.transform: expected one of {sorted(TRANSFORMS)}, got {self.transform!r}"
            )
        if not self.sigma > 0:
            raise ValueError(f"observation.sigma: must be positive, got {self.sigma}")
        self.g = TRANSFORMS[self.transform]
        self.linear = self.transform == "linear"

    @property
    def n_obs(self) -> int:
        return int(self.indices.numel())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(x[..., self.indices.to(x.device)])

    def _scatter(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(like)
        out[..., self.indices.to(like.device)] = v
        return out

    def likelihood_score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇x log p(y|x) for every member, [M, d]."""
        if self.linear:
            return self._scatter((y - self(x)) / self.sigma**2, x)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            loglik = -0.5 * (((y - self(xr)) / self.sigma) ** 2).sum()
            (grad,) = torch.autograd.grad(loglik, xr)
        return grad

    def curvature(self, x: torch.Tensor) -> torch.Tensor:
        """diag(Hᵀ R⁻¹ H) with H the Jacobian of h at x (Gauss–Newton), [M, d] or [d]."""
        if self.linear:
            inv_r = torch.full((self.n_obs,), 1.0 / self.sigma**2, dtype=x.dtype, device=x.device)
            return self._scatter(inv_r, x[0] if x.dim() > 1 else x)
        with torch.enable_grad():
            xs = x[..., self.indices.to(x.device)].detach().requires_grad_(True)
            (gprime,) = torch.autograd.grad(self.g(xs).sum(), xs)  # elementwise g: Jacobian diagonal
        return self._scatter(gprime**2 / self.sigma**2, x)

    def restrict(self, start: int, stop: int) -> tuple[PointObservation, torch.Tensor]:
        """This operator on the state slice x[start:stop] (h is diagonal in the state).

        Returns the operator on the slice — the observations whose state index falls in it,
        re-indexed from ``start`` — and their positions ``keep`` [p'] in y, so that y' = y[keep].
        """
        keep = ((self.indices >= start) & (self.indices < stop)).nonzero().squeeze(1)
        sub = PointObservation(self.indices[keep] - start, self.sigma, stop - start, self.transform)
        return sub, keep

    def sample(self, truth: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Synthetic observations y = h(truth) + σo ε for a flat truth [d] → [p]."""
        hx = self(truth)
        noise = torch.randn(hx.shape, generator=generator, dtype=hx.dtype, device="cpu").to(hx.device)
        return hx + self.sigma * noise

    def to_grid(self, y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Observations placed on the state grid (NaN where unobserved), for plots; [*shape]."""
        grid = torch.full((math.prod(shape),), float("nan"), dtype=y.dtype)
        grid[self.indices.cpu()] = y.cpu()
        return grid.reshape(shape)


def observed_indices(
    kind: str,
    state_shape: tuple[int, int, int],
    every: int = 1,
    n_stations: int = 0,
    generator: torch.Generator | None = None,
    channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """Flat indices into a [C, H, W] state for ``identity``, ``subsample`` or ``stations``, sorted.

    ``subsample`` keeps every ``every``-th point along y and x; ``stations`` draws ``n_stations``
    distinct horizontal positions (from ``generator``). Every kind observes the listed ``channels``
    (levels) at each kept position, all C when None: p = len(channels) × positions.
    """
    C, H, W = state_shape
    flat = torch.arange(C * H * W).reshape(C, H, W)
    if channels is not None:
        ch = [int(k) for k in channels]
        if not ch or len(set(ch)) != len(ch) or not all(0 <= k < C for k in ch):
            raise ValueError(
                f"observation.channels: expected distinct channel indices in 0..{C - 1} (null: all), got {ch}"
            )
        flat = flat[sorted(ch)]
    if kind == "identity":
        return flat.reshape(-1)
    if kind == "subsample":  # axes of size 1 (a 1-D model) are not subsampled
        ey, ex = _steps(kind, H, W, every)
        if every < 1 or H % ey or W % ex:
            raise ValueError(f"observation.every: {every} must divide the grid ({H}×{W})")
        return flat[:, ::ey, ::ex].reshape(-1)
    if kind == "stations":
        if not 0 < n_stations <= H * W:
            raise ValueError(f"observation.n_stations: must be in 1..{H * W}, got {n_stations}")
        pos = torch.randperm(H * W, generator=generator)[:n_stations].sort().values
        return flat.reshape(len(flat), H * W)[:, pos].reshape(-1)
    raise ValueError(f"observation.kind: unknown {kind!r} (expected identity, subsample or stations)")


def _steps(kind: str, H: int, W: int, every: int) -> tuple[int, int]:
    """The strides (along y, x) of the positions that ``identity`` or ``subsample`` keep."""
    if kind == "identity":
        return 1, 1
    return (every if H > 1 else 1), (every if W > 1 else 1)  # axes of size 1 are not subsampled


def slice_observation_operator(
    obs_cfg, state_shape: tuple[int, int, int], cols: slice, generator: torch.Generator | None = None
) -> tuple[PointObservation, int]:
    """The operator of ``obs_cfg`` restricted to the flat state indices ``cols`` (as
    ``make_observation_operator(...).restrict(cols.start, cols.stop)``) and the position in y of its
    first observation, built without the whole index vector for ``identity`` and ``subsample`` (a
    slice's memory, whatever d): for each level, only the grid rows that meet ``cols``, and the
    observations below ``cols.start`` counted per row."""
    p = ObservationParams.from_config(obs_cfg)
    C, H, W = state_shape
    if p.kind == "stations":  # n_stations positions: small
        op = make_observation_operator(obs_cfg, state_shape, generator)
        return op.restrict(cols.start, cols.stop)[0], int((op.indices < cols.start).sum())
    ey, ex = _steps(p.kind, H, W, int(p.every))
    if H % ey or W % ex:  # ``check``'s test, without building the whole index vector
        raise ValueError(f"observation.every: {p.every} must divide the grid ({H}×{W})")
    ys = torch.arange(0, H, ey)
    found, before = [], 0
    for c in range(C) if p.channels is None else sorted(int(k) for k in p.channels):
        starts = c * H * W + ys * W  # flat index of each kept row's first column
        x0, x1 = (cols.start - starts).clamp(0, W), (cols.stop - starts).clamp(0, W)  # the slice's part
        first, end = (x0 + ex - 1) // ex, (x1 + ex - 1) // ex  # its kept columns: first·ex, …, (end−1)·ex
        before += int(first.sum())
        meet = (end > first).nonzero().squeeze(1)  # rows that hold some: contiguous, whole but the ends
        for r in meet[:1].tolist() + meet[1:][-1:].tolist():  # first and last: runs of their own
            found.append(starts[r] + torch.arange(int(first[r]), int(end[r])) * ex)
        if len(meet) > 2:  # the whole rows between, before the last
            whole = starts[meet[1:-1], None] + torch.arange(0, W, ex)[None, :]
            found.insert(len(found) - 1, whole.reshape(-1))
    indices = (torch.cat(found) if found else torch.zeros(0, dtype=torch.long)) - cols.start
    return PointObservation(indices, float(p.sigma), cols.stop - cols.start, p.transform), before


def make_observation_operator(
    obs_cfg, state_shape: tuple[int, int, int], generator: torch.Generator | None = None
) -> PointObservation:
    """Build the operator of ``obs_cfg`` (``ObservationParams``' keys; missing ones take defaults)."""
    p = ObservationParams.from_config(obs_cfg)
    d = math.prod(state_shape)
    return PointObservation(
        p.indices(state_shape, generator), sigma=float(p.sigma), d=d, transform=p.transform
    )
