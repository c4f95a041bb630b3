"""Training the score network on nature-run trajectories (issue 21; seed 003's training, our trainer).

Three steps, each runnable alone (``python -m scoreda.stages.train_score STEP --out-dir DIR``, the
directory holding ``config.yaml``, DIR = ``scorenet.out_dir``); ``workflows/train_score.py`` chains them:

- ``trajectory``: the pre-training's nature runs (``pretrain.trajectories`` runs of
  ``pretrain.length`` cycles, ``scoreda.stages.pretrain.trajectory``) with frames
  min(``scorenet.every_hours``, one cycle) apart, ``DIR/trajectory.h5``; reused when its hash matches.
- ``pairs`` (``scorenet.condition``, DiffDA): for every frame n ≥ one cycle of every run, the forecast
  f_n = M(x_{n−1} + δ) of the model over one cycle from the previous state perturbed by
  δ = a (s_j − s_k)/√2, a ~ U(``scorenet.init_error``), s_j, s_k two random states of the same split
  (the climate's anomalies: errors with the flow's structure, a of its amplitude), ``DIR/pairs.h5``;
  the network learns the forecast's error r = x_n − f_n given f_n. Nothing to do without a condition.
- ``train`` (under a launcher, any ``parallel`` strategy and number of ranks): samples are windows of
  2k+1 states ``every_hours`` apart (k = ``scorenet.window``) from the first ``trajectories −
  held_out`` runs, normalised per channel, stacked as (2k+1)·C channels, rolled along x by a random
  shift when ``scorenet.roll``; ``scorenet.steps`` optimiser steps of the denoising score-matching
  loss (``DenoisingLoss``) with global batches of ``scorenet.batch_size`` from the (seed, step,
  "score-batch") stream; a conditional network: samples [r, f] (r, f normalised each by its own
  per-channel mean and std), only r noised. Writes ``DIR/weights.pt`` (``scoreda.learned.weights``) and
  ``DIR/train.json``.
- ``evaluate``: on the held-out runs, the denoising error E‖ε_θ(x_t, t) − ε‖² / (C·H·W) at
  t = 0.1, 0.3, 0.5, 0.7, 0.9 beside that of the best Gaussian denoiser, the Wiener filter of the
  training states' mean power spectrum per channel (a stationary Gaussian prior: what a network
  must beat to know more than second moments; for a conditional network, of the forecast errors' —
  what the network knows beyond a static background-error covariance). Writes ``DIR/report.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from scoreda.dynamics import make_dynamics
from scoreda.io import config_hash, read_dataset_file, write_dataset_file
from scoreda.seeding import generator
from scoreda.stages import pretrain
from scoreda.stages.common import load_config, steps_main, training_threads, write_json

EVAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def frame_hours(cfg) -> float:
    """Hours between the trajectory's frames: min(every_hours, one cycle)."""
    return min(every_hours(cfg), float(cfg.model.cycle_hours))


def every_hours(cfg) -> float:
    """Hours between the states of a training window: ``scorenet.every_hours`` or one cycle."""
    return float(cfg.scorenet.every_hours or cfg.model.cycle_hours)


def key_of_trajectory(cfg) -> str:
    """The key of ``DIR/trajectory.h5`` at our frame spacing."""
    return pretrain._trajectory_key(cfg, frame_hours(cfg))


def trajectory(out_dir: str | Path) -> str:
    """``DIR/trajectory.h5`` made (or reused) by the pre-training's ``trajectory`` at our frame spacing."""
    return pretrain.trajectory(out_dir, frame_hours(load_config(out_dir)))


def load_windows(out_dir: str | Path, held_out: bool) -> torch.Tensor:
    """Windows [N, 2k+1, C, H, W] of states ``every_hours`` apart, every start frame, in model units."""
    cfg = load_config(out_dir)
    data, _ = read_dataset_file(Path(out_dir) / "trajectory.h5", expect_attrs={"key": key_of_trajectory(cfg)})
    s = torch.from_numpy(data["state"])  # [B, T, C, H, W]
    n_train = cfg.pretrain.trajectories - cfg.pretrain.held_out
    s = s[n_train:] if held_out else s[:n_train]
    stride = round(every_hours(cfg) / frame_hours(cfg))
    span = 2 * cfg.scorenet.window * stride  # frames from a window's first state to its last
    if s.shape[1] <= span:
        raise ValueError(f"scorenet.window: windows of {span + 1} frames do not fit in {s.shape[1]}")
    idx = torch.arange(s.shape[1] - span)[:, None] + stride * torch.arange(2 * cfg.scorenet.window + 1)
    return s[:, idx].reshape(-1, *idx.shape[1:], *s.shape[2:])


def _pairs_key(cfg) -> str:
    keys = [pretrain._trajectory_key(cfg, frame_hours(cfg)), [float(a) for a in cfg.scorenet.init_error]]
    return config_hash({"seed": cfg.seed, "pairs": keys})


