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
#
# ``CounterNormal`` draws these numbers step after step and block of columns after block (a score
# filter's integration), with (j+1)γ computed once and all buffers reused; ``counter_normal`` and
# ``counter_bits`` are one-shot draws through it. Every variant does the same operations on each
# element, so the numbers do not depend on how the array is cut.
#
# ``counter_normal(pairs=True)`` uses both halves of Box–Muller, as the compiled EnSF kernel does:
# ξ_s for s = 2q is ρ cos 2πu₂ and for s = 2q + 1 is ρ sin 2πu₂, with ρ, u₂ from the bits h of step q
# above (two independent normals per hash, logarithm and sine/cosine).

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


def mix64_pure(z: torch.Tensor) -> torch.Tensor:
    """``mix64`` without ``out=`` or in-place ops (for ``torch.compile``): a new tensor."""
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        z = z ^ ((z >> shift) & ((1 << (64 - shift)) - 1))
        z = z if mult is None else z * _signed(mult)
    return z


def row_seeds(key: int, step: int, rows: slice | range, device: torch.device | str = "cpu") -> torch.Tensor:
    """b_i = mix(k_s + (i+1)γ) for the global rows i of step s (int64 [len(rows)])."""
    k = mix64_int(mix64_int(key) + (step + 1) * _GAMMA)
    return mix64_pure((_span(rows, device) + 1) * _signed(_GAMMA) + _signed(k))


def col_terms(cols: slice | range, device: torch.device | str = "cpu") -> torch.Tensor:
    """(j+1)γ for the global columns j (int64 [len(cols)])."""
    return (_span(cols, device) + 1) * _signed(_GAMMA)


def _span(s: slice | range, device) -> torch.Tensor:
    r = range(s.start or 0, s.stop, 1) if isinstance(s, slice) else s
    return torch.arange(r.start, r.stop, dtype=torch.int64, device=device)


class CounterNormal:
    """``counter_normal(key, step, rows, cols)`` for fixed (key, rows, cols), drawn step after step and
    block of columns after block into reused buffers.

    The column terms (j+1)γ [len(cols)] are computed once and the row terms b_i [len(rows)] once per
    step; a draw then costs h = b_i + (j+1)γ, ``mix64`` and Box–Muller on one block, without allocating
    (fresh large tensors cost page faults). ``max_cols`` bounds the widest block drawn (default: all
    of ``cols``). What ``bits`` and ``draw`` return are views of the buffers, valid until the next call.
    """

    def __init__(
        self,
        key: int,
        rows: slice | range,
        cols: slice | range,
        device: torch.device | str = "cpu",
        max_cols: int | None = None,
    ) -> None:
        self.key = key
        self.rows = rows
        self.row_terms = col_terms(rows, device)  # (i+1)γ [r]
        self.col_terms = col_terms(cols, device)  # (j+1)γ [c]
        width = self.col_terms.numel() if max_cols is None else min(max_cols, self.col_terms.numel())
        n = self.row_terms.numel() * width
        self._bits = torch.empty(n, dtype=torch.int64, device=device)
        self._tmp = torch.empty(n, dtype=torch.int64, device=device)
        self._u = torch.empty(n, dtype=torch.float32, device=device)
        self._xi = torch.empty(n, dtype=torch.float32, device=device)
        self._step: int | None = None
        self._b = self.row_terms

    def _view(self, buf: torch.Tensor, width: int) -> torch.Tensor:
        r = self.row_terms.numel()
        if r * width > buf.numel():
            raise ValueError(f"CounterNormal: a block of {width} columns is wider than max_cols")
        return buf[: r * width].view(r, width)

    def bits(self, step: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """h_ij (int64) for every row and the columns cols[start:stop], [r, stop − start]."""
        if step != self._step:  # b_i = mix(k_s + (i+1)γ), the same for every block of this step
            self._b = row_seeds(self.key, step, self.rows, self.row_terms.device)
            self._step = step
        c = self.col_terms[start:stop]
        h = torch.add(self._b[:, None], c[None, :], out=self._view(self._bits, c.numel()))
        return mix64(h, self._view(self._tmp, c.numel()))

    def draw(self, step: int, start: int = 0, stop: int | None = None, half: str = "cos") -> torch.Tensor:
        """ξ_ij (float32) for every row and the columns cols[start:stop], [r, stop − start];
        ``half="sin"``: the other normal of the pair, ρ sin 2πu₂."""
        h = self.bits(step, start, stop)
        width = h.shape[1]
        tmp = torch.bitwise_right_shift(h, 40, out=self._view(self._tmp, width))
        r = self._view(self._xi, width).copy_(tmp.bitwise_and_(0xFFFFFF))
        r.add_(1.0).mul_(2.0**-24).log_().mul_(-2.0).sqrt_()  # √(−2 ln u₁); +1 exact in float32 too
        torch.bitwise_right_shift(h, 16, out=tmp).bitwise_and_(0xFFFFFF)
        c = self._view(self._u, width).copy_(tmp).mul_(2.0 * math.pi * 2.0**-24)  # 2πu₂
        return r.mul_(c.cos_() if half == "cos" else c.sin_())


def counter_bits(
    key: int,
    step: int,
    rows: slice | range,
    cols: slice | range,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The 64 random bits h_ij (as int64) of ``counter_normal``, [len(rows), len(cols)]."""
    return CounterNormal(key, rows, cols, device).bits(step)


def counter_normal(
    key: int,
    step: int,
    rows: slice | range,
    cols: slice | range,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    pairs: bool = False,
) -> torch.Tensor:
    """Standard normal numbers ξ[i, j] for global rows i ∈ ``rows`` and columns j ∈ ``cols``, step ``step``.

    A pure function of (key, step, i, j): any block of the global [rows × cols] array equals the
    same block drawn whole. Returns [len(rows), len(cols)] in ``dtype`` on ``device``. ``pairs``:
    ξ_s of the compiled EnSF kernel (``scoreda/kernels/ensf_fused.c``), the cos half of the hash of
    step ⌊s/2⌋ for even s and its sin half for odd s.
    """
    if pairs:
        half = "cos" if step % 2 == 0 else "sin"
        return CounterNormal(key, rows, cols, device).draw(step // 2, half=half).to(dtype)
    return CounterNormal(key, rows, cols, device).draw(step).to(dtype)


def noise_key(gen: torch.Generator | None) -> int:
    """The key of ``counter_normal`` for a stage's generator (its seed); a fresh one without it."""
    if gen is None:
        return int(torch.randint(0, 2**62, (1,)))
    return int(gen.initial_seed())
