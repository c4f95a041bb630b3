"""Parsl configurations per platform, launcher commands, and the workflows' entry point."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig
from parsl.addresses import address_by_hostname
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider, SlurmProvider

from scoreda.config import ConfigError, validate
from scoreda.platform import end_time_seconds

ROOT = Path(__file__).resolve().parents[1]


def provider_mode(cfg: DictConfig) -> str:
    """``local``, ``allocation`` (Parsl inside a Slurm job) or ``submit`` (Parsl submits blocks)."""
    p = cfg.platform
    if p.name == "local":
        return "local"
    if p.provider != "auto":
        return p.provider
    return "allocation" if os.environ.get("SLURM_JOB_ID") else "submit"


def parsl_config(cfg: DictConfig, run_dir: str, retry_handler=None) -> Config:
    """One HighThroughputExecutor: single-process stages in its workers, MPI stages as bash apps that
    start ``mpiexec`` (local) or ``srun`` job steps (Slurm) from a worker.

    local: LocalProvider on loopback. allocation: LocalProvider on the batch node of the running
    job. submit: SlurmProvider blocks of ``platform.nodes`` nodes (SimpleLauncher: one worker pool on
    the block's first node, whose job steps fan out over the block).
    """
    p, mode = cfg.platform, provider_mode(cfg)
    worker_init = f"export OMP_NUM_THREADS={p.threads_per_worker}"
    if mode == "submit":
        if p.env_script:
            script = Path(p.env_script) if Path(p.env_script).is_absolute() else ROOT / p.env_script
            worker_init = f"source {shlex.quote(str(script))}\n{worker_init}"
        provider = SlurmProvider(
            partition=p.partition,
            account=p.account,
            qos=p.qos,
            nodes_per_block=p.nodes,
            init_blocks=1,
            min_blocks=1,
            max_blocks=1,
            walltime=p.walltime,
            scheduler_options=p.scheduler_options,
            worker_init=f"cd {shlex.quote(str(ROOT))}\n{worker_init}",
            exclusive=True,  # a block owns its nodes; job steps share them out
            launcher=SimpleLauncher(),
        )
        address = p.address or address_by_hostname()
    else:  # the interchange and the workers share this host
        provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=worker_init)
        address = "127.0.0.1" if mode == "allocation" else p.address
    htex = HighThroughputExecutor(
        label=p.name,
        address=address,
        loopback_address="127.0.0.1",
        max_workers_per_node=p.workers,
        cores_per_worker=1e-6,  # `workers` decides, not the core count of the node
        heartbeat_period=2 if mode == "local" else 15,
        heartbeat_threshold=10 if mode == "local" else 120,
        poll_period=10,
        provider=provider,
    )
    return Config(
        executors=[htex],
        run_dir=str(Path(run_dir) / "runinfo"),
        retries=p.retries,
        retry_handler=retry_handler,
        strategy="simple" if mode == "submit" else "none",  # submit: keep one block alive
        # the first block starts at the poller's first tick: at once here, not 5 s into every run
        strategy_period=5 if mode == "submit" else 0.2,
        initialize_logging=False,
    )


def mpi_command(
    cfg: DictConfig, module: str, args: list[str], ranks: int, launcher: str | None = None
) -> str:
    """``python -m module args`` on ``ranks`` MPI ranks: ``{platform.mpi_launcher} -n R ...`` here, or
    one Slurm job step ``srun --ntasks=R --nodes=N ...`` with N = ceil(R / ``platform.ranks_per_node``),
    ``platform.cpus_per_task`` cores a rank and ``platform.srun_options`` (GPU binding) on a cluster."""
    p = cfg.platform
    launcher = launcher or p.mpi_launcher
    py = [*python(cfg), *program(module), *args]
    if launcher != "srun":
        return shlex.join([*shlex.split(launcher), "-n", str(ranks), *py])
    nodes = -(-ranks // p.ranks_per_node)
    srun = [
        "srun",
        f"--ntasks={ranks}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={min(ranks, p.ranks_per_node)}",
        f"--cpus-per-task={p.cpus_per_task}",
        *shlex.split(p.srun_options),
    ]
    return shlex.join([*srun, *py])


def program(module: str) -> list[str]:
    """``-m module``, or a script path as it is (``scripts/bench_*.py`` of the scaling studies)."""
    return [module] if module.endswith(".py") else ["-m", module]


def python(cfg: DictConfig) -> list[str]:
    """The interpreter of stages started as processes: ``platform.python`` (e.g. a container's), or
    this one."""
    return shlex.split(cfg.platform.python) if cfg.platform.python else [sys.executable]


def launch_command(cfg: DictConfig, module: str, args: list[str], ranks: int) -> str:
    """Shell command running ``python -m module args`` on ``ranks`` processes with ``parallel.launcher``.

    One rank is a plain process (the stage discovers a world of one). ``torchrun`` runs standalone
    on this host; ``mpiexec`` is ``platform.mpi_launcher``; ``srun`` is a job step inside the
    allocation (``mpi_command``); ``deepspeed`` is DeepSpeed's own launcher. The stage finds its rank
    from whichever launched it (``scoreda.surrogate.distributed.discover``).
    """
    py = [*python(cfg), *program(module), *args]
    launcher = cfg.parallel.launcher
    if ranks == 1 and launcher != "srun":
        return shlex.join(py)
    bindir = Path(sys.executable).parent
    if launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", *program(module), *args]
    elif launcher in ("mpiexec", "srun"):
        return mpi_command(cfg, module, args, ranks, launcher="srun" if launcher == "srun" else None)
    elif launcher == "deepspeed":
        ds = ["--module", module] if not module.endswith(".py") else [module]
        cmd = [str(bindir / "deepspeed"), f"--num_gpus={ranks}", *ds, *args]
    else:
        raise ValueError(f"parallel.launcher: unknown launcher {launcher!r}")
    return shlex.join(cmd)


def allocation_end(cfg: DictConfig) -> float | None:
    """Unix time at which the allocation ends: ``platform.end_time``, or for ``auto`` inside a Slurm
    job its end time from ``squeue`` (None when the job has no limit or this is no allocation)."""
    value = cfg.platform.end_time
    if value == "auto":
        job = os.environ.get("SLURM_JOB_ID")
        if provider_mode(cfg) != "allocation" or not job:
            return None
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True)
        value = out.stdout.strip() if out.returncode == 0 else None
    return end_time_seconds(value)


def _refuse(message: str) -> None:
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(2)


def precheck_overrides(config_dir: Path, args: list[str]) -> None:
    """Reject, in one line before Hydra, the overrides Hydra would answer with a traceback or with
    advice that then fails: a ``group=option`` whose file does not exist, a key the config does not
    have (with the closest keys: "did you mean"), an override that does not parse."""
    overrides = [a for a in args if not a.startswith("-")]
    for arg in overrides:
        if "=" not in arg or arg.startswith(("+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        group = config_dir / key
        if group.is_dir() and "," not in value and not (group / f"{value}.yaml").is_file():
            options = sorted(f.stem for f in group.glob("*.yaml"))
            _refuse(f"{key}: unknown option {value!r} (available: {', '.join(options)})")
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        _refuse(" ".join(str(e).split())[:300])
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not {"-m", "--multirun"} & set(args):
        _refuse(f"{sweeps[0]}: several values sweep only with -m (--multirun); a list is key=[a,b]")
    plain = [
        o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")
    ]
    problem = _unknown_key(config_dir, plain)
    if problem:
        _refuse(problem)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _compose(config_dir: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=overrides)


def _unknown_key(config_dir: Path, overrides: list[str]) -> str | None:
    """One line for the first override whose key the composed config lacks, else None."""
    import difflib
    import re

    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf

    try:
        _compose(config_dir, overrides)
        return None
    except HydraException as e:
        found = re.search(r"Could not override '([^']+)'", str(e))
        preset = re.search(r"In '([^']+)': ConfigKeyError.*?full_key: (\S+)", str(e), re.S)
        if preset:  # a config file sets a key that the chosen option of its group lacks
            source, full = preset.groups()
            return f"{full}: set by {source}, but not a key of the chosen {full.rpartition('.')[0]} option"
        if not found:
            return None  # Hydra's own message
        key = found.group(1)
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = _compose(config_dir, rest)
    except HydraException:
        return f"{key}: no such key"
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return f"{key}: no such key ({parent} has no keys)"
    keys = [str(k) for k in node.keys()]
    close = difflib.get_close_matches(leaf, keys, n=3, cutoff=0.6)
    owners = (
        [f"{parent}={option}" for option in _options_with(config_dir, rest, parent, leaf)] if parent else []
    )
    if owners:
        where = f"{parent}={node.get('name', '?')}"
        return f"{key}: not a key of {where} (it is one of {', '.join(owners)})"
    if close:
        return f"{key}: no such key; did you mean {' or '.join(_join(parent, c) for c in close)}?"
    return f"{key}: no such key (the keys of {parent or 'the config'}: {', '.join(keys)})"


def _options_with(config_dir: Path, overrides: list[str], group: str, leaf: str) -> list[str]:
    """The options of config group ``group`` whose composed section has the key ``leaf``."""
    from hydra.errors import HydraException

    found = []
    rest = [o for o in overrides if o.split("=", 1)[0] != group]
    for option in sorted(f.stem for f in (config_dir / group).glob("*.yaml")):
        try:
            section = _compose(config_dir, [*rest, f"{group}={option}"]).get(group)
        except HydraException:
            continue
        if section is not None and hasattr(section, "keys") and leaf in section:
            found.append(option)
    return found


def run_validated(run: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    """The body of a workflow's Hydra main: validate (a bad value is one line naming the key, exit 2,
    before any work), then ``run(cfg)``."""
    try:
        cfg = validate(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    run(cfg)
