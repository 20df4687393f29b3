"""Removing the temporaries of interrupted shard writes (crash, ``kill -9``): only this package's
``<name>.<pid>-<hex>.tmp`` files, only when their writer is gone."""
from __future__ import annotations

import os
from pathlib import Path

from speckle_embed.atomic import remove_dead_temporaries

__all__ = ["cleanup_partial"]


def cleanup_partial(directory, *, max_age_s: float = 24 * 3600.0, recursive: bool = False,
                    min_age_s: float = 0.0) -> list[Path]:
    """Remove this package's stale temporaries left by interrupted writes (crash, ``kill -9``).

    The shards' policy for :func:`speckle_embed.atomic.remove_dead_temporaries` (the one scan):
    a day's age bound, and a path that is not a directory refused. Only names of
    :func:`speckle_embed.formats.parse_tmp_name` (``<name>.<pid>-<hex>.tmp``) are considered,
    so a user's ``notes.tmp`` is never touched. Such a file is removed when its writer is gone:
    no process with its pid exists on this machine, or the file was not modified for
    ``max_age_s`` (a writer on another host of a shared file system, or a reused pid). A
    temporary of a live writer is kept.

    Parameters
    ----------
    directory : str or os.PathLike
        Directory holding shards. A missing directory is not an error (nothing to clean).
    max_age_s : float, optional
        Remove a temporary older than this even if its pid is alive (default one day).
    recursive : bool, optional
        Also clean sub-directories.
    min_age_s : float, optional
        Never remove files modified less than this many seconds ago (default 0).

    Returns
    -------
    list of pathlib.Path
        The files removed, sorted.

    Raises
    ------
    NotADirectoryError
        If ``directory`` exists but is not a directory.
    """
    d = Path(os.fspath(directory))
    if not d.exists():
        return []
    if not d.is_dir():
        raise NotADirectoryError(f"cleanup_partial: {d} is not a directory")
    return remove_dead_temporaries(d, recursive=recursive, max_age_s=max_age_s, min_age_s=min_age_s)
