"""The consolidated weights file of a score network: what ``workflows/train_score.py`` writes and the
learned-score filters read. One ``torch.save`` dict (loadable with ``weights_only=True``)::

    {"format": "scoreda-scorenet-1",
     "scorenet": {ARCH_KEYS → value},          # the architecture and the schedule's η
     "state_dict": {name: fp32 CPU tensor},    # of the ScoreUNet
     "mean": Tensor[C], "std": Tensor[C],      # per-channel normalisation of one state
     "condition_mean": Tensor[C], "condition_std": Tensor[C],   # a conditional network's (DiffDA):
                                               # mean, std of the forecast (then mean, std: its error's)
     "meta": {...}}                            # free-form: steps, loss, seconds, config hash, …

Written atomically; every problem is one ``ValueError`` line that starts with the file's path.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from scoreda.io import atomic_output
from scoreda.learned.params import ARCH_KEYS, build_scorenet
from scoreda.learned.schedule import VPCosine
from scoreda.learned.unet import ScoreUNet
from scoreda.surrogate.weights import finite_fp32

FORMAT = "scoreda-scorenet-1"


def arch_of(p) -> dict:
    """The ``ARCH_KEYS`` of a ``scorenet`` section as plain Python values."""
    get = p.get if isinstance(p, dict) else lambda k: getattr(p, k)
    out = {k: get(k) for k in ARCH_KEYS}
    out["hidden"], out["blocks"] = [int(h) for h in out["hidden"]], [int(b) for b in out["blocks"]]
    return out


def _moments(path: Path, C: int, mean, std, what: str = "mean and std") -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    if mean.shape != (C,) or std.shape != mean.shape:
        raise ValueError(f"{path}: {what} must be [{C}], got {list(mean.shape)}, {list(std.shape)}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"{path}: {what} must be finite, std > 0")
    return mean, std


def save_scorenet(
    path: str | os.PathLike,
    state: dict,
    scorenet_cfg,
    mean,
    std,
    meta: dict | None = None,
    condition: tuple | None = None,
) -> Path:
    """Write the file atomically; refuse a non-finite weight, mean or std, or std ≤ 0. ``condition``:
    (mean, std) of a conditional network's forecast channels."""
    path = Path(path)
    arch = arch_of(scorenet_cfg)
    sd = finite_fp32(path, state)
    mean, std = _moments(path, arch["channels"], mean, std)
    blob = {"format": FORMAT, "scorenet": arch, "state_dict": sd, "mean": mean, "std": std}
    if bool(arch["condition"]) != (condition is not None):
        raise ValueError(f"{path}: a conditional network needs the condition's mean and std, and only it")
    if condition is not None:
        cm, cs = _moments(path, arch["channels"], *condition, "condition_mean and condition_std")
        blob |= {"condition_mean": cm, "condition_std": cs}
    blob["meta"] = dict(meta or {})
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_scorenet(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ScoreUNet, VPCosine, torch.Tensor, torch.Tensor, dict]:
    """``(network in eval mode, its schedule, mean[C], std[C], meta)`` from a weights file; a conditional
    network's forecast normalisation is ``meta["condition_mean"]``, ``meta["condition_std"]``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such score-network weights file (workflows/train_score.py writes it)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage, truncated, pickled objects outside the allowed types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable torch weights file ({first})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: format {got!r}, expected {FORMAT!r}")
    arch = blob.get("scorenet")
    if not isinstance(arch, dict) or set(arch) != set(ARCH_KEYS):
        raise ValueError(f"{path}: scorenet must hold exactly the keys {', '.join(ARCH_KEYS)}")
    try:
        with torch.device("meta"):
            net = build_scorenet(arch)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad architecture ({e})") from None
    want, sd = net.state_dict(), blob.get("state_dict")
    if not isinstance(sd, dict) or set(sd) != set(want):
        raise ValueError(f"{path}: state_dict does not match the architecture")
    for name, t in want.items():
        if tuple(sd[name].shape) != tuple(t.shape) or not torch.isfinite(sd[name]).all():
            raise ValueError(f"{path}: {name} has the wrong shape or is not finite")
    net.load_state_dict(sd, strict=True, assign=True)
    meta = dict(blob["meta"])
    if arch["condition"]:
        if not all(isinstance(blob.get(k), torch.Tensor) for k in ("condition_mean", "condition_std")):
            raise ValueError(f"{path}: a conditional network without condition_mean and condition_std")
        meta |= {k: blob[k].to(device) for k in ("condition_mean", "condition_std")}
    return (
        net.to(device).eval(),
        VPCosine(arch["eta"]),
        blob["mean"].to(device),
        blob["std"].to(device),
        meta,
    )


def load_for_filter(
    weights: str, shape: tuple[int, int, int] | None, condition: bool, name: str
) -> tuple[ScoreUNet, VPCosine, torch.Tensor, torch.Tensor, dict]:
    """``load_scorenet`` for ``filter=<name>``: the network of one state, conditional (DiffDA) or not as
    ``condition`` asks, on the model's grid ``shape`` (C, H, W); every problem one line naming
    ``filter.weights``."""
    try:
        net, schedule, mean, std, meta = load_scorenet(weights)
    except ValueError as e:
        raise ValueError(f"filter.weights: {e}") from None
    if condition and not net.condition:
        raise ValueError(
            f"filter.weights: {weights} is not a conditional network; filter={name} takes one "
            "trained with scorenet.condition=true (scorenet=diffda_cpu)"
        )
    if not condition and (net.condition or net.channels != mean.numel()):
        raise ValueError(
            f"filter.weights: {weights} is a network over windows of states or a conditional one "
            f"({net.channels} channels for states of {mean.numel()}); filter={name} takes one state "
            "(scorenet.window=0)"
        )
    if shape is not None:
        C, H, W = shape
        f = 2 ** (net.levels - 1)
        if net.channels != C or H % f or W % f:
            raise ValueError(
                f"filter.weights: {weights} takes {net.channels} channels on grids divisible by "
                f"{f}; the model's states are {C}×{H}×{W}"
            )
    return net, schedule, mean, std, meta
