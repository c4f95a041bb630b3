"""Who am I in a parallel job? One ``DistEnv`` from whichever launcher started the process.

``discover`` recognises, in this order:

- ``torchrun`` and the ``deepspeed`` launcher: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
  torchrun also sets TORCHELASTIC_RUN_ID and LOCAL_WORLD_SIZE; DeepSpeed's launcher sets CROSS_RANK,
  CROSS_SIZE (node index and count) and LOCAL_SIZE instead (and passes ``--local_rank=N`` to the
  script). RANK and WORLD_SIZE with neither marker (set by hand) reads as ``env``.
- Slurm ``srun`` (a job step: SLURM_STEP_ID or SLURM_STEP_NUM_TASKS present, so a batch script's own
  shell, which has SLURM_PROCID=0 and the allocation's SLURM_NTASKS, is not mistaken for rank 0 of many):
  SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, tasks per node, master = first host of the step's node list
  (the compact hostlist syntax expanded here, no ``scontrol``), port from MASTER_PORT, else from
  SLURM_JOB_ID and SLURM_STEP_ID.
- ``mpiexec``: MPICH (PMI_RANK, PMI_SIZE) or Open MPI (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK). Unless
  MASTER_ADDR and MASTER_PORT are already set, the ranks meet through mpi4py: hostnames are all-gathered,
  rank 0 picks a free port and broadcasts it with its address (127.0.0.1 when all ranks share a host).
- otherwise one process: rank 0 of 1 on 127.0.0.1 with a free port.

``init_distributed`` exports the variables torch reads and starts the default process group (for one
process too, so that every training strategy runs the same collective code).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job and the rendezvous address of rank 0."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | deepspeed | env | srun | mpiexec | single


def free_port() -> int:
    """A TCP port that was free on this host a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ Slurm hostlists


