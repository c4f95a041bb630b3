"""Trainer cases for ``test_trainer.py``, run under a launcher (torchrun, mpiexec, deepspeed, srun):

    torchrun --nproc_per_node 2 tests/trainer_cases.py --strategy zero2,ddp --steps 5 --out OUT.json
    mpiexec -n 2 python tests/trainer_cases.py --strategy ddp --steps 5 --resume-at 2 --out OUT.json
    ... --strategy ddp,ddp@surrogate.grad_accum=4@surrogate.drop_rate=0   # a case with its own overrides
    ... --model scorenet          # the score network's denoising loss (issue 21) instead of the ViT

Each case (several run one after another in one launch: start-up dominates) trains the tiny ViT on a
fixed synthetic data set; rank 0 writes one JSON entry per case: the per-step global losses, a
fingerprint of the full fp32 state gathered on EACH rank (and of each rank's own module, where it is
whole), the largest difference between the trainer's predictions and those of the consolidated weights
file it wrote, and with ``--resume-at K`` the losses and fingerprint of a run that trains K steps,
saves (after K−1 and K steps, into the same directory), builds a fresh trainer, loads and trains the
rest (and whether a checkpoint without its COMPLETE marker is refused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.learned.params import build_scorenet
from scoreda.learned.schedule import VPCosine
from scoreda.learned.unet import DenoisingLoss
from scoreda.surrogate.distributed import discover, init_distributed
from scoreda.surrogate.trainer import COMPLETE, Trainer
from scoreda.surrogate.vit import build_vit
from scoreda.surrogate.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "surrogate=vit_tiny",
    "surrogate.img_size=16",
    "surrogate.embed_dim=32",
    "surrogate.depth=2",
    "surrogate.heads=2",
    "surrogate.batch_size=16",
    "surrogate.grad_accum=2",
    "surrogate.lr=1e-2",
    "surrogate.warmup_steps=1",
    "surrogate.drop_rate=0.1",
    "surrogate.drop_path=0.1",
)
SMALL_SCORENET = (  # with --model scorenet: a 2-level U-Net, the same batches as the ViT's
    "scorenet.channels=2",
    "scorenet.hidden=[8,16]",
    "scorenet.blocks=[1,1]",
    "scorenet.kernel=3",
    "scorenet.emb=16",
    "scorenet.batch_size=16",
    "scorenet.grad_accum=2",
    "scorenet.lr=1e-2",
    "scorenet.warmup_steps=1",
)
WHOLE_ON_EACH_RANK = ("ddp", "zero1", "zero2")  # strategies whose local module holds every weight


def config(strategy: str, ranks: int, *extra: str):
    """The validated config of ``strategy`` on ``ranks`` processes with the tiny ViT."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        over = [*TINY, *SMALL_SCORENET, f"parallel={strategy}", f"parallel.ranks={ranks}", *extra]
        cfg = compose("config", overrides=over)
    return validate(cfg)


def dataset(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, 2, 16, 16]: smooth random fields (a few low Fourier modes); y: a fixed smooth map of x
    (scaled, shifted along x, levels mixed through a mild nonlinearity, offset)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(16) * (2 * torch.pi / 16)
    modes = torch.randn(n, 2, 3, 3, 2, generator=g)
    x = torch.zeros(n, 2, 16, 16)
    for i in range(3):
        for j in range(3):
            phase = i * k[:, None] + j * k[None, :]
            a, b = modes[:, :, i, j, 0, None, None], modes[:, :, i, j, 1, None, None]
            x += a * phase.cos() + b * phase.sin()
    x = x / x.std()
    shifted = torch.roll(x, 2, dims=-1)
    y = 0.5 * x + 0.3 * shifted + 0.1 * torch.tanh(shifted.flip(1)) + 0.5
    return x, y


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the names and float32 bytes of every tensor, in key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprints(trainer: Trainer, strategy: str) -> dict:
    """Per-rank fingerprints gathered to every rank: full fp32 state, and the local module if whole."""
    mine = {"full": fingerprint(trainer.full_state_dict(rank0_only=False))}
    if strategy in WHOLE_ON_EACH_RANK:
        mine["local"] = fingerprint(trainer.unwrapped.state_dict())
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {key: [d[key] for d in everyone] for key in mine}


