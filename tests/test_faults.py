"""Faults injected into real run directories, each under a timeout: a missing, truncated, bit-flipped
or NaN-filled file, a killed worker pool, a full or read-only disk, an unusable input. Every one ends
with the unbroken run's bits or with one line that names the stage, the cycle and the file — never a
hang, never a bad file left in place."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import CYCLE, tiny  # noqa: E402

from scoreda.io import read_dataset_file
from scoreda.stages.verify import verify

ROOT = Path(__file__).resolve().parents[1]
CYCLES = 4
TINY = tiny(4, 10, "progress=false")
KINDS = ("truth", "obs", "forecast", "analysis")
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def cycle(run_dir, *extra, timeout=180):
    cmd = [*CYCLE, f"run_dir={run_dir}", *TINY, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def path(run_dir, k: int, kind: str) -> Path:
    return Path(run_dir) / "cycles" / f"{k:06d}" / f"{kind}.h5"


def contents(run_dir, k: int, kind: str) -> dict:
    """Every variable of a file, as numpy arrays (coordinates included)."""
    return read_dataset_file(path(run_dir, k, kind))[0]


def assert_same_files(run_dir, ref_dir, cycles: int) -> None:
    for k in range(cycles + 1):
        for kind in ("truth", "analysis") if k == 0 else KINDS:
            got, want = contents(run_dir, k, kind), contents(ref_dir, k, kind)
            assert got.keys() == want.keys(), (k, kind)
            for name in want:
                assert np.array_equal(got[name], want[name]), (k, kind, name)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faults") / "unbroken"
    out = cycle(run_dir, f"cycles={CYCLES + 1}")  # cycle 5 is the reference of a run extended after a fault
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def copy_of(unbroken, dest: Path, cycles: int = CYCLES) -> Path:
    """The unbroken run as it stood after ``cycles`` cycles (scores, config and all)."""
    shutil.copytree(unbroken, dest, ignore=shutil.ignore_patterns("runinfo", f"{cycles + 1:06d}"))
    return dest


# --------------------------------------------------------------------------------------- the faults


def missing(p: Path) -> None:
    p.unlink()


def truncated(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _values(p: Path) -> str:
    return "obs" if p.name == "obs.h5" else "state"


def bitflip(p: Path) -> None:
    """One bit flipped in the middle of the stored values (the fletcher32 checksum no longer matches)."""
    with h5py.File(p, "r") as f:
        info = f[_values(p)].id.get_chunk_info(0)
    offset = info.byte_offset + info.size // 2
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x10
    p.write_bytes(bytes(data))


def nan_filled(p: Path) -> None:
    """NaN written into the values by HDF5 itself: the checksum is right, the values are not."""
    with h5py.File(p, "r+") as f:
        v = f[_values(p)]
        v[...] = np.full(v.shape, np.nan, dtype=v.dtype)


FAULTS = {"missing": missing, "truncated": truncated, "bitflip": bitflip, "nan": nan_filled}
REASON = {"missing": "missing", "truncated": "truncated", "bitflip": "corrupted", "nan": "non-finite"}
# every fault hits each artefact in an earlier cycle, and one artefact in the last cycle
EARLIER = {"truth": 1, "obs": 2, "forecast": 2, "analysis": 3}
LAST = {"missing": "forecast", "truncated": "analysis", "bitflip": "truth", "nan": "obs"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_files_of_complete_cycles_are_remade_bit_for_bit(unbroken, tmp_path, fault):
    run_dir = copy_of(unbroken, tmp_path / "run")
    hit = [(k, kind) for kind, k in EARLIER.items()] + [(CYCLES, LAST[fault])]
    for k, kind in hit:
        FAULTS[fault](path(run_dir, k, kind))
    # the truncated case as the issue saw it hang: a truncated last analysis, then a longer run
    cycles = CYCLES + 1 if fault == "truncated" else CYCLES
    t0 = time.perf_counter()
    out = cycle(run_dir, f"cycles={cycles}")
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in lines(out.stderr) if line.startswith("replaced ")]
    for k, kind in hit:  # one line per file: which one, and why
        mine = [line for line in said if line.startswith(f"replaced {path(run_dir, k, kind)} (")]
        assert len(mine) == 1, (k, kind, said)
        assert REASON[fault] in mine[0], mine[0]
    assert len(said) == len(hit), said
    assert_same_files(run_dir, unbroken, cycles)
    assert verify(run_dir, range(cycles + 1)) == []  # no bad file left anywhere
    assert (run_dir / "metrics.csv").read_text().splitlines()[: CYCLES + 1] == (
        (unbroken / "metrics.csv").read_text().splitlines()[: CYCLES + 1]
    )
    assert time.perf_counter() - t0 < 120


@pytest.mark.slow
def test_a_bad_cycle_zero_and_a_bad_cache_are_remade(unbroken, tmp_path, spinup_cache):
    run_dir = copy_of(unbroken, tmp_path / "run")
    bitflip(path(run_dir, 0, "analysis"))
    cache = tmp_path / "cache"
    shutil.copytree(spinup_cache, cache)
    for f in cache.glob("spinup-*.h5"):
        truncated(f)
    out = cycle(run_dir, f"cycles={CYCLES}", f"cache_dir={cache}")
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in lines(out.stderr) if line.startswith("replac")]
    assert any(line.startswith(f"replaced {path(run_dir, 0, 'analysis')} (") for line in said), said
    assert any(line.startswith(f"replacing {cache}/spinup-") for line in said), said
    assert_same_files(run_dir, unbroken, CYCLES)
    assert verify(run_dir, range(CYCLES + 1)) == []


# ------------------------------------------------------------------------- faults of the machine


def _one_error_line(out, *words) -> str:
    last = lines(out.stderr)[-1]
    assert last.startswith("error: "), out.stderr[-3000:]
    assert len([line for line in lines(out.stderr) if "Traceback" in line]) == 0, out.stderr[-3000:]
    for w in words:
        assert str(w) in last, last
    return last


def _mount_namespace() -> list[str] | None:
    """A private mount namespace for a small or read-only file system of our own (root, or an
    unprivileged user namespace); None where the machine allows neither."""
    for prefix in (["unshare", "--mount", "--propagation", "private"], ["unshare", "-rm"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def _in_small_fs(directory: Path, size: str, script: str, timeout=180):
    """Run ``script`` (bash) with a tmpfs of ``size`` mounted on ``directory``, in its own namespace."""
    ns = _mount_namespace()
    if ns is None:
        pytest.skip("no mount namespace (unshare) on this machine")
    directory.mkdir(parents=True, exist_ok=True)
    body = f"mount -t tmpfs -o size={size} tmpfs {directory} && {script}"
    return subprocess.run(
        [*ns, "bash", "-c", body], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _cycle_cmd(run_dir, *extra) -> str:
    args = [*CYCLE, f"run_dir={run_dir}", *TINY, *extra]
    return " ".join(f"'{a}'" for a in args)


@pytest.mark.slow
def test_a_full_disk_is_refused_before_work_and_named_when_it_fills_during_the_run(tmp_path):
    mnt = tmp_path / "small"
    # too small for the run: refused before any work, naming the run directory and what it needs
    out = _in_small_fs(mnt, "1m", _cycle_cmd(mnt / "run", "cycles=40", "cache_dir=null"))
    last = _one_error_line(out, f"run_dir: {mnt / 'run'} has", "MiB free; the run needs about")
    assert out.returncode == 1, out.stderr
    assert "cycles ×" in last
    # room for the run, until another program fills the disk after cycle 1: one line naming the file
    fill = (
        f"(while [ ! -e {mnt}/run/cycles/000001/scores.json ]; do sleep 0.1; done;"
        f" fallocate -l $(( $(stat -f -c '%a*%S' {mnt}) - 200000 )) {mnt}/filler || true) &"
    )
    out = _in_small_fs(mnt, "20m", fill + _cycle_cmd(mnt / "run", "cycles=6", "cache_dir=null"))
    assert out.returncode == 1, out.stderr[-3000:]
    last = _one_error_line(
        out, "of cycle", str(mnt / "run" / "cycles"), "No space left on device", "MiB free"
    )


@pytest.mark.slow
def test_a_read_only_run_dir_is_one_line(tmp_path):
    mnt = tmp_path / "ro"
    out = _in_small_fs(mnt, "4m", f"mount -o remount,ro {mnt} && " + _cycle_cmd(mnt / "run", "cycles=2"))
    assert out.returncode == 2, out.stderr[-3000:]
    _one_error_line(out, "run_dir: cannot write", str(mnt / "run"), "Read-only file system")


@pytest.mark.slow
def test_a_killed_worker_pool_is_an_error_not_a_wait(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "workflows" / "cycle.py"),
        f"run_dir={run_dir}",
        *TINY,
        "cycles=30",
        "filter.n_steps=200",
        "platform.lost_after_s=20",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = run_dir / "cycles" / "000001" / "forecast.h5"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists() and proc.poll() is None, "the run ended before its workers could be killed"
    pools = subprocess.run(["pgrep", "-f", f"process_worker_pool.*{run_dir}"], capture_output=True, text=True)
    assert pools.stdout.split(), "no Parsl worker pool of this run found"
    for pid in pools.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    t0 = time.time()
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the workflow hung after its worker pool was killed")
    assert proc.returncode == 1, stderr[-3000:]
    last = lines(stderr)[-1]
    assert last.startswith("error: "), stderr[-3000:]
    assert "lost" in last or "worker" in last, last
    assert time.time() - t0 < 120
    # the same command finishes the run
    out = cycle(run_dir, "cycles=3", "filter.n_steps=200")
    assert out.returncode == 0, out.stderr[-3000:]


# --------------------------------------------------------------------------------- unusable inputs


def test_a_surrogate_checkpoint_that_is_no_weights_file_is_refused_before_the_spin_up(tmp_path):
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"not a torch file")
    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    out = cycle(
        run_dir, "cycles=2", "forecaster=vit", f"surrogate.checkpoint={bogus}", "surrogate.img_size=16"
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert lines(out.stderr) == [lines(out.stderr)[-1]], out.stderr  # one line, nothing else
    assert lines(out.stderr)[-1].startswith(f"config error: surrogate.checkpoint: {bogus}: ")
    assert not (run_dir / "cycles").exists()
    assert time.perf_counter() - t0 < 30


def test_a_run_dir_of_another_experiment_is_one_line(unbroken, tmp_path):
    run_dir = copy_of(unbroken, tmp_path / "run")
    out = cycle(run_dir, f"cycles={CYCLES}", "seed=3")
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(lines(out.stderr)) == 1, out.stderr
    assert lines(out.stderr)[0].startswith(f"error: run_dir: {run_dir}/config.yaml: the run directory holds")
    assert "seed" in lines(out.stderr)[0]
