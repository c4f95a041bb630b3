"""The ``forecaster``, ``surrogate``, ``parallel`` and ``pretrain`` sections: keys, defaults and
each one's own checks (``__post_init__``, one line naming the key). Rules across sections stay in
``scoreda.config``."""

from __future__ import annotations

from dataclasses import dataclass, field

from scoreda.validation import require

STRATEGIES = ("zero1", "zero2", "zero3", "ddp", "fsdp_full", "fsdp_grad_op")


@dataclass
class Forecaster:
    """What forecasts the ensemble: ``physics`` (the ``model``) or ``vit`` (the ``surrogate``)."""

    name: str = "physics"

    def __post_init__(self) -> None:
        require(
            self.name in ("physics", "vit"), "forecaster.name", f"expected physics or vit, got {self.name!r}"
        )


def check_optimiser(p, section: str) -> None:
    """The AdamW keys the trainer reads (``lr``, ``min_lr``, ``betas``, ``weight_decay``,
    ``warmup_steps``), checked in one line naming ``section.key``."""
    require(p.lr > 0, f"{section}.lr", f"must be positive, got {p.lr}")
    require(0 <= p.min_lr <= p.lr, f"{section}.min_lr", f"must be in [0, {section}.lr], got {p.min_lr}")
    require(
        len(p.betas) == 2 and all(0 <= b < 1 for b in p.betas),
        f"{section}.betas",
        f"expected two numbers in [0, 1), got {list(p.betas)}",
    )
    require(p.weight_decay >= 0, f"{section}.weight_decay", f"must be ≥ 0, got {p.weight_decay}")
    require(p.warmup_steps >= 0, f"{section}.warmup_steps", f"must be ≥ 0, got {p.warmup_steps}")


@dataclass
class SurrogateParams:
    """The ViT surrogate (seed 002, Table II; the authors' public code for the extras): architecture,
    the optimiser shared by pre-training and online fine-tuning, and the cycle keys."""

    name: str = "vit_tiny"
    img_size: int = 64  # H = W of the state
    channels: int = 2  # levels of the state
    patch: int = 4
    embed_dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path: float = 0.0
    head_depth: int = 2  # hidden Linear(D, D) + GELU layers before the output projection
    level_aggregation: bool = True  # one patch embedding per level, merged by one cross-attention
    residual: bool = True  # predict x(t+12 h) − x(t)
    step_hours: float | None = None  # hours of one ViT step (null: model.cycle_hours); a cycle is
    # cycle_hours / step_hours steps rolled out
    # optimiser (AdamW, linear warm-up then cosine decay to min_lr)
    lr: float = 5e-4
    min_lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1e-5
    warmup_steps: int = 50
    batch_size: int = 8  # global samples per optimiser step (over ranks and accumulation)
    grad_accum: int = 1  # micro-batches per optimiser step on each rank
    # the cycle
    checkpoint: str | None = None  # consolidated weights from workflows/pretrain.py (forecaster=vit)
    online: bool = False  # fine-tune every cycle on recent analysis pairs
    lag: int = 0  # 1: forecast(k+1) uses the weights of cycle k−1, so training overlaps it
    replay: int = 4  # cycles of analysis pairs (analysis(j−1)[i] → analysis(j)[i]) in the window
    finetune_steps: int = 10  # optimiser steps per cycle
    finetune_lr: float = 1e-4  # constant learning rate of online fine-tuning

    def __post_init__(self) -> None:
        for key in (
            "img_size",
            "channels",
            "patch",
            "embed_dim",
            "depth",
            "heads",
            "batch_size",
            "grad_accum",
        ):
            require(getattr(self, key) >= 1, f"surrogate.{key}", f"must be ≥ 1, got {getattr(self, key)}")
        require(
            self.img_size % self.patch == 0,
            "surrogate.patch",
            f"{self.patch} does not divide surrogate.img_size={self.img_size}",
        )
        require(
            self.embed_dim % self.heads == 0,
            "surrogate.heads",
            f"{self.heads} does not divide surrogate.embed_dim={self.embed_dim}",
        )
        require(self.mlp_ratio > 0, "surrogate.mlp_ratio", f"must be positive, got {self.mlp_ratio}")
        require(self.head_depth >= 0, "surrogate.head_depth", f"must be ≥ 0, got {self.head_depth}")
        for key in ("drop_rate", "drop_path"):
            v = getattr(self, key)
            require(0 <= v < 1, f"surrogate.{key}", f"must be in [0, 1), got {v}")
        check_optimiser(self, "surrogate")
        require(self.finetune_lr > 0, "surrogate.finetune_lr", f"must be positive, got {self.finetune_lr}")
        require(self.lag in (0, 1), "surrogate.lag", f"expected 0 or 1, got {self.lag}")
        require(self.replay >= 1, "surrogate.replay", f"must be ≥ 1, got {self.replay}")
        require(
            self.finetune_steps >= 1, "surrogate.finetune_steps", f"must be ≥ 1, got {self.finetune_steps}"
        )


