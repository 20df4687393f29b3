"""When may a run reuse what an earlier (or concurrent) run left in its dataset folder.

A dataset folder holds one shard per structure plus two hidden files of this module:

* ``.simulate-dataset.json``, the folder's **identity**: every setting that changes the frames
  (dataset size and chunking, hit mix, noise, fluence, geometry, seed, method, oversampling)
  and the code version. The first run writes it; a later run with another identity is
  refused before any structure starts, with a message naming the differing keys, unless it
  passes ``overwrite=True`` (then the identity is replaced and every shard whose own stored
  identity differs is regenerated). Settings that do not change the frames (``device``,
  ``threads``, ``progress``, ``out_dir``, ``run.shard_index``/``num_shards``) are not part of it.
* ``.<name>.h5.lock`` per shard, an OS file lock (``filelock``, i.e. ``flock``) held while the
  shard is checked and written, so two processes never write the same shard; the second one
  waits, then finds the shard complete. The OS drops the lock when its holder dies (kill -9).

Every shard also stores its identity (attribute ``dataset_identity``, JSON) and a content
checksum (:func:`simulate.dataset_io.verify_shard`), so a shard copied from elsewhere, left
by an older version or damaged is not reused.

Own code rather than a library: the identity is this simulator's own list of settings.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from filelock import FileLock, Timeout

from speckle_embed.atomic import write_bytes_atomically

__all__ = ["IDENTITY_ATTR", "MANIFEST_NAME", "DatasetMismatchError", "identity_differences",
           "mismatch_message", "normalise_identity", "check_dataset_identity", "shard_lock"]

logger = logging.getLogger(__name__)

IDENTITY_ATTR = "dataset_identity"
"""Shard file attribute holding the JSON identity of the run that wrote it."""
MANIFEST_NAME = ".simulate-dataset.json"
"""Hidden file of a dataset folder holding the folder's identity."""
_DIR_LOCK_NAME = ".simulate-dataset.lock"


class DatasetMismatchError(ValueError):
    """The dataset folder (or a shard) was written with other settings than this run's."""


def normalise_identity(identity: Mapping[str, Any]) -> dict:
    """The identity as it reads back from JSON (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(dict(identity), sort_keys=True, default=_plain))


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def identity_differences(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ, e.g. ``["seed: 0 -> 1", "noise.gaussian_sigma: ..."]``.

    ``stored=None`` (no identity recorded) gives one entry saying so.

    Examples
    --------
    >>> identity_differences({"seed": 0, "noise": {"a": 1}}, {"seed": 1, "noise": {"a": 1}})
    ['seed: 0 -> 1']
    """
    if stored is None:
        return ["(no recorded identity: written by an older version or another program)"]
    a, b = _flatten(normalise_identity(stored)), _flatten(normalise_identity(wanted))
    return [f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, object()) != b.get(k, object())]


def mismatch_message(what: str, differences: list[str]) -> str:
    """One line: what differs and how to proceed."""
    shown = "; ".join(differences[:6]) + (f"; ... ({len(differences)} in all)"
                                          if len(differences) > 6 else "")
    return (f"{what} was written with other settings ({shown}); choose another out_dir, delete "
            f"it, or pass overwrite=true to regenerate")


def check_dataset_identity(out_dir: Path, identity: Mapping[str, Any], *,
                           overwrite: bool = False) -> None:
    """Record ``identity`` as the folder's identity, or refuse a folder that has another one.

    Raises
    ------
    DatasetMismatchError
        The folder's ``.simulate-dataset.json`` differs and ``overwrite`` is false. The
        message names the differing keys.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_NAME
    wanted = normalise_identity(identity)
    with FileLock(str(out_dir / _DIR_LOCK_NAME)):
        stored = None
        if manifest.is_file():
            try:
                stored = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                logger.warning("%s is unreadable (%s); replacing it", manifest, exc)
        if stored == wanted:
            return
        if stored is not None and not overwrite:
            raise DatasetMismatchError(mismatch_message(
                f"dataset folder {out_dir} ({MANIFEST_NAME})", identity_differences(stored, wanted)))
        write_bytes_atomically(json.dumps(wanted, indent=1, sort_keys=True).encode(), manifest)


@contextlib.contextmanager
def shard_lock(final: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside shard ``final`` for the block; wait if another process holds it."""
    final = Path(final)
    lock = FileLock(str(final.with_name(f".{final.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("%s is being written by another process (lock %s held); waiting for it",
                       final, os.path.basename(lock.lock_file))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
