"""Paths in configs: the one rule for resolving a relative path.

A core module (standard library only): the simulator imports it too.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["absolute_path"]


def absolute_path(path: str | os.PathLike, base: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded; a relative path is taken relative to ``base`` and normalised.

    Examples
    --------
    >>> absolute_path("data/../runs", "/work").as_posix(), absolute_path("/abs/x", "/work").as_posix()
    ('/work/runs', '/abs/x')
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() else Path(os.path.normpath(Path(base) / p))
