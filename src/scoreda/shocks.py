"""Model shocks: error unknown to the forecast model, added to the truth (the ``shocks`` section).

Cycle k is shocked when u_k < ``fraction``, u_k ~ U(0, 1) from the (seed, k, "shock") stream; the
j-th shocked cycle (j = 0, 1, ...) adds white noise N(0, std[j mod len(std)]²) to every truth grid
value before it is observed (``stages.nature``), and the nature run continues from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scoreda.seeding import generator
from scoreda.validation import require


@dataclass
class Shocks:
    """The ``shocks`` section: its keys, defaults and checks."""

    fraction: float = 0.0  # share of cycles shocked (each cycle independently, from the seed)
    std: list[float] = field(default_factory=lambda: [5.0, 4.0, 3.0, 2.0])  # used in turn [units]

    def __post_init__(self) -> None:
        require(0 <= self.fraction <= 1, "shocks.fraction", f"must be in [0, 1], got {self.fraction}")
        require(
            len(self.std) > 0 and all(s > 0 for s in self.std),
            "shocks.std",
            f"must be a non-empty list of positive numbers, got {list(self.std)}",
        )


def shock_std(cfg, cycle: int) -> float:
    """Standard deviation of the shock the truth receives at ``cycle`` (0.0: none) under the config
    ``cfg`` (its ``seed`` and ``shocks``)."""
    f = cfg.shocks.fraction
    if f <= 0 or cycle < 1:
        return 0.0
    u = [float(torch.rand((), generator=generator(cfg.seed, k, "shock"))) for k in range(1, cycle + 1)]
    shocked = [uk < f for uk in u]
    if not shocked[-1]:
        return 0.0
    return float(cfg.shocks.std[(sum(shocked) - 1) % len(cfg.shocks.std)])
