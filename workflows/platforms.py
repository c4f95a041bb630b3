"""Parsl configurations per platform, launcher commands, and the workflows' entry point."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from scoreda.config import ConfigError, validate


def parsl_config(cfg: DictConfig, run_dir: str) -> Config:
    p = cfg.platform
    if p.name == "local":
        htex = HighThroughputExecutor(
            label="local",
            address=p.address,
            loopback_address=p.address,
            max_workers_per_node=p.workers,
            cores_per_worker=1,
            heartbeat_period=2,
            heartbeat_threshold=10,
            poll_period=10,
            provider=LocalProvider(
                init_blocks=1,
                min_blocks=1,
                max_blocks=1,
                worker_init=f"export OMP_NUM_THREADS={p.threads_per_worker}",
            ),
        )
        return Config(
            executors=[htex],
            run_dir=str(Path(run_dir) / "runinfo"),
            retries=p.retries,
            strategy="none",
            initialize_logging=False,
        )
    raise ValueError(f"platform.name: unknown platform {p.name!r}")


def launch_command(cfg: DictConfig, module: str, args: list[str], ranks: int) -> str:
    """Shell command running ``python -m module args`` on ``ranks`` processes with ``parallel.launcher``.

    One rank is a plain process (the stage discovers a world of one). ``torchrun`` runs standalone
    on this host; ``mpiexec`` is ``platform.mpi_launcher``; ``srun`` runs inside an allocation;
    ``deepspeed`` is DeepSpeed's own launcher. The stage finds its rank from whichever launched it
    (``scoreda.surrogate.distributed.discover``).
    """
    py = [sys.executable, "-m", module, *args]
    if ranks == 1:
        return shlex.join(py)
    bindir = Path(sys.executable).parent
    launcher = cfg.parallel.launcher
    if launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m", module, *args]
    elif launcher == "mpiexec":
        cmd = [*shlex.split(cfg.platform.mpi_launcher), "-n", str(ranks), *py]
    elif launcher == "srun":
        cmd = ["srun", f"--ntasks={ranks}", *py]
    elif launcher == "deepspeed":
        cmd = [str(bindir / "deepspeed"), f"--num_gpus={ranks}", "--module", module, *args]
    else:
        raise ValueError(f"parallel.launcher: unknown launcher {launcher!r}")
    return shlex.join(cmd)


def precheck_groups(config_dir: Path, overrides: list[str]) -> None:
    """Reject ``group=option`` overrides whose option file does not exist, in one line, before Hydra."""
    for arg in overrides:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        group = config_dir / key
        if group.is_dir() and "," not in value and not (group / f"{value}.yaml").is_file():
            options = sorted(f.stem for f in group.glob("*.yaml"))
            print(
                f"config error: {key}: unknown option {value!r} (available: {', '.join(options)})",
                file=sys.stderr,
            )
            sys.exit(2)


def run_validated(run: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    """The body of a workflow's Hydra main: validate (a bad value is one line naming the key, exit 2,
    before any work), then ``run(cfg)``."""
    try:
        cfg = validate(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    run(cfg)
