"""Atomic writes: a reader sees either the previous complete file (or directory) or the new one,
whenever the writing process is killed. Temporary names are :func:`speckle_embed.formats.tmp_name`
(``<name>.<pid>-<hex>.tmp``; readers skip them)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from speckle_embed.formats import parse_tmp_name, pid_alive, tmp_sibling

__all__ = ["tmp_sibling", "replace_atomically", "write_bytes_atomically", "save_figure_atomically",
           "build_directory_atomically", "read_format_json"]


def remove_stale_temporaries(final) -> list[Path]:
    """Remove the temporaries of ``final`` (:func:`tmp_sibling` names) whose writer is gone.

    Only names that :func:`speckle_embed.formats.parse_tmp_name` recognises as temporaries of
    ``final`` are touched, and only when no process ``pid`` runs on this machine (a writer killed
    by ``kill -9`` or a power cut). Other ``.tmp`` files, and temporaries of live writers, stay.

    Returns
    -------
    list of Path
        The files removed.
    """
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for p in final.parent.iterdir():
        t = parse_tmp_name(p.name)
        if t is not None and t.final == final.name and p.is_file() and not pid_alive(t.pid):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


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
