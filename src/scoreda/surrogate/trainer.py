"""Data-parallel training of the surrogate with one of six strategies (``parallel.name``).

``Trainer`` owns the model (built on every rank from the same seed), the AdamW optimiser, the warm-up +
cosine schedule, the deterministic batch order, and exact-resume checkpoints. The strategy classes live
in ``strategies.py``. Under any launcher::

    env = discover()
    trainer = Trainer(lambda: build_vit(cfg.surrogate), cfg.surrogate, cfg.parallel, env, "cpu", steps)
    losses = trainer.fit(X, Y, steps, seed)        # X, Y: [N, C, H, W], the same on every rank
    trainer.save("ckpt/")                          # collective; trainer.load("ckpt/") resumes exactly
    trainer.save_weights("w.pt", cfg.surrogate, mean, std)
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from scoreda.io.atomic import fsync_path, write_text
from scoreda.seeding import stream_seed
from scoreda.surrogate.distributed import DistEnv, init_distributed
from scoreda.surrogate.strategies import Strategy, make_strategy
from scoreda.surrogate.vit import Rollout

COMPLETE = "COMPLETE"


def lr_factor(step: int, warmup_steps: int, total_steps: int, lr: float, min_lr: float) -> float:
    """Multiplier of ``lr`` for optimiser step ``step`` (0-based): linear warm-up to ``lr`` over
    ``warmup_steps`` steps, then cosine decay to ``min_lr`` at ``total_steps`` (constant after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr


def batch_indices(n: int, batch: int, cursor: int, seed: int) -> torch.Tensor:
    """Global batch of ``batch`` sample indices into a data set of ``n``, starting ``cursor`` samples into
    the stream of epochs; epoch e is ``randperm(n)`` seeded from (seed, e). Pure in its arguments."""
    out, taken = [], 0
    while taken < batch:
        epoch, offset = divmod(cursor + taken, n)
        g = torch.Generator().manual_seed(stream_seed(seed, epoch, "surrogate-batches"))
        perm = torch.randperm(n, generator=g)
        part = perm[offset : offset + batch - taken]
        out.append(part)
        taken += len(part)
    return torch.cat(out)


class Trainer:
    """One model trained with ``parallel_cfg.name`` on this rank's share of every global batch.

    ``model_factory()`` is called after ``torch.manual_seed(seed)``, so every rank starts from the same
    weights; dropout then draws from a per-rank stream seeded from (seed, rank)."""

    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        surrogate_cfg,
        parallel_cfg,
        env: DistEnv,
        device: str | torch.device = "cpu",
        total_steps: int = 1000,
        seed: int = 0,
    ):
        self.surrogate, self.parallel, self.env = surrogate_cfg, parallel_cfg, env
        self.device = torch.device(device)
        self.total_steps, self.seed = int(total_steps), int(seed)
        self.rank, self.world = env.rank, env.world_size
        s = surrogate_cfg
        if s.batch_size % (self.world * s.grad_accum):
            raise ValueError(
                f"surrogate.batch_size: {s.batch_size} is not a multiple of ranks ({self.world})"
                f" × surrogate.grad_accum ({s.grad_accum})"
            )
        self.local_batch = s.batch_size // self.world
        self.micro_batch = self.local_batch // s.grad_accum
        if not dist.is_initialized():
            init_distributed(env, parallel_cfg.backend)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        torch.manual_seed(self.seed)
        model = model_factory()
        betas = tuple(float(b) for b in s.betas)

        def make_optimizer(params):
            return torch.optim.AdamW(params, lr=s.lr, betas=betas, weight_decay=s.weight_decay)

        def make_scheduler(opt):
            def factor(step):
                return lr_factor(step, s.warmup_steps, self.total_steps, s.lr, s.min_lr)

            return torch.optim.lr_scheduler.LambdaLR(opt, factor)

        self.strategy: Strategy = make_strategy(
            parallel_cfg.name, model, make_optimizer, make_scheduler, s, parallel_cfg, self.world, self.device
        )
        torch.manual_seed(stream_seed(self.seed, self.rank, "surrogate-dropout"))
        self.step_count = 0  # optimiser steps taken
        self.cursor = 0  # samples drawn by fit()

    # ------------------------------------------------------------------------------------ training

    @property
    def unwrapped(self) -> nn.Module:
        """The plain module inside the wrapper (under zero3 and fsdp_full it holds shards: use
        ``predict`` or ``full_state_dict`` there)."""
        return self.strategy.module

    @property
    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return self.strategy.scheduler.get_last_lr()[0]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimiser step on this rank's samples x, y [batch_size / ranks, C, H, W], split into
        ``grad_accum`` micro-batches; returns the global mean MSE of the step (the same on every rank)."""
        if x.shape[0] != self.local_batch or y.shape[0] != self.local_batch:
            raise ValueError(f"step: expected {self.local_batch} samples per rank, got {x.shape[0]}")
        self.strategy.model.train()
        x, y = x.to(self.device), y.to(self.device)
        n = self.surrogate.grad_accum
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (xb, yb) in enumerate(zip(x.split(self.micro_batch), y.split(self.micro_batch), strict=True)):
            total += self.strategy.micro_step(xb, yb, n, last=i == n - 1).double()
        self.strategy.optimizer_step()
        self.step_count += 1
        total /= n * self.world
        dist.all_reduce(total)
        return float(total)

    def fit(self, X: torch.Tensor, Y: torch.Tensor, steps: int, seed: int = 0) -> list[float]:
        """``steps`` optimiser steps on global batches drawn from X, Y [N, C, H, W] (the same tensors on
        every rank) by ``batch_indices(N, batch_size, cursor, seed)``; rank r takes the r-th contiguous
        slice. Returns the global loss of each step."""
        losses = []
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        for _ in range(steps):
            idx = batch_indices(len(X), self.surrogate.batch_size, self.cursor, seed)[lo:hi]
            losses.append(self.step(X[idx], Y[idx]))
            self.cursor += self.surrogate.batch_size
        return losses

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The model on x [b, C, H, W] in eval mode (collective under zero3 and fsdp_full: every rank
        calls it, with the same number of batches), returned as float32."""
        model = self.strategy.model
        model.eval()
        dtype = torch.bfloat16 if self.parallel.precision == "bf16" else torch.float32
        if self.parallel.name in ("zero1", "zero2", "zero3"):
            x = x.to(dtype)
        out = model(x.to(self.device)).float()
        model.train()
        return out

    # --------------------------------------------------------------------------------- checkpoints

    def save(self, directory: str | Path) -> Path:
        """Exact-resume checkpoint (collective): model, optimiser, schedule, step, data cursor and each
        rank's RNG states, written into ``DIR.partial`` and renamed to ``DIR`` once complete (a
        ``COMPLETE`` marker is written last), so an interrupted save never looks finished."""
        final = Path(directory).absolute()
        tmp = final.with_name(final.name + ".partial")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        self.strategy.save(tmp)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / f"rng_rank{self.rank:05d}.pt")
        if self.rank == 0:
            meta = {
                "strategy": self.parallel.name,
                "world_size": self.world,
                "step": self.step_count,
                "cursor": self.cursor,
                "seed": self.seed,
                "total_steps": self.total_steps,
            }
            (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
        dist.barrier()
        if self.rank == 0:
            write_text(tmp / COMPLETE, "complete\n")
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            fsync_path(final.parent, directory=True)
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    def load(self, directory: str | Path) -> None:
        """Restore a checkpoint written by ``save`` with the same strategy and number of ranks."""
        path = Path(directory).absolute()
        if not (path / COMPLETE).is_file():
            raise FileNotFoundError(f"{path}: not a complete trainer checkpoint (no {COMPLETE} marker)")
        meta = json.loads((path / "trainer.json").read_text())
        for key, mine in (("strategy", self.parallel.name), ("world_size", self.world)):
            if meta[key] != mine:
                raise ValueError(f"{path}: saved with {key}={meta[key]!r}, this trainer has {mine!r}")
        self.strategy.load(path)
        self.step_count, self.cursor = int(meta["step"]), int(meta["cursor"])
        rng = torch.load(path / f"rng_rank{self.rank:05d}.pt", weights_only=False)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        dist.barrier()

    def full_state_dict(self, rank0_only: bool = True) -> dict[str, torch.Tensor]:
        """The whole model's state as float32 CPU tensors (collective): on rank 0, and ``{}`` elsewhere
        unless ``rank0_only`` is False. Under ZeRO these are the optimiser's fp32 master weights."""
        return self.strategy.full_state_dict(rank0_only)

    def save_weights(self, path: str | Path, surrogate_cfg, mean, std, meta: dict | None = None) -> None:
        """Consolidated fp32 weights for inference (``scoreda.surrogate.weights``), written by rank 0."""
        state = self.full_state_dict()
        if isinstance(self.unwrapped, Rollout):  # the file holds the plain ViT
            state = Rollout.unwrap_state_dict(state)
        if self.rank == 0:
            from scoreda.surrogate.weights import save_weights

            save_weights(path, state, surrogate_cfg, mean, std, meta)
        dist.barrier()
