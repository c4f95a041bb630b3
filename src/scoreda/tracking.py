"""Experiment tracking: per-cycle scores to Weights & Biases (offline by default), or nowhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scoreda.metrics import SCORE_NAMES
from scoreda.validation import require


@dataclass
class LoggerParams:
    """The ``logger`` section: where per-cycle scores go (``none`` or Weights & Biases)."""

    name: str = "none"  # none | wandb
    project: str = "scoreda"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    group: str | None = None

    def __post_init__(self) -> None:
        require(self.name in ("none", "wandb"), "logger.name", f"expected none or wandb, got {self.name!r}")
        require(
            self.mode in ("offline", "online", "disabled"),
            "logger.mode",
            f"expected offline, online or disabled, got {self.mode!r}",
        )


SCALARS = ("time_hours", *SCORE_NAMES, "inflation")
_PER_CHANNEL = tuple(f"{name}_" for name in SCORE_NAMES)  # ``<score>_<channel>`` (QG's q1, u1, ...)


def logged(scores: dict) -> dict:
    """What ``Tracker.log`` sends for one cycle's ``scores``: the cycle, ``SCALARS``, the filter's
    ``diagnostics`` and the per-channel scores."""
    keep = {
        k: v
        for k, v in scores.items()
        if k in SCALARS
        or k in scores.get("diagnostics", ())
        or (k.startswith(_PER_CHANNEL) and isinstance(v, float))
    }
    return {"cycle": scores["cycle"], **keep}


class Tracker:
    """``log(scores)`` once per cycle, ``finish(summary)`` at the end. A no-op for ``logger=none``.

    Runs are grouped by ``logger.group``, else ``group`` (the workflow passes its Hydra sweep), else
    the experiment name; ``job_type`` names the workflow."""

    def __init__(
        self, cfg: DictConfig, run_dir: str | Path, group: str | None = None, job_type: str = "cycle"
    ):
        self.run = None
        lg = cfg.logger
        if lg.name != "wandb":
            return
        os.environ.setdefault("WANDB_MODE", lg.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(
            project=lg.project,
            entity=lg.entity,
            mode=lg.mode,
            dir=str(run_dir),
            group=lg.group or group or cfg.experiment_name,  # a sweep's runs share one group
            job_type=job_type,
            name=Path(run_dir).name,
            config=OmegaConf.to_container(cfg, resolve=True),
            reinit="finish_previous",
        )
        self.run.define_metric("cycle")
        self.run.define_metric("*", step_metric="cycle")

    def log(self, scores: dict) -> None:
        if self.run is not None:
            self.run.log(logged(scores))

    def finish(self, summary: dict | None = None) -> str | None:
        """Close the run; returns the directory of an offline run (what ``wandb sync`` uploads), else None."""
        if self.run is None:
            return None
        for k, v in (summary or {}).items():
            if isinstance(v, int | float | str):
                self.run.summary[k] = v
        offline = self.run.settings.mode == "offline" or os.environ.get("WANDB_MODE") == "offline"
        where = str(Path(self.run.dir).parent) if offline else None  # RUN/wandb/offline-run-*/files
        self.run.finish()
        self.run = None
        return where
