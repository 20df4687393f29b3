"""Atomic writes: a reader sees either the previous complete file (or directory) or the new one,
whenever the writing process is killed. Temporary names end in ``.tmp`` (readers skip them)."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path


def tmp_sibling(final: Path) -> Path:
    """``<name>.<pid>-<hex>.tmp`` beside ``final``: unique per writer."""
    final = Path(final)
    return final.with_name(f"{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(final) -> list[Path]:
    """Remove the temporaries of ``final`` (:func:`tmp_sibling` names) whose writer is gone.

    Only names of the form ``<final name>.<pid>-<8 hex>.tmp`` are touched, and only when no
    process ``pid`` runs on this machine (a writer killed by ``kill -9`` or a power cut).
    Other ``.tmp`` files, and temporaries of live writers, stay.

    Returns
    -------
    list of Path
        The files removed.
    """
    final = Path(final)
    pattern = re.compile(re.escape(final.name) + r"\.(\d+)-[0-9a-f]{8}\.tmp")
    removed = []
    if not final.parent.is_dir():
        return removed
    for p in final.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_file() and not _pid_alive(int(m.group(1))):
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


def build_directory_atomically(directory, write) -> Path:
    """Build a directory in a ``.tmp`` sibling with ``write(tmp_dir)``, then swap it into place.

    An existing ``directory`` is moved aside and removed only after the new one is in place.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(directory)
    tmp.mkdir()
    try:
        write(tmp)
        if directory.exists():
            old = tmp.with_name(tmp.name[:-len(".tmp")] + ".old.tmp")
            os.replace(directory, old)
            os.replace(tmp, directory)
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
