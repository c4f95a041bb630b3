"""The EnSF's reverse-SDE integrator: Euler–Maruyama in standardised coordinates z, the likelihood
term linearly implicit,

    Δz = Δt (σ² s(z) − b z) + √Δt σ ξ,   z ← z + (1 + Δt σ² h C)⁻¹ Δz,

s = s_prior + h S ∇ₓ log p(y|x), C the Gauss–Newton curvature of −log p in z (``standardise``).

Python loops run over pseudo-time and over column blocks of ``chunk_elements`` values (m × c, 512 KiB
of float32 on CPU), never over members or grid points: a block's temporaries stay in cache, where
whole-array ones ([M, d], 80–160 MB at d = 10⁶) cost memory traffic for every one of the ~40
elementwise operations of a step (scripts/bench_filters.py). Each expression is evaluated on a
block exactly as on the whole array, so blocking does not change a bit of ``paired``. ``paired``:
columns evolve independently, so a block runs all steps before the next; ``mixture``: every step
sweeps the blocks once, summing the next step's z·x̃ᵀ as it goes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from scoreda.filters.ensf import fused, prior_score
from scoreda.filters.ensf.schedule import Step
from scoreda.filters.ensf.standardise import PointBlock, SpectralBlock, Work
from scoreda.seeding import CounterNormal

if TYPE_CHECKING:
    from scoreda.filters.ensf import EnSF

Block = PointBlock | SpectralBlock


def integrate(
    f: EnSF,
    local: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    y: torch.Tensor,
    operator,
    key: int,
    rows: slice,
    cols: slice,
    allreduce: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """Reverse SDE of filter ``f`` for samples ``rows`` on state indices ``cols``; returns the
    analysis x̄ + S z [m, d'] at t = ε.

    local [M, d'] the (inflated) forecast members on ``cols``, mean/std [1, d'], ``operator`` and y
    restricted to ``cols``; noise ξ(step, global member, global state index) from ``CounterNormal``
    with seed ``key``. ``mixture``: step k needs G = z·x̃ᵀ [m, M] over all columns (float64; summed
    over the blocks, then over the ranks with ``allreduce``) for the weights w [m, M].
    """
    m, n = rows.stop - rows.start, local.shape[1]
    if f.kernel == "fused":
        return integrate_fused(f, local, mean, std, y, operator, key, rows, cols, allreduce)
    spectral = f.standardise == "spectral"
    if spectral and f.grid is None:
        raise ValueError("filter.standardise=spectral: no grid (EnSF.from_config(filter, grid) sets it)")
    blocks = [slice(0, n)] if spectral else column_blocks(m, n, local.device, operator, f.chunk_elements)
    width = max(s.stop - s.start for s in blocks)
    noise = CounterNormal(key, rows, cols, device=local.device, max_cols=width)
    steps = f.schedule.steps()
    out = torch.empty(m, n, dtype=local.dtype, device=local.device)
    if f.prior_score == "paired":
        for sl in blocks:
            if spectral:
                blk = SpectralBlock.make(local, mean, std, y, operator, f.grid, rows)
            else:
                blk = PointBlock.make(local, mean, std, y, operator, sl, rows, standardised=False)
            z = draw(noise, 0, sl, local.dtype).clone()
            work = Work(z)
            for st in steps:
                score = prior_score.paired(st, blk.x, z, out=work.score)
                advance(st, z, score, blk, noise, work, f.implicit)
            blk.to_state(z, out=out[:, sl])
        return out
    if spectral:
        parts = [SpectralBlock.make(local, mean, std, y, operator, f.grid, slice(None), torch.float64)]
        x = parts[0].x
    else:
        x = ((local - mean) / std).to(torch.float64)  # [M, d'] standardised members
        parts = [
            PointBlock.make(x, mean, std, y, operator, sl, slice(None), standardised=True) for sl in blocks
        ]
    x_sq = (x * x).sum(1)  # ‖x̃_j‖² [M]
    if allreduce is not None:
        x_sq = allreduce(x_sq)
    del x
    zs = [draw(noise, 0, sl, local.dtype).clone() for sl in blocks]
    works = {z.shape: Work(z) for z in zs}  # at most two widths
    g = None  # G = z·x̃ᵀ = Σ_blocks z_b·x̃_bᵀ for step 0; later summed in the sweep of the step before
    for blk, z in zip(parts, zs, strict=True):
        g_b = z.to(torch.float64) @ blk.x.T
        g = g_b if g is None else g.add_(g_b)
    for i, st in enumerate(steps):
        if allreduce is not None:
            g = allreduce(g)
        w = prior_score.mixture_weights(st, g, x_sq)  # [m, M]
        g = None
        for blk, z in zip(parts, zs, strict=True):
            score = prior_score.mixture(st, w, blk.x, z)
            advance(st, z, score, blk, noise, works[z.shape], f.implicit)
            if i + 1 < len(steps):
                g_b = z.to(torch.float64) @ blk.x.T
                g = g_b if g is None else g.add_(g_b)
    for blk, z in zip(parts, zs, strict=True):
        blk.to_state(z, out=out[:, blk.cols])
    return out


def integrate_fused(f: EnSF, local, mean, std, y, operator, key, rows, cols, allreduce) -> torch.Tensor:
    """``integrate`` through the fused step (``filter.kernel=fused``, ``fused``): the compiled
    kernel on CPU, ``fused.run_torch`` elsewhere (``torch.compile``d on CUDA). ``paired``: one call
    for all steps; ``mixture``: one per step, the weights from G = z·x̃ᵀ as above (on CPU the kernel
    returns the next G). Arguments and result as ``integrate``."""
    why = fused.unsupported(local, f.standardise)
    lik = fused.diagonal_likelihood(operator, y, mean)
    if why is None and lik is None:
        why = "its likelihood score must be v − w x per index (a linear point observation)"
    if why is not None:
        raise ValueError(f"filter.kernel=fused: {why}; use filter.kernel=torch")
    cpu = local.device.type == "cpu"
    run = fused.run if cpu else functools.partial(fused.run_torch, compiled=local.device.type == "cuda")
    steps = f.schedule.steps()
    table, first = fused.step_table(steps), (rows.start, cols.start or 0)
    if f.prior_score == "paired":
        x = ((local[rows] - mean) / std).contiguous()
        z = torch.empty_like(x)
        run(z, x, mean, std, lik, key, first, (0, len(steps) + 1), table, f.implicit)
        return z.mul_(std).add_(mean)
    x = ((local - mean) / std).contiguous()  # [M, d'] standardised members (float32)
    x64 = x.to(torch.float64)
    x_sq = x64.square().sum(1)
    if allreduce is not None:
        x_sq = allreduce(x_sq)
    z = torch.empty(rows.stop - rows.start, local.shape[1], dtype=local.dtype, device=local.device)
    run(z, z, mean, std, lik, key, first, (0, 1), table, False)  # z = ξ₀
    g = z.to(torch.float64) @ x64.T
    if cpu:
        del x64
    for i, st in enumerate(steps):
        if allreduce is not None:
            g = allreduce(g)
        wts = prior_score.mixture_weights(st, g, x_sq)  # [m, M]
        more = i + 1 < len(steps)
        if cpu:
            g = fused.mixture_step(z, x, wts, mean, std, lik, key, first, i + 1, table, f.implicit, more)
        else:
            run(z, (wts @ x64).to(z.dtype), mean, std, lik, key, first, (i + 1, i + 2), table, f.implicit)
            g = z.to(torch.float64) @ x64.T if more else None
    return z.mul_(std).add_(mean)


def advance(
    st: Step,
    z: torch.Tensor,
    score: torch.Tensor,
    blk: Block,
    noise: CounterNormal,
    work: Work,
    implicit: bool,
) -> None:
    """One Euler–Maruyama step on a block, in place on z [m, c]; ``score`` [m, c] holds the prior
    score on entry and is overwritten. s = score + h S ∇ₓlog p(y|x) at x = x̄ + S z, then

        Δz = Δt (σ² s − b z) + √Δt σ ξ,   z ← z + (1 + Δt σ² h C)⁻¹ Δz   (``implicit``; else z + Δz).
    """
    xz = blk.to_state(z, out=work.xz)
    if st.h > 0:
        if blk.direct:  # every index observed, h = identity: ∇log p = (y − x)/σo²
            lik = torch.sub(blk.y, xz, out=work.lik).div_(blk.op.sigma**2)
        else:
            lik = blk.op.likelihood_score(xz, blk.y)
        score.add_(blk.pull(lik, st.h))
    score.mul_(st.g2).sub_(torch.mul(z, st.b, out=work.bz)).mul_(st.dt)  # Δt (σ² s − b z)
    score.add_(draw(noise, st.k + 1, blk.cols, z.dtype).mul_(st.sq))  # + √Δt σ ξ
    if implicit and st.h > 0:
        blk.implicit(score, st.dt * st.g2 * st.h, xz, work)
    z.add_(score)


def column_blocks(m: int, n: int, device: torch.device, operator, chunk_elements: int) -> list[slice]:
    """Contiguous blocks of the n local state indices, m·width ≤ ``chunk_elements`` (CPU; one block
    on other devices, where whole arrays are what is fast, and for an operator that cannot be
    restricted to a block). Widths ≥ 64 are multiples of 64."""
    whole = device.type != "cpu" or not hasattr(operator, "restrict")
    if whole or m * n <= chunk_elements:
        return [slice(0, n)]
    width = max(1, chunk_elements // m)
    width -= width % 64 if width >= 64 else 0
    return [slice(s, min(s + width, n)) for s in range(0, n, width)]


def draw(noise: CounterNormal, step: int, sl: slice, dtype: torch.dtype) -> torch.Tensor:
    """ξ of ``step`` on the columns ``sl`` [m, c], in ``dtype``."""
    xi = noise.draw(step, sl.start, sl.stop)
    return xi if dtype == xi.dtype else xi.to(dtype)
