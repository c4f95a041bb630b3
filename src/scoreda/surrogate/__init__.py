"""The ViT surrogate (seed 002): model, consolidated weights file, and the surrogate as a ``Dynamics``.

Names are imported lazily, so ``import scoreda.surrogate`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ARCH_KEYS": "vit",
    "ViTSurrogate": "vit",
    "build_vit": "vit",
    "count_parameters": "vit",
    "flops_per_sample": "vit",
    "WEIGHTS_FORMAT": "weights",
    "save_weights": "weights",
    "load_weights": "weights",
    "ViTDynamics": "dynamics",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"scoreda.surrogate.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
