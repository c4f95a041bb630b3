"""Offline pre-training of the ViT surrogate on nature-run trajectories (seed 002, section III-B).

Three steps, each runnable alone (``python -m scoreda.stages.pretrain STEP --out-dir DIR``, the
directory holding ``config.yaml``); ``workflows/pretrain.py`` chains them:

- ``trajectory``: one run spun up from noise for ``model.spinup_cycles`` cycles, branched into
  ``pretrain.trajectories`` copies by N(0, ``pretrain.branch_std``²) noise, each decorrelated for
  ``pretrain.decorrelate_cycles`` cycles, then frames ``pretrain.frame_hours`` apart over
  ``pretrain.length − 1`` cycles ((length − 1)·cycle/frame + 1 frames), ``DIR/trajectory.h5``
  [trajectory, time, level, y, x]. Reused when its hash matches.
- ``train`` (under a launcher, any number of ranks): pairs x_t → x_{t+Δt}, Δt = ``surrogate.step_hours``,
  t every frame, of the first ``trajectories − held_out`` trajectories, normalised per level by their
  mean and std; global batches of ``surrogate.batch_size`` drawn from the (seed, step,
  "pretrain-batch") stream, each sample rolled along x by a random shift when ``pretrain.roll``;
  ``pretrain.steps`` optimiser steps, all of them unless the optional guard ``pretrain.max_minutes``
  (null by default) of training time runs out first; such a stop is printed in one line
  (``stopped early: pretrain.max_minutes=… reached at step … of …``) and recorded in train.json and
  report.json (``stopped_early``, ``reason``), so that a result never depends on the machine's load
  unnoticed. With Δt < one cycle, the last ``pretrain.rollout_steps`` steps (from step
  ``steps − rollout_steps``; under a time limit brought forward so that they fit in it, timed at k× a
  one-step step) take one-cycle pairs and the loss on the k = cycle/Δt step rollout f_θ^k(x_t)
  against x_{t+cycle}. Writes ``DIR/weights.pt`` (with Δt) and ``DIR/train.json``.
- ``evaluate``: 12-hour forecasts (k surrogate steps) of the held-out pairs, t every cycle, from the
  true state and from the state plus N(0, eval_noise²) noise — the surrogate, persistence and the physics
  model itself — as RMSE over all grid values, averaged over pairs. Writes ``DIR/report.json`` (with
  ``train``: steps, seconds, ``stopped_early`` and its ``reason``, from train.json).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from scoreda.dynamics import make_dynamics, model_science
from scoreda.io import config_hash, read_dataset_file, write_dataset_file
from scoreda.seeding import generator
from scoreda.stages.common import load_config, steps_main, training_threads, write_json

TRAJ_DIMS = ("trajectory", "time", "level", "y", "x")


def frame_hours(cfg) -> float:
    """Hours between stored frames: ``pretrain.frame_hours``, or one cycle."""
    return float(cfg.pretrain.frame_hours or cfg.model.cycle_hours)


def step_hours(cfg) -> float:
    """Hours of one surrogate step: ``surrogate.step_hours``, or one cycle."""
    return float(cfg.surrogate.step_hours or cfg.model.cycle_hours)


def _trajectory_key(cfg, frame: float | None = None) -> str:
    p, frame = cfg.pretrain, frame or frame_hours(cfg)
    keys = [p.trajectories, p.length, p.decorrelate_cycles]
    if frame != cfg.model.cycle_hours:  # one frame per cycle keeps the key it always had
        keys.append(frame)
    if p.get("branch_std", 1.0) != 1.0:  # so does N(0, 1) branching
        keys.append(("branch_std", p.branch_std))
    return config_hash({"seed": cfg.seed, "model": model_science(cfg.model), "pretrain": keys})


def trajectory(out_dir: str | Path, frame: float | None = None) -> str:
    """Make (or reuse) ``DIR/trajectory.h5``: [B, T, C, H, W] frames ``frame`` hours apart (default
    ``frame_hours(cfg)``), T = (length − 1)·cycle_hours/frame + 1 (the same span for any spacing)."""
    out_dir = Path(out_dir)
    cfg = load_config(out_dir)
    frame = frame or frame_hours(cfg)
    path, key = out_dir / "trajectory.h5", _trajectory_key(cfg, frame)
    try:
        read_dataset_file(path, expect_attrs={"key": key})
        return str(path)
    except (ValueError, OSError):
        pass
    p, m = cfg.pretrain, cfg.model
    model = make_dynamics(m, device=cfg.device)
    spc = model.steps_per_cycle
    per_cycle = round(m.cycle_hours / frame)  # frames per cycle
    spf = spc // per_cycle  # model steps per frame
    x = model.initial_state(generator(cfg.seed, 0, "pretrain-spinup"), 1).to(cfg.device)
    x = model.step(x, m.spinup_cycles * spc)
    branch = torch.randn((p.trajectories, *x.shape[1:]), generator=generator(cfg.seed, 0, "pretrain-branch"))
    x = model.step(x + p.branch_std * branch.to(x), p.decorrelate_cycles * spc)
    if not torch.isfinite(x).all():
        raise ValueError(
            f"pretrain.branch_std: the runs branched by noise of std {p.branch_std} {m.units} diverged "
            f"(model {m.name}); give the noise in the model's units"
        )
    states = [x.cpu()]
    for _ in range((p.length - 1) * per_cycle):  # a sequence in model time, all trajectories in one batch
        x = model.step(x, spf)
        states.append(x.cpu())
    attrs = {"key": key, "cycle_hours": m.cycle_hours, "frame_hours": frame, "model": m.name}
    attrs["units"] = m.units
    write_dataset_file(path, {"state": (TRAJ_DIMS, torch.stack(states, 1))}, attrs)
    return str(path)


def load_pairs(
    out_dir: str | Path, held_out: bool, lead_hours: float | None = None, every_hours: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, x_{t+lead}) pairs [N, C, H, W] in model units from the training or the held-out trajectories,
    t every ``every_hours`` (default: every frame); ``lead_hours`` defaults to one cycle."""
    out_dir = Path(out_dir)
    cfg = load_config(out_dir)
    data, _ = read_dataset_file(out_dir / "trajectory.h5", expect_attrs={"key": _trajectory_key(cfg)})
    s = torch.from_numpy(data["state"])
    n_train = cfg.pretrain.trajectories - cfg.pretrain.held_out
    s = s[n_train:] if held_out else s[:n_train]
    fh = frame_hours(cfg)
    lead = round((lead_hours or cfg.model.cycle_hours) / fh)  # frames
    every = round((every_hours or fh) / fh)
    x, y = s[:, :-lead:every], s[:, lead::every]
    return x.reshape(-1, *s.shape[2:]), y.reshape(-1, *s.shape[2:])


