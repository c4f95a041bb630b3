"""Analysis: assimilate the observations of cycle k into the forecast ensemble (``filter`` config).

One process (``filter.ranks=1``), or ``filter.ranks`` MPI ranks for a filter that shards
(``Capabilities.shards``):

    mpiexec -n R python -m scoreda.stages.analysis --run-dir RUN --cycle K

Where the filter needs no more than a slice of the state on each rank (``EnSF.slices_state``:
``shard=state`` and a per-index analysis), rank r reads only its slice of the forecast and of the
observations and writes its own part file; rank 0 then writes ``analysis.h5`` over the parts
(``analysis_sliced``, ``io.sharded``). Otherwise every rank reads the forecast and the observations;
the filter splits the work along ``filter.shard`` (members or state); rank 0 gathers the analysis
and alone writes the file. Rank 0 writes the timing. The result equals the one-rank result to rounding.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback

import numpy as np
import torch

from scoreda.config import ConfigError
from scoreda.filters import make_filter
from scoreda.filters.sharding import block, check_sharding
from scoreda.observations import ObservationParams
from scoreda.seeding import generator
from scoreda.stages.common import DIAGNOSTICS, Run, main, record_time
from scoreda.stages.nature import read_observations

# World size as the common MPI launchers announce it to each process (before MPI is initialised).
_LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_LAUNCHER_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


class MPICollective:
    """``filters.sharding.Collective`` over an mpi4py communicator; tensors travel through host memory."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        from mpi4py import MPI

        buf = np.ascontiguousarray(t.detach().cpu().numpy())
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return torch.from_numpy(buf).to(t.device)

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor | None:
        local = np.ascontiguousarray(t.detach().cpu().numpy())
        shapes = self.comm.gather(local.shape, root=0)
        if self.rank != 0:
            self.comm.Gatherv(local, None, root=0)
            return None
        counts = [math.prod(s) for s in shapes]
        flat = np.empty(sum(counts), dtype=local.dtype)
        self.comm.Gatherv(local, (flat, counts), root=0)
        parts = np.split(flat, np.cumsum(counts)[:-1])
        return torch.cat([torch.from_numpy(p.reshape(s)) for p, s in zip(parts, shapes, strict=True)], dim)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def sendrecv(self, t: torch.Tensor, dest: int, source: int, tag: int = 0) -> torch.Tensor:
        """Send ``t`` to rank ``dest`` and return the tensor of ``t``'s shape and dtype that rank ``source``
        sends with the same ``tag`` (buffers, no pickling)."""
        buf = np.ascontiguousarray(t.detach().cpu().numpy())
        got = np.empty_like(buf)
        self.comm.Sendrecv(buf, dest=dest, sendtag=tag, recvbuf=got, source=source, recvtag=tag)
        return torch.from_numpy(got).to(t.device)


def communicator(ranks: int, launcher: str = "mpiexec") -> MPICollective | None:
    """The MPI world for ``filter.ranks`` ranks (None for one); a clear error if the launch disagrees."""
    launched = _env_int(_LAUNCHER_SIZE)
    if ranks == 1:
        if launched is not None and launched > 1:
            raise ConfigError(
                f"filter.ranks: 1, but launched on {launched} MPI ranks (set filter.ranks={launched})"
            )
        return None
    from mpi4py import MPI

    size = MPI.COMM_WORLD.Get_size()
    if size != ranks:
        raise ConfigError(
            f"filter.ranks: {ranks}, but the MPI world has {size} rank(s)"
            f" (launch with `{launcher} -n {ranks} python -m scoreda.stages.analysis ...`)"
        )
    return MPICollective(MPI.COMM_WORLD)


