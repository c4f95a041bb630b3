"""The ViT surrogate of seed paper 002 (Table II): x(t) ↦ x(t + Δt) on normalised model states (Δt =
``surrogate.step_hours``, 12 h in the paper; a 12-h cycle is then 12 h/Δt steps, ``Rollout``).

Shapes: input and output ``[B, C, H, W]`` (C levels, H = W = ``img_size``); patch P gives
N = (H/P)·(W/P) tokens of width D (``embed_dim``).

    tokens   = embed(x) + pos                                     [B, N, D]
    embed    = level aggregation: per level ℓ, Conv2d(1, D, P, P)(x_ℓ) + e_ℓ  → [B, N, C, D], then the
               C tokens of each patch merged by one cross-attention with a learned query q [1, 1, D]
               (the authors' "variable aggregation"); otherwise one Conv2d(C, D, P, P)
    blocks   = depth × pre-LN:  z ← z + DropPath(Attn(LN z)),  z ← z + DropPath(MLP(LN z))
    Attn     = proj ∘ softmax(Q Kᵀ / √d_h) V per head (``scaled_dot_product_attention``), d_h = D/heads
    MLP      = Linear(D, r·D) → GELU → dropout → Linear(r·D, D) → dropout  (r = ``mlp_ratio``)
    head     = LN → head_depth × (Linear(D, D) → GELU) → Linear(D, C·P²) → un-patchify  [B, C, H, W]
    output   = x + head  if ``residual``  else  head

Dropout ``drop_rate`` acts on the embedded tokens, the attention weights, the attention projection
and the MLP; stochastic depth rises linearly from 0 (first block) to ``drop_path`` (last block).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

#: the architecture keys of ``scoreda.config.Surrogate`` (what a weights file records)
ARCH_KEYS: tuple[str, ...] = (
    "img_size",
    "channels",
    "patch",
    "embed_dim",
    "depth",
    "heads",
    "mlp_ratio",
    "drop_rate",
    "drop_path",
    "head_depth",
    "level_aggregation",
    "residual",
)

_TYPES = {
    "img_size": int,
    "channels": int,
    "patch": int,
    "embed_dim": int,
    "depth": int,
    "heads": int,
    "mlp_ratio": float,
    "drop_rate": float,
    "drop_path": float,
    "head_depth": int,
    "level_aggregation": bool,
    "residual": bool,
}


def arch_dict(cfg: Mapping) -> dict:
    """The architecture keys of ``cfg`` (a mapping or DictConfig) as plain Python values."""
    missing = [k for k in ARCH_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"surrogate: missing architecture keys {', '.join(missing)}")
    out = {}
    for k in ARCH_KEYS:
        v = cfg[k]
        if _TYPES[k] is int and (isinstance(v, bool) or int(v) != v):
            raise ValueError(f"surrogate.{k}: expected an integer, got {v!r}")
        out[k] = _TYPES[k](v)
    return out


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[len(pos), dim]: (sin(p·ω_k), cos(p·ω_k)), ω_k = 10000^(−k/(dim/2)), k = 0 … dim/2 − 1."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angle = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """[h·w, dim] 2-D sin-cos table (row-major tokens): first half encodes the row, second the column."""
    if dim % 4:
        raise ValueError(f"surrogate.embed_dim: {dim} must be a multiple of 4 for the 2-D sin-cos table")
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], dim=1).float()


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p, scale by 1/(1−p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention [B, N, D] → [B, N, D]: qkv = Linear(D, 3D); softmax(QKᵀ/√d_h)V; proj."""

    def __init__(self, dim: int, heads: int, drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = float(drop)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_drop if self.training else 0.0
        z = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # [B, heads, N, d_h]
        return self.proj_drop(self.proj(z.transpose(1, 2).reshape(B, N, D)))


class MLP(nn.Module):
    """Linear(D, hidden) → GELU → dropout → Linear(hidden, D) → dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN transformer block: z + DropPath(Attn(LN z)), then z + DropPath(MLP(LN z)); 12D²+13D params
    at mlp_ratio 4."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(mlp_ratio * dim), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTSurrogate(nn.Module):
    """ViT surrogate ``forward(x[B, C, H, W]) -> [B, C, H, W]`` (normalised state at t ↦ at t + Δt,
    Δt = ``step_hours``, by default one 12-h cycle)."""

    def __init__(
        self,
        img_size: int = 64,
        channels: int = 2,
        patch: int = 4,
        embed_dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path: float = 0.0,
        head_depth: int = 2,
        level_aggregation: bool = True,
        residual: bool = True,
    ):
        super().__init__()
        if img_size % patch:
            raise ValueError(f"surrogate.patch: {patch} does not divide surrogate.img_size={img_size}")
        if embed_dim % heads:
            raise ValueError(f"surrogate.heads: {heads} does not divide surrogate.embed_dim={embed_dim}")
        self.arch = dict(
            img_size=img_size,
            channels=channels,
            patch=patch,
            embed_dim=embed_dim,
            depth=depth,
            heads=heads,
            mlp_ratio=float(mlp_ratio),
            drop_rate=float(drop_rate),
            drop_path=float(drop_path),
            head_depth=head_depth,
            level_aggregation=bool(level_aggregation),
            residual=bool(residual),
        )
        C, P, D = channels, patch, embed_dim
        self.img_size, self.channels, self.patch = img_size, C, P
        self.step_hours: float | None = None  # hours one forward advances (None: one model cycle)
        self.grid = img_size // P  # tokens per side
        self.num_tokens = self.grid**2
        self.level_aggregation = bool(level_aggregation)
        self.residual = bool(residual)
        if self.level_aggregation:
            self.token_embeds = nn.ModuleList(nn.Conv2d(1, D, P, stride=P) for _ in range(C))
            self.level_embed = nn.Parameter(torch.zeros(C, D))
            self.level_query = nn.Parameter(torch.zeros(1, 1, D))
            self.level_agg = nn.MultiheadAttention(D, heads, batch_first=True)
        else:
            self.token_embed = nn.Conv2d(C, D, P, stride=P)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, D))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth else []
        self.blocks = nn.ModuleList(Block(D, heads, mlp_ratio, drop_rate, r) for r in rates)
        self.norm = nn.LayerNorm(D)
        layers: list[nn.Module] = []
        for _ in range(head_depth):
            layers += [nn.Linear(D, D), nn.GELU()]
        layers.append(nn.Linear(D, C * P * P))
        self.head = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Sin-cos positional (2-D) and level (1-D) embeddings; trunc-normal(0.02) weights of every Linear,
        patch Conv2d and the aggregation's input projection; zero biases; LayerNorm (1, 0); query 0."""
        D = self.pos_embed.shape[-1]
        self.pos_embed.copy_(sincos_2d(D, self.grid, self.grid)[None])
        convs = list(self.token_embeds) if self.level_aggregation else [self.token_embed]
        if self.level_aggregation:
            self.level_embed.copy_(sincos_1d(D, torch.arange(self.channels)).float())
            self.level_query.zero_()
            nn.init.trunc_normal_(self.level_agg.in_proj_weight, std=0.02)
            nn.init.zeros_(self.level_agg.in_proj_bias)
        for conv in convs:
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D] of ``x[B, C, H, W]`` (before the positional embedding)."""
        if not self.level_aggregation:
            return self.token_embed(x).flatten(2).transpose(1, 2)
        B, C = x.shape[:2]
        # per level ℓ: Conv2d(1, D, P, P)(x_ℓ) → [B, N, D]; stacked → [B, N, C, D] (+ level embedding e_ℓ)
        levels = [emb(x[:, i : i + 1]).flatten(2).transpose(1, 2) for i, emb in enumerate(self.token_embeds)]
        tok = torch.stack(levels, 2)
        tok = (tok + self.level_embed).flatten(0, 1)  # [B·N, C, D]
        q = self.level_query.expand(tok.shape[0], -1, -1)  # [B·N, 1, D]
        z, _ = self.level_agg(q, tok, tok, need_weights=False)
        return z.view(B, self.num_tokens, -1)

    def unpatchify(self, y: torch.Tensor) -> torch.Tensor:
        """[B, N, C·P²] (per token: level, row in patch, column in patch) → [B, C, H, W]."""
        B, g, P, C = y.shape[0], self.grid, self.patch, self.channels
        y = y.view(B, g, g, C, P, P).permute(0, 3, 1, 4, 2, 5)  # [B, C, g, P, g, P]
        return y.reshape(B, C, g * P, g * P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pos_drop(self.embed(x) + self.pos_embed)
        for blk in self.blocks:
            z = blk(z)
        y = self.unpatchify(self.head(self.norm(z)))
        return x + y if self.residual else y


class Rollout(nn.Module):
    """f_θ^k: ``x[B, C, H, W]`` ↦ f_θ(… f_θ(x)) (k applications of one ViT), e.g. a 12-h forecast of a 3-h
    step. ``blocks`` are the ViT's (the FSDP units); ``unwrap_state_dict`` gives the ViT's own names."""

    def __init__(self, vit: ViTSurrogate, k: int):
        super().__init__()
        if int(k) != k or k < 1:
            raise ValueError(f"rollout: k must be a positive integer, got {k}")
        self.vit, self.k = vit, int(k)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vit.blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.k):
            x = self.vit(x)
        return x

    @staticmethod
    def unwrap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict with the ``vit.`` prefix dropped (the weights file holds the plain ViT)."""
        return {k.removeprefix("vit."): v for k, v in state.items()}


