"""HDF5/netCDF4 checkpoint files: the hand-off between workflow stages.

One file per artefact per cycle (e.g. ``RUN/cycles/000123/analysis.h5``). Files are written through
``h5netcdf`` so they are proper netCDF4 files with named dimensions (``xarray.open_dataset(path,
engine="h5netcdf")`` works). Variables may carry attributes (``units``, ``long_name``, ...); coordinate
variables may also be scalars (0-d) or strings (netCDF4 variable-length strings). Each data variable's
``coordinates`` attribute names the coordinates that are not dimension coordinates (auxiliary and
scalar ones), so xarray shows them as coordinates. Every chunked variable carries the fletcher32
checksum filter; HDF5 cannot chunk scalars nor filter variable-length strings, so those two are
stored contiguous, unchecksummed.

Guarantees:

* No non-finite value is ever written: the writer validates everything before touching the disk.
* Writing is atomic: a temporary file in the same directory is written, flushed, fsynced and then
  ``os.replace``-d onto the final name (then the directory is fsynced). A file that exists is complete.
* The reader raises a single :class:`CheckpointError` (``"<path>: <what is wrong>"``) for every kind of
  bad file: missing, truncated, corrupted (checksum), wrong shape/dtype, missing or mismatching
  variables/attributes, non-finite values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5netcdf
import h5py
import numpy as np

from scoreda.io.atomic import atomic_output

__all__ = [
    "STATE_DIMS",
    "CheckpointError",
    "config_hash",
    "blame_sources",
    "check_sources",
    "read_dataset_file",
    "read_selections",
    "read_state",
    "read_variable",
    "write_dataset_file",
    "write_state",
]

STATE_DIMS = ("member", "level", "y", "x")

Variables = dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]  # name -> (dims, array, attrs)


class CheckpointError(ValueError):
    """A checkpoint file is missing or invalid. ``str(err)`` is one line: ``"<path>: <what is wrong>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always a single line
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # pickled by its two arguments (Parsl sends a stage's exception between processes)
        return (type(self), (self.path, self.problem))


# ----------------------------------------------------------------------------------------------- writing


def _to_numpy(x: Any) -> np.ndarray:
    """numpy array from an array-like or a torch tensor (any device; half precision upcast)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()  # bfloat16 has no numpy equivalent; stored as float32 anyway
        x = x.numpy()
    return np.asarray(x)


def non_finite(a: np.ndarray, block: int = 1 << 20) -> int:
    """The number of non-finite values of a float array, counted in blocks (no mask of its size)."""
    flat = a.reshape(-1)
    return sum(
        int(flat[i : i + block].size - np.isfinite(flat[i : i + block]).sum())
        for i in range(0, flat.size, block)
    )


def _prepare_array(name: str, arr: Any, coord: bool = False) -> np.ndarray:
    """Float -> float32 (must be finite after the cast), integer/bool -> int64, and for a coordinate
    (``coord``) also 0-d and str (a numpy str array, stored as variable-length strings); anything else
    refused."""
    a = _to_numpy(arr)
    if a.ndim == 0 and not coord:
        raise ValueError(f"variable {name!r} is 0-d; store scalars as attributes")
    if coord and a.dtype.kind == "U":
        return a.astype(object)
    if a.dtype.kind == "f":
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            a = a.astype(np.float32, copy=False)
        if (bad := non_finite(a)) > 0:
            raise ValueError(f"variable {name!r} contains {bad} non-finite values")
        return a
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    raise ValueError(f"variable {name!r} has unsupported dtype {a.dtype}")


def _prepare_attr(name: str, value: Any) -> Any:
    """str/int/float/bool/list-of-numbers -> something h5netcdf stores; bool becomes int."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"attribute {name!r} is non-finite ({value})")
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, list | tuple | np.ndarray):
        a = np.asarray(value)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iubf"):
            raise ValueError(f"attribute {name!r} must be a flat list of numbers")
        a = a.astype(np.int64) if a.dtype.kind in "iub" else a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"attribute {name!r} contains non-finite values")
        return a
    raise ValueError(f"attribute {name!r} has unsupported type {type(value).__name__}")


