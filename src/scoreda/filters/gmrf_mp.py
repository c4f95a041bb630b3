"""The 3D-Var posterior mean by re-weighted Gaussian message passing (``filter=gmrf_mp``; seed 000).

The normal equations of ``filters.var3d``, Γ δ = h with Γ = Q + diag(c) (Q the Matérn GMRF
precision, c the observation precision per point) and h the right-hand side, are the minimum of
½ δᵀΓδ − hᵀδ: a Gaussian Markov random field on the graph of Q's stencil (``MaternPrior.stencil``:
12 neighbours per point for α = 2 on one level, more with coupled levels). Re-weighted min-sum
(Ruozzi & Tatikonda 2013), with the message i → j a quadratic ½ a_ij x_j² − b_ij x_j and the weight
c (``reweight``; c = 1 is plain Gaussian belief propagation):

    A_ij = Γ_ii + c Σ_{k∈N(i)} a_ki − a_ji,   B_ij = h_i + c Σ_{k∈N(i)} b_ki − b_ji,
    a_ij ← −(Γ_ij / c)² / A_ij,   b_ij ← −(Γ_ij / c) B_ij / A_ij,

all messages at once (parallel updates), damped: m ← (1 − ``damping``) m + ``damping`` m_new. The
beliefs give δ_i = (h_i + c Σ_k b_ki) / (Γ_ii + c Σ_k a_ki); at a fixed point δ solves Γδ = h exactly.
Every message on every edge is one array per stencil offset over the whole grid ([E, M, C, H, W]):
a step is a few elementwise passes and a shift per offset, no loop over points. The a's do not
depend on h, so they are shared by the members when c is (a linear h).

Multigrid (``levels``), as seed 000: the same posterior on the grid coarsened by 2^(levels−1), then
by 2^(levels−2), ..., each level started from the messages of the coarser one repeated 2×2, with
the observations at the coarse points (c and h taken at every 2^k-th point).

Across MPI ranks (``filter.ranks=R``, ``shard=state``): tiles of grid rows, one per rank (cut at
the coarsest level, so each level's tile is twice the coarser one's). A rank holds the messages
into its own points; each step it sends the new messages that cross its tile's edges (those of
offsets dy > 0 from its last dy rows to the rank below, dy < 0 from its first rows to the rank
above; mpi4py Sendrecv) and receives its neighbours'. The only collective is the convergence test
every ``check_every`` steps: stop when ‖δ − δ_prev‖ ≤ ``tol`` ‖δ‖ over the last ``check_every``
steps (sums all-reduced). The arithmetic per point does not depend on the split, so R ranks give
one rank's δ up to where the test stops.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from scoreda.filters import Capabilities
from scoreda.filters.matern import MaternPrior
from scoreda.filters.sharding import block
from scoreda.filters.var3d import Variational
from scoreda.kernels import KernelUnavailable, library


@dataclass
class GMRFMessagePassing(Variational):
    """``filter=gmrf_mp``: ``Variational``'s keys (the prior, EDA, Gauss–Newton, ``tol``, ``max_iter``
    per level) and those of the message passing (module docstring)."""

    reweight: float = -2.0  # c of Ruozzi & Tatikonda (1: Gaussian belief propagation; −2: seed 000's)
    damping: float = 0.7  # weight of the new messages in each update
    levels: int = 3  # multigrid levels at most (1: the model grid alone; fewer where the grid stops halving)
    check_every: int = 10  # steps between convergence tests (the only collective)
    kernel: str = "fused"  # fused: the compiled step on CPU (torch on other devices); torch
    precision: str = "float64"  # of the messages and the step (float32: half the memory traffic)
    max_iter: int = 2000
    capabilities: ClassVar[Capabilities] = Capabilities(shards=("state",), min_members=1)  # tiles of rows

    def __post_init__(self) -> None:
        if self.reweight == 0:
            raise ValueError("filter.reweight: must not be 0")
        if not 0 < self.damping <= 1:
            raise ValueError(f"filter.damping: must be in (0, 1], got {self.damping}")
        if self.precision not in ("float64", "float32"):
            raise ValueError(f"filter.precision: expected float64 or float32, got {self.precision!r}")
        if self.kernel not in ("fused", "torch"):
            raise ValueError(f"filter.kernel: expected fused or torch, got {self.kernel!r}")
        for key in ("levels", "check_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"filter.{key}: must be ≥ 1, got {getattr(self, key)}")
        super().__post_init__()

    def depth(self, Q: MaternPrior) -> int:
        """The multigrid levels used: up to ``levels``, while the grid halves and still holds the stencil."""
        n = 1
        while n < int(self.levels):
            nxt = Q.coarsened(2**n)
            if (
                any(k > 1 and (k % 2**n or k // 2**n <= 2 * Q.alpha) for k in Q.shape[1:])
                or nxt.shape == Q.shape
            ):
                break
            n += 1
        return n

    def tiles(self, Q: MaternPrior, ranks: int) -> list[slice]:
        """Each rank's rows of the coarsest grid (``block``): ``ranks`` tiles of ≥ α rows each."""
        rows = Q.coarsened(2 ** (self.depth(Q) - 1)).shape[1]
        if ranks * Q.alpha > rows:
            raise ValueError(
                f"filter.ranks: {ranks} ranks for {rows} rows of the coarsest grid"
                f" ({self.depth(Q)} multigrid levels); each rank needs ≥ {Q.alpha} rows"
            )
        return [block(rows, ranks, r) for r in range(ranks)]

    def solve(self, Q: MaternPrior, curv: torch.Tensor, rhs: torch.Tensor, comm=None):
        """δ [M, C, H, W] with (Q + diag(curv)) δ = rhs on every rank, and {"iterations", "residual"}."""
        R, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        C, H, W = Q.shape
        transpose = H == 1 < W  # a grid of one row: its x axis is cut into tiles
        if transpose:
            Q = replace(Q, shape=(C, W, H), spacing=Q.spacing[::-1])
            curv, rhs, W = curv.mT, rhs.mT, H
        tile = self.tiles(Q, R)[rank]
        messages, total, change = None, 0, 0.0
        depth = self.depth(Q)
        for k in reversed(range(depth)):  # coarsest first
            f, scale = 2**k, 2 ** (depth - 1 - k)
            rows = slice(tile.start * scale, tile.stop * scale)
            sub = (..., slice(None, None, f), slice(None, None, f))
            if messages is not None:  # the coarser level's messages, repeated 2×2
                messages = tuple(
                    m.repeat_interleave(2, -2).repeat_interleave(1 + (W > 1), -1) for m in messages
                )
            graph = Stencil(Q.coarsened(f), rows.stop - rows.start)
            delta, messages, n, change = self.iterate(
                graph, curv[sub][..., rows, :], rhs[sub][..., rows, :], messages, comm
            )
            total += n
        if comm is not None and R > 1:  # the whole δ on every rank (zeros elsewhere: exact sums)
            full = delta.new_zeros(*delta.shape[:-2], rhs.shape[-2], delta.shape[-1])
            full[..., rows, :] = delta
            delta = comm.allreduce(full)
        return (delta.mT if transpose else delta), {"iterations": total, "residual": change}

    def iterate(self, graph: Stencil, curv: torch.Tensor, h: torch.Tensor, messages, comm):
        """Damped parallel re-weighted min-sum on one tile (rows of one level) until the relative change
        of δ over ``check_every`` steps is ≤ ``tol`` (or ``max_iter``): δ [M, C, T, W], the messages
        (a, b), the steps and the last change. Messages that stop being finite are an error."""
        c, lam = float(self.reweight), float(self.damping)
        gamma = graph.diagonal.to(h)[:, None, None] + curv  # [M', C, T, W]
        E = len(graph.offsets)
        if messages is None:  # [M' or M, E, C, T, W]: the messages into each point, per offset
            a = gamma.new_zeros(gamma.shape[0], E, *gamma.shape[1:])
            b = h.new_zeros(h.shape[0], E, *h.shape[1:])
        else:
            a, b = messages
        fused = self.kernel == "fused" and h.device.type == "cpu"
        dtype = getattr(torch, self.precision)
        gamma, h = gamma.to(dtype).contiguous(), h.to(dtype).contiguous()
        if fused:
            try:
                library("gmrf_mp")
            except KernelUnavailable as e:
                raise ValueError(f"filter.kernel: {e} (set filter.kernel=torch)") from None
        a, b = (a.to(h), b.to(h))
        spare = None

        def mean(a, b):
            return (h + c * b.sum(1)) / (gamma + c * a.sum(1))

        delta = mean(a, b)
        last = delta
        step, change = 0, float("inf")
        for step in range(1, int(self.max_iter) + 1):
            if fused:
                spare = graph.step_fused(a, b, gamma, h, c, lam, comm, spare)
                (a, b), spare = spare, (a, b)
            else:
                a, b = graph.step_torch(a, b, gamma, h, c, lam, comm)
            if step % int(self.check_every) == 0 or step == int(self.max_iter):
                delta = mean(a, b)
                sums = torch.stack(
                    [((delta - last) ** 2).sum(dtype=torch.float64), (delta**2).sum(dtype=torch.float64)]
                )
                if comm is not None and comm.size > 1:
                    sums = comm.allreduce(sums)
                change = float((sums[0] / sums[1].clamp_min(1e-300)).sqrt())
                last = delta
                if not change < float("inf"):
                    raise FloatingPointError(
                        f"filter=gmrf_mp: the messages diverged after {step} steps"
                        f" (try filter.reweight=-2 or a smaller filter.damping)"
                    )
                if change <= float(self.tol):
                    break
        return mean(a, b), (a, b), step, change


