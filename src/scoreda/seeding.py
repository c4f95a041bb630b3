"""Randomness seeded from (seed, cycle, stage), so a resumed run draws what an unbroken one draws."""

from __future__ import annotations

import hashlib
import math

import torch


def stream_seed(seed: int, cycle: int, stage: str) -> int:
    """A 63-bit integer determined by (seed, cycle, stage) alone."""
    digest = hashlib.sha256(f"{seed}/{cycle}/{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, cycle: int, stage: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for one stage of one cycle."""
    return torch.Generator().manual_seed(stream_seed(seed, cycle, stage))


# ---------------------------------------------------------------------------------------------------
# Counter-based Gaussian noise: a pure function of (key, step, row, column)
#
# Filters that run on several ranks draw noise per GLOBAL ensemble member (row) and GLOBAL state
# index (column), so that any split of the ensemble over ranks sees the numbers one process sees.
# Element (i, j) of step s is
#
#     k_s  = mix(mix(key) + (s+1) γ),   b_i = mix(k_s + (i+1) γ),   h_ij = mix(b_i + (j+1) γ)   (mod 2⁶⁴)
#     u₁ = (h[40:64] + 1) / 2²⁴ ∈ (0, 1],   u₂ = h[16:40] / 2²⁴ ∈ [0, 1)
#     ξ_ij = √(−2 ln u₁) cos(2π u₂)                                              (Box–Muller)
#
# with ``mix`` the SplitMix64 finaliser and γ = 2⁶⁴/φ. Integer work is on int64 tensors (products
# wrap mod 2⁶⁴; logical right shifts are arithmetic shifts masked to the remaining bits), so it runs
# on any device without a host round trip and gives the same integers on CPU and GPU. Tails are cut
# at |ξ| ≤ √(2 ln 2²⁴) ≈ 5.8 (24-bit uniforms, exact in float32).

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed(v: int) -> int:
    """The int64 with the bits of ``v mod 2⁶⁴``."""
    v &= _MASK64
    return v - (1 << 64) if v >> 63 else v


def mix64_int(v: int) -> int:
    """SplitMix64 finaliser on a Python int (the reference for ``mix64``), result in [0, 2⁶⁴)."""
    v &= _MASK64
    v = ((v ^ (v >> 30)) * _MIX1) & _MASK64
    v = ((v ^ (v >> 27)) * _MIX2) & _MASK64
    return v ^ (v >> 31)


def mix64(z: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """SplitMix64 finaliser elementwise on an int64 tensor (bits as unsigned), in place on ``z``.

    ``scratch``: an int64 buffer shaped like ``z`` to reuse (fresh large buffers cost page faults).
    """
    tmp = torch.empty_like(z) if scratch is None else scratch
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        z ^= tmp.bitwise_and_((1 << (64 - shift)) - 1)  # logical shift: drop the copied sign bits
        if mult is not None:
            z *= _signed(mult)
    return z


def _span(s: slice | range, device) -> torch.Tensor:
    r = range(s.start or 0, s.stop, 1) if isinstance(s, slice) else s
    return torch.arange(r.start, r.stop, dtype=torch.int64, device=device)


def counter_bits(
    key: int,
    step: int,
    rows: slice | range,
    cols: slice | range,
    device: torch.device | str = "cpu",
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """The 64 random bits h_ij (as int64) of ``counter_normal``, [len(rows), len(cols)]."""
    k = mix64_int(mix64_int(key) + (step + 1) * _GAMMA)
    b = mix64((_span(rows, device) + 1).mul_(_signed(_GAMMA)).add_(_signed(k)))
    h = (_span(cols, device) + 1).mul_(_signed(_GAMMA))
    return mix64(b[:, None] + h[None, :], scratch)


def counter_normal(
    key: int,
    step: int,
    rows: slice | range,
    cols: slice | range,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normal numbers ξ[i, j] for global rows i ∈ ``rows`` and columns j ∈ ``cols``, step ``step``.

    A pure function of (key, step, i, j): any block of the global [rows × cols] array equals the
    same block drawn whole. Returns [len(rows), len(cols)] in ``dtype`` on ``device``.
    """
    h = counter_bits(key, step, rows, cols, device)
    tmp = torch.bitwise_right_shift(h, 40).bitwise_and_(0xFFFFFF).add_(1)
    r = tmp.to(torch.float32).mul_(2.0**-24).log_().mul_(-2.0).sqrt_()
    torch.bitwise_right_shift(h, 16, out=tmp).bitwise_and_(0xFFFFFF)
    return r.mul_(tmp.to(torch.float32).mul_(2.0 * math.pi * 2.0**-24).cos_()).to(dtype)


def noise_key(gen: torch.Generator | None) -> int:
    """The key of ``counter_normal`` for a stage's generator (its seed); a fresh one without it."""
    if gen is None:
        return int(torch.randint(0, 2**62, (1,)))
    return int(gen.initial_seed())
