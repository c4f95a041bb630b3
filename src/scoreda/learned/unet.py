"""ε_θ(x_t, t) for periodic states [B, C, H, W]: a U-Net with circular padding and inverted-bottleneck
residual blocks modulated by the diffusion time (seed 003, Appendix A), and the denoising loss.

Block (width c, expansion e, kernel k), with LN the LayerNorm over channels at each point and
(a, b) = Linear(emb(t)):

    x ← x + W₂ · SiLU(conv_k(LN(x) · (1 + a) + b)),   conv_k: c → e·c (circular),  W₂: e·c → c (1×1)

Levels l = 0 … L−1 of widths ``hidden[l]`` and ``blocks[l]`` blocks on the way down and on the way up;
between levels a 2×2 stride-2 convolution down and a nearest ×2 upsampling plus 1×1 convolution up,
the skip added. H and W must be divisible by 2^(L−1). Every residual block is one item of
``ScoreUNet.blocks`` (FSDP wraps each; ``checkpoint=True`` recomputes them in the backward pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scoreda.learned.schedule import VPCosine


def channel_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the channel axis of [B, C, H, W] at every grid point, no affine."""
    mean = x.mean(dim=1, keepdim=True)
    var = (x - mean).square().mean(dim=1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [B, dim] of t ∈ [0, 1]: sin and cos of t·f, f geometric in [1, 10⁴]."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(1e4), half, device=t.device, dtype=torch.float32))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Block(nn.Module):
    """One inverted-bottleneck residual block, time-modulated (see the module docstring)."""

    def __init__(self, width: int, emb: int, kernel: int, expansion: int):
        super().__init__()
        self.modulation = nn.Linear(emb, 2 * width)
        self.expand = nn.Conv2d(
            width, expansion * width, kernel, padding=kernel // 2, padding_mode="circular"
        )
        self.project = nn.Conv2d(expansion * width, width, 1)
        nn.init.zeros_(self.project.weight)  # each block starts as the identity
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        a, b = self.modulation(e)[:, :, None, None].chunk(2, dim=1)
        h = channel_norm(x) * (1 + a) + b
        return x + self.project(F.silu(self.expand(h)))


class ScoreUNet(nn.Module):
    """ε_θ(x_t, t[, c]): [B, C, H, W], [B] (and a condition c [B, ``condition``, H, W], concatenated to
    x_t at the input: DiffDA's forecast) → [B, C, H, W]."""

    def __init__(
        self,
        channels: int,
        hidden: tuple[int, ...] = (16, 32, 64),
        blocks: tuple[int, ...] = (3, 3, 3),
        kernel: int = 5,
        expansion: int = 4,
        emb: int = 64,
        checkpoint: bool = False,
        condition: int = 0,
    ):
        super().__init__()
        if len(hidden) != len(blocks) or not hidden:
            raise ValueError(f"hidden {tuple(hidden)} and blocks {tuple(blocks)}: one of each per level")
        self.levels, self.n_blocks, self.checkpoint = len(hidden), tuple(blocks), checkpoint
        self.embed = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.emb = emb
        self.channels, self.condition = channels, condition
        self.inp = nn.Conv2d(channels + condition, hidden[0], 1)
        self.out = nn.Conv2d(hidden[0], channels, 1)
        self.down = nn.ModuleList(
            nn.Conv2d(hidden[i], hidden[i + 1], 2, stride=2) for i in range(len(hidden) - 1)
        )
        self.up = nn.ModuleList(nn.Conv2d(hidden[i + 1], hidden[i], 1) for i in range(len(hidden) - 1))
        # down blocks of level 0, 1, …, L−1, then up blocks of level L−2, …, 0 (the bottom level once)
        widths = [w for w, n in zip(hidden, blocks, strict=True) for _ in range(n)]
        widths += [w for w, n in reversed(list(zip(hidden[:-1], blocks[:-1], strict=True))) for _ in range(n)]
        self.blocks = nn.ModuleList(Block(w, emb, kernel, expansion) for w in widths)

    def _run(self, block: Block, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return checkpoint(block, x, e, use_reentrant=False)
        return block(x, e)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % 2 ** (self.levels - 1) or x.shape[-2] % 2 ** (self.levels - 1):
            raise ValueError(f"grid {tuple(x.shape[-2:])} is not divisible by 2^{self.levels - 1}")
        if (cond is None) != (self.condition == 0) or (cond is not None and cond.shape[1] != self.condition):
            raise ValueError(f"the network takes a condition of {self.condition} channels")
        if cond is not None:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        e = self.embed(time_features(t, self.emb).to(x.dtype))
        h, skips, k = self.inp(x), [], 0
        for level in range(self.levels):
            for _ in range(self.n_blocks[level]):
                h, k = self._run(self.blocks[k], h, e), k + 1
            if level < self.levels - 1:
                skips.append(h)
                h = self.down[level](h)
        for level in reversed(range(self.levels - 1)):
            h = skips.pop() + self.up[level](F.interpolate(h, scale_factor=2, mode="nearest"))
            for _ in range(self.n_blocks[level]):
                h, k = self._run(self.blocks[k], h, e), k + 1
        return self.out(channel_norm(h))


class DenoisingLoss(nn.Module):
    """The module the trainer fits: forward(x₀) = ε_θ(μ_t x₀ + σ_t ε, t) − ε with t ~ U(0, 1) and
    ε ~ N(0, I) drawn per sample from torch's generator (per rank, saved in the trainer's
    checkpoints), so that the MSE against zeros is the denoising score-matching loss
    E_t E_ε ‖ε_θ(x_t, t) − ε‖² / (C·H·W). A conditional network gets [x₀, c] stacked along the
    channels (C + ``net.condition``) and only x₀ is noised."""

    def __init__(self, net: ScoreUNet, schedule: VPCosine):
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x0, cond = x0[:, : self.net.channels], (x0[:, self.net.channels :] if self.net.condition else None)
        t = torch.rand(x0.shape[0], device=x0.device)
        eps = torch.randn_like(x0)
        mu, sigma = (v.to(x0.dtype)[:, None, None, None] for v in self.schedule(t))
        return self.net(mu * x0 + sigma * eps, t, cond) - eps


def score(net: ScoreUNet, schedule: VPCosine, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """∇ log p_t(x) ≈ −ε_θ(x, t) / σ_t for x [B, C, H, W] and t [B] (or a scalar)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
    return -net(x, t) / schedule.sigma(t).to(x.dtype)[:, None, None, None]