def pairs(out_dir: str | Path) -> str | None:
    """``DIR/pairs.h5``: forecasts [B, T − lead, C, H, W] of frame n ≥ lead (lead: one cycle) from the
    perturbed frame n − lead (module docstring); reused when its key matches. None without a condition."""
    cfg = load_config(out_dir)
    if not cfg.scorenet.condition:
        return None
    path, key = Path(out_dir) / "pairs.h5", _pairs_key(cfg)
    try:
        read_dataset_file(path, expect_attrs={"key": key})
        return str(path)
    except (ValueError, OSError):
        pass
    data, _ = read_dataset_file(Path(out_dir) / "trajectory.h5", expect_attrs={"key": key_of_trajectory(cfg)})
    s = torch.from_numpy(data["state"])  # [B, T, C, H, W]
    lead = round(float(cfg.model.cycle_hours) / frame_hours(cfg))
    n_train = cfg.pretrain.trajectories - cfg.pretrain.held_out
    g = generator(cfg.seed, 0, "score-pairs")
    lo, hi = (float(a) for a in cfg.scorenet.init_error)
    starts = []
    for part in (s[:n_train], s[n_train:]):  # anomalies from the same split: no held-out state in training
        x0 = part[:, :-lead].reshape(-1, *s.shape[2:])
        pool = part.reshape(-1, *s.shape[2:])
        j, k = torch.randint(len(pool), (2, len(x0)), generator=g)
        a = lo + (hi - lo) * torch.rand(len(x0), generator=g)
        starts.append(x0 + a[:, None, None, None] * (pool[j] - pool[k]) / 2**0.5)
    model = make_dynamics(cfg.model, device=cfg.device)
    steps = model.steps_per_cycle
    x0 = torch.cat(starts)
    f = torch.cat([model.step(b.to(cfg.device), steps).cpu() for b in x0.split(256)])
    f = f.reshape(s.shape[0], s.shape[1] - lead, *s.shape[2:])
    attrs = {"key": key, "lead_hours": float(cfg.model.cycle_hours), "units": cfg.model.units}
    write_dataset_file(path, {"forecast": (pretrain.TRAJ_DIMS, f)}, attrs)
    return str(path)


