"""scoreda: cycled, score-based data assimilation for turbulent geophysical flows.

``scoreda.open_run(run_dir, artefact)`` and ``scoreda.open_metrics(run_dir)`` open a run's output as
xarray Datasets (:mod:`scoreda.data`); they are imported on first use, so ``import scoreda`` stays
cheap for the stage workers.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "open_metrics", "open_run"]

_LAZY = {"open_run": "scoreda.data", "open_metrics": "scoreda.data"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scoreda' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