def roll_x(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Periodic shift of each sample along x: out[b, ..., j] = x[b, ..., (j − shifts[b]) mod W]."""
    W = x.shape[-1]
    idx = (torch.arange(W) - shifts[:, None]) % W  # [B, W]
    return torch.gather(x, -1, idx[:, None, None, :].expand_as(x))


def train(out_dir: str | Path) -> dict:
    """Pre-train on this rank's share of each global batch; rank 0 writes weights.pt and train.json."""
    from scoreda.surrogate import build_vit
    from scoreda.surrogate.distributed import discover, init_distributed
    from scoreda.surrogate.trainer import Trainer
    from scoreda.surrogate.vit import Rollout

    out_dir = Path(out_dir)
    cfg = load_config(out_dir)
    s, p = cfg.surrogate, cfg.pretrain
    env = discover()
    # a launched training job owns its host: the cores shared among the ranks on it
    torch.set_num_threads(training_threads(cfg, env.local_world_size))
    init_distributed(env, cfg.parallel.backend)
    X, Y = load_pairs(out_dir, held_out=False, lead_hours=step_hours(cfg))
    mean, std = X.mean(dim=(0, 2, 3)), X.std(dim=(0, 2, 3))

    def normalise(t: torch.Tensor) -> torch.Tensor:
        return (t - mean[:, None, None]) / std[:, None, None]

    X, Y = normalise(X), normalise(Y)
    samples = len(X)  # pairs one surrogate step apart
    k = round(cfg.model.cycle_hours / step_hours(cfg))  # ViT steps per cycle
    rollout = p.rollout_steps > 0 and k > 1
    switch = p.steps - p.rollout_steps if rollout else p.steps  # first step of the rolled-out loss

    def factory():
        vit = build_vit(s)
        return Rollout(vit, 1) if rollout else vit

    trainer = Trainer(factory, s, cfg.parallel, env, cfg.device, total_steps=p.steps, seed=cfg.seed)
    per_rank = s.batch_size // env.world_size
    mine = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    losses, t0, rollout_from = [], time.perf_counter(), None
    limit = None if p.max_minutes is None else 60 * p.max_minutes  # seconds
    flags = torch.zeros(2)  # stop; start the rolled-out phase (set only under a time limit)
    for step in range(p.steps):
        if rollout and trainer.unwrapped.k == 1 and (step == switch or flags[1]):
            X, Y = (normalise(t) for t in load_pairs(out_dir, held_out=False))  # one-cycle pairs
            trainer.unwrapped.k, rollout_from = k, step
            if env.rank == 0:
                print(f"step {step:5d}  from here the loss is on {k}-step rollouts to one cycle", flush=True)
        g = generator(cfg.seed, step, "pretrain-batch")
        idx = torch.randint(len(X), (s.batch_size,), generator=g)[mine]
        x, y = X[idx], Y[idx]
        if p.roll:
            shifts = torch.randint(X.shape[-1], (s.batch_size,), generator=g)[mine]
            x, y = roll_x(x, shifts), roll_x(y, shifts)
        losses.append(trainer.step(x.to(cfg.device), y.to(cfg.device)))
        if env.rank == 0 and (step % 100 == 0 or step == p.steps - 1):
            print(f"step {step:5d}  loss {losses[-1]:.4f}  {time.perf_counter() - t0:7.1f} s", flush=True)
        if limit is not None:  # the optional guard; without it the run is the same on any machine
            elapsed = time.perf_counter() - t0
            flags[0] = float(elapsed > limit)
            # the rolled-out phase starts early enough to fit: rollout_steps steps at k× the one-step time
            needed = k * p.rollout_steps * elapsed / (step + 1)
            flags[1] = float(rollout and elapsed + needed > limit)
            torch.distributed.broadcast(flags, 0)  # every rank stops (or switches) at the same step
            if flags[0]:
                break
    seconds = time.perf_counter() - t0
    meta = {"steps": len(losses), "seconds": seconds, "final_loss": losses[-1], "parallel": cfg.parallel.name}
    meta["rollout_from"] = rollout_from
    meta["stopped_early"] = len(losses) < p.steps
    meta["reason"] = (
        f"pretrain.max_minutes={p.max_minutes:g} reached at step {len(losses)} of {p.steps}"
        if meta["stopped_early"]
        else None
    )
    if meta["stopped_early"] and env.rank == 0:
        print(f"stopped early: {meta['reason']}", flush=True)
    s_file = OmegaConf.merge(s, {"step_hours": step_hours(cfg)})  # the file records the step
    trainer.save_weights(out_dir / "weights.pt", s_file, mean, std, meta)
    summary = meta | {"step_hours": step_hours(cfg), "ranks": env.world_size, "losses": losses}
    summary["samples"] = samples
    if env.rank == 0:
        write_json(out_dir / "train.json", summary)
    torch.distributed.destroy_process_group()
    return summary


def _rmse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over pairs of sqrt(mean over C·H·W of (pred − truth)²)."""
    return float((pred - truth).square().mean(dim=(1, 2, 3)).sqrt().mean())


def evaluate(out_dir: str | Path) -> dict:
    """Held-out 12-hour forecast RMSE of the surrogate, persistence and the physics model → report.json."""
    from scoreda.surrogate import ViTDynamics

    out_dir = Path(out_dir)
    cfg = load_config(out_dir)
    torch.set_num_threads(cfg.platform.threads_per_worker)
    X, Y = load_pairs(out_dir, held_out=True, every_hours=cfg.model.cycle_hours)
    vit = ViTDynamics.from_weights(out_dir / "weights.pt", cfg.model.cycle_hours * 3600, device=cfg.device)
    physics = make_dynamics(cfg.model, device=cfg.device)
    noise = cfg.pretrain.eval_noise * torch.randn(X.shape, generator=generator(cfg.seed, 0, "pretrain-eval"))
    report: dict = {"pairs": len(X), "eval_noise": cfg.pretrain.eval_noise, "units": cfg.model.units}
    for start, x0 in (("exact", X), ("noisy", X + noise)):
        t = time.perf_counter()
        f_vit = vit.step(x0.to(cfg.device)).cpu()
        t_vit = time.perf_counter() - t
        t = time.perf_counter()
        f_model = physics.step(x0.to(cfg.device), physics.steps_per_cycle).cpu()
        t_model = time.perf_counter() - t
        report[start] = {
            "rmse_vit": _rmse(f_vit, Y),
            "rmse_persistence": _rmse(x0, Y),
            "rmse_model": _rmse(f_model, Y),
            "ms_per_forecast_vit": 1e3 * t_vit / len(X),
            "ms_per_forecast_model": 1e3 * t_model / len(X),
        }
    e = report["exact"]
    report["ratio_vit_persistence"] = e["rmse_vit"] / e["rmse_persistence"]
    report["target_met"] = report["ratio_vit_persistence"] <= 0.5
    train_json = out_dir / "train.json"
    if train_json.is_file():
        t = json.loads(train_json.read_text())
        keys = ("steps", "seconds", "final_loss", "ranks", "parallel", "samples")
        report["train"] = {k: t[k] for k in keys} | {"stopped_early": t.get("stopped_early", False)}
        if t.get("reason"):
            report["train"]["reason"] = t["reason"]
    write_json(out_dir / "report.json", report)
    return report


if __name__ == "__main__":
    steps_main(
        "Offline pre-training of the ViT surrogate, one step.",
        {"trajectory": trajectory, "train": train, "evaluate": evaluate},
    )
