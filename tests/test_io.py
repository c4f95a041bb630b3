"""Tests for scoreda.io: atomic, checksummed netCDF4 checkpoints."""

import os
from pathlib import Path

import h5netcdf
import h5py
import numpy as np
import pytest
import xarray as xr

from scoreda.io import (
    STATE_DIMS,
    CheckpointError,
    config_hash,
    read_dataset_file,
    read_state,
    read_variable,
    write_dataset_file,
    write_state,
)

ATTRS = {
    "cycle": 123,
    "model_time": 4.5,
    "grid": "qg64",
    "units": "1/s",
    "lengths": [1.0, 2.5, 3.0],
    "flag": True,
}


def _state(shape=(3, 2, 8, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _raises(path, match=None, **kw):
    """read_state must raise a one-line CheckpointError starting with the path."""
    with pytest.raises(CheckpointError, match=match) as info:
        read_state(path, **kw)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    return msg


def test_round_trip(tmp_path):
    path = tmp_path / "cycles" / "000123" / "analysis.h5"  # parent dirs are created
    x = _state()
    ys = np.linspace(0.0, 1.0, 8)
    write_state(path, x, ATTRS, extra={"y": (("y",), ys), "obs_count": (("member",), np.arange(3))})
    got, attrs = read_state(path, shape=(3, 2, None, 8), expect_attrs={"cycle": 123, "grid": "qg64"})
    assert got.dtype == np.float32 and np.array_equal(got, x)
    assert attrs["cycle"] == 123 and isinstance(attrs["cycle"], int)
    assert attrs["model_time"] == 4.5 and isinstance(attrs["model_time"], float)
    assert attrs["grid"] == "qg64" and attrs["units"] == "1/s"
    assert attrs["lengths"] == [1.0, 2.5, 3.0] and attrs["flag"] == 1
    data, attrs2 = read_dataset_file(str(path), expect={"obs_count": (3,), "y": (None,)})
    assert attrs2 == attrs
    assert data["obs_count"].dtype == np.int64 and data["obs_count"].tolist() == [0, 1, 2]
    assert data["y"].dtype == np.float32 and np.allclose(data["y"], ys)
    read_state(str(path), shape=(3, 2, 8, 8))
    assert sorted(os.listdir(path.parent)) == ["analysis.h5"]  # no temp file left


def test_torch_tensor_input(tmp_path):
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    write_state(tmp_path / "a.h5", x, {"cycle": 0})
    got, _ = read_state(tmp_path / "a.h5")
    assert np.allclose(got, x.detach().numpy().astype(np.float32))


def test_xarray_sees_named_dims_and_fletcher32(tmp_path):
    path = tmp_path / "forecast.h5"
    x = _state()
    write_state(path, x, ATTRS, extra={"y": (("y",), np.arange(8.0))})
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["state"].dims == STATE_DIMS
        assert np.array_equal(ds["state"].values, x)
        assert ds.attrs["grid"] == "qg64" and int(ds.attrs["cycle"]) == 123
    with h5py.File(path, "r") as f:
        assert f["state"].fletcher32 and f["y"].fletcher32


def test_truncated_file(tmp_path):
    path = tmp_path / "analysis.h5"
    write_state(path, _state(), ATTRS)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    _raises(path)


def test_corrupted_data_bytes_caught_by_checksum(tmp_path):
    path = tmp_path / "analysis.h5"
    write_state(path, _state(), ATTRS)
    with h5py.File(path, "r") as f:
        ds = f["state"]
        assert ds.chunks is not None  # fletcher32 implies chunked layout
        info = ds.id.get_chunk_info(0)
        offset, size = info.byte_offset, info.size
        _, raw_before = ds.id.read_direct_chunk(info.chunk_offset)
    with open(path, "r+b") as fh:  # flip 4 bytes in the middle of the first chunk's data
        fh.seek(offset + size // 2)
        chunk = bytearray(fh.read(4))
        fh.seek(offset + size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    with h5py.File(path, "r") as f:  # the bytes we flipped really are this chunk's stored bytes
        _, raw_after = f["state"].id.read_direct_chunk(info.chunk_offset)
    assert raw_after != raw_before and len(raw_after) == len(raw_before)
    _raises(path, match="corrupted")


def test_missing_file(tmp_path):
    msg = _raises(tmp_path / "nope.h5", match="does not exist")
    assert "nope.h5" in msg


def test_wrong_shape(tmp_path):
    path = tmp_path / "analysis.h5"
    write_state(path, _state((3, 2, 8, 8)), ATTRS)
    _raises(path, match="shape", shape=(4, None, None, None))
    _raises(path, match="shape", shape=(3, 2, 8, 9))
    with pytest.raises(CheckpointError, match="shape"):
        read_dataset_file(path, expect={"state": (3, 2, 8)})
    with pytest.raises(CheckpointError, match="missing variable 'increment'"):
        read_dataset_file(path, expect={"increment": (None,)})


def test_wrong_dtype_raw_h5py(tmp_path):
    path = tmp_path / "analysis.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("state", data=np.zeros((2, 1, 4, 4), np.float64))
    _raises(path, match="float64")


def test_wrong_dims(tmp_path):
    path = tmp_path / "analysis.h5"
    write_dataset_file(path, {"state": (("a", "b", "c", "d"), _state())}, {})
    _raises(path, match="dimensions")


def test_writer_refuses_nan_and_leaves_no_file(tmp_path):
    path = tmp_path / "sub" / "analysis.h5"
    x = _state()
    x[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_state(path, x, ATTRS)
    big = np.full((1, 1, 2, 2), 1e300)  # finite float64 but inf once cast to float32
    with pytest.raises(ValueError, match="non-finite"):
        write_state(path, big, ATTRS)
    with pytest.raises(ValueError, match="non-finite"):
        write_state(path, _state(), {"dt": float("inf")})
    assert not path.parent.exists()


def test_nan_file_from_raw_h5py(tmp_path):
    path = tmp_path / "analysis.h5"
    x = _state()
    x[0, 0, 0, 0] = np.nan
    with h5py.File(path, "w") as f:
        f.create_dataset("state", data=x)
    _raises(path, match="non-finite")


def test_attribute_mismatch_and_missing(tmp_path):
    path = tmp_path / "analysis.h5"
    write_state(path, _state(), ATTRS)
    read_state(path, expect_attrs={"model_time": 4.5 * (1 + 1e-12), "lengths": [1.0, 2.5, 3.0], "flag": True})
    msg = _raises(path, match="attribute 'cycle'", expect_attrs={"cycle": 124})
    assert "124" in msg
    _raises(path, match="attribute 'grid'", expect_attrs={"grid": "qg128"})
    _raises(path, match="attribute 'model_time'", expect_attrs={"model_time": 4.5 * (1 + 1e-6)})
    _raises(path, match="attribute 'lengths'", expect_attrs={"lengths": [1.0, 2.5]})
    _raises(path, match="missing attribute 'config_hash'", expect_attrs={"config_hash": "abc"})


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "analysis.h5"

    def boom(self, *args, **kwargs):
        assert any(p.name.startswith(".analysis.h5.tmp-") for p in tmp_path.iterdir())  # temp file exists
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(h5netcdf.File, "create_variable", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_state(path, _state(), ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_failed_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "analysis.h5"
    old = _state(seed=1)
    write_state(path, old, ATTRS)

    def no_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_state(path, _state(seed=2), ATTRS)
    assert [p.name for p in tmp_path.iterdir()] == ["analysis.h5"]
    assert np.array_equal(read_state(path)[0], old)


def test_writer_rejects_malformed_input(tmp_path):
    with pytest.raises(ValueError):
        write_state(tmp_path / "a.h5", np.zeros((2, 8, 8), np.float32), {})
    with pytest.raises(ValueError, match="dimension 'x'"):
        write_dataset_file(tmp_path / "a.h5", {"a": (("x",), np.zeros(3)), "b": (("x",), np.zeros(4))}, {})
    with pytest.raises(ValueError, match="unsupported"):
        write_state(tmp_path / "a.h5", _state(), {"bad": None})
    assert list(tmp_path.iterdir()) == []


def test_config_hash():
    a = config_hash({"b": 1, "a": {"x": [1, 2], "p": Path("/some/run")}})
    b = config_hash({"a": {"p": Path("/some/run"), "x": [1, 2]}, "b": 1})
    assert a == b and len(a) == 16 and int(a, 16) >= 0
    assert config_hash({"b": 2}) != config_hash({"b": 1})


# ------------------------------------------------------------------ coordinates, variable attributes


COORDS = {
    "member": (("member",), np.arange(3), {"long_name": "ensemble member"}),
    "level": (("level",), np.array(["z=0", "z=H"]), {"long_name": "level or channel"}),
    "level_units": (("level",), np.array(["K", "m/s"])),
    "y": (("y",), np.arange(8) * 2500.0, {"units": "km", "axis": "Y"}),
    "x": (("x",), np.arange(8) * 2500.0, {"units": "km", "axis": "X"}),
    "cycle": ((), 7, {"long_name": "assimilation cycle"}),
    "time": ((), 84.0, {"units": "hours"}),
}
STATE_ATTRS = {
    "units": "K",
    "long_name": "potential temperature",
    "standard_name": "air_potential_temperature",
}


def test_coordinates_round_trip(tmp_path):
    """String, scalar and dimension coordinates and variable attributes: read back by our reader (strings
    as numpy str) and by xarray as coordinates, every chunked variable checksummed."""
    path = tmp_path / "analysis.h5"
    x = _state()
    write_state(path, x, ATTRS, coords=COORDS, state_attrs=STATE_ATTRS)
    got, attrs = read_state(path, shape=(3, 2, 8, 8), expect_attrs={"cycle": 123})
    assert np.array_equal(got, x) and attrs["grid"] == "qg64"
    data, _ = read_dataset_file(path, expect={"level": (2,), "cycle": (), "time": ()})
    assert data["level"].tolist() == ["z=0", "z=H"] and data["level"].dtype.kind == "U"
    assert data["level_units"].tolist() == ["K", "m/s"]
    assert data["cycle"].dtype == np.int64 and int(data["cycle"]) == 7
    assert data["time"].dtype == np.float32 and float(data["time"]) == 84.0
    assert data["x"].dtype == np.float32 and data["x"][1] == 2500.0
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert set(ds.coords) == set(COORDS) and list(ds.data_vars) == ["state"]
        assert ds["state"].dims == STATE_DIMS and np.array_equal(ds["state"].values, x)
        assert ds["state"].attrs == STATE_ATTRS  # the coordinates attribute is consumed by xarray
        assert ds["level"].values.tolist() == ["z=0", "z=H"] and ds["level_units"].dims == ("level",)
        assert ds["cycle"].dims == () and int(ds["cycle"]) == 7
        assert float(ds["time"]) == 84.0 and ds["time"].dtype == np.float32  # "hours": not decoded
        assert ds["x"].attrs == {"units": "km", "axis": "X"} and ds["member"].attrs["long_name"]
    with h5py.File(path, "r") as f:
        assert f["state"].attrs["coordinates"] == "level_units cycle time"
        for name, var in f.items():
            scalar_or_string = var.shape == () or var.dtype.kind == "O"
            assert (var.chunks is None) == scalar_or_string, name  # HDF5 cannot chunk/filter those
            assert var.fletcher32 == (var.chunks is not None), name


def test_auxiliary_coordinates_on_another_dimension(tmp_path):
    """Observations: values and their coordinates on one dimension, named in ``coordinates``."""
    path = tmp_path / "obs.h5"
    coords = {
        "index": (("location",), np.array([3, 70, 130])),
        "level": (("location",), np.array(["z=0", "z=0", "z=H"])),
        "x": (("location",), np.array([7.5, 15.0, 22.5]), {"units": "km"}),
        "cycle": ((), 2),
    }
    write_dataset_file(path, {"obs": (("location",), np.array([1.0, 2.0, 3.0]), {"units": "K"})}, {}, coords)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert list(ds.data_vars) == ["obs"] and set(ds.coords) == set(coords)
        assert ds.obs.attrs == {"units": "K"} and ds.x.values.tolist() == [7.5, 15.0, 22.5]
        assert ds["level"].values.tolist() == ["z=0", "z=0", "z=H"]
    data, _ = read_dataset_file(path, expect={"obs": (3,), "index": (3,)})
    assert data["index"].tolist() == [3, 70, 130] and data["obs"].tolist() == [1.0, 2.0, 3.0]


def test_old_files_without_coordinates_still_read(tmp_path):
    """Files from before the coordinates (state without coords; obs on a dimension named ``obs``)."""
    path = tmp_path / "obs.h5"
    with h5netcdf.File(path, "w") as f:  # the old writer's layout, written by hand
        f.dimensions = {"obs": 3}
        f.create_variable("obs", ("obs",), np.float32, data=np.array([1, 2, 3], np.float32), fletcher32=True)
        f.create_variable("index", ("obs",), np.int64, data=np.array([4, 5, 6]), fletcher32=True)
        f.attrs["cycle"] = 1
    data, attrs = read_dataset_file(path, expect={"obs": (3,), "index": (3,)}, expect_attrs={"cycle": 1})
    assert data["obs"].tolist() == [1, 2, 3] and data["index"].tolist() == [4, 5, 6]
    write_state(tmp_path / "a.h5", _state(), ATTRS)  # no coords: the old call still writes
    assert set(read_dataset_file(tmp_path / "a.h5")[0]) == {"state"}


def test_writer_refuses_bad_coordinates_and_leaves_no_file(tmp_path):
    path = tmp_path / "sub" / "a.h5"
    for bad, match in [
        ({"x": (("x",), np.array([0.0, np.nan, 1, 2, 3, 4, 5, 6]))}, "'x' contains 1 non-finite"),
        ({"time": ((), float("inf"))}, "'time' contains 1 non-finite"),
        ({"x": (("x",), np.arange(8.0), {"units": float("nan")})}, "'x.units' is non-finite"),
        ({"state": (("x",), np.arange(8.0))}, "'state' given twice"),
        ({"x": (("x",), np.arange(7.0))}, "dimension 'x' has size"),
        ({"x": (("x",), np.arange(8.0), {}, "extra")}, "expected \\(dims, array\\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            write_state(path, _state(), ATTRS, coords=bad)
    with pytest.raises(ValueError, match="unsupported dtype"):  # strings only as coordinates
        write_state(path, _state(), ATTRS, extra={"names": (("level",), np.array(["a", "b"]))})
    with pytest.raises(ValueError, match="0-d"):  # scalars only as coordinates
        write_state(path, _state(), ATTRS, extra={"t": ((), 1.0)})
    with pytest.raises(ValueError, match="non-finite"):
        write_state(path, _state(), ATTRS, state_attrs={"scale": float("nan")})
    assert not path.parent.exists()


def test_read_variable(tmp_path):
    """One variable, checked like the full reader: shape, float32, finite, checksum, one-line errors."""
    path = tmp_path / "analysis.h5"
    x = _state()
    write_state(path, x, ATTRS, coords=COORDS)
    assert np.array_equal(read_variable(path, "state", (3, 2, 8, 8)), x)
    assert read_variable(path, "level").tolist() == ["z=0", "z=H"]
    for name, shape, match in [("nope", None, "missing variable 'nope'"), ("state", (3, 2, 8, 9), "shape")]:
        with pytest.raises(CheckpointError, match=match):
            read_variable(path, name, shape)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_variable(tmp_path / "gone.h5", "state")
    bad = tmp_path / "nan.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("state", data=np.full((1, 1, 2, 2), np.nan, np.float32))
    with pytest.raises(CheckpointError, match="4 non-finite") as info:
        read_variable(bad, "state")
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)
