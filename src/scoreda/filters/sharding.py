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

    def sendrecv(self, t: torch.Tensor, dest: int, source: int, tag: int = 0) -> torch.Tensor:
        """Point to point: send ``t`` to rank ``dest``, return the tensor of ``t``'s shape that rank
        ``source`` sent with the same tag."""
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


def global_std(x: torch.Tensor, allreduce=None) -> float:
    """The std (ddof = 1) of all the values of ``x``, or of the union of the ranks' ``x`` with
    ``allreduce`` (the sums n, Σx, Σx² in float64; ``Collective.allreduce``)."""
    flat, step = x.reshape(-1), 1 << 20  # in blocks: no float64 copy of the whole
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    sums[0] = flat.numel()
    for i in range(0, flat.numel(), step):
        block64 = flat[i : i + step].double()
        sums[1:] += torch.stack([block64.sum(), block64.square().sum()])
    n, s1, s2 = (sums if allreduce is None else allreduce(sums)).tolist()
    return max(0.0, (s2 - s1 * s1 / n) / max(n - 1, 1)) ** 0.5