def _write_netcdf(
    tmp: Path, dims: dict[str, int], variables: Variables, attrs: dict, virtual: Mapping | None = None
) -> None:
    with h5netcdf.File(tmp, "w") as f:
        f.dimensions = dims
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, (vdims, arr, vattrs) in variables.items():
            if name in (virtual or {}):
                continue
            if arr.dtype == object:  # strings: variable-length, which HDF5 cannot filter
                var = f.create_variable(name, vdims, h5py.string_dtype(), data=arr)
            else:  # scalars cannot be chunked (nor filtered)
                var = f.create_variable(name, vdims, arr.dtype, data=arr, fletcher32=arr.ndim > 0)
            for key, value in vattrs.items():
                var.attrs[key] = value
        f.flush()
    if virtual:  # h5netcdf makes no virtual datasets: add them through h5py, with their dimension scales
        with h5py.File(tmp, "r+") as f:
            for name, (vdims, layout, _) in virtual.items():
                ds = f.create_virtual_dataset(name, layout, fillvalue=np.float32(np.nan))
                for i, dim in enumerate(vdims):
                    ds.dims[i].attach_scale(f[dim])
                for key, value in variables[name][2].items():
                    ds.attrs[key] = value
            f.flush()


def _prepare_variable(name: str, spec: tuple, coord: bool) -> tuple[tuple[str, ...], np.ndarray, dict]:
    """``(dims, array)`` or ``(dims, array, attrs)`` -> (dims, prepared array, prepared attrs)."""
    if not isinstance(spec, tuple | list) or len(spec) not in (2, 3):
        raise ValueError(f"variable {name!r}: expected (dims, array) or (dims, array, attrs)")
    vdims, a = tuple(spec[0]), _prepare_array(name, spec[1], coord)
    if len(vdims) != a.ndim:
        raise ValueError(f"variable {name!r}: {len(vdims)} dimension names for a {a.ndim}-d array")
    vattrs = dict(spec[2]) if len(spec) == 3 else {}
    return vdims, a, {str(k): _prepare_attr(f"{name}.{k}", v) for k, v in vattrs.items()}


def _link_coordinates(variables: Variables, coords: set[str]) -> None:
    """Set each data variable's ``coordinates`` attribute: the coordinates that are not dimension
    coordinates and whose dimensions it has (scalars: every data variable), in the given order."""
    aux = [c for c in variables if c in coords and variables[c][0] != (c,)]
    for name, (vdims, _, vattrs) in variables.items():
        if name not in coords and (linked := [c for c in aux if set(variables[c][0]) <= set(vdims)]):
            vattrs["coordinates"] = " ".join(linked)


def write_dataset_file(
    path: str | os.PathLike,
    variables: Mapping[str, tuple],
    attrs: Mapping[str, Any],
    coords: Mapping[str, tuple] | None = None,
    virtual: Mapping[str, tuple] | None = None,
) -> None:
    """Atomically write a netCDF4/HDF5 file.

    ``variables``: name -> (dimension names, array of matching ndim) or (dims, array, attrs); arrays
    may be numpy or torch. Floats are stored float32, integers/bools int64; a dimension name must have
    one size across variables. ``coords``: coordinate variables in the same form, which may also be
    0-d (scalar coordinates) or hold strings; one named like its only dimension is that dimension's
    coordinate, the others are listed in the ``coordinates`` attribute of the data variables.
    ``attrs`` (file) and variable attributes: str, int, float, bool -> int, flat list of numbers.
    ``virtual``: float32 variables stored as HDF5 virtual datasets, name -> (dims, ``h5py.VirtualLayout``,
    attrs) — data kept in other files (``io.sharded``), read through this one; fill value NaN, so a
    source that goes missing reads as non-finite, never as zeros.
    Raises ValueError (before any file or directory is created) for non-finite or malformed input.
    """
    path = Path(path)
    prepared: Variables = {}
    dims: dict[str, int] = {}
    coords = dict(coords or {})
    virtual = dict(virtual or {})
    for name, spec in [*coords.items(), *variables.items(), *virtual.items()]:  # coordinates first
        if name in prepared:
            raise ValueError(f"variable {name!r} given twice")
        if name in virtual:  # its data lies elsewhere: only its dimensions, shape and attributes here
            vdims, a = tuple(spec[0]), np.broadcast_to(np.float32(0), spec[1].shape)  # no memory
            vattrs = {str(k): _prepare_attr(f"{name}.{k}", v) for k, v in spec[2].items()}
        else:
            vdims, a, vattrs = _prepare_variable(name, spec, coord=name in coords)
        prepared[name] = (vdims, a, vattrs)
        for d, n in zip(vdims, a.shape, strict=True):
            if dims.setdefault(d, n) != n:
                raise ValueError(f"dimension {d!r} has size {dims[d]} and {n} (variable {name!r})")
    _link_coordinates(prepared, set(coords))
    prepared_attrs = {str(k): _prepare_attr(str(k), v) for k, v in attrs.items()}

    size = sum(v[1].nbytes for k, v in prepared.items() if k not in virtual)  # the disk must hold it
    with atomic_output(path, size_hint=size) as tmp:
        _write_netcdf(tmp, dims, prepared, prepared_attrs, virtual)


