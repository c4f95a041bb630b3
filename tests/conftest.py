"""Shared by every test: the spin-up cache lives in one temporary directory per session (never the
checkout's runs/), so the runs of the suite share their spun-up trajectories and leave nothing behind."""

import atexit
import csv
import os
import shutil
import subprocess
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
#: the environment of the workflows tests start: W&B offline, one thread a process, DeepSpeed on CPU
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def run_cycle(run_dir: Path, *overrides: str, timeout: int = 600) -> list[dict]:
    """``workflows/cycle.py overrides run_dir=…`` (W&B offline, one thread a process), asserted to
    finish: the rows of its metrics.csv."""
    cmd = [*CYCLE, *overrides, f"run_dir={run_dir}"]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


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


def _tiny_scorenet(
    tmp_path_factory, condition: bool, f_std=(20.0, 20.0), r_std=(2.0, 2.0), window: int = 0
) -> Path:
    """A small score network's weights file for len(f_std)-channel states on grids divisible by 2, states
    of std ``f_std`` (and with ``condition``, errors of std ``r_std``) per channel (``window`` k: over
    windows of 2k+1 states): 200 Adam steps
    of denoising on white noise (with ``condition``: of white noise r given a white-noise forecast f),
    so that it knows roughly the score of N(0, I) and sampling with it is stable (an untrained
    network's Tweedie estimate is not, and its guided samples diverge)."""
    import torch

    from scoreda.learned.params import ScoreNetParams, build_scorenet
    from scoreda.learned.schedule import VPCosine
    from scoreda.learned.unet import DenoisingLoss
    from scoreda.learned.weights import save_scorenet

    C, f_std, r_std = len(f_std), torch.tensor(f_std), torch.tensor(r_std)
    p = ScoreNetParams(channels=C, hidden=[8, 16], blocks=[1, 1], emb=8, condition=condition, window=window)
    torch.manual_seed(0)
    net = build_scorenet(p)
    loss = DenoisingLoss(net, VPCosine(p.eta))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        loss(torch.randn(8, 2 * C if condition else (2 * window + 1) * C, 16, 16)).square().mean().backward()
        opt.step()
    path = tmp_path_factory.mktemp("diffda" if condition else f"scorenet{window}") / "weights.pt"
    moments = (torch.zeros(C), f_std)
    if condition:  # errors of std r_std around forecasts of std f_std (model units)
        return save_scorenet(path, net.state_dict(), p, torch.zeros(C), r_std, None, moments)
    return save_scorenet(path, net.state_dict(), p, *moments)


@pytest.fixture(scope="session")
def scorenet_weights(tmp_path_factory) -> Path:
    """A tiny prior network (``filter=sda`` needs one to compose and run; ``workflows/train_score.py``
    makes real ones)."""
    return _tiny_scorenet(tmp_path_factory, condition=False)


@pytest.fixture(scope="session")
def diffda_weights(tmp_path_factory) -> Path:
    """A tiny conditional network (``filter=diffda``'s)."""
    return _tiny_scorenet(tmp_path_factory, condition=True)


@pytest.fixture(scope="session")
def diffda_qg_weights(tmp_path_factory) -> Path:
    """A tiny conditional network of the two-layer QG's (q1, u1, v1, q2, u2, v2): forecasts and errors of
    about the 12-h forecasts' sizes (1/s and m/s)."""
    f_std, r_std = (8e-6, 0.05, 0.05, 1e-6, 0.008, 0.008), (3e-6, 0.02, 0.02, 5e-7, 0.004, 0.004)
    return _tiny_scorenet(tmp_path_factory, True, f_std, r_std)


@pytest.fixture(scope="session")
def weights_overrides(scorenet_weights, diffda_weights) -> dict[str, list[str]]:
    """What a filter that reads a network needs to compose: filter name → [``filter.weights=…``]."""
    return {"sda": [f"filter.weights={scorenet_weights}"], "diffda": [f"filter.weights={diffda_weights}"]}