def _split_top(s: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {s!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist {s!r}")
    parts.append("".join(cur))
    return [p for p in parts if p]


def _expand_range(spec: str, host: str) -> list[str]:
    """``00012-00014,20`` → ['00012', '00013', '00014', '20'] (zero padding kept)."""
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise ValueError(f"bad range {item!r} in hostlist {host!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in hostlist {host!r}")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand Slurm's compact host list, e.g. ``frontier[00012-00014,00020],login1`` → 5 names.

    Several bracket groups in one name expand as a product (``n[1-2]-ib[0-1]`` → 4 names), in order."""
    hosts: list[str] = []
    for part in _split_top(hostlist.strip()):
        names = [""]
        for text, spec in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", part):
            if not text and not spec:
                continue
            names = [n + text for n in names]
            if spec:
                names = [n + v for n in names for v in _expand_range(spec, part)]
        hosts += names
    return hosts


def _tasks_per_node(spec: str) -> list[int]:
    """Slurm's ``2(x3),1`` → [2, 2, 2, 1]."""
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ValueError(f"bad tasks-per-node value {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


# ------------------------------------------------------------------------------------------ discover


def _int(environ: Mapping[str, str], *keys: str, default: int | None = None) -> int:
    for k in keys:
        if environ.get(k, "") != "":
            return int(environ[k])
    if default is None:
        raise KeyError(f"none of {', '.join(keys)} is set")
    return default


def _torch_launcher(environ: Mapping[str, str]) -> str:
    if "TORCHELASTIC_RUN_ID" in environ:
        return "torchrun"
    if "CROSS_RANK" in environ or "LOCAL_SIZE" in environ:
        return "deepspeed"
    return "env"


def _from_torch_vars(environ: Mapping[str, str]) -> DistEnv:
    launcher = _torch_launcher(environ)
    world = _int(environ, "WORLD_SIZE")
    addr = environ.get("MASTER_ADDR", LOOPBACK)
    if world > 1 and ("MASTER_ADDR" not in environ or "MASTER_PORT" not in environ):
        raise KeyError(f"{launcher}: RANK and WORLD_SIZE are set but MASTER_ADDR or MASTER_PORT is not")
    return DistEnv(
        rank=_int(environ, "RANK"),
        world_size=world,
        local_rank=_int(environ, "LOCAL_RANK", default=0),
        local_world_size=_int(environ, "LOCAL_WORLD_SIZE", "LOCAL_SIZE", default=world),
        master_addr=addr,
        master_port=_int(environ, "MASTER_PORT", default=0) or free_port(),
        launcher=launcher,
    )


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    world = _int(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    node_id = _int(environ, "SLURM_NODEID", default=0)
    specs = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
    per_node_spec = next((environ[k] for k in specs if environ.get(k)), None)
    if per_node_spec is None:
        local_world = world
    else:
        per_node = _tasks_per_node(per_node_spec)
        local_world = per_node[node_id] if node_id < len(per_node) else per_node[-1]
    lists = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
    nodelist = next((environ[k] for k in lists if environ.get(k)), None)
    if environ.get("MASTER_ADDR"):
        addr = environ["MASTER_ADDR"]
    elif nodelist:
        addr = expand_hostlist(nodelist)[0]
    else:
        addr = LOOPBACK
    if environ.get("MASTER_PORT"):
        port = int(environ["MASTER_PORT"])
    elif environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"):
        # the same on every rank of the step; steps of one job running side by side get different ports
        job, step = _int(environ, "SLURM_JOB_ID", "SLURM_JOBID"), _int(environ, "SLURM_STEP_ID", default=0)
        port = 15000 + (job + 7919 * step) % 20000
    else:
        port = 29500
    return DistEnv(
        rank=_int(environ, "SLURM_PROCID"),
        world_size=world,
        local_rank=_int(environ, "SLURM_LOCALID", default=0),
        local_world_size=local_world,
        master_addr=addr,
        master_port=port,
        launcher="srun",
    )


def _mpi_ranks(environ: Mapping[str, str]) -> tuple[int, int, int | None, int | None]:
    """(rank, size, local rank, local size) from MPICH's or Open MPI's variables (local ones may be None)."""
    if "OMPI_COMM_WORLD_RANK" in environ:
        rank, size = _int(environ, "OMPI_COMM_WORLD_RANK"), _int(environ, "OMPI_COMM_WORLD_SIZE")
        lr, lw = "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"
    else:
        rank, size = _int(environ, "PMI_RANK"), _int(environ, "PMI_SIZE")
        lr, lw = "MPI_LOCALRANKID", "MPI_LOCALNRANKS"
    local = int(environ[lr]) if environ.get(lr) else None
    local_size = int(environ[lw]) if environ.get(lw) else None
    return rank, size, local, local_size


def _from_mpi(environ: Mapping[str, str]) -> DistEnv:
    rank, size, local, local_size = _mpi_ranks(environ)
    if environ.get("MASTER_ADDR") and environ.get("MASTER_PORT"):
        addr, port = environ["MASTER_ADDR"], int(environ["MASTER_PORT"])
    else:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if (comm.Get_rank(), comm.Get_size()) != (rank, size):
            raise RuntimeError(
                f"mpiexec: the environment says rank {rank} of {size}, MPI says "
                f"{comm.Get_rank()} of {comm.Get_size()}"
            )
        hosts = comm.allgather(socket.gethostname())
        if rank == 0:
            one_host = len(set(hosts)) == 1
            root = (LOOPBACK if one_host else hosts[0], free_port())
        else:
            root = None
        addr, port = comm.bcast(root, root=0)
        if local is None or local_size is None:
            local = hosts[:rank].count(hosts[rank])
            local_size = hosts.count(hosts[rank])
    return DistEnv(
        rank=rank,
        world_size=size,
        local_rank=local if local is not None else 0,
        local_world_size=local_size if local_size is not None else size,
        master_addr=addr,
        master_port=port,
        launcher="mpiexec",
    )


def _slurm_job_step(environ: Mapping[str, str]) -> bool:
    """Inside a step started by srun (not a batch script's or the extern step's shell, whose step ids are
    Slurm's special values ≥ 0xFFFFFFF0)."""
    step = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID", ""))
    if step.isdigit() and int(step) >= 0xFFFFFFF0:
        return False
    return bool(step) or "SLURM_STEP_NUM_TASKS" in environ


def detect_launcher(environ: Mapping[str, str] = os.environ) -> str:
    """Which launcher's variables are present: torchrun | deepspeed | env | srun | mpiexec | single."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return _torch_launcher(environ)
    if "SLURM_PROCID" in environ and _slurm_job_step(environ):
        return "srun"
    if "OMPI_COMM_WORLD_RANK" in environ or "PMI_RANK" in environ:
        return "mpiexec"
    return "single"


def discover(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """This process's ``DistEnv`` (see the module docstring for the order launchers are tried in).

    Pure except for ``mpiexec`` without MASTER_ADDR/MASTER_PORT (an mpi4py rendezvous) and a free port
    for a single process."""
    launcher = detect_launcher(environ)
    if launcher in ("torchrun", "deepspeed", "env"):
        return _from_torch_vars(environ)
    if launcher == "srun":
        return _from_slurm(environ)
    if launcher == "mpiexec":
        return _from_mpi(environ)
    return DistEnv(0, 1, 0, 1, LOOPBACK, free_port(), "single")


# ------------------------------------------------------------------------------------------- init


def resolve_backend(backend: str = "auto") -> str:
    """``auto``: nccl when CUDA is available (RCCL on ROCm builds), else gloo."""
    import torch

    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected auto, gloo or nccl, got {backend!r}")
    return backend


def init_distributed(env: DistEnv, backend: str = "auto") -> str:
    """Export RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and start the
    default process group (a no-op if one exists); on CUDA, select device ``local_rank``. Returns the
    backend's name."""
    import torch
    import torch.distributed as dist

    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )
    backend = resolve_backend(backend)
    if dist.is_initialized():
        return dist.get_backend()
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, init_method="env://")
    return backend