def write_state(
    path: str | os.PathLike,
    state: Any,
    attrs: Mapping[str, Any],
    extra: Mapping[str, tuple] | None = None,
    coords: Mapping[str, tuple] | None = None,
    state_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write an ensemble state ``[member, level, y, x]`` (numpy or torch) as variable ``"state"``.

    ``extra`` variables (name -> (dims, array[, attrs])) may reuse the state dimensions, e.g. ``("y",)``;
    ``coords`` as in :func:`write_dataset_file` (e.g. ``x``, ``level``, scalar ``cycle``);
    ``state_attrs``: the state variable's attributes (``units``, ``long_name``, ...).
    """
    arr = _to_numpy(state)
    if arr.ndim != 4:
        raise ValueError(f"state must be 4-d {STATE_DIMS}, got shape {arr.shape}")
    variables = {"state": (STATE_DIMS, arr, dict(state_attrs or {}))}
    for name, value in (extra or {}).items():
        if name == "state":
            raise ValueError("extra variable may not be called 'state'")
        variables[name] = value
    write_dataset_file(path, variables, attrs, coords)


# ----------------------------------------------------------------------------------------------- reading


def _python_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):  # netCDF4 stores a scalar as one value: read back as a scalar
        return _python_attr(value.reshape(-1)[0]) if value.size == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_strings(a: np.ndarray) -> np.ndarray:
    """Variable-length strings (bytes objects from h5py) -> numpy str array; anything else unchanged."""
    if a.dtype != object:
        return a
    return np.char.decode(a.astype(np.bytes_), "utf-8") if a.size else a.astype(str)


def _attr_matches(actual: Any, expected: Any) -> bool:
    """Strings compare exactly; numbers (and lists) with 1e-9 relative tolerance. h5netcdf returns a
    one-element list as a scalar, so ``[x]`` and ``x`` are considered equal."""
    if isinstance(actual, str) or isinstance(expected, str):
        return actual == expected
    try:
        a = np.atleast_1d(np.asarray(actual, dtype=np.float64))
        e = np.atleast_1d(np.asarray(expected, dtype=np.float64))
    except (TypeError, ValueError):
        return False
    return a.shape == e.shape and bool(np.isclose(a, e, rtol=1e-9, atol=0.0).all())


_NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable"  # netCDF4's bare dimensions


def _dims(ds: h5py.Dataset) -> tuple[str, ...]:
    """netCDF dimension names of a dataset: its attached dimension scales (a coordinate variable is
    its own)."""
    if ds.attrs.get("CLASS") == b"DIMENSION_SCALE":
        return (ds.name.rsplit("/", 1)[-1],)
    return tuple(d[0].name.rsplit("/", 1)[-1] if len(d) else f"phony_dim_{i}" for i, d in enumerate(ds.dims))


def check_sources(path: Path, ds: h5py.Dataset, deep: bool = False) -> None:
    """A virtual dataset's source files (``io.sharded``'s parts, beside ``path``) exist — and, with
    ``deep``, read with valid checksums and finite values: a :class:`CheckpointError` naming the first
    that does not. HDF5 itself reads a missing source as the fill value and reports a bad one only as
    a failed read of ``path``; readers call this first, and ``deep`` once a read has failed."""
    if not ds.is_virtual:
        return
    for file_name, dset_name in {s.file_name: s.dset_name for s in ds.virtual_sources()}.items():
        part = path.parent / file_name
        if not part.is_file():
            raise CheckpointError(part, f"file does not exist (a part of {path.name})")
        if deep:
            try:
                with h5py.File(part, "r") as f:
                    a = np.asarray(f[dset_name][()])
            except (OSError, KeyError) as e:
                raise CheckpointError(part, f"unreadable or corrupted part of {path.name} ({e})") from e
            _check_values(part, dset_name, a)


def blame_sources(path: Path) -> None:
    """After a failed read of ``path``: a :class:`CheckpointError` naming its bad source file, if a
    virtual dataset's is the cause (nothing otherwise)."""
    try:
        with h5py.File(path, "r") as f:
            datasets = [ds for ds in f.values() if isinstance(ds, h5py.Dataset) and ds.is_virtual]
            for ds in datasets:
                check_sources(path, ds, deep=True)
    except CheckpointError:
        raise
    except Exception:  # the file itself is bad: the caller says so
        return


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]], dict[str, Any]]:
    """All variables (checked float32 + finite), their dimension names, and the file attributes.

    Through h5py directly (the netCDF4 layer costs ~5× more per file, which matters when every file
    of a 300-cycle run is validated on each resume); every chunk is read, so every fletcher32
    checksum is checked."""
    if not path.is_file():
        raise CheckpointError(path, "file does not exist")
    data: dict[str, np.ndarray] = {}
    dims: dict[str, tuple[str, ...]] = {}
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _python_attr(v) for k, v in f.attrs.items() if not k.startswith("_NC")}
            for name, ds in f.items():
                if not isinstance(ds, h5py.Dataset) or ds.attrs.get("NAME", b"").startswith(_NOT_A_VARIABLE):
                    continue
                check_sources(path, ds)
                data[name] = _decode_strings(np.asarray(ds[()]))
                dims[name] = _dims(ds)
    except CheckpointError:
        raise
    except OSError as e:  # truncated / not HDF5 / fletcher32 checksum mismatch
        blame_sources(path)
        raise CheckpointError(path, f"unreadable or corrupted HDF5 file ({e})") from e
    except Exception as e:  # malformed structure surfaced by h5py
        raise CheckpointError(path, f"invalid netCDF4 file ({type(e).__name__}: {e})") from e
    try:
        for name, a in data.items():
            _check_values(path, name, a)
    except CheckpointError:
        blame_sources(path)  # a part's values, if it is a virtual file's
        raise
    return data, dims, attrs


