"""scoreda: cycled, score-based data assimilation for turbulent geophysical flows."""

__version__ = "0.1.0"
