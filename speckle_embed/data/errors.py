"""Errors of the dataset readers: each message names the file (and frame)."""
from __future__ import annotations

__all__ = ["DatasetError", "CorruptShardError"]


class DatasetError(ValueError):
    """A dataset file cannot be used as asked; the message names the file (and frame)."""


class CorruptShardError(DatasetError, OSError):
    """A file is empty, truncated or otherwise unreadable as HDF5."""