def analysis(run_dir, cycle: int) -> str | None:
    """``analysis(k) = filter(forecast(k), obs(k))``; noise from the (seed, k, "analysis") stream.

    Returns the path of the analysis file (None on MPI ranks other than 0)."""
    run = Run(run_dir)
    f = run.cfg.filter
    comm = communicator(f.ranks, run.cfg.platform.mpi_launcher)
    filt = make_filter(f, run.grid)
    if comm is not None:
        if f.shard not in filt.capabilities.shards:
            raise ConfigError(
                f"filter.ranks: filter={f.name} does not run on several ranks with filter.shard={f.shard}"
            )
        try:
            check_sharding(f.shard, run.cfg.members, math.prod(run.shape), f.ranks)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if comm is not None and f.shard == "state" and getattr(filt, "slices_state", None):
        d = math.prod(run.shape)
        if filt.slices_state(ObservationParams.from_config(run.cfg.observation).n_observed(run.shape) == d):
            return analysis_sliced(run, cycle, filt, comm)
    done = run.done(cycle, "analysis")
    if comm is not None:
        done = comm.bcast(done)  # every rank follows rank 0's view of the file
    if not done:
        t0 = time.perf_counter()
        prior = run.read(cycle, "forecast")
        y, op = read_observations(run, cycle)
        M = prior.shape[0]
        gen = generator(run.cfg.seed, cycle, "analysis")
        if comm is None:
            prior = prior.to(run.cfg.device)
            post = filt.analyse(prior.reshape(M, -1), y.to(prior.device), op, gen)
        else:
            post = filt.analyse(prior.reshape(M, -1), y, op, gen, comm=comm, device=run.cfg.device)
        if comm is None or comm.rank == 0:
            diagnostics = {k: float(v) for k, v in post.diagnostics.items()}
            names = {DIAGNOSTICS: ",".join(diagnostics)}  # which attributes they are, for evaluate
            run.write(cycle, "analysis", post.ensemble.reshape(prior.shape).cpu(), **diagnostics, **names)
            record_time(run, cycle, "analysis", t0)
    return str(run.path(cycle, "analysis")) if comm is None or comm.rank == 0 else None


def analysis_sliced(run: Run, cycle: int, filt, comm: MPICollective) -> str | None:
    """``analysis`` when no rank needs more than its slice of the state (``EnSF.slices_state``):
    rank r reads the flat state indices ``block(d, R, r)`` of the forecast and the observations
    there (hyperslabs), analyses them (``analyse_slice``: only sums cross ranks) and writes its part
    file; once every part is written, rank 0 writes ``analysis.h5`` over them (``io.sharded``). An
    existing analysis counts as done when every rank's slice of it validates."""
    d = math.prod(run.shape)
    cols = block(d, comm.size, comm.rank)
    good = torch.tensor([float(run.done(cycle, "analysis", cols))])
    if comm.allreduce(good).item() == comm.size:
        return str(run.path(cycle, "analysis")) if comm.rank == 0 else None
    t0 = time.perf_counter()
    prior = run.read_slice(cycle, "forecast", cols)
    y, op = read_observations(run, cycle, cols)
    gen = generator(run.cfg.seed, cycle, "analysis")
    post = filt.analyse_slice(prior, y, op, gen, comm, cols, run.cfg.device)
    part = run.write_part(cycle, "analysis", post.ensemble.cpu(), cols, comm.rank, comm.size)
    parts = comm.comm.gather((part, cols.start, cols.stop), root=0)  # every part is written
    if comm.rank != 0:
        return None
    diagnostics = {k: float(v) for k, v in post.diagnostics.items()}
    run.write_parts(cycle, "analysis", parts, **diagnostics, **{DIAGNOSTICS: ",".join(diagnostics)})
    record_time(run, cycle, "analysis", t0)
    return str(run.path(cycle, "analysis"))


def _cli() -> None:
    """The stage CLI: configuration errors are one line (from rank 0); any other failure of one rank
    aborts the whole MPI job instead of leaving the others waiting in a collective."""
    rank = _env_int(_LAUNCHER_RANK) or 0
    size = _env_int(_LAUNCHER_SIZE) or 1
    try:
        main(analysis, "Analysis stage: assimilate the observations of cycle K into its forecast ensemble.")
    except ConfigError as e:
        if rank == 0:
            print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:  # ``main`` said what failed in one line: end every rank, not just this one
        if e.code not in (0, None) and size > 1 and "mpi4py.MPI" in sys.modules:
            sys.stderr.flush()
            sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException as e:
        if size > 1 and "mpi4py.MPI" in sys.modules and not isinstance(e, SystemExit | KeyboardInterrupt):
            traceback.print_exc()
            sys.stderr.flush()
            sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(1)
        raise


if __name__ == "__main__":
    _cli()
