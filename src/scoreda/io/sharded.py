"""A state file written by R ranks, each holding only a slice of it: hyperslab reads, per-rank parts
stitched by an HDF5 virtual dataset.

A slice is a contiguous range [start, stop) of the flat state index of [member, level, y, x]
(``filters.sharding.block``), the same range of every member. On the grid it is up to three
rectangles per level (``pieces``: a partial row, whole rows, a partial row), so rank r reads its
slice of a state file with a few hyperslab selections (``read_state_slice``: only the chunks that
hold it are read and checksummed) and writes it as its own part file (``write_state_part``:
``<name>.part-RRRR-of-NNNN.h5``, variable ``state`` [member, index], atomic). Once every part exists,
one rank writes ``<name>.h5`` (``write_state_virtual``, atomic, last): coordinates and attributes as
any state file, and ``state`` a virtual dataset that maps each part's rectangles into [M, C, H, W] —
so the rule holds that a file that exists is complete, and xarray and ``read_state`` read it as
any other (through ``checkpoint.check_sources``, which names a missing or damaged part).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from scoreda.io.checkpoint import STATE_DIMS, read_selections, write_dataset_file

Piece = tuple[int, int, int, int, int]  # level c, rows y0:y1, columns x0:x1


def pieces(start: int, stop: int, shape: tuple[int, int, int]) -> list[Piece]:
    """The rectangles (c, y0, y1, x0, x1) of grid ``shape`` (C, H, W) that the flat range
    [start, stop) covers, in flat order (≤ 3 a level)."""
    _, H, W = shape
    out = []
    p = start
    while p < stop:
        c, q = divmod(p, H * W)
        y, x = divmod(q, W)
        end = min(stop, (c + 1) * H * W)  # this level's part of the range
        if x or end - p < W:  # a partial row
            n = min(W - x, end - p)
            out.append((c, y, y + 1, x, x + n))
        else:  # whole rows
            n = (end - p) // W * W
            out.append((c, y, y + n // W, 0, W))
        p += n
    return out


def part_path(path: str | os.PathLike, rank: int, ranks: int) -> Path:
    """``<dir>/<name>.part-RRRR-of-NNNN.h5``: rank ``rank``'s part of ``<dir>/<name>.h5``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.part-{rank:04d}-of-{ranks:04d}.h5")


def _part_pattern(path: Path) -> re.Pattern:
    return re.compile(re.escape(path.stem) + r"\.part-\d{4}-of-\d{4}\.h5")


def read_state_slice(
    path: str | os.PathLike,
    start: int,
    stop: int,
    shape: tuple[int, int, int, int],
    expect_attrs: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict]:
    """The flat slice [start, stop) of every member of the ``state`` [M, C, H, W] of ``path`` (a plain
    or a virtual one): [M, stop − start] float32, read by hyperslabs (``pieces``), checked as
    ``checkpoint.read_selections`` does. Raises :class:`CheckpointError`."""
    rects = pieces(start, stop, shape[1:])
    sels = [np.s_[:, c, y0:y1, x0:x1] for c, y0, y1, x0, x1 in rects]
    arrays, attrs = read_selections(path, "state", sels, shape, expect_attrs, STATE_DIMS)
    if not arrays:
        return np.empty((shape[0], 0), np.float32), attrs
    if len(arrays) == 1:  # one rectangle (e.g. whole rows of one level): no copy
        return arrays[0].reshape(shape[0], -1), attrs
    return np.concatenate([a.reshape(shape[0], -1) for a in arrays], axis=1), attrs


def write_state_part(
    path: str | os.PathLike, part: Any, start: int, stop: int, attrs: Mapping[str, Any]
) -> Path:
    """Write ``part`` [M, stop − start] as ``state`` [member, index] of a part file of ``path``
    (atomic; ``attrs`` plus ``start``/``stop``); returns its path. The part's name is given."""
    write_dataset_file(path, {"state": (("member", "index"), part)}, {**attrs, "start": start, "stop": stop})
    return Path(path)


def write_state_virtual(
    path: str | os.PathLike,
    parts: Sequence[tuple[str | os.PathLike, int, int]],
    shape: tuple[int, int, int, int],
    attrs: Mapping[str, Any],
    coords: Mapping[str, tuple] | None = None,
    state_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write ``path`` (atomic) with ``state`` [M, C, H, W] a virtual dataset over ``parts`` — (part file
    beside ``path``, start, stop), covering [0, C·H·W) in order — plus ``coords`` and ``attrs`` as
    ``checkpoint.write_state``; then delete the parts of ``path`` that it does not use (an earlier
    split's). Each part must exist with its [M, stop − start] (a ValueError naming it, before writing)."""
    path = Path(path)
    M, d = shape[0], int(np.prod(shape[1:]))
    layout = h5py.VirtualLayout(shape, np.float32)
    covered = 0
    for file, start, stop in parts:
        file = Path(file)
        if file.parent.resolve() != path.parent.resolve() or start != covered:
            raise ValueError(f"{file}: not the part of {path.name} from index {covered}")
        try:
            with h5py.File(file, "r") as f:
                got = f["state"].shape
        except (OSError, KeyError) as e:
            raise ValueError(f"{file}: unreadable part ({e})") from e
        if got != (M, stop - start):
            raise ValueError(f"{file}: part of shape {got}, expected {(M, stop - start)}")
        source = h5py.VirtualSource(f"./{file.name}", "state", shape=got)
        at = 0
        for c, y0, y1, x0, x1 in pieces(start, stop, shape[1:]):
            n = (y1 - y0) * (x1 - x0)
            layout[:, c, y0:y1, x0:x1] = source[:, at : at + n]
            at += n
        covered = stop
    if covered != d:
        raise ValueError(f"{path}: the parts cover [0, {covered}) of {d} state indices")
    virtual = {"state": (STATE_DIMS, layout, dict(state_attrs or {}))}
    write_dataset_file(path, {}, attrs, coords, virtual=virtual)
    remove_parts(path, keep={Path(p).name for p, _, _ in parts})


def remove_parts(path: str | os.PathLike, keep: set[str] = frozenset()) -> None:
    """Delete the part files of ``path`` not named in ``keep`` (all of them after ``path`` was written
    whole; an earlier split's after it was written over new parts)."""
    path = Path(path)
    if path.parent.is_dir():
        for old in path.parent.iterdir():
            if _part_pattern(path).fullmatch(old.name) and old.name not in keep:
                old.unlink(missing_ok=True)
