"""One HDF5/CXI shard file: finding shards, opening them read-only, their metadata and truth
labels, reading frames and masks, and the per-process cache of open files.

Reads the shards written by ``simulate.dataset_io.write_shard`` (layout in ``DESIGN.md``) and plain
CXI files from facilities (frames at a user-chosen dataset path, no truth). Unknown labels (files
without ``/entry_1/truth`` or without one of its keys) are ``-1`` (integers) or ``None`` (structure ids).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from speckle_embed.data.errors import CorruptShardError, DatasetError
from speckle_embed.formats import DATA_PATH, HIT_CLASSES, MASK_PATHS, TMP_SUFFIX, TRUTH_GROUP

__all__ = ["DEFAULT_DATA_PATH", "SHARD_SUFFIXES", "UNKNOWN", "ShardInfo", "discover_shards", "read_frames",
           "read_mask", "open_shard", "frames_dataset", "scan_shard", "HandleCache", "index_array", "read_rows"]

# HIT_CLASSES, TRUTH_GROUP, MASK_PATHS and TMP_SUFFIX are owned by speckle_embed.formats.
DEFAULT_DATA_PATH = DATA_PATH
"""Frames path read by default (alias of :data:`speckle_embed.formats.DATA_PATH`)."""
SHARD_SUFFIXES = (".h5", ".cxi")

UNKNOWN = -1
"""Label value of frames whose truth is not stored (e.g. facility CXI files)."""


def open_shard(path: Path) -> h5py.File:
    """Open ``path`` read-only, turning h5py's bare OSErrors into errors naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"dataset file {path} is a directory")
    if path.stat().st_size == 0:
        raise CorruptShardError(f"dataset file {path} is empty (0 bytes)")
    try:
        try:
            # No HDF5 file locking: read-only access, and locking fails on some cluster
            # file systems (Lustre/NFS: "unable to lock file, errno = 38").
            return h5py.File(path, "r", locking=False)
        except (TypeError, ValueError):  # h5py/HDF5 too old for the locking argument
            return h5py.File(path, "r")
    except OSError as exc:
        raise CorruptShardError(
            f"cannot open dataset file {path} as HDF5 (truncated, still being written or not "
            f"an HDF5 file): {exc}") from exc


def _candidate_datasets(f: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3) and len(found) < 10:
            found.append(f"/{name} {obj.shape}")

    try:
        f.visititems(visit)
    except Exception:  # noqa: BLE001 - only used to improve an error message
        pass
    return found


def frames_dataset(f: h5py.File, path: Path, data_path: str) -> h5py.Dataset:
    try:
        obj = f.get(data_path)
    except (KeyError, OSError, RuntimeError) as exc:  # e.g. dangling soft link
        raise DatasetError(f"{path}: cannot resolve dataset path {data_path!r}: {exc}") from exc
    if obj is None:
        hints = _candidate_datasets(f)
        hint = f"; 2-D/3-D datasets in the file: {', '.join(hints)}" if hints else ""
        raise DatasetError(f"{path} has no dataset {data_path!r}{hint}")
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{path}: {data_path!r} is a group, not a dataset of frames")
    if obj.ndim != 3:
        raise DatasetError(
            f"{path}: {data_path!r} has shape {obj.shape}; frames must be stored as (n, H, W)")
    if obj.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: {data_path!r} has non-numeric dtype {obj.dtype}")
    return obj