def _check_values(path: Path, name: str, a: np.ndarray) -> None:
    """Floating values must be float32 and finite."""
    if a.dtype.kind == "f":
        if a.dtype != np.float32:
            raise CheckpointError(path, f"variable {name!r} has dtype {a.dtype}, expected float32")
        if (bad := non_finite(a)) > 0:
            raise CheckpointError(path, f"variable {name!r} contains {bad} non-finite values")


def read_variable(path: str | os.PathLike, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One variable of a checkpoint file (checksum, float32, finite; ``shape`` if given), through h5py
    alone: ~20× faster than :func:`read_dataset_file` for one array (a lazy reader's chunk), attributes
    and the other variables unchecked. Raises :class:`CheckpointError`."""
    return read_selections(path, name, [()], shape)[0][0]


def read_selections(
    path: str | os.PathLike,
    name: str,
    selections: list,
    shape: tuple[int | None, ...] | None = None,
    expect_attrs: Mapping[str, Any] | None = None,
    dims: tuple[str, ...] | None = None,
) -> tuple[list[np.ndarray], dict]:
    """Hyperslabs ``selections`` (numpy index tuples; ``()`` the whole) of variable ``name``, read by
    h5py (only the chunks they touch, whose checksums are checked), and the file attributes; the
    variable's ``shape`` and ``dims`` and the file's ``expect_attrs`` checked first, then each
    array (float32, finite). Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file does not exist")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _python_attr(v) for k, v in f.attrs.items() if not k.startswith("_NC")}
            if name not in f:
                raise CheckpointError(path, f"missing variable {name!r}")
            ds = f[name]
            full = {name: np.broadcast_to(np.zeros((), ds.dtype), ds.shape)}
            _check(path, full, attrs, None if shape is None else {name: shape}, expect_attrs)
            if dims is not None and _dims(ds) != dims:
                raise CheckpointError(path, f"variable {name!r} has dimensions {_dims(ds)}, expected {dims}")
            check_sources(path, ds)
            arrays = [_decode_strings(np.asarray(ds[sel])) for sel in selections]
    except CheckpointError:
        raise
    except OSError as e:  # truncated / not HDF5 / fletcher32 checksum mismatch
        blame_sources(path)
        raise CheckpointError(path, f"unreadable or corrupted HDF5 file ({e})") from e
    except Exception as e:
        raise CheckpointError(path, f"invalid HDF5 file ({type(e).__name__}: {e})") from e
    try:
        for a in arrays:
            _check_values(path, name, a)
    except CheckpointError:
        blame_sources(path)  # a part's values, if it is a virtual file's
        raise
    return arrays, attrs


def _check(
    path: Path,
    data: dict[str, np.ndarray],
    attrs: dict[str, Any],
    expect: Mapping[str, tuple[int | None, ...]] | None,
    expect_attrs: Mapping[str, Any] | None,
) -> None:
    for name, shape in (expect or {}).items():
        if name not in data:
            raise CheckpointError(path, f"missing variable {name!r}")
        got = data[name].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got, strict=False)):
            raise CheckpointError(path, f"variable {name!r} has shape {got}, expected {tuple(shape)}")
    for key, want in (expect_attrs or {}).items():
        if key not in attrs:
            raise CheckpointError(path, f"missing attribute {key!r}")
        if not _attr_matches(attrs[key], want):
            raise CheckpointError(path, f"attribute {key!r} is {attrs[key]!r}, expected {want!r}")


