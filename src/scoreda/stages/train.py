"""Online fine-tuning of the ViT surrogate inside the cycle (seed 002, Fig. 1: re-trained from the analyses).

``train(k)`` starts from the weights of cycle k−1 (the pre-trained ``surrogate.checkpoint`` at
k = 1), takes the analysis pairs analysis(j−1)[i] → analysis(j)[i] of the last ``surrogate.replay``
cycles j ≤ k (every member i; normalised by the pre-training mean and std), and runs
``surrogate.finetune_steps`` AdamW steps at the constant rate ``surrogate.finetune_lr`` with global
batches of ``surrogate.batch_size`` pairs drawn from the (seed, k, "train") stream. The optimiser
starts afresh each cycle, so a cycle's result depends on its files alone and a resumed run equals
an unbroken one. Writes the consolidated weights ``RUN/surrogate/NNNNNN/weights.pt``. A surrogate of
``step_hours`` < cycle (the base file's) is trained through its k-step rollout (``Rollout``): the loss
is on f_θ^k(analysis(j−1)) against analysis(j), k = cycle_hours / step_hours.

Launched as its own job on ``parallel.ranks`` processes (``parallel.launcher``), any strategy of
``parallel/``: ``python -m scoreda.stages.train --run-dir RUN --cycle K``.

Which weights forecast(k) uses: with ``surrogate.online`` those of cycle k − 1 − ``surrogate.lag``
(lag 1 lets train(k−1) overlap forecast(k) and analysis(k)); before the first such cycle, and
without ``online``, the pre-trained checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from scoreda.seeding import generator, stream_seed
from scoreda.stages.common import Run, main, record_time, write_json


def weights_path(run: Run, cycle: int) -> Path:
    """``RUN/surrogate/NNNNNN/weights.pt``: the surrogate after fine-tuning in ``cycle``."""
    return run.dir / "surrogate" / f"{cycle:06d}" / "weights.pt"


def forecast_weights(run: Run, cycle: int) -> Path:
    """The weights forecast(``cycle``) uses (see the module docstring)."""
    s = run.cfg.surrogate
    j = cycle - 1 - s.lag
    return weights_path(run, j) if s.online and j >= 1 else Path(s.checkpoint)


def _done(path: Path) -> bool:
    from scoreda.surrogate import load_weights

    try:
        load_weights(path)
        return True
    except ValueError:
        return False


def train(run_dir, cycle: int) -> str:
    """Fine-tune on the replay window of ``cycle``; returns the path of the new weights."""
    from scoreda.surrogate import load_weights
    from scoreda.surrogate.distributed import discover, init_distributed
    from scoreda.surrogate.dynamics import rollout_steps
    from scoreda.surrogate.trainer import Trainer
    from scoreda.surrogate.vit import Rollout

    run = Run(run_dir)
    cfg, s = run.cfg, run.cfg.surrogate
    out = weights_path(run, cycle)
    if cycle < 1:
        raise ValueError(f"train: cycle must be ≥ 1, got {cycle}")
    if _done(out):
        return str(out)
    t0 = time.perf_counter()
    env = discover()
    init_distributed(env, cfg.parallel.backend)
    base = weights_path(run, cycle - 1) if cycle > 1 else Path(s.checkpoint)
    vit, mean, std, _ = load_weights(base)
    k = rollout_steps(cfg.model.cycle_hours, vit.step_hours)  # ViT steps per cycle (the file's step)

    def factory():
        model = load_weights(base)[0].train()
        return Rollout(model, k) if k > 1 else model

    window = range(max(1, cycle - s.replay + 1), cycle + 1)
    X = torch.cat([run.read(j - 1, "analysis") for j in window])
    Y = torch.cat([run.read(j, "analysis") for j in window])
    X, Y = (X - mean[:, None, None]) / std[:, None, None], (Y - mean[:, None, None]) / std[:, None, None]
    ft = OmegaConf.merge(
        s, {"lr": s.finetune_lr, "min_lr": s.finetune_lr, "warmup_steps": 0, "step_hours": vit.step_hours}
    )
    trainer = Trainer(
        factory,
        ft,
        cfg.parallel,
        env,
        cfg.device,
        total_steps=s.finetune_steps,
        seed=stream_seed(cfg.seed, cycle, "train"),  # dropout and drop-path streams of this cycle
    )
    per_rank = s.batch_size // env.world_size
    mine = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    g = generator(cfg.seed, cycle, "train")
    losses = []
    for _ in range(s.finetune_steps):
        idx = torch.randint(len(X), (s.batch_size,), generator=g)[mine]
        losses.append(trainer.step(X[idx].to(cfg.device), Y[idx].to(cfg.device)))
    meta = {"cycle": cycle, "base": str(base), "losses": losses, "pairs": len(X)}
    trainer.save_weights(out, ft, mean, std, meta)
    if env.rank == 0:
        info = {"ranks": env.world_size, "parallel": cfg.parallel.name}
        write_json(out.with_name("train.json"), meta | info)
        record_time(run, cycle, "train", t0)
    torch.distributed.destroy_process_group()
    return str(out)


if __name__ == "__main__":
    main(train, "Train stage: fine-tune the ViT surrogate on the analyses up to cycle K (under a launcher).")
