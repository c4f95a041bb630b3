"""Offline pre-training of the ViT surrogate as a Parsl DAG, configured by Hydra (the cycle's tree).

    python workflows/pretrain.py                                   # vit_tiny, 1 rank
    python workflows/pretrain.py parallel=zero2 parallel.ranks=2   # DeepSpeed ZeRO-2 on 2 ranks

trajectory (nature runs, reused when they exist) → train (``parallel.ranks`` processes started by
``parallel.launcher``; output in ``DIR/logs/train.{out,err}``) → evaluate (held-out 12-hour
forecast RMSE against persistence and the physics model). DIR is ``pretrain.out_dir``
(``runs/pretrain/<preset>``); its ``weights.pt`` is where ``forecaster=vit`` looks by default.

Training takes all ``pretrain.steps`` steps (7000 by default; about 15 min on a quiet 2-core machine
for ``vit_tiny``), however long that takes: the result does not depend on the machine's load.
``pretrain.max_minutes=M`` adds a time limit; when it stops training early, the training log, the
summary printed at the end and ``report.json`` (``train.stopped_early``, ``train.reason``) say so.
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


@python_app
def step_app(step, out_dir, inputs=()):
    """``scoreda.stages.pretrain.<step>(out_dir)`` in a Parsl worker."""
    from scoreda.stages import pretrain

    return getattr(pretrain, step)(out_dir)


@bash_app
def train_app(command, inputs=(), stdout=None, stderr=None):
    return command


def run(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.pretrain.out_dir).resolve()
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    command = launch_command(
        cfg, "scoreda.stages.pretrain", ["train", "--out-dir", str(out_dir)], cfg.parallel.ranks
    )
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"pre-training {cfg.surrogate.name} with {cfg.parallel.name} on {cfg.parallel.ranks} rank(s)")
    print(f"  {command}\n  log: {logs}/train.out")
    with parsl.load(parsl_config(cfg, str(out_dir))):
        traj = step_app("trajectory", str(out_dir))
        log = dict(stdout=str(logs / "train.out"), stderr=str(logs / "train.err"))
        trained = train_app(command, inputs=[traj], **log)
        report = step_app("evaluate", str(out_dir), inputs=[trained]).result()
    parsl.clear()
    _print(cfg, out_dir, report)
    return report


def _print(cfg: DictConfig, out_dir: Path, r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    u = r["units"]
    table = Table(title=f"{cfg.surrogate.name}: held-out 12-hour forecasts ({r['pairs']} pairs)")
    for col in ("start", "ViT", "persistence", "physics model", "ms/forecast ViT", "ms/forecast model"):
        table.add_column(col, justify="right")
    for start in ("exact", "noisy"):
        e = r[start]
        label = start if start == "exact" else f"+N(0, {r['eval_noise']}²)"
        table.add_row(
            label,
            f"{e['rmse_vit']:.3f} {u}",
            f"{e['rmse_persistence']:.3f} {u}",
            f"{e['rmse_model']:.3f} {u}",
            f"{e['ms_per_forecast_vit']:.2f}",
            f"{e['ms_per_forecast_model']:.2f}",
        )
    console = Console()
    console.print(table)
    t = r.get("train", {})
    verdict = "met" if r["target_met"] else "MISSED"
    console.print(
        f"ViT / persistence = {r['ratio_vit_persistence']:.3f} (target ≤ 0.5: {verdict}); "
        f"{t.get('steps')} steps in {t.get('seconds', 0) / 60:.1f} min on {t.get('ranks')} rank(s)"
    )
    if t.get("stopped_early"):
        console.print(f"[bold]stopped early[/bold]: {t.get('reason')} (the result is not the full run's)")
    console.print(f"weights: {out_dir / 'weights.pt'}  report: {out_dir / 'report.json'}")


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_validated(run, cfg)


if __name__ == "__main__":
    precheck_overrides(ROOT / "configs", sys.argv[1:])
    main()