class Stencil:
    """Q's graph on one level's tile of T rows for message passing: the offsets (dl, dy, dx) of the
    edges, their weights Γ_ij [E, C] (at the sender's level), Q's diagonal [C], the index of each
    offset's reverse, and the delivery of messages from their senders to their receivers
    (``deliver``: one gather through indices built here)."""

    def __init__(self, Q: MaternPrior, rows: int) -> None:
        offsets, coef = Q.stencil()
        C, _, W = Q.shape
        T = rows
        self.diagonal, self.offsets, self.weights = coef[0], offsets[1:], coef[1:]
        index = {o: e for e, o in enumerate(self.offsets)}
        self.reverse = [index[((-dl) % C, -dy, -dx)] for dl, dy, dx in self.offsets]
        E = len(self.offsets)
        flat = torch.arange(E * C * T * W).view(E, C, T, W)
        down = [e for e, o in enumerate(self.offsets) if o[1] > 0]  # into the tile below
        up = [e for e, o in enumerate(self.offsets) if o[1] < 0]
        # what leaves: offset e's last dy rows (down) or first −dy rows (up), in the order (e, l, k, x)
        self.to_below = torch.cat([flat[e, :, T - self.offsets[e][1] :].flatten() for e in down])
        self.to_above = torch.cat([flat[e, :, : -self.offsets[e][1]].flatten() for e in up])
        start_above = E * C * T  # the buffers follow the tile's own messages (rows of W)
        start_below = start_above + len(self.to_below) // W
        first = {}
        for e in down:
            first[e], start_above = start_above, start_above + C * self.offsets[e][1]
        for e in up:
            first[e], start_below = start_below, start_below + C * -self.offsets[e][1]
        gather = torch.empty(E, C, T, W, dtype=torch.long)
        y = torch.arange(T)
        levels = torch.arange(C)
        for e, (dl, dy, dx) in enumerate(self.offsets):
            src_l = (levels - dl) % C  # the sender's level of each receiver level
            sy = y - dy  # the sender's row in this tile (< 0: above, ≥ T: below)
            row = torch.where(
                sy < 0,
                first.get(e, 0) + src_l[:, None] * max(dy, 1) + (sy + dy)[None],  # k = y (from above)
                torch.where(
                    sy >= T,
                    first.get(e, 0) + src_l[:, None] * max(-dy, 1) + (sy - T)[None],  # k = sy − T
                    (e * C + src_l[:, None]) * T + sy.clamp(0, T - 1)[None],
                ),
            )  # [C, T]: the source row (of W values)
            cols = (torch.arange(W) - dx) % W
            gather[e] = row[..., None] * W + cols
        self.gather = gather.flatten()
        # for the kernel: where each offset starts in a member's send buffers, and where what arrives
        # from above (offsets dy > 0, rows k < dy) and below (dy < 0, rows T + dy + k) is received
        self.n_down, self.n_up = len(self.to_below), len(self.to_above)
        self.first_down = torch.full((E,), -1, dtype=torch.long)
        self.first_up = torch.full((E,), -1, dtype=torch.long)
        recv, at = [], {"down": 0, "up": 0}
        for side, group in (("down", down), ("up", up)):
            for e in group:
                dl, dy, dx = self.offsets[e]
                (self.first_down if side == "down" else self.first_up)[e] = at[side]
                k = torch.arange(abs(dy))
                rows = k if dy > 0 else T + dy + k
                lr = (levels + dl) % C
                cols = (torch.arange(W) + dx) % W
                recv.append(((e * C + lr[:, None, None]) * T + rows[None, :, None]) * W + cols[None, None, :])
                at[side] += C * abs(dy) * W
        self.recv = torch.cat([r.flatten() for r in recv])
        self.table = torch.tensor(self.offsets, dtype=torch.long).flatten()
        self.rev = torch.tensor(self.reverse, dtype=torch.long)

    def exchange(self, to_below: torch.Tensor, to_above: torch.Tensor, comm=None):
        """(from_above, from_below): what the tiles above and below send (this tile's own on one rank)."""
        if comm is None or comm.size == 1:
            return to_below, to_above
        above, below = (comm.rank - 1) % comm.size, (comm.rank + 1) % comm.size
        return (
            comm.sendrecv(to_below, dest=below, source=above, tag=1),
            comm.sendrecv(to_above, dest=above, source=below, tag=2),
        )

    def deliver(self, out: torch.Tensor, comm=None) -> torch.Tensor:
        """Messages [M, E, C, T, W] at their senders → at their receivers: the message of offset
        (dl, dy, dx) from (l, y, x) arrives at ((l + dl) mod C, y + dy, (x + dx) mod W). Those that leave
        the tile's rows go to the neighbouring tile (periodic: the tile itself on one rank)."""
        flat = out.reshape(out.shape[0], -1)
        from_above, from_below = self.exchange(flat[:, self.to_below], flat[:, self.to_above], comm)
        return torch.cat([flat, from_above, from_below], 1)[:, self.gather].view_as(out)

    def step_torch(self, a, b, gamma, h, c: float, lam: float, comm=None):
        """One damped parallel step (module docstring) in torch: the new (a, b), [M, E, C, T, W]."""
        g = (self.weights / c).to(h)[None, :, :, None, None]  # [1, E, C, 1, 1]: Γ_ij / c at the sender
        inv = 1.0 / ((gamma + c * a.sum(1))[:, None] - a[:, self.reverse])
        a_out = -(g * g) * inv
        b_out = (-g * ((h + c * b.sum(1))[:, None] - b[:, self.reverse])) * inv
        return (1 - lam) * a + lam * self.deliver(a_out, comm), (1 - lam) * b + lam * self.deliver(
            b_out, comm
        )

    def step_fused(self, a, b, gamma, h, c: float, lam: float, comm=None, out=None):
        """``step_torch`` through the compiled kernel (``kernels/gmrf_mp.c``; CPU): the new
        (a, b), written into ``out`` when given (buffers of a's and b's shapes)."""
        a_new, b_new = out if out is not None else (torch.empty_like(a), torch.empty_like(b))
        Ma, Mb = a.shape[0], b.shape[0]
        bufs = [a.new_empty(Ma, self.n_down), a.new_empty(Ma, self.n_up)]
        bufs += [b.new_empty(Mb, self.n_down), b.new_empty(Mb, self.n_up)]
        g = (self.weights / c).to(a.dtype).contiguous()
        kernel_step(self, g, c, lam, gamma, h, a, b, a_new, b_new, *bufs)
        for new, old, down, up in ((a_new, a, *bufs[:2]), (b_new, b, *bufs[2:])):
            arriving = torch.cat(self.exchange(down, up, comm), 1)  # into this tile's edge rows
            flat_new, flat_old = new.view(new.shape[0], -1), old.view(old.shape[0], -1)
            flat_new[:, self.recv] = (1 - lam) * flat_old[:, self.recv] + lam * arriving
        return a_new, b_new


