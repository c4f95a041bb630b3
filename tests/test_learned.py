"""The score network of the learned-score methods (issue 21): schedule, U-Net, denoising loss through
the surrogate's trainer, the weights file, and the train_score workflow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from scoreda.learned.params import ScoreNetParams, build_scorenet
from scoreda.learned.schedule import VPCosine
from scoreda.learned.sda import sample
from scoreda.learned.unet import DenoisingLoss, ScoreUNet, score
from scoreda.learned.weights import load_scorenet, save_scorenet

ROOT = Path(__file__).resolve().parents[1]


def test_schedule_ends():
    s = VPCosine(1e-3)
    t = torch.tensor([0.0, 0.5, 1.0])
    mu, sigma = s(t)
    assert mu[0] == pytest.approx(1.0) and sigma[0] == pytest.approx(1e-3, rel=1e-3)
    assert mu[2] == pytest.approx(1e-3, rel=1e-4) and sigma[2] == pytest.approx(1.0, abs=1e-6)
    assert mu[1] ** 2 + sigma[1] ** 2 == pytest.approx(1 + 1e-6)  # variance preserving (+ η²)
    with pytest.raises(ValueError, match="eta"):
        VPCosine(0.0)


def test_unet_is_periodic_and_shift_equivariant():
    """Circular padding throughout: a periodic shift of the input by a multiple of the coarsest
    stride (4 with 3 levels) shifts the output by the same amount."""
    torch.manual_seed(0)
    net = ScoreUNet(2, (8, 16, 16), (1, 1, 1), kernel=3, emb=16)
    for p in net.parameters():  # non-trivial blocks (the projections start at zero)
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(3, 2, 16, 32), torch.tensor([0.1, 0.5, 0.9])
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    shifted = net(torch.roll(x, (4, 8), dims=(-2, -1)), t)
    torch.testing.assert_close(shifted, torch.roll(out, (4, 8), dims=(-2, -1)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not divisible by 2"):
        net(torch.randn(1, 2, 18, 32), t[:1])


def test_a_conditional_network_takes_the_condition_as_input_channels():
    """DiffDA's denoiser: ε_θ(x_t, t, c) with the forecast c as extra input channels; DenoisingLoss
    noises only the first C channels of [x₀, c]."""
    torch.manual_seed(0)
    net = ScoreUNet(2, (8, 16), (1, 1), kernel=3, emb=16, condition=2)
    x, c, t = torch.randn(3, 2, 8, 8), torch.randn(3, 2, 8, 8), torch.rand(3)
    assert net(x, t, c).shape == x.shape
    with pytest.raises(ValueError, match="a condition of 2 channels"):
        net(x, t)
    with pytest.raises(ValueError, match="a condition of 0 channels"):
        ScoreUNet(2, (8,), (1,), emb=16)(x, t, c)
    loss = DenoisingLoss(net, VPCosine())
    torch.manual_seed(1)
    out = loss(torch.cat([x, c], dim=1))
    torch.manual_seed(1)
    tt = torch.rand(3)
    eps = torch.randn_like(x)
    mu, sigma = (v[:, None, None, None] for v in VPCosine()(tt))
    torch.testing.assert_close(out, net(mu * x + sigma * eps, tt, c) - eps)


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = ScoreUNet(1, (8, 16), (2, 1), kernel=3, emb=16)
    b = ScoreUNet(1, (8, 16), (2, 1), kernel=3, emb=16, checkpoint=True)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7])
    for net in (a, b):
        net(x, t).square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_params_check_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"^scorenet\.blocks: one count per level"):
        ScoreNetParams(hidden=[8, 16], blocks=[1])
    with pytest.raises(ValueError, match=r"^scorenet\.kernel: must be odd"):
        ScoreNetParams(kernel=4)
    p = ScoreNetParams(hidden=[8, 16, 32], blocks=[1, 1, 1])
    with pytest.raises(ValueError, match=r"^scorenet\.channels: 2, but the model's states have 6"):
        p.check_fits((6, 64, 64), 12.0)
    with pytest.raises(
        ValueError, match=r"^scorenet\.hidden: 3 levels: the grid 18×18 must be divisible by 4"
    ):
        p.check_fits((2, 18, 18), 12.0)
    with pytest.raises(ValueError, match=r"^scorenet\.every_hours: 5.0 h neither divides"):
        ScoreNetParams(every_hours=5.0).check_fits((2, 64, 64), 12.0)
    ScoreNetParams(every_hours=24.0).check_fits((2, 64, 64), 12.0)


# ----------------------------------------------------------------------- a Gaussian's score, learned

N = 16


def gaussian_spectrum() -> torch.Tensor:
    """Power spectrum [N, N] of a stationary Gaussian field, exp(−|k|²/8), scaled to unit variance."""
    k = torch.fft.fftfreq(N, 1 / N)
    S = torch.exp(-(k[:, None] ** 2 + k[None] ** 2) / 8)
    return S / S.mean()


def gaussian_samples(n: int, seed: int) -> torch.Tensor:
    w = torch.randn(n, 1, N, N, generator=torch.Generator().manual_seed(seed))
    return torch.fft.ifft2(torch.fft.fft2(w) * gaussian_spectrum().sqrt()).real


@pytest.fixture
def one_rank(monkeypatch):
    """A world of one process (gloo), torn down after the test. The variables ``init_distributed``
    exports are set here through monkeypatch, so that they are undone afterwards (a RANK left in
    this process's environment would reach every later test's launchers)."""
    from scoreda.surrogate.distributed import free_port

    for k in ("SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(k, raising=False)
    world = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    for k, v in (world | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}).items():
        monkeypatch.setenv(k, v)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.slow
def test_learns_the_score_of_a_gaussian(one_rank, tmp_path):
    """x₀ ~ N(0, Σ), Σ stationary on a 16² periodic grid: x_t ~ N(0, μ_t²Σ + σ_t²I), whose optimal
    ε-prediction is ε*(x_t) = σ_t (μ_t²Σ + σ_t²I)⁻¹ x_t, diagonal in Fourier space. 400 steps of the
    trainer (DDP, 1 rank; ≈ 25 s) bring ε_θ within 12 % of ε* (relative L2) for t ≥ 0.2 and 35 % at
    t = 0.05, and its denoising error within 0.03 of the optimum (per value; E ε² = 1). Measured:
    25 %, 8.4 %, 4.7 %, 4.5 % at t = 0.05, 0.2, 0.5, 0.8; errors 0.022, 0.005, 0.002, 0.002 above
    the optimum's 0.651, 0.382, 0.151, 0.012."""
    from scoreda.surrogate.distributed import discover
    from scoreda.surrogate.trainer import Trainer

    torch.set_num_threads(2)
    X = gaussian_samples(4096, 0)
    p = ScoreNetParams(
        channels=1, hidden=[16, 32], blocks=[1, 1], emb=32, lr=3e-3, warmup_steps=20, batch_size=32
    )
    schedule = VPCosine(p.eta)
    parallel = OmegaConf.create({"name": "ddp", "precision": "fp32", "backend": "gloo"})
    trainer = Trainer(
        lambda: DenoisingLoss(build_scorenet(p), schedule),
        OmegaConf.structured(p),
        parallel,
        discover(),
        "cpu",
        400,
    )
    losses = trainer.fit(X, torch.zeros_like(X), 400, seed=1)
    assert sum(losses[-50:]) / 50 < 0.6 * sum(losses[:10]) / 10
    net = trainer.unwrapped.net.eval()
    X0, S = gaussian_samples(512, 5), gaussian_spectrum()
    for t, tol in ((0.05, 0.35), (0.2, 0.12), (0.5, 0.12), (0.8, 0.12)):
        mu, sigma = (float(v) for v in schedule(torch.tensor(t)))
        eps = torch.randn(X0.shape, generator=torch.Generator().manual_seed(7))
        xt = mu * X0 + sigma * eps
        exact = torch.fft.ifft2(torch.fft.fft2(xt) * sigma / (mu**2 * S + sigma**2)).real
        with torch.no_grad():
            pred = net(xt, torch.full((len(xt),), t))
        assert (pred - exact).norm() / exact.norm() < tol, t
        assert (pred - eps).square().mean() < (exact - eps).square().mean() + 0.03, t  # of E ε² = 1
        # the score is −ε/σ: against the exact −(μ²Σ + σ²I)⁻¹ x_t
        with torch.no_grad():
            s = score(net, schedule, xt, t)
        torch.testing.assert_close(s, -pred / sigma)
    # the weights file gives back the same network
    state = {k.removeprefix("net."): v for k, v in trainer.full_state_dict().items()}
    save_scorenet(tmp_path / "w.pt", state, p, torch.zeros(1), torch.ones(1), {"steps": 400})
    net2, sched2, mean, std, meta = load_scorenet(tmp_path / "w.pt")
    assert meta == {"steps": 400} and sched2.eta == p.eta and mean.tolist() == [0.0] and std.tolist() == [1.0]
    with torch.no_grad():
        torch.testing.assert_close(net2(xt, torch.full((len(xt),), 0.8)), pred)


