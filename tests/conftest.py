"""Shared by every test: the spin-up cache lives in one temporary directory per session (never the
checkout's runs/), so the runs of the suite share their spun-up trajectories and leave nothing behind."""

import atexit
import os
import shutil
import sys
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


ROOT = Path(__file__).resolve().parents[1]
#: ``python workflows/cycle.py`` as the tests start it
CYCLE = [sys.executable, str(ROOT / "workflows" / "cycle.py")]


def tiny(members: int = 4, n_steps: int = 10, *more: str) -> list[str]:
    """Overrides of a small SQG run (16² grid, 4 spin-up cycles, members 1 cycle apart) that the
    workflow tests share; ``more`` appended."""
    return [
        "model.N=16",
        f"members={members}",
        "burn_in=0",
        "model.spinup_cycles=4",
        "model.member_spacing_cycles=1",
        f"filter.n_steps={n_steps}",
        *more,
    ]
