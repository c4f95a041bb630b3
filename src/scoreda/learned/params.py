"""The ``scorenet`` config section: the score network's architecture, its diffusion schedule, what it
is trained on, and the optimiser keys the trainer reads (the same names as ``surrogate``'s)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scoreda.surrogate.params import check_optimiser
from scoreda.validation import require

#: the keys that define the network (they go into its weights file)
ARCH_KEYS = ("channels", "window", "hidden", "blocks", "kernel", "expansion", "emb", "eta", "condition")


@dataclass
class ScoreNetParams:
    """ε_θ(x_t, t) on states [C, H, W] (a window of 2k+1 states stacked as (2k+1)·C channels), or with
    ``condition``, DiffDA's ε_θ(r_t, t | f): r = x − f the forecast's error, f the forecast [C, H, W]."""

    name: str = "unet_cpu"
    channels: int = 2  # C: levels or channels of one state
    window: int = 0  # k: the network sees 2k+1 consecutive states (0: one state)
    hidden: list[int] = field(default_factory=lambda: [16, 32, 64])  # widths per U-Net level
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2])  # residual blocks per level (down; up)
    kernel: int = 5  # spatial kernel of the blocks (circular padding)
    expansion: int = 4  # inverted-bottleneck factor
    emb: int = 64  # width of the time embedding
    eta: float = 1e-3  # the VP cosine schedule's η: μ_1 = η, σ_0 = η
    checkpoint: bool = False  # gradient checkpointing of the residual blocks
    condition: bool = False  # DiffDA: the network sees a 12-h forecast f and denoises the error x − f
    init_error: list[float] = field(default_factory=lambda: [0.05, 0.8])  # condition: the forecasts
    # start from the truth + a·(s_j − s_k)/√2, a ~ U(init_error) (s: training states)
    # training (workflows/train_score.py, on the pre-training's nature-run trajectories)
    out_dir: str = "runs/scorenet/unet_cpu"  # trajectory.h5, weights.pt, train.json, report.json
    every_hours: float | None = None  # hours between training states (null: one cycle)
    steps: int = 3000  # optimiser steps
    roll: bool = True  # random periodic shifts along x (the forcing is x-invariant)
    # optimiser (AdamW, linear warm-up then cosine decay to min_lr), as the trainer reads them
    lr: float = 1e-3
    min_lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 1e-3
    warmup_steps: int = 100
    batch_size: int = 16  # global samples per optimiser step
    grad_accum: int = 1

    def __post_init__(self) -> None:
        for key in ("channels", "kernel", "expansion", "emb", "steps", "batch_size", "grad_accum"):
            require(getattr(self, key) >= 1, f"scorenet.{key}", f"must be ≥ 1, got {getattr(self, key)}")
        require(self.window >= 0, "scorenet.window", f"must be ≥ 0, got {self.window}")
        require(
            not (self.condition and self.window),
            "scorenet.condition",
            f"a conditional network takes one state (scorenet.window=0), got window={self.window}",
        )
        lo_hi = [float(a) for a in self.init_error]
        ok = len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1]
        require(ok, "scorenet.init_error", f"must be [lo, hi] with 0 ≤ lo ≤ hi, got {list(self.init_error)}")
        require(
            len(self.hidden) == len(self.blocks) >= 1,
            "scorenet.blocks",
            f"one count per level of scorenet.hidden={list(self.hidden)}, got {list(self.blocks)}",
        )
        require(all(h >= 1 for h in self.hidden), "scorenet.hidden", f"must be ≥ 1, got {list(self.hidden)}")
        noised = (2 * self.window + 1) * self.channels
        require(  # a first level narrower than the noised channels cannot pass ε through (measured: a
            # window network of 30 channels at width 16 stalled at a denoising error of 0.52 at every t)
            self.hidden[0] >= noised,
            "scorenet.hidden",
            f"the first width {self.hidden[0]} must be ≥ the {noised} noised input channels "
            f"((2·window + 1) × channels)",
        )
        require(all(b >= 0 for b in self.blocks), "scorenet.blocks", f"must be ≥ 0, got {list(self.blocks)}")
        require(self.kernel % 2 == 1, "scorenet.kernel", f"must be odd, got {self.kernel}")
        require(self.emb % 2 == 0, "scorenet.emb", f"must be even, got {self.emb}")
        require(0 < self.eta < 1, "scorenet.eta", f"must be in (0, 1), got {self.eta}")
        check_optimiser(self, "scorenet")
        ok = self.every_hours is None or self.every_hours > 0
        require(ok, "scorenet.every_hours", f"must be positive or null, got {self.every_hours}")

    def check_fits(self, shape: tuple[int, int, int], cycle_hours: float) -> None:
        """One line naming the key unless the network takes the model's states [C, H, W] and its
        states' spacing ``every_hours`` divides, or is a multiple of, the model's cycle."""
        C, H, W = shape
        require(self.channels == C, "scorenet.channels", f"{self.channels}, but the model's states have {C}")
        f = 2 ** (len(self.hidden) - 1)
        require(
            H % f == 0 and W % f == 0,
            "scorenet.hidden",
            f"{len(self.hidden)} levels: the grid {H}×{W} must be divisible by {f}",
        )
        e = self.every_hours or cycle_hours
        ok = any(abs(r - round(r)) < 1e-9 and round(r) >= 1 for r in (e / cycle_hours, cycle_hours / e))
        require(
            ok,
            "scorenet.every_hours",
            f"{e} h neither divides nor is a multiple of the {cycle_hours}-h cycle",
        )

    @property
    def in_channels(self) -> int:
        """Channels the network sees: (2k+1)·C."""
        return (2 * self.window + 1) * self.channels


def build_scorenet(p):
    """The ``ScoreUNet`` of a ``scorenet`` section (or a dict of its ``ARCH_KEYS`` plus ``checkpoint``);
    with ``condition`` it takes the forecast's C channels as a condition."""
    from scoreda.learned.unet import ScoreUNet

    get = p.get if isinstance(p, dict) else lambda k, d=None: getattr(p, k, d)
    return ScoreUNet(
        (2 * int(get("window")) + 1) * int(get("channels")),
        tuple(int(h) for h in get("hidden")),
        tuple(int(b) for b in get("blocks")),
        int(get("kernel")),
        int(get("expansion")),
        int(get("emb")),
        bool(get("checkpoint", False)),
        int(get("channels")) if get("condition", False) else 0,
    )