def load_pairs(out_dir: str | Path, held_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(error r = x − f, forecast f) [N, C, H, W] in model units of the training or held-out runs."""
    cfg = load_config(out_dir)
    data, _ = read_dataset_file(Path(out_dir) / "trajectory.h5", expect_attrs={"key": key_of_trajectory(cfg)})
    fdata, _ = read_dataset_file(Path(out_dir) / "pairs.h5", expect_attrs={"key": _pairs_key(cfg)})
    s, f = torch.from_numpy(data["state"]), torch.from_numpy(fdata["forecast"])
    n_train = cfg.pretrain.trajectories - cfg.pretrain.held_out
    part = slice(n_train, None) if held_out else slice(0, n_train)
    x, f = s[part, s.shape[1] - f.shape[1] :], f[part]
    return (x - f).reshape(-1, *s.shape[2:]), f.reshape(-1, *s.shape[2:])


def samples(out_dir: str | Path, held_out: bool, moments: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """Normalised training samples [N, C', H, W] and their moments ((mean, std), condition's or None):
    windows stacked as channels, or [r, f] for a conditional network; ``moments`` given: those used."""
    cfg = load_config(out_dir)
    if not cfg.scorenet.condition:
        W = load_windows(out_dir, held_out)
        if moments is None:
            moments = ((W.mean(dim=(0, 1, 3, 4)), W.std(dim=(0, 1, 3, 4))), None)
        return stack(W, *moments[0]), moments
    r, f = load_pairs(out_dir, held_out)
    if moments is None:
        moments = (
            (r.mean(dim=(0, 2, 3)), r.std(dim=(0, 2, 3))),
            (f.mean(dim=(0, 2, 3)), f.std(dim=(0, 2, 3))),
        )
    (rm, rs), (fm, fs) = moments
    return torch.cat([stack(r[:, None], rm, rs), stack(f[:, None], fm, fs)], dim=1), moments


def stack(windows: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[N, 2k+1, C, H, W] → normalised [N, (2k+1)·C, H, W]."""
    z = (windows - mean[:, None, None]) / std[:, None, None]
    return z.reshape(z.shape[0], -1, *z.shape[-2:])


def train(out_dir: str | Path) -> dict:
    """Train on this rank's share of each global batch; rank 0 writes weights.pt and train.json."""
    from scoreda.learned.params import build_scorenet
    from scoreda.learned.schedule import VPCosine
    from scoreda.learned.unet import DenoisingLoss
    from scoreda.learned.weights import save_scorenet
    from scoreda.surrogate.distributed import discover, init_distributed
    from scoreda.surrogate.trainer import Trainer

    out_dir = Path(out_dir)
    cfg = load_config(out_dir)
    s = cfg.scorenet
    env = discover()
    torch.set_num_threads(training_threads(cfg, env.local_world_size))
    init_distributed(env, cfg.parallel.backend)
    X, ((mean, std), condition) = samples(out_dir, held_out=False)

    def factory():
        return DenoisingLoss(build_scorenet(s), VPCosine(s.eta))

    trainer = Trainer(factory, s, cfg.parallel, env, cfg.device, total_steps=s.steps, seed=cfg.seed)
    per_rank = s.batch_size // env.world_size
    mine = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    zeros = torch.zeros((per_rank, (2 * s.window + 1) * s.channels, *X.shape[2:]), device=cfg.device)
    losses, t0 = [], time.perf_counter()
    for step in range(s.steps):
        g = generator(cfg.seed, step, "score-batch")
        idx = torch.randint(len(X), (s.batch_size,), generator=g)[mine]
        x = X[idx]
        if s.roll:
            x = pretrain.roll_x(x, torch.randint(X.shape[-1], (s.batch_size,), generator=g)[mine])
        losses.append(trainer.step(x.to(cfg.device), zeros))
        if env.rank == 0 and (step % 100 == 0 or step == s.steps - 1):
            print(f"step {step:5d}  loss {losses[-1]:.4f}  {time.perf_counter() - t0:7.1f} s", flush=True)
    seconds = time.perf_counter() - t0
    state = trainer.full_state_dict()
    meta = {"steps": len(losses), "seconds": seconds, "final_loss": losses[-1], "parallel": cfg.parallel.name}
    meta["every_hours"] = every_hours(cfg)  # the spacing of a window's states (the smoother checks it)
    if env.rank == 0:
        state = {k.removeprefix("net."): v for k, v in state.items()}
        save_scorenet(out_dir / "weights.pt", state, s, mean, std, meta, condition)
        summary = meta | {"ranks": env.world_size, "samples": len(X), "losses": losses}
        write_json(out_dir / "train.json", summary)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return meta


def wiener_error(
    x0: torch.Tensor, eps: torch.Tensor, spectrum: torch.Tensor, mu: float, sigma: float
) -> float:
    """Denoising error of the Wiener filter ε̂ = F⁻¹[σ/(μ²P + σ²) F x_t] for a stationary Gaussian with
    power spectrum P [C, H, W] (per grid point variance = mean of P), x_t = μ x₀ + σ ε."""
    xt = mu * x0 + sigma * eps
    pred = torch.fft.ifft2(torch.fft.fft2(xt) * sigma / (mu**2 * spectrum + sigma**2)).real
    return float((pred - eps).square().mean())


@torch.no_grad()
def evaluate(out_dir: str | Path) -> dict:
    """Held-out denoising errors of the network and of the Wiener filter → report.json."""
    from scoreda.learned.weights import load_scorenet

    out_dir = Path(out_dir)
    cfg = load_config(out_dir)
    torch.set_num_threads(cfg.platform.threads_per_worker)
    net, schedule, mean, std, meta = load_scorenet(out_dir / "weights.pt")
    condition = (meta["condition_mean"], meta["condition_std"]) if net.condition else None
    moments = ((mean, std), condition)
    train_x = samples(out_dir, held_out=False, moments=moments)[0][:, : net.channels]
    spectrum = torch.fft.fft2(train_x).abs().square().mean(0) / train_x[0, 0].numel()
    X = samples(out_dir, held_out=True, moments=moments)[0]
    X, cond = X[:, : net.channels], (X[:, net.channels :] if net.condition else None)
    g = generator(cfg.seed, 0, "score-eval")
    report: dict = {"samples": len(X), "times": list(EVAL_TIMES), "net": [], "wiener": []}
    t0 = time.perf_counter()
    for t in EVAL_TIMES:
        eps = torch.randn(X.shape, generator=g)
        mu, sigma = (float(v) for v in schedule(torch.tensor(t)))
        xt = mu * X + sigma * eps
        chunks = zip(
            xt.split(64), cond.split(64) if cond is not None else [None] * len(xt.split(64)), strict=True
        )
        pred = torch.cat([net(b, torch.full((len(b),), t), c) for b, c in chunks])
        report["net"].append(float((pred - eps).square().mean()))
        report["wiener"].append(wiener_error(X, eps, spectrum, mu, sigma))
    report["ms_per_state"] = 1e3 * (time.perf_counter() - t0) / (len(X) * len(EVAL_TIMES))
    report["beats_wiener"] = all(n < w for n, w in zip(report["net"], report["wiener"], strict=True))
    train_json = out_dir / "train.json"
    if train_json.is_file():
        t = json.loads(train_json.read_text())
        report["train"] = {
            k: t[k] for k in ("steps", "seconds", "final_loss", "ranks", "parallel", "samples")
        }
    write_json(out_dir / "report.json", report)
    return report


if __name__ == "__main__":
    steps_main(
        "Training the score network, one step.",
        {"trajectory": trajectory, "train": train, "evaluate": evaluate},
    )