def kernel_step(graph, g, c, lam, gamma, h, a, b, a_new, b_new, a_down, a_up, b_down, b_up) -> None:
    """One step of ``kernels/gmrf_mp.c`` (``filters.gmrf_mp.Stencil.step_fused``): contiguous CPU tensors
    of one dtype (float64 or float32); ``graph`` the ``Stencil`` (offsets, reverse, send buffers)."""
    suffix = {torch.float64: "f64", torch.float32: "f32"}[a.dtype]
    fn = getattr(library("gmrf_mp"), f"gmrf_mp_step_{suffix}")  # KernelUnavailable: see ``iterate``
    if fn.argtypes is None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        fn.restype = ctypes.c_int
        fn.argtypes = [i64] * 6 + [ptr] * 4 + [i64, i64, ptr, ctypes.c_double, ctypes.c_double] + [ptr] * 10
    tensors = (gamma, h, a, b, a_new, b_new, a_down, a_up, b_down, b_up)
    if not all(t.dtype == a.dtype and t.is_contiguous() and t.device.type == "cpu" for t in tensors + (g,)):
        raise ValueError("gmrf_mp_step: contiguous CPU tensors of one dtype expected")
    E, C, T, W = a.shape[1:]
    tables = (graph.table, graph.rev, graph.first_down, graph.first_up)
    status = fn(
        b.shape[0], a.shape[0], E, C, T, W,
        *(t.data_ptr() for t in tables), graph.n_down, graph.n_up,
        g.data_ptr(), c, lam, *(t.data_ptr() for t in tensors),
    )  # fmt: skip
    if status:
        raise MemoryError("gmrf_mp_step: no memory for the kernel's row buffers")


REGISTER = {"gmrf_mp": GMRFMessagePassing}
