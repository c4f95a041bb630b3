"""Checkpoint I/O: atomic, checksummed netCDF4/HDF5 files handed between workflow stages."""

from scoreda.io.atomic import atomic_output, write_text
from scoreda.io.checkpoint import (
    STATE_DIMS,
    CheckpointError,
    config_hash,
    read_dataset_file,
    read_selections,
    read_state,
    read_variable,
    write_dataset_file,
    write_state,
)

__all__ = [
    "atomic_output",
    "write_text",
    "STATE_DIMS",
    "CheckpointError",
    "config_hash",
    "read_dataset_file",
    "read_selections",
    "read_state",
    "read_variable",
    "write_dataset_file",
    "write_state",
]