def build_vit(cfg: Mapping, device: str | torch.device | None = None) -> ViTSurrogate:
    """The ``ViTSurrogate`` of the architecture keys ``ARCH_KEYS`` of ``cfg`` (e.g. ``cfg.surrogate``; its
    ``step_hours``, where present, becomes ``model.step_hours``), initialised
    once on ``device`` (default: torch's default device): the layers are made on the meta device, then
    allocated and given ``reset_parameters`` — no second pass of torch's default inits. The weights are a
    function of the RNG state of ``device`` (``torch.manual_seed`` before the call)."""
    device = torch.get_default_device() if device is None else torch.device(device)
    with torch.device("meta"):
        model = ViTSurrogate(**arch_dict(cfg))
    if device.type != "meta":
        model.to_empty(device=device)
        model.reset_parameters()
    model.step_hours = None if cfg.get("step_hours") is None else float(cfg["step_hours"])
    return model


def count_parameters(cfg: Mapping) -> int:
    """Number of parameters, built on the meta device (nothing allocated; 2.5B in well under a second)."""
    with torch.device("meta"):
        model = build_vit(cfg)
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(cfg: Mapping) -> float:
    """Training FLOPs of one sample (forward + backward): 6·N·params + 12·depth·N²·D.

    N = (img_size/patch)² tokens. 6·N·params counts every weight as one multiply-add (2 FLOPs) per
    token forward and twice that backward. Attention adds per block the two N×N×D products QKᵀ and AV:
    2·2·N²·D forward and twice that backward, 12·N²·D in all (the level aggregation attends over only
    C keys per token and is left out).
    """
    a = arch_dict(cfg)
    n = (a["img_size"] // a["patch"]) ** 2
    return 6.0 * n * count_parameters(a) + 12.0 * a["depth"] * n**2 * a["embed_dim"]