def weights_check(trainer: Trainer, cfg, X: torch.Tensor, path: Path) -> float | None:
    """Max |trainer.predict − model from the weights file it wrote| on 4 samples (rank 0; None elsewhere)."""
    C = cfg.surrogate.channels
    trainer.save_weights(path, cfg.surrogate, torch.zeros(C), torch.ones(C), {"case": path.stem})
    pred = trainer.predict(X[:4])  # collective under zero3 / FSDP
    if dist.get_rank() != 0:
        return None
    model, _, _, meta = load_weights(path)
    with torch.no_grad():
        return float((model(X[:4]) - pred).abs().max())


def run(case: str, args, env, X, Y, tmp: Path) -> dict:
    strategy, *overrides = case.split("@")
    cfg = config(strategy, env.world_size, *args.override, *overrides)
    s = cfg.surrogate
    name = case.replace("@", "_").replace("=", "-")

    if args.model == "scorenet":  # the denoising loss of the score network: targets are zeros
        s, Y = cfg.scorenet, torch.zeros_like(Y)

        def factory():
            return DenoisingLoss(build_scorenet(s), VPCosine(s.eta))
    else:

        def factory():
            return build_vit(s)

    def new_trainer() -> Trainer:
        return Trainer(factory, s, cfg.parallel, env, "cpu", total_steps=args.steps, seed=0)

    trainer = new_trainer()
    out = {"losses": trainer.fit(X, Y, args.steps, seed=1), **fingerprints(trainer, strategy)}
    rank0 = trainer.full_state_dict()
    if env.rank == 0:
        out["full_keys"] = len(rank0)
        out["abs_sum"] = float(sum(v.double().abs().sum() for v in rank0.values()))
    if args.model == "vit":
        out["weights_max_diff"] = weights_check(trainer, cfg, X, tmp / f"weights-{name}.pt")
    del trainer
    if args.resume_at is not None:
        k = args.resume_at
        first = new_trainer()
        ckpt = tmp / f"ckpt-{name}"
        losses = first.fit(X, Y, k - 1, seed=1)
        first.save(ckpt)  # overwritten by the next save: the newest must be loaded
        losses += first.fit(X, Y, 1, seed=1)
        first.save(ckpt)
        del first
        second = new_trainer()
        broken = tmp / f"broken-{name}"
        if env.rank == 0:
            shutil.copytree(ckpt, broken)
            (broken / COMPLETE).unlink()
        dist.barrier()
        try:
            second.load(broken)
            refused = False
        except FileNotFoundError:
            refused = True
        second.load(ckpt)
        losses += second.fit(X, Y, args.steps - k, seed=1)
        out["resumed"] = {"losses": losses, **fingerprints(second, strategy)}
        out["resumed"]["refuses_incomplete"] = refused
        out["resumed"]["partial_left"] = any(p.name.endswith(".partial") for p in tmp.iterdir())
        del second
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", required=True, help="comma-separated cases: NAME[@OVERRIDE@...]")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--resume-at", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    ap.add_argument("--model", choices=("vit", "scorenet"), default="vit", help="scorenet: SMALL_SCORENET")
    ap.add_argument("--local_rank", type=int, default=None, help="passed by the deepspeed launcher")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = discover()
    init_distributed(env, "auto")
    X, Y = dataset()
    results = {"launcher": env.launcher, "world_size": env.world_size, "strategies": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TRAINER_CASES_TMP")) as d:
        tmp = Path(d)
        if env.world_size > 1:  # one directory for all ranks
            holder = [str(tmp)]
            dist.broadcast_object_list(holder, src=0)
            tmp = Path(holder[0])
        for case in args.strategy.split(","):
            results["strategies"][case] = run(case, args, env, X, Y, tmp)
        dist.barrier()
    if env.rank == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
