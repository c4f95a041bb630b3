"""``filter.kernel=fused``: the compiled EnSF kernel against its torch form (the code the GPU runs),
its noise against ``counter_normal(pairs=True)``, any cut of the array against the whole, the
analysis against ``kernel=torch`` in distribution, the kernel cache and the clear errors."""

import math
import os
import subprocess
import sys

import pytest
import torch
from scipy import stats

from scoreda import kernels
from scoreda.filters.ensf import EnSF, fused
from scoreda.filters.ensf.schedule import Schedule
from scoreda.observations import make_observation_operator
from scoreda.seeding import counter_normal

KEY = 11


def case(m: int = 6, c: int = 3000, seed: int = 0):
    """Members x̃ [m, c], mean, std [c], a likelihood observing every 4th index (v, w) [c], a table."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, c, generator=g)
    mean, std = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
    w = (torch.arange(c) % 4 == 0).float() * 4.0
    v = torch.randn(c, generator=g) * w
    return x, mean, std, (v, w), fused.step_table(Schedule(20, 0.05, 0.5).steps())


@pytest.mark.parametrize("s", range(5))
def test_kernel_noise_is_counter_normal_pairs(s):
    """ξ_s of the kernel (z = 0 stepped with P = Q = A = 0, S = 1) against the torch reference with
    torch's log/cos/sin: ≤ 2e-6 (measured 1.1–1.4e-6: the kernel's polynomials, float32)."""
    x, mean, std, _, _ = case()
    ident = torch.tensor([[0, 0, 0, 0, 0, 0, 1.0]] * 5, dtype=torch.float64)
    z = torch.zeros_like(x)
    fused.run(z, x, mean, std, (None, None), KEY, (3, 7), (s, s + 1), ident, False)
    ref = counter_normal(KEY, s, range(3, 3 + x.shape[0]), range(7, 7 + x.shape[1]), pairs=True)
    assert float((z - ref).abs().max()) <= 2e-6


def test_paired_noise_is_standard_normal_and_halves_independent():
    """Both halves: 10⁶ draws each with the moments of N(0, 1) (5 standard errors), KS; the cos and
    sin halves of one hash uncorrelated, also in |ξ|."""
    a = counter_normal(1234, 6, range(200), range(5000), torch.float64, pairs=True).reshape(-1)
    b = counter_normal(1234, 7, range(200), range(5000), torch.float64, pairs=True).reshape(-1)
    n = a.numel()
    for x in (a, b):
        assert abs(float(x.mean())) < 5 / math.sqrt(n)
        assert abs(float(x.var()) - 1) < 5 * math.sqrt(2 / n)
        assert abs(stats.kurtosis(x.numpy())) < 5 * math.sqrt(24 / n)
        assert stats.kstest(x.numpy()[:200_000], "norm").pvalue > 1e-4
    for u, v in ((a, b), (a.abs(), b.abs())):
        assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 5 / math.sqrt(n)


@pytest.mark.parametrize("observed", [True, False])
def test_kernel_equals_its_torch_form(observed):
    """All 20 steps of the paired integration, C kernel vs ``run_torch`` (the same affine step in
    torch ops, what CUDA compiles): ≤ 5e-6 on values of O(5) (measured 9.5e-7)."""
    x, mean, std, lik, table = case()
    lik = lik if observed else (None, None)
    z1, z2 = torch.empty_like(x), torch.empty_like(x)
    fused.run(z1, x, mean, std, lik, KEY, (3, 7), (0, 21), table, True)
    fused.run_torch(z2, x, mean, std, lik, KEY, (3, 7), (0, 21), table, True)
    assert float((z1 - z2).abs().max()) <= 5e-6


def test_kernel_mixture_step_equals_its_torch_form():
    """One mixture step: z against ``run_torch`` with the prior term w·x̃ (≤ 5e-6, measured 9.5e-7)
    and the returned G = z·x̃ᵀ against float64 torch (relative ≤ 1e-6, measured 6e-8)."""
    x, mean, std, lik, table = case()
    g = torch.Generator().manual_seed(5)
    members = torch.randn(9, x.shape[1], generator=g)
    wts = torch.softmax(torch.randn(x.shape[0], 9, generator=g, dtype=torch.float64), 1)
    z1, z2 = x.clone(), x.clone()
    G = fused.mixture_step(z1, members, wts, mean, std, lik, KEY, (3, 7), 5, table, True, True)
    fused.run_torch(z2, (wts @ members.double()).float(), mean, std, lik, KEY, (3, 7), (5, 6), table, True)
    assert float((z1 - z2).abs().max()) <= 5e-6
    want = z1.double() @ members.double().T
    assert float((G - want).abs().max()) <= 1e-6 * float(want.abs().max())


@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_pieces_equal_the_whole(threads):
    """Rows and columns cut anywhere (not at the kernel's 256-column blocks), on 1 or 2 OpenMP
    threads: the same bits as the whole array."""
    x, mean, std, (v, w), table = case(m=7, c=1000)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:

        def piece(rows: slice, cols: slice):
            z = torch.empty(rows.stop - rows.start, cols.stop - cols.start)
            lik = (v[cols].contiguous(), w[cols].contiguous())
            fused.run(
                z, x[rows, cols].contiguous(), mean[cols], std[cols], lik, KEY, (rows.start, cols.start),
                (0, 21), table, True,
            )  # fmt: skip
            return z

        whole = piece(slice(0, 7), slice(0, 1000))
        cut = torch.cat([torch.cat([piece(r, c) for c in (slice(0, 333), slice(333, 1000))], 1)
                         for r in (slice(0, 3), slice(3, 7))])  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert torch.equal(whole, cut)


@pytest.mark.parametrize("prior_score", ["paired", "mixture"])
def test_fused_analysis_matches_torch_in_distribution(prior_score):
    """Same problem, other draws: the fused and the torch analysis are both within Monte-Carlo
    error of each other (mean: 3 σ_KF √(2/M) per index in RMS; spread within 3 %)."""
    g = torch.Generator().manual_seed(0)
    d, M = 4000, 20
    prior = torch.randn(M, d, generator=g) + 3.0
    op = make_observation_operator({"kind": "subsample", "every": 2, "sigma": 1.0}, (1, 1, d))
    y = op.sample(torch.randn(d, generator=g) + 3.0, g)
    out = {}
    for kernel in ("torch", "fused"):
        f = EnSF(prior_score=prior_score, kernel=kernel, adaptive_inflation=False, unobserved="none")
        out[kernel] = f.analyse(prior, y, op, torch.Generator().manual_seed(1)).ensemble
    a, b = out["torch"], out["fused"]
    obs = op.indices
    assert not torch.equal(a, b)
    diff = (a.mean(0) - b.mean(0))[obs].pow(2).mean().sqrt()
    assert float(diff) <= 3 * (0.5**0.5) * (2 / M) ** 0.5  # σ_KF = √½ with unit prior and σo
    ratio = float(b.std(0).pow(2).mean().sqrt() / a.std(0).pow(2).mean().sqrt())
    assert abs(ratio - 1) <= 0.03


def test_fused_refuses_what_it_cannot_run():
    """A nonlinear operator, spectral standardisation and an unknown kernel: one line naming the key."""
    d = 64
    prior = torch.randn(5, d)
    op = make_observation_operator({"kind": "identity", "sigma": 0.1, "transform": "arctan"}, (1, 1, d))
    f = EnSF(kernel="fused", adaptive_inflation=False, unobserved="none", n_steps=2)
    with pytest.raises(ValueError, match=r"^filter.kernel=fused: its likelihood score must be v − w x"):
        f.analyse(prior, torch.zeros(d), op)
    with pytest.raises(ValueError, match=r"^filter.kernel=fused takes filter.standardise=point"):
        EnSF(kernel="fused", standardise="spectral")
    with pytest.raises(ValueError, match=r"^filter.kernel: expected torch or fused, got 'numba'"):
        EnSF(kernel="numba")
    with pytest.raises(ValueError, match=r"^filter.kernel=fused: it runs in float32"):
        f.analyse(prior.double(), torch.zeros(d, dtype=torch.float64), op)


def test_kernel_cache_builds_once_and_names_a_missing_compiler(tmp_path):
    """A fresh cache: the first load builds (one .so a kernel, no temporary left), a second process
    finds them; with no compiler the error says so."""
    env = {**os.environ, "SCOREDA_KERNEL_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "scoreda.kernels"]
    for _ in range(2):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert sorted(f.suffix for f in tmp_path.iterdir()) == [".so"] * len(kernels.KERNELS)
    p = subprocess.run(cmd, env={**env, "CC": "no-such-cc", "SCOREDA_KERNEL_CACHE": str(tmp_path / "x")},
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode != 0
    assert "KernelUnavailable: no C compiler ('no-such-cc' not found; set $CC)" in p.stderr
    assert kernels.cache_dir() != tmp_path  # this process's cache is untouched


@pytest.mark.slow
def test_compiled_step_equals_the_kernel():
    """The GPU path's code, ``torch.compile``d here for CPU (inductor's C++ in place of Triton; the
    same graph): 20 paired steps against the C kernel, ≤ 5e-6 (measured 9.5e-7; compiling ≈ 25 s)."""
    x, mean, std, lik, table = case()
    z1, z2 = torch.empty_like(x), torch.empty_like(x)
    fused.run(z1, x, mean, std, lik, KEY, (3, 7), (0, 21), table, True)
    fused.run_torch(z2, x, mean, std, lik, KEY, (3, 7), (0, 21), table, True, compiled=True)
    assert float((z1 - z2).abs().max()) <= 5e-6


def test_a_damaged_cached_kernel_is_built_again(tmp_path):
    """A truncated .so in the cache (injected) is rebuilt and loaded, under a timeout: the kernel
    then runs (one analysis), and the cache holds one good file a kernel."""
    env = {**os.environ, "SCOREDA_KERNEL_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "scoreda.kernels"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    (so,) = tmp_path.glob("ensf_fused-*.so")
    so.write_bytes(so.read_bytes()[:100])  # truncated
    code = (
        "import torch; from scoreda.filters.ensf import EnSF; "
        "from scoreda.observations import PointObservation as P; "
        "a = EnSF(kernel='fused', n_steps=3, adaptive_inflation=False, unobserved='none')"
        ".analyse(torch.randn(4, 64), torch.zeros(64), P(torch.arange(64), 1.0, 64)).ensemble; "
        "assert torch.isfinite(a).all()"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    names = sorted(f.name for f in tmp_path.iterdir())  # every kernel's .so, no temporary
    assert so.name in names and len(names) == len(kernels.KERNELS) and so.stat().st_size > 1000
