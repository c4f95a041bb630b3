"""The ViT surrogate as a ``scoreda.dynamics.Dynamics``: one step is one forecast over a cycle.

    z = (x − mean) / std   (per level),   z ← f_θ(z)  n·k times,   x' = mean + std · z

with f_θ the ``ViTSurrogate`` in eval mode advancing ``model.step_hours`` (None: the whole cycle), k =
cycle / step_hours, all members at once in slices of at most ``batch``.
"""

from __future__ import annotations

import math
import os

import torch

from scoreda.surrogate.vit import ViTSurrogate


def rollout_steps(cycle_hours: float, step_hours: float | None) -> int:
    """k = cycle_hours / step_hours, the ViT steps of one cycle (1 when step_hours is None)."""
    if step_hours is None:
        return 1
    k = cycle_hours / step_hours if step_hours > 0 else 0.0
    if k < 1 or not math.isclose(k, round(k)):
        raise ValueError(f"surrogate.step_hours: {step_hours} h does not divide the cycle of {cycle_hours} h")
    return round(k)


class ViTDynamics:
    """``step(x[M, C, H, W], n_steps)``: ``n_steps`` surrogate forecasts of ``dt = cycle_seconds`` each,
    each ``rollout`` = cycle_seconds / (3600·model.step_hours) applications of the ViT."""

    steps_per_cycle = 1

    def __init__(
        self,
        model: ViTSurrogate,
        mean: torch.Tensor,
        std: torch.Tensor,
        cycle_seconds: float,
        device: str | torch.device = "cpu",
        batch: int = 64,
    ):
        if not cycle_seconds > 0:
            raise ValueError(f"cycle_seconds: must be positive, got {cycle_seconds}")
        if int(batch) != batch or batch < 1:
            raise ValueError(f"batch: must be a positive integer, got {batch}")
        self.device = torch.device(device)
        self.dt = float(cycle_seconds)
        self.batch = int(batch)
        self.model: ViTSurrogate
        self.rollout: int  # ViT applications per cycle
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self._install(model, mean, std)

    def _install(self, model: ViTSurrogate, mean: torch.Tensor, std: torch.Tensor) -> None:
        C, S = model.channels, model.img_size
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != C or std.numel() != C:
            raise ValueError(
                f"mean/std: expected {C} values (one per level), got {mean.numel()}/{std.numel()}"
            )
        step_hours = getattr(model, "step_hours", None)
        self.rollout = rollout_steps(self.dt / 3600, step_hours)
        self.model = model.to(self.device).eval()
        self.mean = mean.to(self.device).view(C, 1, 1)
        self.std = std.to(self.device).view(C, 1, 1)
        self.state_shape = (C, S, S)

    @classmethod
    def from_weights(
        cls,
        path: str | os.PathLike,
        cycle_seconds: float,
        device: str | torch.device = "cpu",
        batch: int = 64,
    ) -> ViTDynamics:
        """Build from a consolidated weights file (``scoreda.surrogate.save_weights``)."""
        from scoreda.surrogate.weights import load_weights

        model, mean, std, _ = load_weights(path, device=device)
        return cls(model, mean, std, cycle_seconds, device=device, batch=batch)

    def set_weights(self, path: str | os.PathLike) -> dict:
        """Swap in the weights (and normalisation) of ``path``; its architecture must equal the current one.
        Returns the file's ``meta``."""
        from scoreda.surrogate.weights import load_weights

        model, mean, std, meta = load_weights(path, device=self.device)
        if model.arch != self.model.arch:
            diff = sorted(k for k in model.arch if model.arch[k] != self.model.arch[k])
            raise ValueError(f"{path}: architecture differs from the running surrogate in {', '.join(diff)}")
        self._install(model, mean, std)
        return meta

    def load_state(
        self, state_dict, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
    ) -> None:
        """Load fine-tuned weights in place (strict); optionally new per-level ``mean``/``std``."""
        self.model.load_state_dict(state_dict, strict=True)
        self._install(self.model, self.mean if mean is None else mean, self.std if std is None else std)

    @torch.no_grad()
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance every member ``n_steps`` cycles (``n_steps·rollout`` ViT steps); returns a new float32
        tensor on ``x``'s device."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(
                f"state: expected [M, {', '.join(map(str, self.state_shape))}], got {list(x.shape)}"
            )
        if int(n_steps) != n_steps or n_steps < 0:
            raise ValueError(f"n_steps: must be a non-negative integer, got {n_steps}")
        if n_steps == 0:
            return x.to(torch.float32, copy=True)
        z = (x.to(self.device, torch.float32) - self.mean) / self.std
        out = torch.empty_like(z)
        for s in range(0, z.shape[0], self.batch):  # slices of up to `batch` members, each one forward
            zs = z[s : s + self.batch]
            for _ in range(int(n_steps) * self.rollout):
                zs = self.model(zs)
            out[s : s + self.batch] = zs
        return (out * self.std + self.mean).to(x.device)
