"""EnSF cases for the multi-rank tests; run under MPI, rank 0 saves every case's analysis.

    mpiexec -n R python tests/ensf_mpi_cases.py OUT.npz          # all CASES on R ranks
    mpiexec -n R python tests/ensf_mpi_cases.py OUT.npz --only gmrf  # those whose name starts so
    mpiexec -n R python tests/ensf_mpi_cases.py --members M --d D  # one analysis (error checks)

``tests/test_ensf_mpi.py`` imports ``CASES`` and ``problem`` to compute the one-rank reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from scoreda.filters.ensf import EnSF
from scoreda.filters.gmrf_mp import GMRFMessagePassing
from scoreda.filters.letkf import LETKF
from scoreda.observations import make_observation_operator

# name: (EnSF settings, problem settings). M = 20 splits unevenly on 3 ranks (7, 7, 6); the state
# (1000 values, or 2×16×16) splits unevenly too; partial observations leave some slices with few.
GRID = LETKF(
    cutoff=6.0, dx=1.0, domain=(16.0, 16.0), rtps=0.0
)  # the localiser of unobserved=regress on 16×16
CASES = {
    "members-paired-linear": (
        dict(shard="members", prior_score="paired", rtps=0.5, inflation=1.1),
        dict(obs={"kind": "subsample", "every": 4, "sigma": 0.5}),
    ),
    "members-mixture-arctan": (
        dict(shard="members", prior_score="mixture"),
        dict(obs={"kind": "identity", "sigma": 0.2, "transform": "arctan"}),
    ),
    "state-paired-arctan": (
        dict(shard="state", prior_score="paired", rtps=0.3),
        dict(obs={"kind": "subsample", "every": 2, "sigma": 0.2, "transform": "arctan"}, shape=(2, 16, 16)),
    ),
    "state-mixture-linear": (
        dict(shard="state", prior_score="mixture", inflation=1.05),
        dict(obs={"kind": "subsample", "every": 4, "sigma": 0.5}),
    ),
    "state-mixture-arctan": (
        dict(shard="state", prior_score="mixture", rtps=1.0),
        dict(
            obs={"kind": "stations", "n_stations": 40, "sigma": 0.2, "transform": "arctan"}, shape=(2, 16, 16)
        ),
    ),
    "state-paired-regress": (  # unobserved=regress needs the whole state: rank 0 after the gather
        dict(
            shard="state", prior_score="paired", adaptive_inflation=True, unobserved="regress", localiser=GRID
        ),
        dict(obs={"kind": "subsample", "every": 4, "sigma": 0.5}, shape=(2, 16, 16)),
    ),
    "members-mixture-regress": (
        dict(
            shard="members",
            prior_score="mixture",
            adaptive_inflation=True,
            unobserved="regress",
            localiser=GRID,
        ),
        dict(
            obs={"kind": "stations", "n_stations": 30, "sigma": 0.2, "transform": "arctan"}, shape=(2, 16, 16)
        ),
    ),
    "members-spectral-arctan": (  # whole members, per-member conjugate gradients: the same bits
        dict(
            shard="members",
            prior_score="paired",
            standardise="spectral",
            grid=(2, 16, 16),
            adaptive_inflation=True,
            cap_spread=True,
        ),
        dict(
            obs={"kind": "stations", "n_stations": 30, "sigma": 0.2, "transform": "arctan"}, shape=(2, 16, 16)
        ),
    ),
    # the compiled kernel (filter.kernel=fused): elementwise, so any split is the same bits (paired);
    # mixture: G summed in another order
    "members-paired-fused": (
        dict(shard="members", prior_score="paired", kernel="fused", rtps=0.5),
        dict(obs={"kind": "subsample", "every": 4, "sigma": 0.5}),
    ),
    "state-paired-fused": (
        dict(shard="state", prior_score="paired", kernel="fused", inflation=1.1),
        dict(obs={"kind": "subsample", "every": 4, "sigma": 0.5}),
    ),
    "members-mixture-fused": (
        dict(shard="members", prior_score="mixture", kernel="fused"),
        dict(obs={"kind": "identity", "sigma": 0.5}),
    ),
    "state-mixture-fused": (
        dict(shard="state", prior_score="mixture", kernel="fused", rtps=0.3),
        dict(obs={"kind": "stations", "n_stations": 40, "sigma": 0.5}, shape=(2, 16, 16)),
    ),
    # the LETKF (and LEnSF) on tiles of grid rows, sums from a halo of the cutoff: the strip's FFT
    # in place of the grid's, so equal to rounding
    "letkf-stations-levels": (
        dict(filter="letkf", rtps=0.3, cross_level=0.5),
        dict(obs={"kind": "stations", "n_stations": 40, "sigma": 0.5}, shape=(2, 16, 16)),
    ),
    "letkf-mda-arctan": (
        dict(filter="letkf", mda=2, adaptive_inflation=True, rtpp=0.2),
        dict(obs={"kind": "subsample", "every": 2, "sigma": 0.2, "transform": "arctan"}, shape=(2, 16, 16)),
    ),
    "letkf-1d": (  # a grid of one row: tiles along x
        dict(filter="letkf", domain=(1.0, 1000.0), cutoff=20.0),
        dict(obs={"kind": "subsample", "every": 4, "sigma": 0.5}),
    ),
    # message passing on tiles of rows, messages across the tile edges by Sendrecv: the same arithmetic
    # per point, so one rank's δ unless the convergence test (all-reduced sums) stops elsewhere. The
    # 36-row grid at levels=2 has 18 coarse rows: uneven on 4 ranks (5, 5, 4, 4)
    "gmrf-stations-levels": (
        dict(filter="gmrf_mp", levels=2, vertical=0.5, sigma_levels=[2.0, 1.0], length_scale=1.5, rtps=0.5),
        dict(obs={"kind": "stations", "n_stations": 80, "sigma": 0.5}, shape=(2, 36, 32), members=4),
    ),
    "gmrf-1d-arctan": (  # a grid of one row: tiles along x; Gauss–Newton with per-member curvature
        dict(filter="gmrf_mp", levels=3, length_scale=1.5, sigma=2.0, outer=2),
        dict(obs={"kind": "subsample", "every": 4, "sigma": 0.2, "transform": "arctan"}, members=3),
    ),
}
N_STEPS = 20


def problem(obs: dict, shape=(1, 1, 1000), members: int = 20, seed: int = 0):
    """A prior ensemble [M, d] with spatially varying mean and spread, observations y of a truth, operator."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    centre = 2.0 * torch.sin(torch.arange(d) * 0.05)
    spread = 0.5 + torch.rand(d, generator=g)
    prior = centre + spread * torch.randn(members, d, generator=g)
    truth = centre + spread * torch.randn(d, generator=g)
    op = make_observation_operator(obs, shape, torch.Generator().manual_seed(seed + 1))
    return prior, op.sample(truth, g), op


