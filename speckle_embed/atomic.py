"""Atomic writes: a reader sees either the previous complete file (or directory) or the new one,
whenever the writing process is killed. Temporary names are :func:`speckle_embed.formats.tmp_name`
(``<name>.<pid>-<hex>.tmp``; readers skip them)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from speckle_embed.formats import TMP_SUFFIX, parse_tmp_name, pid_alive, tmp_sibling

__all__ = ["tmp_sibling", "remove_dead_temporaries", "remove_stale_temporaries", "replace_atomically",
           "write_bytes_atomically", "save_figure_atomically", "build_directory_atomically", "read_format_json"]


def remove_dead_temporaries(directory, *, final_name: str | None = None, recursive: bool = False,
                            max_age_s: float | None = None, min_age_s: float | None = None) -> list[Path]:
    """Remove the temporaries in ``directory`` whose writer is gone: the one scan for them.

    Only names that :func:`speckle_embed.formats.parse_tmp_name` recognises
    (``<name>.<pid>-<hex>[.<tag>].tmp``) and that are plain files (not links) are considered, so a
    user's ``notes.tmp`` is never touched. One is removed when no process with its ``pid`` runs on
    this machine (a writer killed by ``kill -9`` or a power cut), or, with ``max_age_s``, when it
    was not modified for that long (a writer on another host of a shared file system, or a reused
    pid). A temporary of a live writer stays.

    Parameters
    ----------
    directory : str or os.PathLike
        Where to look. A missing directory, or one that is not a directory, has nothing to remove.
    final_name : str, optional
        Only the temporaries of this final file name (default: of any name).
    recursive : bool, optional
        Also look in sub-directories.
    max_age_s : float, optional
        Remove a temporary older than this many seconds even if its pid is alive (default: never).
    min_age_s : float, optional
        Never remove a temporary modified less than this many seconds ago (default: no bound).

    Returns
    -------
    list of Path
        The files removed, sorted.
    """
    d = Path(os.fspath(directory))
    if not d.is_dir():
        return []
    now = time.time()
    removed = []
    for p in sorted(d.rglob(f"*{TMP_SUFFIX}") if recursive else d.glob(f"*{TMP_SUFFIX}")):
        parsed = parse_tmp_name(p.name)
        if parsed is None or (final_name is not None and parsed.final != final_name):
            continue
        try:
            if not p.is_file() or p.is_symlink():
                continue
            age = now - p.stat().st_mtime if (max_age_s is not None or min_age_s is not None) else None
            if min_age_s is not None and age < min_age_s:
                continue
            if pid_alive(parsed.pid) and (max_age_s is None or age < max_age_s):
                continue
            p.unlink()
            removed.append(p)
        except FileNotFoundError:  # removed concurrently
            continue
    return removed


def remove_stale_temporaries(final) -> list[Path]:
    """Remove the temporaries of ``final`` (:func:`tmp_sibling` names) whose writer is gone.

    :func:`remove_dead_temporaries` of ``final``'s folder, for ``final``'s name only: other
    ``.tmp`` files, and temporaries of live writers, stay.

    Returns
    -------
    list of Path
        The files removed, sorted.
    """
    final = Path(final)
    return remove_dead_temporaries(final.parent, final_name=final.name)


def replace_atomically(write, final) -> Path:
    """Call ``write(binary_file)`` on a temporary sibling, fsync, then ``os.replace`` onto ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def write_bytes_atomically(data: bytes, final) -> Path:
    """Write ``data`` to ``final`` atomically."""
    return replace_atomically(lambda f: f.write(data), final)


def save_figure_atomically(fig, final, **savefig_kwargs) -> Path:
    """Save a matplotlib figure to ``final`` as PNG atomically, then close it.

    ``savefig_kwargs`` go to :meth:`matplotlib.figure.Figure.savefig` (``dpi``, ``bbox_inches``).
    """
    import matplotlib.pyplot as plt

    try:
        return replace_atomically(lambda f: fig.savefig(f, format="png", **savefig_kwargs), final)
    finally:
        plt.close(fig)


def build_directory_atomically(directory, write, *, own=None) -> Path:
    """Build a directory in a ``.tmp`` sibling with ``write(tmp_dir)``, then swap it into place.

    An existing ``directory`` is moved aside and removed only after the new one is in place.
    ``own``: the names of the files this writer owns; every other entry of an existing
    ``directory`` is moved into the new one instead of being deleted (if one cannot be moved,
    the old directory is left as its ``.old.tmp`` sibling rather than removed). ``None``: the
    whole directory is the writer's.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(directory)
    tmp.mkdir()
    try:
        write(tmp)
        if directory.exists():
            old = tmp_sibling(directory, "old")
            os.replace(directory, old)
            os.replace(tmp, directory)
            kept = True
            if own is not None:
                for entry in old.iterdir():
                    if entry.name not in own:
                        try:
                            os.replace(entry, directory / entry.name)
                        except OSError:
                            kept = False
            if kept:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_format_json(path, expected_format: str, error_cls: type, kind: str) -> dict:
    """Read the JSON manifest of a saved directory and check its ``format`` field.

    Raises ``FileNotFoundError`` if it is missing (naming ``kind``, e.g. "FewShotClassifier"),
    ``error_cls`` if it is not valid JSON or has another format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a saved {kind}: {path.name} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error_cls(f"{path} is corrupt (not valid JSON): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != expected_format:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise error_cls(f"{path} has format {got!r}; expected {expected_format!r}")
    return meta