def read_dataset_file(
    path: str | os.PathLike,
    expect: Mapping[str, tuple[int | None, ...]] | None = None,
    expect_attrs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Read and validate a file written by :func:`write_dataset_file`.

    ``expect``: name -> required shape (``None`` = any size on that axis). ``expect_attrs``: name -> required
    value (numbers compared with 1e-9 relative tolerance). Floating variables must be float32 and finite.
    Returns (variables as numpy arrays, attributes as python scalars/str/lists).
    Raises :class:`CheckpointError` for any problem.
    """
    path = Path(path)
    data, _, attrs = _read(path)
    _check(path, data, attrs, expect, expect_attrs)
    return data, attrs


def read_state(
    path: str | os.PathLike,
    shape: tuple[int | None, int | None, int | None, int | None] | None = None,
    expect_attrs: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict]:
    """Read the ``"state"`` variable, float32 ``[member, level, y, x]``, and the file attributes.

    ``shape``: required ``(M, C, H, W)``, ``None`` entries = any size. Raises :class:`CheckpointError`.
    """
    path = Path(path)
    data, dims, attrs = _read(path)
    _check(path, data, attrs, {"state": tuple(shape) if shape is not None else (None,) * 4}, expect_attrs)
    if dims["state"] != STATE_DIMS:
        raise CheckpointError(path, f"variable 'state' has dimensions {dims['state']}, expected {STATE_DIMS}")
    return data["state"], attrs


def config_hash(cfg: Mapping[str, Any]) -> str:
    """First 16 hex chars of the sha256 of the canonical JSON of ``cfg`` (sorted keys, ``default=str``)."""
    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