def analyse(name: str, comm=None) -> torch.Tensor | None:
    """The analysis of case ``name`` (on the ranks of ``comm``; None on ranks other than 0)."""
    settings, prob = CASES[name]
    prior, y, op = problem(**prob)
    if settings.get("filter") == "letkf":
        keys = {k: v for k, v in settings.items() if k != "filter"}
        filt = dataclasses.replace(GRID, **keys)
        return filt.analyse(prior, y, op, comm=comm).ensemble
    if settings.get("filter") == "gmrf_mp":
        keys = {k: v for k, v in settings.items() if k != "filter"}
        filt = GMRFMessagePassing(shape=prob.get("shape", (1, 1, 1000)), tol=1e-9, **keys)
        return filt.analyse(prior, y, op, torch.Generator().manual_seed(11), comm=comm).ensemble
    return (
        EnSF(n_steps=N_STEPS, **({"adaptive_inflation": False, "unobserved": "none"} | settings))
        .analyse(prior, y, op, torch.Generator().manual_seed(11), comm=comm)
        .ensemble
    )


def _main() -> None:
    from mpi4py import MPI

    from scoreda.stages.analysis import MPICollective

    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--members", type=int)
    ap.add_argument("--d", type=int)
    ap.add_argument("--shard", default="members")
    ap.add_argument("--only", default="", help="the cases whose name starts with this")
    args = ap.parse_args()
    comm = MPICollective(MPI.COMM_WORLD)
    torch.set_num_threads(1)
    if args.members:  # one small analysis, for the sharding checks
        prior, y, op = problem({"kind": "identity", "sigma": 1.0}, (1, 1, args.d), args.members)
        try:
            EnSF(n_steps=2, shard=args.shard, adaptive_inflation=False, unobserved="none").analyse(
                prior, y, op, comm=comm
            )
        except ValueError as e:
            if comm.rank == 0:
                print(e, file=sys.stderr)
            sys.exit(2)
        return
    results = {name: analyse(name, comm) for name in CASES if name.startswith(args.only)}
    if comm.rank == 0:
        np.savez(Path(args.out), **{k: v.numpy() for k, v in results.items()})


if __name__ == "__main__":
    _main()
