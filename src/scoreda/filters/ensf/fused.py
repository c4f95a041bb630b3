"""``filter.kernel=fused``: the EnSF's integration through the compiled kernel
``scoreda/kernels/ensf_fused.c`` (CPU) — noise and every pseudo-time step of a cache block in one
pass, the step written as the affine map z ← z + P + Q z + A x̃ + S ξ (see the kernel's header).

It takes point standardisation, float32 and an observation operator whose likelihood score is
diagonal and affine in x, ∇ₓ log p(y|x) = v − w ⊙ x (every linear ``PointObservation``; checked on a
probe, ``diagonal_likelihood``). Its noise is the counter noise of ``scoreda.seeding`` with both
halves of Box–Muller used (``scoreda.seeding.counter_normal(pairs=True)``), so its numbers differ
from ``kernel=torch`` in the draws, not in distribution."""

from __future__ import annotations

import ctypes
import functools
import math

import torch

from scoreda.filters.ensf.schedule import Step
from scoreda.kernels import KernelUnavailable, library
from scoreda.seeding import col_terms, mix64_pure, row_seeds

_I64, _F32P, _F64P = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_double)


def _kernel(name: str = "scoreda_ensf_steps"):
    fn = getattr(library("ensf_fused"), name)
    if fn.argtypes is None:
        fn.restype = ctypes.c_int
        if name == "scoreda_ensf_steps":
            fn.argtypes = [_I64, _I64, _I64, _I64, _F32P, _I64, _F32P, _I64, _F32P, _F32P, _F32P, _F32P,
                           ctypes.c_uint64, _I64, _I64, _F64P, ctypes.c_int, ctypes.c_int]  # fmt: skip
        else:
            fn.argtypes = [_I64, _I64, _I64, _I64, _I64, _F32P, _I64, _F32P, _I64, _F64P, _F32P, _F32P,
                           _F32P, _F32P, ctypes.c_uint64, _I64, _F64P, ctypes.c_int, _F64P,
                           ctypes.c_int]  # fmt: skip
    return fn


def unsupported(local: torch.Tensor, standardise: str) -> str | None:
    """Why the fused integration cannot run this analysis (None: it can). Off CPU it is ``run_torch``
    (no compiled kernel needed)."""
    if local.dtype != torch.float32:
        return f"it runs in float32 (the state is {local.dtype})"
    if standardise != "point":
        return "it takes standardise=point"
    if local.device.type != "cpu":
        return None
    try:
        _kernel()
    except KernelUnavailable as e:
        return str(e)
    return None


def diagonal_likelihood(operator, y: torch.Tensor, probe: torch.Tensor):
    """(v, w) [c] with ∇ₓ log p(y|x) = v − w ⊙ x for this operator on a block of c indices, or None
    when it is not of that form (checked at ``probe`` [1, c] and at 0). (None, None) without
    observations."""
    if not operator.linear:
        return None
    if getattr(operator, "n_obs", 1) == 0:
        return None, None
    zero = torch.zeros_like(probe)
    v = operator.likelihood_score(zero, y)[0].contiguous()
    w = operator.curvature(probe).reshape(-1).to(probe.dtype).contiguous()
    got, want = operator.likelihood_score(probe, y)[0], v - w * probe[0]
    scale = float(got.abs().max()) + float(v.abs().max()) + 1e-30
    return (v, w) if float((got - want).abs().max()) <= 1e-5 * scale else None


def step_table(steps: list[Step]) -> torch.Tensor:
    """Per step [α, 1/β², b, σ², Δt, h, √Δt σ], float64 [n, 7] (the kernel's ``table``)."""
    rows = [[s.a, 1.0 / s.b2, s.b, s.g2, s.dt, s.h, s.sq] for s in steps]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 7)


def _ptr(t: torch.Tensor | None, kind=_F32P):
    return None if t is None else ctypes.cast(t.data_ptr(), kind)


def _columns(c: int, mean, std, lik) -> list[torch.Tensor | None]:
    """mean, std, v, w as the kernel reads them: flat contiguous float32 [c] (v, w may be None);
    anything else is refused, since the kernel reads c values through each pointer."""
    out = [None if t is None else t.reshape(-1).contiguous() for t in (mean, std, *lik)]
    for t in out:
        if t is not None and (t.dtype != torch.float32 or t.numel() != c or t.device.type != "cpu"):
            raise ValueError(f"fused EnSF kernel: per-index arrays must be float32 [{c}] on CPU")
    return out


