"""Splitting an analysis over MPI ranks: the communicator a filter needs and the blocks it owns."""

from __future__ import annotations

from typing import Protocol

import torch

SHARDS = ("members", "state")


class Collective(Protocol):
    """What a sharded analysis needs from its communicator (the mpi4py one: ``scoreda.stages.analysis``)."""

    rank: int
    size: int

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``t`` over the ranks, returned on every rank."""
        ...

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor | None:
        """The ranks' ``t`` concatenated along ``dim`` in rank order on rank 0 (CPU); None elsewhere."""
        ...


def block(n: int, parts: int, k: int) -> slice:
    """Block ``k`` of ``range(n)`` cut into ``parts`` contiguous blocks (the first n mod parts one longer)."""
    q, r = divmod(n, parts)
    start = k * q + min(k, r)
    return slice(start, start + q + (k < r))


def check_sharding(shard: str, members: int, d: int, ranks: int) -> None:
    """Every rank must own at least one member (``members``) or one state index (``state``)."""
    if shard not in SHARDS:
        raise ValueError(f"filter.shard: expected members or state, got {shard!r}")
    if shard == "members" and members < ranks:
        raise ValueError(
            f"filter.ranks: {ranks} ranks for {members} members with filter.shard=members:"
            " each rank needs at least one member (use fewer ranks or filter.shard=state)"
        )
    if shard == "state" and d < ranks:
        raise ValueError(
            f"filter.ranks: {ranks} ranks for a state of {d} values with filter.shard=state:"
            " each rank needs at least one state index"
        )