def test_sda_on_a_linear_gaussian_problem_is_the_kalman_posterior():
    """The exact ε of the Gaussian prior above (what a perfect network would give), every 4th point
    observed with σ_y = 0.1: 2000 SDA samples (256 steps, one Langevin correction, τ = 0.5) against
    the exact posterior N(m, P) of the Kalman update. With γ = 0.3 the sample mean is within
    Monte-Carlo error of m (z = (mean − m)/√(P_ii/2000): rms 0.94, max 4.3 over 256 points) and the
    variances within 8 % of P_ii; with γ = 0.01 the approximation biases the mean (rms z 3.5)."""
    torch.set_num_threads(1)
    S, schedule, d = gaussian_spectrum(), VPCosine(1e-3), N * N

    def eps_exact(x, t):
        mu, sigma = schedule(t[0])
        return torch.fft.ifft2(torch.fft.fft2(x) * sigma / (mu**2 * S + sigma**2)).real

    eye = torch.eye(d, dtype=torch.float64)
    Sigma = torch.fft.ifft2(torch.fft.fft2(eye.view(d, 1, N, N)) * S.double()).real.reshape(d, d)
    idx = torch.zeros(N, N, dtype=torch.bool)
    idx[::4, ::4] = True
    idx = idx.flatten()
    A, sy = eye[idx], 0.1
    g = torch.Generator().manual_seed(0)
    x_true = torch.linalg.cholesky(Sigma + 1e-10 * eye) @ torch.randn(d, generator=g, dtype=torch.float64)
    y = A @ x_true + sy * torch.randn(len(A), generator=g, dtype=torch.float64)
    K = Sigma @ A.T @ torch.linalg.inv(A @ Sigma @ A.T + sy**2 * torch.eye(len(A), dtype=torch.float64))
    m, P = K @ y, Sigma - K @ A @ Sigma

    def observe(x):
        return x.flatten(1)[:, idx]

    xs = sample(
        eps_exact, schedule, (2000, 1, N, N), torch.Generator().manual_seed(1), observe, y.float(), sy**2, 0.3
    )
    xs = xs.flatten(1).double()
    z = (xs.mean(0) - m) / (P.diag() / len(xs)).sqrt()
    assert z.square().mean().sqrt() < 1.3 and z.abs().max() < 5
    ratio = xs.var(0) / P.diag()
    assert 0.88 < ratio.min() and ratio.max() < 1.12
    # without observations: samples of the prior (unit variance per point)
    prior = sample(eps_exact, schedule, (500, 1, N, N), torch.Generator().manual_seed(2), steps=64)
    assert prior.var(0).mean() == pytest.approx(1.0, abs=0.05)