@dataclass
class ParallelParams:
    """Data-parallel training strategy (seed 002, Table I) and its knobs."""

    name: str = "ddp"  # zero1 | zero2 | zero3 | ddp | fsdp_full | fsdp_grad_op
    ranks: int = 1  # training processes (the train stage and pre-training)
    launcher: str = "torchrun"  # torchrun | mpiexec | srun | deepspeed
    precision: str = "fp32"  # fp32 | bf16
    bucket_size: float = 5e8  # ZeRO reduce/allgather bucket (elements); the paper found 5e8 best
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    backend: str = "auto"  # auto: gloo on CPU, nccl on GPU (RCCL on ROCm) | gloo | nccl

    def __post_init__(self) -> None:
        require(
            self.name in STRATEGIES,
            "parallel.name",
            f"unknown strategy {self.name!r} (expected {', '.join(STRATEGIES)})",
        )
        require(self.ranks >= 1, "parallel.ranks", f"must be ≥ 1, got {self.ranks}")
        require(
            self.launcher in ("torchrun", "mpiexec", "srun", "deepspeed"),
            "parallel.launcher",
            f"expected torchrun, mpiexec, srun or deepspeed, got {self.launcher!r}",
        )
        require(
            self.precision in ("fp32", "bf16"),
            "parallel.precision",
            f"expected fp32 or bf16, got {self.precision!r}",
        )
        require(self.bucket_size >= 1, "parallel.bucket_size", f"must be ≥ 1, got {self.bucket_size}")
        require(
            self.backend in ("auto", "gloo", "nccl"),
            "parallel.backend",
            f"expected auto, gloo or nccl, got {self.backend!r}",
        )


@dataclass
class PretrainParams:
    """Offline pre-training of the surrogate on a nature-run trajectory (workflows/pretrain.py)."""

    out_dir: str = "runs/pretrain/vit_tiny"  # trajectory.h5, weights.pt, report.json
    trajectories: int = 16  # independent nature runs, made in one batch
    held_out: int = 2  # of them, kept for evaluation only
    length: int = 160  # cycles per trajectory: states model.cycle_hours apart (length − 1 pairs each)
    frame_hours: float | None = 1.0  # hours between stored frames (None: model.cycle_hours)
    decorrelate_cycles: int = 20  # cycles between branching off the spun-up run and the first state
    branch_std: float = 1.0  # std of the white noise that branches the copies [model units]
    steps: int = 7000  # optimiser steps (sets the learning-rate schedule)
    # optional guard: stop at a step boundary after this much training (None: train all `steps`); a
    # stop before `steps` is reported (train.json, report.json). Off by default: results do not
    # depend on the machine's load.
    max_minutes: float | None = None
    roll: bool = True  # augment with random periodic shifts along x (the forcing is x-invariant)
    eval_noise: float = 1.0  # initial-state error of the noisy-start comparison [model units]
    rollout_steps: int = 0  # last optimiser steps on one-cycle pairs, loss on the rolled-out forecast

    def __post_init__(self) -> None:
        for key in ("trajectories", "length"):
            require(getattr(self, key) >= 2, f"pretrain.{key}", f"must be ≥ 2, got {getattr(self, key)}")
        require(self.steps >= 1, "pretrain.steps", f"must be ≥ 1, got {self.steps}")
        require(
            0 <= self.rollout_steps <= self.steps,
            "pretrain.rollout_steps",
            f"must be in [0, pretrain.steps={self.steps}], got {self.rollout_steps}",
        )
        require(
            1 <= self.held_out < self.trajectories,
            "pretrain.held_out",
            f"must be in [1, pretrain.trajectories={self.trajectories}), got {self.held_out}",
        )
        require(
            self.decorrelate_cycles >= 0,
            "pretrain.decorrelate_cycles",
            f"must be ≥ 0, got {self.decorrelate_cycles}",
        )
        require(self.branch_std > 0, "pretrain.branch_std", f"must be positive, got {self.branch_std}")
        require(
            self.max_minutes is None or self.max_minutes > 0,
            "pretrain.max_minutes",
            f"must be positive or null, got {self.max_minutes}",
        )
        require(self.eval_noise >= 0, "pretrain.eval_noise", f"must be ≥ 0, got {self.eval_noise}")
