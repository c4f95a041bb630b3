"""The score network of the learned-score methods (issue 21): schedule, U-Net, denoising loss through
the surrogate's trainer, the weights file, and the train_score workflow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from scoreda.io import read_state
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
    with pytest.raises(ValueError, match=r"^scorenet\.hidden: the first width 16 must be ≥ the 30 noised"):
        ScoreNetParams(channels=6, window=2, hidden=[16, 32, 64], blocks=[2, 2, 2])
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


def test_sda_smoother_on_a_linear_gaussian_trajectory_is_the_kalman_smoother():
    """SDA as a smoother: trajectories of L = 9 states of 256 independent AR(1) points (x_{i+1} =
    a x_i + √(1 − a²) w_i, a = 0.8, unit variance), every state observed with σ_y = 0.5; the exact ε
    of windows of 2k+1 = 5 states (a perfect window network) composed into the trajectory. 400
    samples (64 steps, one Langevin correction, Kalman guidance, γ = 1) against the Kalman smoother
    N(m, P): sample means within Monte-Carlo error of m (measured rms z 1.11, max 4.3); variances
    0.91–1.51 × P_ii, mean 1.21 (the likelihood's Gaussian approximation with one correction
    over-disperses ≈ 20 %; without it 0.68 ×), the same to two digits as one window over the whole
    trajectory (k = 4: rms z 1.10): the composition adds nothing measurable. At mid-window the
    smoother's mean is 0.365 from the truth, the exact smoother's 0.362, the Kalman filter's
    (observations up to then only) 0.399."""
    from scoreda.learned.smoother import smooth
    from scoreda.observations import PointObservation

    torch.set_num_threads(1)
    L, n, k, a, sy, M = 9, 256, 2, 0.8, 0.5, 400
    schedule, w = VPCosine(1e-3), 2 * k + 1
    i = torch.arange(L, dtype=torch.float64)
    S = a ** (i[:, None] - i[None]).abs()  # the trajectory's covariance at every point [L, L]

    class WindowEps(torch.nn.Module):  # exact ε of N(0, S[:w, :w]) on windows [B, w·1, 1, n]
        channels = w

        def forward(self, x, t):
            mu, sig = schedule(t[0].double())
            A = sig * torch.linalg.inv(mu**2 * S[:w, :w] + sig**2 * torch.eye(w, dtype=torch.float64))
            return torch.einsum("ij,bjhn->bihn", A, x.double()).float()

    g = torch.Generator().manual_seed(0)
    truth = torch.linalg.cholesky(S) @ torch.randn(L, n, generator=g, dtype=torch.float64)
    y = truth + sy * torch.randn(L, n, generator=g, dtype=torch.float64)
    P = torch.linalg.inv(torch.linalg.inv(S) + torch.eye(L, dtype=torch.float64) / sy**2)
    m = P @ y / sy**2
    op = PointObservation(torch.arange(n), sy, n)
    net = (WindowEps(), schedule, torch.zeros(1), torch.ones(1))
    xs = smooth(net, k, op, y.float(), (1, 1, n), M, torch.Generator().manual_seed(1), steps=64)
    xs = xs.double()[:, :, 0, 0]  # [M, L, n]
    z = (xs.mean(0) - m) / (P.diag()[:, None] / M).sqrt()
    assert z.square().mean().sqrt() < 1.5 and z.abs().max() < 5
    ratio = xs.var(0) / P.diag()[:, None]
    assert 0.95 < ratio.mean() < 1.35 and 0.75 < ratio.min() and ratio.max() < 1.7
    c = L // 2  # the Kalman filter at mid-window: observations 0 … c
    Pf = torch.linalg.inv(
        torch.linalg.inv(S[: c + 1, : c + 1]) + torch.eye(c + 1, dtype=torch.float64) / sy**2
    )
    filt = (Pf @ y[: c + 1] / sy**2)[-1]
    rmse = {
        name: float((v - truth[c]).square().mean().sqrt())
        for name, v in [("sda", xs.mean(0)[c]), ("kf", filt)]
    }
    assert rmse["sda"] < rmse["kf"] and rmse["sda"] == pytest.approx(
        float((m[c] - truth[c]).square().mean().sqrt()), rel=0.03
    )
    with pytest.raises(ValueError, match="shorter than the network's window"):
        smooth(net, k, op, y[:3].float(), (1, 1, n), 2, torch.Generator().manual_seed(1), steps=2)


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
@pytest.mark.parametrize(("parallel", "window"), [("zero2", 1)])
def test_train_score_workflow_on_two_ranks(tmp_path, parallel, window):
    """One command trains on 2 ranks (DeepSpeed ZeRO-2, windows of 3 states 24 h apart), writes a
    weights file that loads, and reports against the Wiener filter. The other strategies fit the same
    ``DenoisingLoss`` in tests/test_trainer.py (``--model scorenet``, all six, exact resume)."""
    out = tmp_path / "sc"
    cmd = [sys.executable, "workflows/train_score.py", *SMALL, f"scorenet.out_dir={out}"]
    cmd += [f"parallel={parallel}", "parallel.ranks=2", "parallel.launcher=torchrun"]
    cmd += [f"scorenet.window={window}", "scorenet.every_hours=24"]
    from conftest import ENV

    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
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


# ---------------------------------------------------------------------------- filter=sda in the cycle


class ExactGaussianEps(torch.nn.Module):
    """The exact ε of the Gaussian prior of ``gaussian_spectrum`` (one channel): a stand-in network."""

    channels = 1

    def __init__(self, schedule: VPCosine):
        super().__init__()
        self.schedule, self.S = schedule, gaussian_spectrum()

    def forward(self, x, t):
        mu, sigma = self.schedule(t[0])
        return torch.fft.ifft2(torch.fft.fft2(x) * sigma / (mu**2 * self.S + sigma**2)).real


@pytest.mark.parametrize(
    ("guidance", "gamma", "rms_z", "ratio"),
    [("tweedie", 0.3, 1.3, (0.85, 1.15)), ("kalman", 1.0, 2.0, (0.85, 1.3))],
)
def test_sda_filter_samples_the_gaussian_posterior_of_prior_background_and_observations(
    guidance, gamma, rms_z, ratio
):
    """filter=sda with the exact ε of a Gaussian prior x = m + s z (m = 1, s = 2, z ~ N(0, Σ)), the
    forecast mean as an observation of every point with the ensemble's variance p = 1, and every 4th
    point observed with σo = 0.2: 1000 members (256 steps, one correction) against the exact
    posterior, precision (s²Σ)⁻¹ + I/p + AᵀA/σo². A sample variance of 1000 has a standard error of
    4.5 %. Seed 003's Tweedie guidance (γ = 0.3): mean within Monte-Carlo error (rms z 1.23), each
    point's variance within 15 % (±3.3 standard errors), their mean within 3 % (measured 0.996).
    The Kalman guidance (γ = 1, no Jacobian of ε_θ) is an approximation for a correlated prior:
    measured rms z 1.55, variances 0.92–1.20 (mean 1.044), and the RMSE of its mean within 1 % of
    the exact posterior mean's (0.6177 against 0.6170; the background's 1.0008)."""
    from scoreda.filters.sda import SDAFilter
    from scoreda.observations import PointObservation

    torch.set_num_threads(1)
    schedule, d, M, m0, s0, p, so = VPCosine(1e-3), N * N, 1000, 1.0, 2.0, 1.0, 0.2
    eye = torch.eye(d, dtype=torch.float64)
    Sigma = torch.fft.ifft2(torch.fft.fft2(eye.view(d, 1, N, N)) * gaussian_spectrum().double()).real
    B = s0**2 * Sigma.reshape(d, d)
    g = torch.Generator().manual_seed(0)
    truth = m0 + torch.linalg.cholesky(B + 1e-10 * eye) @ torch.randn(d, generator=g, dtype=torch.float64)
    xf = truth + p**0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    idx = torch.arange(d).view(N, N)[::4, ::4].flatten()
    op = PointObservation(idx, so, d)
    y = op.sample(truth, g)
    A = eye[idx]
    precision = torch.linalg.inv(B + 1e-10 * eye) + eye / p + A.T @ A / so**2
    P = torch.linalg.inv(precision)
    mean = P @ (torch.linalg.solve(B + 1e-10 * eye, torch.full((d,), m0, dtype=torch.float64)) + xf / p
                + A.T @ y / so**2)  # fmt: skip
    sign = torch.ones(M, 1, dtype=torch.float64)
    sign[M // 2 :] = -1
    members = xf + (p * (M - 1) / M) ** 0.5 * sign  # mean xf, variance (ddof 1) p at every point
    f = SDAFilter(guidance=guidance, gamma=gamma, steps=256, background_stride=1, shape=(1, N, N))
    f.network = (ExactGaussianEps(schedule), schedule, torch.tensor([m0]), torch.tensor([s0]))
    out = f.analyse(members.float(), y.float(), op, torch.Generator().manual_seed(1)).ensemble.double()
    z = (out.mean(0) - mean) / (P.diag() / M).sqrt()
    assert z.square().mean().sqrt() < rms_z and z.abs().max() < 3 * rms_z + 1
    r = out.var(0) / P.diag()
    assert ratio[0] < r.min() and r.max() < ratio[1] and abs(r.mean() - 1) < (ratio[1] - 1) / 4, r.mean()
    rmse = (out.mean(0) - truth).square().mean().sqrt()
    assert rmse < 1.01 * (mean - truth).square().mean().sqrt()


SDA_RUN = [  # README's `cycle.py experiment=filters_every4 filter=sda`, small
    "experiment=filters_every4",
    "observation.every=1",  # every point: 4 independent samples' mean must still beat the forecast
    "filter=sda",
    "model.N=16",
    "members=4",
    "cycles=2",
    "burn_in=0",
    "model.spinup_cycles=4",
    "model.member_spacing_cycles=1",
    "filter.steps=8",
    "filter.inflation=2",  # 8 steps of the Kalman guidance sample too narrow a posterior (results.md)
    "progress=false",
]


@pytest.mark.slow
def test_sda_filter_runs_two_cycles(tmp_path, scorenet_weights):
    """``filter=sda`` in the cycle (a small network that knows white noise, every point observed): two
    analyses, finite, each closer to the truth than its forecast; a rerun of the analysis stage is
    bit for bit the same file (the sampler's noise is the cycle's stream)."""
    from conftest import ENV, run_cycle

    run = tmp_path / "run"
    rows = run_cycle(run, *SDA_RUN, f"filter.weights={scorenet_weights}")
    assert [int(r["cycle"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 < float(r["rmse_analysis"]) < float(r["rmse_forecast"])
        assert 0 < float(r["spread_analysis"])
    path = run / "cycles" / "000002" / "analysis.h5"
    first, _ = read_state(path)
    path.unlink()
    stage = [sys.executable, "-m", "scoreda.stages.analysis", "--run-dir", str(run), "--cycle", "2"]
    again = subprocess.run(stage, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    second, _ = read_state(path)
    assert first.shape == (4, 2, 16, 16) and np.array_equal(first, second)


def test_sda_filter_refuses_bad_weights_by_key(tmp_path, scorenet_weights):
    """A missing weights file, or one of a network over windows, is a one-line config error naming
    ``filter.weights`` before any work."""
    from conftest import CYCLE

    env = {**os.environ, "WANDB_MODE": "offline"}
    missing = tmp_path / "none.pt"
    cmd = [*CYCLE, *SDA_RUN, f"filter.weights={missing}", f"run_dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"config error: filter.weights: {missing}: no such score-network weights file "
        "(workflows/train_score.py writes it)"
    )
    assert not (tmp_path / "run" / "cycles").exists()
    p = ScoreNetParams(channels=2, window=1, hidden=[8], blocks=[1], emb=8)
    windowed = save_scorenet(
        tmp_path / "w.pt", build_scorenet(p).state_dict(), p, torch.zeros(2), torch.ones(2)
    )
    from scoreda.filters.sda import SDAFilter

    with pytest.raises(ValueError, match=r"^filter\.weights: .* takes one state \(scorenet\.window=0\)"):
        SDAFilter.from_config({"name": "sda", "weights": str(windowed)})
    for key, value in [("background_stride", 0), ("t_max", 1.5), ("guidance", "dps"), ("steps", 0)]:
        with pytest.raises(ValueError, match=rf"^filter\.{key}: "):
            SDAFilter(**{key: value})


@pytest.mark.slow
def test_sda_smoother_script_over_a_window_of_two_filters_runs(tmp_path, tmp_path_factory):
    """``scripts/sda_smoother.py`` on the cycles 1–4 of two small SQG runs with the same truth (EnSF
    and LETKF), a tiny network over windows of 3 states: per state and channel, the smoother's and
    each filter's RMSE against the truth (the filters' equal to their own metrics.csv), the samples'
    spread, smoother.png; a run with another truth is refused, naming it."""
    from conftest import ENV, _tiny_scorenet, run_cycle, tiny

    weights = _tiny_scorenet(tmp_path_factory, False, window=1)
    small = [o for o in tiny() if not o.startswith("filter.")] + ["cycles=4"]
    rows = {f: run_cycle(tmp_path / f, *small, f"filter={f}") for f in ("ensf", "letkf")}
    run_cycle(tmp_path / "other", *small, "filter=letkf", "seed=1")
    script = [sys.executable, str(ROOT / "scripts" / "sda_smoother.py")]
    common = ["--weights", str(weights), "--start", "1", "--length", "4", "--samples", "2", "--steps", "4"]
    out = tmp_path / "smoother"

    def smoother(second: str) -> subprocess.CompletedProcess:
        cmd = [*script, str(tmp_path / "ensf"), str(tmp_path / second), *common, "--out", str(out)]
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)

    r = smoother("letkf")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "smoother.json").read_text())
    assert res["k"] == 1 and res["cycles"] == [1, 2, 3, 4] and len(res["sda"]) == 4
    assert all(math.isfinite(v) and v > 0 for row in res["sda"] for v in row.values())
    assert (out / "smoother.png").stat().st_size > 10_000
    for f in ("ensf", "letkf"):
        (name,) = [n for n in res["filters"] if n.startswith(f"{f}:")]
        got = [row["headline"] for row in res["filters"][name]]
        want = [float(w["rmse_analysis"]) for w in rows[f] if 1 <= int(w["cycle"]) <= 4]
        assert got == pytest.approx(want, rel=1e-5)
    r = smoother("other")
    assert r.returncode != 0 and "other: its truth differs" in r.stderr