def run(
    z: torch.Tensor,
    xt: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    lik: tuple[torch.Tensor | None, torch.Tensor | None],
    key: int,
    first: tuple[int, int],
    s_range: tuple[int, int],
    table: torch.Tensor,
    implicit: bool,
) -> None:
    """Noise steps s_range = (s0, s1) on z [m, c] in place (s = 0: z = ξ₀; s ≥ 1: step s − 1 of
    ``table`` with prior term xt [m, c]); ``first`` = (global sample, global index) of z[0, 0].
    mean/std [1, c] or [c]; ``lik`` = (v, w) [c] or (None, None). Rows of z and xt may be strided."""
    m, c = z.shape
    for t in (z, xt):
        if t.dtype != torch.float32 or t.stride(1) != 1 or t.shape != (m, c):
            raise ValueError("fused EnSF kernel: z and x̃ must be float32 [m, c] with contiguous rows")
    mean, std, v, w = _columns(c, mean, std, lik)
    rc = _kernel()(
        m, c, first[0], first[1], _ptr(z), z.stride(0), _ptr(xt), xt.stride(0), _ptr(mean), _ptr(std),
        _ptr(v), _ptr(w), key & ((1 << 64) - 1), s_range[0], s_range[1], _ptr(table, _F64P),
        int(implicit), torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("fused EnSF kernel: no memory for its scratch rows")


def mixture_step(
    z: torch.Tensor,
    x: torch.Tensor,
    wts: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    lik: tuple[torch.Tensor | None, torch.Tensor | None],
    key: int,
    first: tuple[int, int],
    s: int,
    table: torch.Tensor,
    implicit: bool,
    want_g: bool,
) -> torch.Tensor | None:
    """Noise step s ≥ 1 of the mixture score on z [m, c] in place: prior term wts @ x (wts [m, M],
    x̃ [M, c] float32); returns the next G = z·x̃ᵀ [m, M] (float64) if ``want_g``."""
    m, c = z.shape
    if z.dtype != torch.float32 or not z.is_contiguous() or x.dtype != torch.float32 or x.stride(1) != 1:
        raise ValueError("fused EnSF kernel: z and x̃ float32 with contiguous rows")
    if x.shape[1] != c or wts.shape != (m, x.shape[0]):
        raise ValueError("fused EnSF kernel: x̃ [M, c] and the weights [m, M] must match z [m, c]")
    wts = wts.to(torch.float64).contiguous()
    g = torch.empty(m, x.shape[0], dtype=torch.float64) if want_g else None
    mean, std, v, w = _columns(c, mean, std, lik)
    rc = _kernel("scoreda_ensf_mixture_step")(
        m, x.shape[0], c, first[0], first[1], _ptr(z), z.stride(0), _ptr(x), x.stride(0),
        _ptr(wts, _F64P), _ptr(mean), _ptr(std), _ptr(v), _ptr(w), key & ((1 << 64) - 1), s,
        _ptr(table, _F64P), int(implicit), _ptr(g, _F64P), torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("fused EnSF kernel: no memory for its partial sums")
    return g


# ------------------------------------------------------------------------------------------------
# The same integration in torch ops, for devices without the C kernel (CUDA: each step one
# ``torch.compile``d function, which inductor fuses into one kernel) and as its reference in tests.


def pair_noise(b: torch.Tensor, cols: torch.Tensor, odd: bool) -> torch.Tensor:
    """ξ [m, c] of the kernel from the row seeds b [m] and column terms (j+1)γ [c] (int64): ρ cos 2πu₂
    (even s) or ρ sin 2πu₂ (odd s); ``seeding.counter_normal(pairs=True)`` without its buffers."""
    h = mix64_pure(b[:, None] + cols[None, :])
    r = (((h >> 40) & 0xFFFFFF) + 1).to(torch.float32).mul(2.0**-24).log().mul(-2.0).sqrt()
    phase = ((h >> 16) & 0xFFFFFF).to(torch.float32).mul(2.0 * math.pi * 2.0**-24)
    return r * (phase.sin() if odd else phase.cos())


def step_torch(z, xt, mean, std, v, w, t, b, cols, odd: bool, implicit: bool) -> torch.Tensor:
    """One step z + P + Q z + A x̃ + S ξ with the kernel's coefficients (its operation order, float32);
    t the step's row of ``step_table`` (a tensor: no recompilation per step); v = None: no likelihood."""
    a, ib2, bb, g2, dt, hh, sq = (t[i].to(torch.float32) for i in range(7))
    dg, hs = dt * g2, hh * std
    if v is None:
        v, w = torch.zeros_like(std), torch.zeros_like(std)
    on = (hh > 0).to(torch.float32)  # h = 0: no likelihood term
    v, w = v * on, w * on
    den = 1.0 / (1.0 + dg * hh * w * std * std) if implicit else torch.ones_like(std)
    p = dg * hs * (v - w * mean) * den
    q = (-dg * ib2 - dg * hs * w * std - dt * bb) * den
    return z + (p + q * z + (dg * a * ib2 * den) * xt + (sq * den) * pair_noise(b, cols, odd))


def run_torch(z, xt, mean, std, lik, key, first, s_range, table, implicit, compiled=False) -> torch.Tensor:
    """``run`` in torch ops on z's device; returns z. ``compiled``: each step through ``torch.compile``."""
    m, c = z.shape
    rows, cols = range(first[0], first[0] + m), col_terms(range(first[1], first[1] + c), z.device)
    mean, std = mean.reshape(-1), std.reshape(-1)
    v, w = lik
    table = table.to(z.device)
    fn = _compiled_step() if compiled else step_torch
    for s in range(*s_range):
        b = row_seeds(key, s // 2, rows, z.device)
        if s == 0:
            z.copy_(pair_noise(b, cols, False))
        else:
            z.copy_(fn(z, xt, mean, std, v, w, table[s - 1], b, cols, s % 2 == 1, implicit))
    return z


@functools.cache
def _compiled_step():
    return torch.compile(step_torch, dynamic=False)
