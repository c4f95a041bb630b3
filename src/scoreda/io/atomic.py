"""Atomic output: a file that exists is complete (temporary name, fsync, rename, fsync directory)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:  # a few filesystems cannot fsync a directory; the rename is done regardless
        if not (directory and e.errno in (errno.EINVAL, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


MARGIN = 1 << 20  # bytes kept free beyond a file's size hint (metadata, the directory entry)


def check_space(path: str | os.PathLike, needed: int) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` when its file system has fewer than ``needed`` + 1 MiB
    bytes free. HDF5 cannot be trusted to fail cleanly on a full disk (h5py raises a RuntimeError and
    may crash the process when it frees the file), so writers ask first."""
    free = shutil.disk_usage(Path(path).parent).free
    if free < needed + MARGIN:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: writing it needs {needed / 2**20:.2f} MiB,"
            f" {free / 2**20:.2f} MiB free there",
            str(path),
        )


@contextmanager
def atomic_output(path: str | os.PathLike, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. With ``size_hint``
    (bytes), a file system without that much room is refused first (``check_space``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size_hint is not None:
        check_space(path, size_hint)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent, directory=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
