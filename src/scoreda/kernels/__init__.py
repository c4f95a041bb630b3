"""Compiled CPU kernels: C sources beside this module, built on first use with the system's C
compiler (``$CC``, else ``cc``) into a per-machine cache and loaded with ctypes.

The cache key is the source, the flags, the compiler's version and this CPU (``-march=native``), so
a login node never hands its binary to a compute node of another kind. A build goes to a temporary
file and is renamed into place: ranks that start together may all build, none loads a partial file.
A cached file that does not load (damaged) is built again. The cache is ``$SCOREDA_KERNEL_CACHE``,
else ``$XDG_CACHE_HOME/scoreda/kernels``, else ``~/.cache/scoreda/kernels``. ``make install``
builds every kernel once (``python -m scoreda.kernels``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNELS = ("ensf_fused", "gmrf_mp")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared"]
OPENMP = ["-fopenmp"]


class KernelUnavailable(RuntimeError):
    """No compiler, or the build failed: the caller falls back to its torch code or names the key."""


def cache_dir() -> Path:
    if d := os.environ.get("SCOREDA_KERNEL_CACHE"):
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scoreda" / "kernels"


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise KernelUnavailable(f"no C compiler ({cc!r} not found; set $CC)")
    return cc


@functools.cache
def library(name: str) -> ctypes.CDLL:
    """The compiled kernel ``name`` (built and cached on first use); ``KernelUnavailable`` if it
    cannot be built here."""
    source = HERE / f"{name}.c"
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in (FLAGS + OPENMP, FLAGS):  # OpenMP when the compiler has it
        key = hashlib.sha256("\0".join([source.read_text(), *flags, version, _cpu_id()]).encode())
        path = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
        try:
            if not path.exists():
                build(cc, source, flags, path)
            try:
                return ctypes.CDLL(str(path))
            except OSError:  # a damaged cache file (not one of ours half-written: those are renamed)
                build(cc, source, flags, path)
                return ctypes.CDLL(str(path))
        except KernelUnavailable as e:
            errors.append(str(e))
    raise KernelUnavailable(f"building {source.name} failed: {errors[-1]}")


def build(cc: str, source: Path, flags: list[str], path: Path) -> None:
    """Compile ``source`` into ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        p = subprocess.run([cc, *flags, "-o", tmp, str(source), "-lm"], capture_output=True, text=True)
        if p.returncode != 0:
            raise KernelUnavailable(f"{cc} {' '.join(flags)}: {p.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
