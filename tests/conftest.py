"""Shared by every test: the spin-up cache lives in one temporary directory per session (never the
checkout's runs/), so the runs of the suite share their spun-up trajectories and leave nothing behind."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_CACHE = Path(tempfile.mkdtemp(prefix="scoreda-test-cache-"))
os.environ["SCOREDA_CACHE"] = str(_CACHE)  # before any test composes a config or starts a workflow
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def spinup_cache() -> Path:
    """The session's ``cache_dir`` (also ``$SCOREDA_CACHE`` for the subprocesses tests start)."""
    return _CACHE