def _as_str(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None:
        return None
    return str(value)


@dataclass(frozen=True)
class ShardInfo:
    """What the index knows about one file, read without loading frames.

    Attributes
    ----------
    path : pathlib.Path
        Absolute path of the file.
    n_frames : int
        Number of frames (first axis of the frames dataset).
    frame_shape : tuple of int
        ``(H, W)`` in pixels.
    dtype : numpy.dtype
        Stored dtype of the frames (converted to float32 on reading).
    has_truth : bool
        Whether the file has ``/entry_1/truth``.
    """

    path: Path
    n_frames: int
    frame_shape: tuple[int, int]
    dtype: np.dtype
    has_truth: bool


def _read_truth(f: h5py.File, path: Path, n: int):
    """(has_truth, hit_class, n_particles, structure_id) of one file, checked against n."""
    hit = np.full(n, UNKNOWN, dtype=np.int64)
    npart = np.full(n, UNKNOWN, dtype=np.int64)
    sid = np.full(n, None, dtype=object)
    group = f.get(TRUTH_GROUP)
    if group is None:
        return False, hit, npart, sid
    if not isinstance(group, h5py.Group):
        raise DatasetError(f"{path}: {TRUTH_GROUP} is not a group")
    for key, item in group.items():
        if not isinstance(item, h5py.Dataset):
            continue
        if item.ndim == 0 or item.shape[0] != n:
            got = "a scalar" if item.ndim == 0 else f"length {item.shape[0]}"
            raise DatasetError(
                f"{path}: truth array {TRUTH_GROUP}/{key} has {got} but the file has {n} frames")
    try:
        names = json.loads(_as_str(f.attrs.get("hit_class_names")) or "null") or HIT_CLASSES
    except (ValueError, TypeError):
        names = HIT_CLASSES
    if "hit_class" in group:
        values = np.asarray(group["hit_class"][()])
        if values.dtype.kind not in "iu" or values.ndim != 1:
            raise DatasetError(
                f"{path}: {TRUTH_GROUP}/hit_class must be 1-D integers, got {values.dtype} {values.shape}")
        bad = np.flatnonzero((values < UNKNOWN) | (values >= len(names)))
        if bad.size:
            raise DatasetError(
                f"{path}: frame {bad[0]} has hit_class {values[bad[0]]}, not a code "
                f"0..{len(names) - 1} ({', '.join(names)}) or -1")
        hit[:] = values
    if "n_particles" in group:
        values = np.asarray(group["n_particles"][()])
        if values.dtype.kind not in "iu" or values.ndim != 1:
            raise DatasetError(
                f"{path}: {TRUTH_GROUP}/n_particles must be 1-D integers, got {values.dtype} {values.shape}")
        npart[:] = values
    if "structure_id" in group:
        ds = group["structure_id"]
        if ds.ndim != 1:
            raise DatasetError(f"{path}: {TRUTH_GROUP}/structure_id must be 1-D, got {ds.shape}")
        if ds.dtype.kind in "SO" or h5py.check_string_dtype(ds.dtype) is not None:
            raw = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) is not None else ds[()]
            sid[:] = [_as_str(v) for v in raw]
        else:
            sid[:] = [str(v) for v in ds[()]]
    return True, hit, npart, sid


def scan_shard(path: Path, data_path: str):
    with open_shard(path) as f:
        try:
            ds = frames_dataset(f, path, data_path)
            n = int(ds.shape[0])
            info = ShardInfo(path, n, (int(ds.shape[1]), int(ds.shape[2])), ds.dtype, False)
            has_truth, hit, npart, sid = _read_truth(f, path, n)
        except OSError as exc:  # metadata unreadable although the superblock was fine
            if isinstance(exc, DatasetError):
                raise
            raise CorruptShardError(f"cannot read metadata of {path}: {exc}") from exc
    return ShardInfo(path, n, info.frame_shape, info.dtype, has_truth), hit, npart, sid


def discover_shards(paths_or_dir, *, recursive: bool = False) -> list[Path]:
    """Resolve a directory, a file or a list of them into shard paths.

    Parameters
    ----------
    paths_or_dir : str, os.PathLike, or iterable of them
        Directories are searched for ``*.h5`` and ``*.cxi`` files (temporary ``*.tmp``
        files of unfinished writes are skipped); files are taken as given.
    recursive : bool, optional
        Search directories recursively.

    Returns
    -------
    list of pathlib.Path
        Absolute paths, directories' contents sorted by name, duplicates removed.

    Raises
    ------
    FileNotFoundError
        A given path does not exist.
    DatasetError
        A file given explicitly is an unfinished ``*.tmp`` file, or nothing was found.
    """
    if isinstance(paths_or_dir, (str, os.PathLike)):
        items: Iterable = [paths_or_dir]
    else:
        items = list(paths_or_dir)
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        p = Path(os.fspath(item)).expanduser()
        if p.is_dir():
            found = []
            for suffix in SHARD_SUFFIXES:
                pattern = f"*{suffix}"
                found += p.rglob(pattern) if recursive else p.glob(pattern)
            candidates = sorted(q for q in found if q.is_file() and not q.name.endswith(TMP_SUFFIX))
        elif p.exists():
            if p.name.endswith(TMP_SUFFIX):
                raise DatasetError(f"{p} is an unfinished temporary file of an interrupted write")
            candidates = [p]
        else:
            raise FileNotFoundError(f"dataset path {p} does not exist")
        for q in candidates:
            q = q.resolve()
            if q not in seen:
                seen.add(q)
                out.append(q)
    if not out:
        raise DatasetError(
            f"no shard files ({', '.join('*' + s for s in SHARD_SUFFIXES)}) found in {paths_or_dir}")
    return out


