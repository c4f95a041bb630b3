"""The one check every parameter dataclass uses: a one-line ``ValueError`` naming the key."""

from __future__ import annotations


def require(ok: bool, key: str, msg: str) -> None:
    """Raise ``ValueError("<key>: <msg>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key}: {msg}")
