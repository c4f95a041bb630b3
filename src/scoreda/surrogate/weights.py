"""The consolidated weights file of the ViT surrogate: what pre-training writes and the cycle reads.

One ``torch.save`` dict (loadable with ``weights_only=True``)::

    {"format": "scoreda-vit-1",
     "surrogate": {ARCH_KEYS → int | float | bool},    # the architecture; the file defines the model
     "state_dict": {name: fp32 CPU tensor},
     "mean": Tensor[C], "std": Tensor[C],              # per-level normalisation: z = (x − mean) / std
     "step_hours": float | None,                       # hours one forward advances (None or absent:
                                                       # one cycle of the model that runs it)
     "meta": {...}}                                    # free-form: step, loss, cycle, config hash, …

Written atomically (a file that exists is complete). Every problem is one ``ValueError`` line that
starts with the file's path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from scoreda.io import atomic_output
from scoreda.surrogate.vit import ARCH_KEYS, ViTSurrogate, arch_dict

WEIGHTS_FORMAT = "scoreda-vit-1"
_TOP_KEYS = {"format", "surrogate", "state_dict", "mean", "std", "meta"}
_OPTIONAL_KEYS = {"step_hours"}  # files written before it existed advance one cycle per forward


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _check_meta(path, value, where: str = "meta") -> None:
    """Only what ``torch.load(weights_only=True)`` reads back: tensors, dicts (str keys), lists, scalars."""
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_meta(path, v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: {where} key {k!r} is not a string")
            _check_meta(path, v, f"{where}.{k}")
        return
    raise ValueError(f"{path}: {where} has type {type(value).__name__} (tensors, dicts, lists, scalars only)")


def _norm_vector(path, name: str, value, channels: int) -> torch.Tensor:
    t = torch.as_tensor(value).detach().to("cpu", torch.float32).reshape(-1).clone()
    if t.numel() != channels:
        raise ValueError(f"{path}: {name} has {t.numel()} values, expected {channels} (one per level)")
    if not torch.isfinite(t).all():
        raise ValueError(f"{path}: {name} is not finite")
    if name == "std" and not (t > 0).all():
        raise ValueError(f"{path}: std must be > 0, got {t.tolist()}")
    return t


def _step_hours(path, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{path}: step_hours must be a positive number or None, got {value!r}")
    return float(value)


def finite_fp32(path: Path, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous float32 CPU copies of a state dict; ``ValueError`` naming ``path`` and the first
    weight that is not finite."""
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu", torch.float32).contiguous().clone()
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: weight {name} is not finite")
        out[name] = t
    return out


def save_weights(
    path: str | os.PathLike,
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    surrogate_cfg: Mapping,
    mean,
    std,
    meta: dict | None = None,
) -> Path:
    """Write the weights file atomically; refuse non-finite weights, mean or std, or std ≤ 0. The step
    is ``surrogate_cfg["step_hours"]`` where present (None: one cycle)."""
    path = Path(path)
    arch = arch_dict(surrogate_cfg)
    step_hours = _step_hours(path, surrogate_cfg.get("step_hours"))
    sd = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    state = finite_fp32(path, sd)
    meta = dict(meta or {})
    _check_meta(path, meta)
    blob = {
        "format": WEIGHTS_FORMAT,
        "surrogate": arch,
        "state_dict": state,
        "mean": _norm_vector(path, "mean", mean, arch["channels"]),
        "std": _norm_vector(path, "std", std, arch["channels"]),
        "step_hours": step_hours,
        "meta": meta,
    }
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ViTSurrogate, torch.Tensor, torch.Tensor, dict]:
    """``(model in eval mode on device, mean[C], std[C], meta)``; the architecture and ``model.step_hours``
    come from the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage, truncated, pickled objects outside the allowed types
        raise ValueError(f"{path}: not a readable torch weights file ({_first_line(e)})") from None
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: format {got!r}, expected {WEIGHTS_FORMAT!r}")
    if not _TOP_KEYS <= set(blob) <= _TOP_KEYS | _OPTIONAL_KEYS:
        raise ValueError(f"{path}: keys {sorted(blob)}, expected {sorted(_TOP_KEYS)} (and step_hours)")
    step_hours = _step_hours(path, blob.get("step_hours"))
    if not isinstance(blob["surrogate"], dict) or set(blob["surrogate"]) != set(ARCH_KEYS):
        raise ValueError(f"{path}: surrogate must hold exactly the architecture keys {', '.join(ARCH_KEYS)}")
    try:
        arch = arch_dict(blob["surrogate"])
        with torch.device("meta"):  # shapes only; the tensors come from the file
            model = ViTSurrogate(**arch)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad architecture ({_first_line(e)})") from None
    sd = blob["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: state_dict is not a dict of tensors")
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or extra:
        raise ValueError(
            f"{path}: state_dict does not match the architecture (missing {missing}, unexpected {extra})"
        )
    for name, t in want.items():
        if tuple(sd[name].shape) != tuple(t.shape):
            raise ValueError(f"{path}: {name} has shape {tuple(sd[name].shape)}, expected {tuple(t.shape)}")
        if sd[name].dtype != torch.float32:
            raise ValueError(f"{path}: {name} has dtype {sd[name].dtype}, expected torch.float32")
        if not torch.isfinite(sd[name]).all():
            raise ValueError(f"{path}: weight {name} is not finite")
    if not isinstance(blob["meta"], dict):
        raise ValueError(f"{path}: meta is not a dict")
    mean = _norm_vector(path, "mean", blob["mean"], arch["channels"])
    std = _norm_vector(path, "std", blob["std"], arch["channels"])
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device).eval()
    model.step_hours = step_hours
    return model, mean.to(device), std.to(device), blob["meta"]