class HandleCache:
    """Open h5py files of the current process, LRU-bounded, discarded after a fork."""

    def __init__(self, max_open: int):
        self.max_open = max(1, int(max_open))
        self._pid = os.getpid()
        self._files: OrderedDict[Path, h5py.File] = OrderedDict()

    def get(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():
            # Inherited from the parent by fork: never share HDF5 handles across processes.
            self._files, inherited = OrderedDict(), self._files
            self._pid = os.getpid()
            for f in inherited.values():
                try:
                    f.close()
                except Exception:  # noqa: BLE001
                    pass
        f = self._files.get(path)
        if f is not None and f.id.valid:
            self._files.move_to_end(path)
            return f
        f = open_shard(path)
        self._files[path] = f
        while len(self._files) > self.max_open:
            _, old = self._files.popitem(last=False)
            old.close()
        return f

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                try:
                    f.close()
                except Exception:  # noqa: BLE001
                    pass
        self._files = OrderedDict()


def index_array(indices, n: int, what: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype == np.bool_:
        raise TypeError(f"{what}: boolean indices are not supported; use np.flatnonzero(mask)")
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{what}: indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    bad = np.flatnonzero((idx < -n) | (idx >= n))
    if bad.size:
        raise IndexError(f"{what}: index {idx[bad[0]]} out of range for {n} frames")
    return np.where(idx < 0, idx + n, idx)


def read_rows(ds: h5py.Dataset, path: Path, rows: np.ndarray, check_finite: bool,
               first_global: np.ndarray | None = None) -> np.ndarray:
    """Frames ``rows`` (any order, repeats allowed) of ``ds`` as float32 (k, H, W)."""
    out = np.empty((rows.size,) + tuple(ds.shape[1:]), dtype=np.float32)
    if rows.size == 0:
        return out
    uniq, inverse = np.unique(rows, return_inverse=True)
    try:
        if uniq.size == 1:
            block = ds[int(uniq[0])][None]
        elif uniq[-1] - uniq[0] + 1 == uniq.size:
            block = ds[int(uniq[0]):int(uniq[-1]) + 1]
        else:
            block = ds[uniq]
    except (OSError, RuntimeError) as exc:
        which = f"frame {uniq[0]}" if uniq.size == 1 else f"frames {uniq[0]}..{uniq[-1]}"
        raise CorruptShardError(f"cannot read {which} of {path} (corrupt or truncated): {exc}") from exc
    out[:] = block[inverse.reshape(-1)]
    if check_finite:
        ok = np.isfinite(out).reshape(out.shape[0], -1).all(axis=1)
        if not ok.all():
            j = int(np.argmin(ok))
            extra = "" if first_global is None else f" (dataset index {first_global[j]})"
            raise DatasetError(f"frame {rows[j]} of {path}{extra} contains NaN or inf")
    return out


def read_frames(path, indices=None, data_path: str = DEFAULT_DATA_PATH, *,
                check_finite: bool = False) -> np.ndarray:
    """Read frames of one file.

    Parameters
    ----------
    path : str or os.PathLike
    indices : int, slice, array_like of int, or None
        Frames to read (any order, negatives count from the end). ``None``: all.
    data_path : str, optional
        HDF5 path of the ``(n, H, W)`` frames.
    check_finite : bool, optional
        Raise :class:`DatasetError` naming the file and frame index on NaN/inf.

    Returns
    -------
    ndarray of float32
        ``(H, W)`` for an integer ``indices``, otherwise ``(k, H, W)``; photons.
    """
    p = Path(os.fspath(path))
    with open_shard(p) as f:
        ds = frames_dataset(f, p, data_path)
        n = ds.shape[0]
        if indices is None:
            rows = np.arange(n)
        elif isinstance(indices, slice):
            rows = np.arange(n)[indices]
        elif np.ndim(indices) == 0:
            rows = index_array([indices], n, f"read_frames({p})")
            return read_rows(ds, p, rows, check_finite)[0]
        else:
            rows = index_array(indices, n, f"read_frames({p})")
        return read_rows(ds, p, rows, check_finite)


def read_mask(path, mask_path: str | None = None) -> np.ndarray | None:
    """CXI pixel mask of one file.

    Parameters
    ----------
    path : str or os.PathLike
    mask_path : str, optional
        HDF5 path of the ``(H, W)`` mask. Default: ``/entry_1/data_1/mask``, then
        ``/entry_1/instrument_1/detector_1/mask``.

    Returns
    -------
    ndarray of uint16, shape (H, W), or None
        CXI bits (``0x1`` invalid, ``0x10`` shadowed, 0 good). ``None`` if no ``mask_path``
        was given and the file has no mask at the default locations.

    Raises
    ------
    DatasetError
        ``mask_path`` was given and is missing, or the mask is not 2-D integers.
    """
    p = Path(os.fspath(path))
    with open_shard(p) as f:
        candidates = (mask_path,) if mask_path is not None else MASK_PATHS
        for mp in candidates:
            try:
                obj = f.get(mp)
            except (KeyError, OSError, RuntimeError):
                obj = None
            if obj is None:
                continue
            if not isinstance(obj, h5py.Dataset) or obj.ndim != 2 or obj.dtype.kind not in "biu":
                raise DatasetError(f"{p}: mask {mp!r} must be a 2-D integer dataset")
            return np.asarray(obj[()], dtype=np.uint16)
    if mask_path is not None:
        raise DatasetError(f"{p} has no mask dataset {mask_path!r}")
    return None
