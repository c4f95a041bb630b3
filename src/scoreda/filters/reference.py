"""The filters' analyses written as plain loops: the oracles of the tests and the baselines of
``scripts/bench_filters.py``. Slow on purpose (a Python loop over members or grid points); never
used in a run."""

from __future__ import annotations

import torch

from scoreda.filters.ensf import EnSF
from scoreda.filters.letkf import LETKF, gaspari_cohn
from scoreda.filters.processing import inflate, relax_spread
from scoreda.observations import ObservationOperator
from scoreda.seeding import counter_normal, noise_key


@torch.no_grad()
def ensf_member_loop(ensf: EnSF, prior, y, operator, generator=None) -> torch.Tensor:
    """The baseline: ``ensf.analyse(prior, y, operator, generator)`` (one process) written as a Python
    loop over members inside the loop over pseudo-time. The same standardisation, schedules, prior
    score (paired or mixture, M×M products in float64), semi-implicit likelihood step, counter-based
    noise ξ(step, member, index) and RTPS — only the batching over members is gone."""
    prior = inflate(prior, ensf.inflation)
    M, d = prior.shape
    key, cols = noise_key(generator), slice(0, d)
    floor = 1e-6 * prior.std().clamp_min(1e-30).item()
    mean, std = prior.mean(0, keepdim=True), prior.std(0, keepdim=True).clamp_min(floor)
    x = (prior - mean) / std
    if ensf.prior_score == "mixture":
        x = x.double()
        x_sq = (x * x).sum(1)
    y = y.to(prior)
    if operator.linear:
        curv = operator.curvature(mean) * std[0] ** 2
    z = [counter_normal(key, 0, slice(i, i + 1), cols, dtype=prior.dtype) for i in range(M)]
    sched = ensf.schedule
    ts = torch.linspace(1.0, ensf.t_end, ensf.n_steps + 1, dtype=torch.float64).tolist()
    for k, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        dt, h = t - t_next, 1.0 - t
        b, g2 = sched.drift_diffusion(t)
        a, b2 = sched.alpha(t), sched.beta_sq(t)
        for i in range(M):
            zi = z[i]  # [1, d]
            if ensf.prior_score == "paired":  # pulled toward its own member
                score = (a * x[i : i + 1] - zi) / b2
            else:  # w_j = softmax_j(−‖z − α x_j‖² / 2β²), ‖z‖² cancels
                w = torch.softmax((2.0 * a * (zi.double() @ x.T) - a * a * x_sq[None]) / (2.0 * b2), dim=1)
                score = ((a * (w @ x)).to(zi.dtype) - zi) / b2
            xz = mean + std * zi
            if h > 0:
                score = score + h * std * operator.likelihood_score(xz, y)
            xi = counter_normal(key, k + 1, slice(i, i + 1), cols, dtype=prior.dtype)
            dz = dt * (g2 * score - b * zi) + (dt**0.5) * (g2**0.5) * xi
            if ensf.implicit and h > 0:
                c = curv if operator.linear else operator.curvature(xz) * std**2
                dz = dz / (1.0 + dt * g2 * h * c)
            z[i] = zi + dz
    return relax_spread(mean + std * torch.cat(z), prior, ensf.rtps)


@torch.no_grad()
def analyse_point_loop(
    letkf: LETKF, prior: torch.Tensor, y: torch.Tensor, operator: ObservationOperator
) -> torch.Tensor:
    """Reference/baseline: Python loop over grid points, for tests and benchmarks.

    ``letkf.analyse`` written plainly: for every state point s (level c, row i, column j) compute
    the periodic distances r to all observations, keep those with r < cutoff, weight them
    w = GC(r)·λ/σo², and do one ETKF with A = (M − 1)I + Ybᵀ diag(w) Yb (eigh). Vectorised over
    observations only: d Python iterations, no sharing between levels."""
    processing = letkf.processing
    prior, _ = processing.before(prior, y, operator)
    M, d = prior.shape
    C, H, W = letkf.grid(d)
    mean = prior.mean(0)
    xb = prior - mean
    hx = operator(prior)
    ybar = hx.mean(0)
    yb, dy = hx - ybar, y.to(hx) - ybar  # [M, p], [p]
    ind = operator.indices.to(prior.device)
    oc, oi, oj = ind // (H * W), (ind % (H * W)) // W, ind % W
    eye = torch.eye(M, dtype=hx.dtype, device=hx.device)
    xa = torch.empty_like(prior)
    for s in range(d):
        c, i, j = s // (H * W), (s % (H * W)) // W, s % W
        di, dj = (oi - i).abs(), (oj - j).abs()
        di, dj = torch.minimum(di, H - di), torch.minimum(dj, W - dj)
        r = letkf.dx * torch.sqrt((di * di + dj * dj).double())
        sel = r < letkf.cutoff
        lam_j = torch.where(oc[sel] == c, 1.0, letkf.cross_level)
        w = (gaspari_cohn(r[sel], letkf.cutoff) * lam_j / float(operator.sigma) ** 2).to(hx.dtype)
        ys = yb[:, sel]  # [M, k]
        lam, v = torch.linalg.eigh((M - 1) * eye + (ys * w) @ ys.T)
        wbar = v @ ((v.T @ (ys @ (w * dy[sel]))) / lam)
        t = (v * ((M - 1) / lam).sqrt()) @ v.T + wbar[:, None]
        xa[:, s] = mean[s] + xb[:, s].to(t.dtype) @ t
    return processing.after(xa, prior, operator)
