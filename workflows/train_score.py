"""Training the score network (issue 21) as a Parsl DAG, configured by Hydra (the cycle's tree).

    python workflows/train_score.py                                    # scorenet=unet_cpu, 1 rank
    python workflows/train_score.py parallel=zero2 parallel.ranks=2    # DeepSpeed ZeRO-2 on 2 ranks
    python workflows/train_score.py scorenet=diffda_cpu                # DiffDA's conditional network

trajectory (the pre-training's nature runs at the score network's frame spacing; reused when they
exist) → pairs (a conditional network's forecasts from perturbed states, ``scorenet.condition``:
``scorenet=diffda_cpu``) → train (``parallel.ranks`` processes started by ``parallel.launcher``; output in
``DIR/logs/train.{out,err}``) → evaluate (held-out denoising error against the Wiener filter of the
training spectrum). DIR is ``scorenet.out_dir`` (``runs/scorenet/<preset>``); its ``weights.pt`` is
what the learned-score filters read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import parsl
from omegaconf import DictConfig, OmegaConf
from parsl import bash_app, python_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from platforms import launch_command, parsl_config, precheck_overrides, run_validated  # noqa: E402

from scoreda.io import write_text  # noqa: E402

STAGE = "scoreda.stages.train_score"


@python_app
def step_app(step, out_dir, inputs=()):
    """``scoreda.stages.train_score.<step>(out_dir)`` in a Parsl worker."""
    from scoreda.stages import train_score

    return getattr(train_score, step)(out_dir)


@bash_app
def train_app(command, inputs=(), stdout=None, stderr=None):
    return command


def run(cfg: DictConfig) -> dict:
    from scoreda.dynamics.grid import model_grid
    from scoreda.learned.params import ScoreNetParams

    try:
        ScoreNetParams(**OmegaConf.to_container(cfg.scorenet)).check_fits(
            tuple(model_grid(cfg.model).shape), cfg.model.cycle_hours
        )
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    out_dir = Path(cfg.scorenet.out_dir).resolve()
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    command = launch_command(cfg, STAGE, ["train", "--out-dir", str(out_dir)], cfg.parallel.ranks)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"training {cfg.scorenet.name} with {cfg.parallel.name} on {cfg.parallel.ranks} rank(s)")
    print(f"  {command}\n  log: {logs}/train.out")
    with parsl.load(parsl_config(cfg, str(out_dir))):
        traj = step_app("trajectory", str(out_dir))
        data = step_app("pairs", str(out_dir), inputs=[traj]) if cfg.scorenet.condition else traj
        log = dict(stdout=str(logs / "train.out"), stderr=str(logs / "train.err"))
        trained = train_app(command, inputs=[data], **log)
        report = step_app("evaluate", str(out_dir), inputs=[trained]).result()
    parsl.clear()
    _print(cfg, out_dir, report)
    return report


def _print(cfg: DictConfig, out_dir: Path, r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.scorenet.name}: held-out denoising error E‖ε̂ − ε‖² ({r['samples']} samples)")
    for col in ("t", "network", "Wiener filter"):
        table.add_column(col, justify="right")
    for t, n, w in zip(r["times"], r["net"], r["wiener"], strict=True):
        table.add_row(f"{t:.1f}", f"{n:.4f}", f"{w:.4f}")
    console = Console()
    console.print(table)
    t = r.get("train", {})
    verdict = "yes" if r["beats_wiener"] else "NO"
    console.print(
        f"beats the Wiener filter at every t: {verdict}; {t.get('steps')} steps in "
        f"{t.get('seconds', 0) / 60:.1f} min on {t.get('ranks')} rank(s)"
    )
    console.print(f"weights: {out_dir / 'weights.pt'}  report: {out_dir / 'report.json'}")


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_validated(run, cfg)


if __name__ == "__main__":
    precheck_overrides(ROOT / "configs", sys.argv[1:])
    main()
