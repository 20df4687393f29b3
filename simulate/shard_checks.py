"""Whether a shard is whole and undamaged: its content checksum (:func:`content_sha256`, stored in
the ``content_sha256`` attribute by :func:`simulate.dataset_io.write_shard`), :func:`shard_is_complete`
(structure only, cheap) and :func:`verify_shard` (decodes every dataset and compares the checksum).

numpy, h5py and the standard library only (plus the core :mod:`speckle_embed.formats`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from speckle_embed.formats import DATA_PATH, MASK_PATH, TMP_SUFFIX, TRUTH_GROUP

__all__ = ["CHECKSUM_ATTR", "FRAME_BLOCK", "content_sha256", "shard_is_complete", "verify_shard"]

CHECKSUM_ATTR = "content_sha256"
"""File attribute: sha256 of the shard's contents (:func:`content_sha256`), set by :func:`write_shard`."""

FRAME_BLOCK = 64
"""Frames converted/checked/hashed at a time (bounds temporary memory)."""


def content_sha256(frames, truth: Mapping[str, np.ndarray], mask: np.ndarray) -> str:
    """sha256 (hex) of a shard's contents as stored: frames (float32), mask (uint16), truth.

    Covered: the frames' float32 bytes (C order, hashed ``FRAME_BLOCK`` frames at a
    time), the mask's uint16 bytes, then each truth array in key order (name, shape and
    bytes as stored; strings as UTF-8, NUL-separated). Attributes are not covered (HDF5
    keeps them in the metadata, which h5py already refuses to open when damaged).
    Own code: no library hashes an HDF5 file's *decoded* datasets, and the file's bytes
    cannot hold their own digest.

    Parameters
    ----------
    frames : array_like (n, H, W) or h5py.Dataset
    truth : dict of str to ndarray or h5py.Dataset
    mask : array_like (H, W)
    """
    h = hashlib.sha256()
    n = frames.shape[0]
    h.update(f"frames{tuple(frames.shape)}".encode())
    for start in range(0, n, FRAME_BLOCK):
        with np.errstate(over="ignore", invalid="ignore"):
            block = np.asarray(frames[start:start + FRAME_BLOCK], dtype=np.float32)
        h.update(np.ascontiguousarray(block).tobytes())
    h.update(f"mask{tuple(mask.shape)}".encode())
    h.update(np.ascontiguousarray(np.asarray(mask[()], dtype=np.uint16)).tobytes())
    for key in sorted(truth):
        arr = truth[key]
        if isinstance(arr, h5py.Dataset):
            arr = arr.asstr()[()] if h5py.check_string_dtype(arr.dtype) else arr[()]
        arr = np.asarray(arr)
        h.update(f"\0truth/{key}{arr.shape}{arr.dtype.kind}".encode())
        if arr.dtype.kind in "OUS":
            h.update(b"\0".join(str(v).encode("utf-8") if not isinstance(v, bytes) else v
                                for v in arr.ravel()))
        else:
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def shard_is_complete(path) -> bool:
    """Whether ``path`` is a complete shard written by :func:`write_shard`.

    True when the file exists under its final (non-``.tmp``) name, opens with h5py, has
    the ``format`` attribute of this writer, a 3-D ``/entry_1/data_1/data`` whose length
    equals the ``n_frames`` attribute, the mask, and truth arrays of that length. Never
    raises for a missing, truncated or foreign file (returns False).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    bool
    """
    p = Path(os.fspath(path))
    if p.name.endswith(TMP_SUFFIX) or not p.is_file():
        return False
    try:
        with h5py.File(p, "r") as f:
            if not str(f.attrs.get("format", "")).startswith("speckle_embed-shard-"):
                return False
            data = f.get(DATA_PATH)
            if not isinstance(data, h5py.Dataset) or data.ndim != 3:
                return False
            n_attr = f.attrs.get("n_frames")
            if n_attr is None or int(n_attr) != data.shape[0]:
                return False
            mask = f.get(MASK_PATH)
            if not isinstance(mask, h5py.Dataset) or mask.shape != data.shape[1:]:
                return False
            truth = f.get(TRUTH_GROUP)
            if truth is not None:
                for item in truth.values():
                    if isinstance(item, h5py.Dataset) and (item.ndim == 0 or item.shape[0] != data.shape[0]):
                        return False
        return True
    except Exception:  # noqa: BLE001 - any failure to read means "not complete"
        return False


def verify_shard(path) -> str | None:
    """Why ``path`` cannot be reused, or None when it is complete and undamaged.

    Checks :func:`shard_is_complete`, then decodes every dataset and compares
    :func:`content_sha256` with the ``content_sha256`` attribute stored at writing, so a
    shard damaged inside a compressed chunk (or edited since) is caught. Costs one read and
    decompression of the shard.

    Returns
    -------
    str or None
        A short reason (``"incomplete or unreadable"``, ``"no content checksum"``,
        ``"unreadable data: ..."``, ``"checksum mismatch"``), or None.
    """
    if not shard_is_complete(path):
        return "incomplete or unreadable"
    try:
        with h5py.File(os.fspath(path), "r") as f:
            stored = f.attrs.get(CHECKSUM_ATTR)
            if stored is None:
                return "no content checksum (written by an older version)"
            truth = f.get(TRUTH_GROUP)
            items = {k: v for k, v in truth.items() if isinstance(v, h5py.Dataset)} if truth else {}
            actual = content_sha256(f[DATA_PATH], items, f[MASK_PATH])
    except Exception as exc:  # noqa: BLE001 - a failing decompression is damage
        return f"unreadable data: {type(exc).__name__}: {exc}"
    if actual != (stored.decode() if isinstance(stored, bytes) else str(stored)):
        return "checksum mismatch (damaged or modified after writing)"
    return None
