"""Randomness seeded from (seed, cycle, stage), so a resumed run draws what an unbroken one draws."""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, cycle: int, stage: str) -> int:
    """A 63-bit integer determined by (seed, cycle, stage) alone."""
    digest = hashlib.sha256(f"{seed}/{cycle}/{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, cycle: int, stage: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for one stage of one cycle."""
    return torch.Generator().manual_seed(stream_seed(seed, cycle, stage))