def test_weights_file_faults(tmp_path):
    p = ScoreNetParams(channels=1, hidden=[8], blocks=[1], emb=8)
    state = build_scorenet(p).state_dict()
    with pytest.raises(ValueError, match=r"w\.pt: mean and std must be finite, std > 0"):
        save_scorenet(tmp_path / "w.pt", state, p, torch.zeros(1), torch.zeros(1))
    bad = dict(state) | {"out.bias": torch.tensor([float("nan")])}
    with pytest.raises(ValueError, match=r"w\.pt: weight out\.bias is not finite"):
        save_scorenet(tmp_path / "w.pt", bad, p, torch.zeros(1), torch.ones(1))
    assert not (tmp_path / "w.pt").exists()  # nothing half-written
    path = save_scorenet(tmp_path / "w.pt", state, p, torch.zeros(1), torch.ones(1))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"w\.pt: not a readable torch weights file"):
        load_scorenet(path)
    with pytest.raises(ValueError, match=r"missing\.pt: no such score-network weights file"):
        load_scorenet(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------- the workflow

SMALL = [
    "model.N=16",
    "model.spinup_cycles=20",
    "pretrain.trajectories=4",
    "pretrain.held_out=1",
    "pretrain.length=20",
    "scorenet.hidden=[8,16]",
    "scorenet.blocks=[1,1]",
    "scorenet.steps=30",
    "scorenet.batch_size=8",
]


@pytest.mark.slow
@pytest.mark.parametrize(("parallel", "window"), [("zero2", 0), ("fsdp_full", 1)])
def test_train_score_workflow_on_two_ranks(tmp_path, parallel, window):
    """One command trains on 2 ranks (DeepSpeed ZeRO-2 / FSDP full sharding; one state / windows of 3
    states 24 h apart), writes a weights file that loads, and reports against the Wiener filter."""
    out = tmp_path / "sc"
    cmd = [sys.executable, "workflows/train_score.py", *SMALL, f"scorenet.out_dir={out}"]
    cmd += [f"parallel={parallel}", "parallel.ranks=2", "parallel.launcher=torchrun"]
    cmd += [f"scorenet.window={window}", "scorenet.every_hours=24"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["ranks"] == 2 and report["train"]["steps"] == 30
    assert report["train"]["parallel"] == parallel
    assert len(report["net"]) == len(report["wiener"]) == 5
    assert all(math.isfinite(v) for v in report["net"])
    net, _, mean, std, _ = load_scorenet(out / "weights.pt")
    assert net.inp.in_channels == (2 * window + 1) * 2 and mean.shape == std.shape == (2,)
    train = json.loads((out / "train.json").read_text())
    assert len(train["losses"]) == 30 and train["losses"][-1] < train["losses"][0]


def test_train_score_refuses_a_network_that_does_not_fit(tmp_path):
    cmd = [sys.executable, "workflows/train_score.py", "model=qg2l", "model.state=pv_velocity"]
    cmd += [f"scorenet.out_dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert (
        res.stderr.strip().splitlines()[-1]
        == "config error: scorenet.channels: 2, but the model's states have 6"
    )
