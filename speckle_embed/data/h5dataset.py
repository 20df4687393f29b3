"""Lazy, fork-safe access to diffraction frames stored in HDF5/CXI shards.

Reads the shards written by ``simulate.dataset_io.write_shard`` (layout in ``DESIGN.md``)
and plain CXI files from facilities (frames at a user-chosen dataset path, no truth).
Only numpy, h5py and torch are used: this module must import without the simulator.

* :func:`discover_shards` / :func:`open_dataset` build a :class:`ShardIndex`: shard lengths,
  frame shape and per-frame labels (``hit_class``, ``structure_id``, ``n_particles`` from
  ``/entry_1/truth``) are read once, frames are not.
* :class:`SpeckleH5Dataset` is a :class:`torch.utils.data.Dataset` returning
  ``(frame, hit_class, structure_index)``; files are opened lazily in the process that
  reads them and reopened after a fork, so it works with ``DataLoader(num_workers > 0)``.
* :func:`read_frames` and :func:`read_mask` are one-off conveniences.

Unknown labels (files without ``/entry_1/truth`` or without one of its keys) are ``-1``
(integers) or ``None`` (structure ids).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from speckle_embed.formats import DATA_PATH, HIT_CLASSES, MASK_PATHS, TMP_SUFFIX, TRUTH_GROUP

__all__ = [
    "DEFAULT_DATA_PATH",
    "TRUTH_GROUP",
    "HIT_CLASSES",
    "SHARD_SUFFIXES",
    "DatasetError",
    "CorruptShardError",
    "ShardInfo",
    "FrameLabels",
    "fit_to_shape",
    "fit_mask",
    "ShardIndex",
    "SpeckleH5Dataset",
    "discover_shards",
    "open_dataset",
    "read_frames",
    "read_mask",
]

# HIT_CLASSES, TRUTH_GROUP, MASK_PATHS and TMP_SUFFIX are owned by speckle_embed.formats.
DEFAULT_DATA_PATH = DATA_PATH
"""Frames path read by default (alias of :data:`speckle_embed.formats.DATA_PATH`)."""
SHARD_SUFFIXES = (".h5", ".cxi")

UNKNOWN = -1
"""Label value of frames whose truth is not stored (e.g. facility CXI files)."""


class DatasetError(ValueError):
    """A dataset file cannot be used as asked; the message names the file (and frame)."""


class CorruptShardError(DatasetError, OSError):
    """A file is empty, truncated or otherwise unreadable as HDF5."""


# ----------------------------------------------------------------------------- file helpers
def _h5open(path: Path) -> h5py.File:
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


def _frames_dataset(f: h5py.File, path: Path, data_path: str) -> h5py.Dataset:
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


# ----------------------------------------------------------------------------- metadata
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


@dataclass(frozen=True)
class FrameLabels:
    """Per-frame labels of a dataset, in dataset order (all arrays have shape ``(N,)``).

    Attributes
    ----------
    hit_class : ndarray of int64
        Hit-class codes (index into :data:`HIT_CLASSES`), ``-1`` where unknown.
    structure_index : ndarray of int64
        Index into the dataset's ``structure_names``, ``-1`` where unknown.
    n_particles : ndarray of int64
        Particles in the beam, ``-1`` where unknown.
    structure_id : ndarray of object
        Structure names (``str``), ``None`` where unknown.
    """

    hit_class: np.ndarray
    structure_index: np.ndarray
    n_particles: np.ndarray
    structure_id: np.ndarray

    def __len__(self) -> int:
        return int(self.hit_class.shape[0])

    def subset(self, indices) -> "FrameLabels":
        """Labels of the frames at ``indices`` (array of int, in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return FrameLabels(self.hit_class[idx], self.structure_index[idx],
                           self.n_particles[idx], self.structure_id[idx])


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


def _scan_file(path: Path, data_path: str):
    with _h5open(path) as f:
        try:
            ds = _frames_dataset(f, path, data_path)
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


# ----------------------------------------------------------------------------- handles
class _HandleCache:
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
        f = _h5open(path)
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


def _index_array(indices, n: int, what: str) -> np.ndarray:
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


def _read_rows(ds: h5py.Dataset, path: Path, rows: np.ndarray, check_finite: bool,
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


def fit_to_shape(frames: np.ndarray, shape, fill=0) -> np.ndarray:
    """Centre-crop and/or pad the last two axes of ``frames`` to ``shape = (H, W)``.

    The beam centre of a detector frame is its geometric centre ``((h-1)/2, (w-1)/2)``
    (the convention of :func:`speckle_embed.preprocess.resample_center`), so a frame of
    ``(h, w)`` pixels is placed with its centre on the centre of the ``(H, W)`` window: when
    ``H - h`` is even the centre is kept exactly; when it is odd the frame lands half a pixel
    off (the smaller side gets the extra row/column of padding or cropping).

    Parameters
    ----------
    frames : ndarray (..., h, w)
    shape : (H, W)
    fill : scalar
        Value of the padded pixels (padding is also what :func:`fit_mask` marks bad).

    Returns
    -------
    ndarray (..., H, W), same dtype; ``frames`` itself if the shape already matches.
    """
    H, W = (int(v) for v in shape)
    h, w = frames.shape[-2:]
    if (h, w) == (H, W):
        return frames
    out = np.full(frames.shape[:-2] + (H, W), fill, dtype=frames.dtype)
    src, dst = [], []
    for n_in, n_out in ((h, H), (w, W)):
        if n_out >= n_in:   # pad
            o = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(o, o + n_in))
        else:               # crop
            o = (n_in - n_out) // 2
            src.append(slice(o, o + n_out))
            dst.append(slice(0, n_out))
    out[..., dst[0], dst[1]] = frames[..., src[0], src[1]]
    return out


def fit_mask(bad: np.ndarray | None, native_shape, shape) -> np.ndarray:
    """Bad-pixel mask (True = bad) of frames fitted by :func:`fit_to_shape`: padding is bad.

    Parameters
    ----------
    bad : ndarray of bool (h, w) or None
        The shard's own mask (None: every pixel good).
    native_shape : (h, w)
        The shard's frame size.
    shape : (H, W)
        The common size.

    Returns
    -------
    ndarray of bool (H, W)
    """
    base = np.zeros(tuple(native_shape), dtype=bool) if bad is None else np.asarray(bad, dtype=bool)
    if base.shape != tuple(native_shape):
        raise DatasetError(f"mask shape {base.shape} does not match the frame shape {tuple(native_shape)}")
    return fit_to_shape(base, shape, fill=True)


def _common_shape(infos, frame_shape) -> tuple[int, int]:
    shapes = [info.frame_shape for info in infos]
    if frame_shape is None:
        for info in infos[1:]:
            if info.frame_shape != infos[0].frame_shape:
                raise DatasetError(
                    f"frames of mixed sizes: {infos[0].path} has (H, W) = {infos[0].frame_shape} "
                    f"but {info.path} has {info.frame_shape}; give a common frame_shape "
                    f"(training: data.frame_shape=max or data.frame_shape=[H,W]) to centre-crop/pad "
                    f"every shard to it (padding is masked as bad pixels)")
        return infos[0].frame_shape
    if isinstance(frame_shape, str):
        if frame_shape != "max":
            raise ValueError(f"frame_shape must be None, 'max' or (H, W); got {frame_shape!r}")
        return (max(s[0] for s in shapes), max(s[1] for s in shapes))
    try:
        h, w = (int(v) for v in frame_shape)
    except (TypeError, ValueError):
        raise ValueError(f"frame_shape must be None, 'max' or (H, W); got {frame_shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"frame_shape must be positive; got {frame_shape!r}")
    return (h, w)


# ----------------------------------------------------------------------------- index
class ShardIndex:
    """Frame index over a list of shard files, with labels but without frames in memory.

    Dataset index ``i`` runs over the shards in order: shard ``s`` holds indices
    ``offsets[s] .. offsets[s + 1] - 1``.

    Parameters
    ----------
    paths : str, os.PathLike or iterable of them
        Files and/or directories (see :func:`discover_shards`).
    data_path : str, optional
        HDF5 path of the ``(n, H, W)`` frames, default ``/entry_1/data_1/data``; give e.g.
        ``"/entry_1/instrument_1/detector_1/data"`` for facility CXI files.
    structure_names : sequence of str, optional
        Fixes the mapping structure id -> ``structure_index`` (use the training set's names
        for a test set). Default: sorted unique structure ids found in the files.
    check_finite : bool, optional
        Check every frame read for NaN/inf and raise :class:`DatasetError` naming the file
        and frame index. Default False.
    recursive : bool, optional
        Search directories recursively.
    max_open_files : int, optional
        Files kept open per process (least recently used are closed). Default 64.
    frame_shape : None, "max" or (H, W), optional
        Size the frames are read at. None (default): every shard must have the same size.
        ``"max"`` or ``(H, W)``: shards of other sizes (e.g. a 128x128 pnCCD next to a
        172x172 detector) are centre-cropped/padded to it by :func:`fit_to_shape` (``"max"``:
        the largest height and width); :meth:`shard_mask` marks the padding bad.

    Attributes
    ----------
    shards : tuple of ShardInfo
        ``ShardInfo.frame_shape`` is each file's own size.
    offsets : ndarray of int64, shape (n_shards + 1,)
    frame_shape : tuple of int
        ``(H, W)`` of every frame read (common to all shards).
    labels : FrameLabels
        Labels of every frame, shape ``(len(self),)``.
    structure_names : tuple of str

    Raises
    ------
    FileNotFoundError, CorruptShardError, DatasetError
        Missing/empty/truncated files, missing frames dataset, truth arrays whose length
        differs from the frame count, shards of different frame sizes, unknown structure ids.
    """

    def __init__(self, paths, data_path: str = DEFAULT_DATA_PATH, *,
                 structure_names: Sequence[str] | None = None, check_finite: bool = False,
                 recursive: bool = False, max_open_files: int = 64, frame_shape=None):
        self.data_path = data_path
        self.check_finite = bool(check_finite)
        files = discover_shards(paths, recursive=recursive)
        infos, hits, nparts, sids = [], [], [], []
        for p in files:
            info, hit, npart, sid = _scan_file(p, data_path)
            infos.append(info)
            hits.append(hit)
            nparts.append(npart)
            sids.append(sid)
        self.shards: tuple[ShardInfo, ...] = tuple(infos)
        self.offsets = np.concatenate([[0], np.cumsum([s.n_frames for s in infos])]).astype(np.int64)
        self.frame_shape: tuple[int, int] = _common_shape(infos, frame_shape)  # discover_shards found >= 1
        if int(self.offsets[-1]) == 0:
            raise DatasetError(f"the shards hold no frames: {', '.join(str(p) for p in files)}")

        structure_id = np.concatenate(sids)
        known = sorted({s for s in structure_id if s is not None})
        if structure_names is None:
            self.structure_names: tuple[str, ...] = tuple(known)
        else:
            self.structure_names = tuple(str(s) for s in structure_names)
            if len(set(self.structure_names)) != len(self.structure_names):
                raise ValueError("structure_names contains duplicates")
        lookup = {name: i for i, name in enumerate(self.structure_names)}
        structure_index = np.full(structure_id.shape[0], UNKNOWN, dtype=np.int64)
        for j, s in enumerate(structure_id):
            if s is None:
                continue
            k = lookup.get(s)
            if k is None:
                shard, local = self.locate(j)
                raise DatasetError(
                    f"{self.shards[shard].path}: frame {local} has structure_id {s!r}, which is "
                    f"not in the given structure_names")
            structure_index[j] = k
        self.labels = FrameLabels(np.concatenate(hits), structure_index, np.concatenate(nparts),
                                  structure_id)
        self._cache = _HandleCache(max_open_files)

    # -- sizes
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def paths(self) -> tuple[Path, ...]:
        """Paths of the shards, in index order."""
        return tuple(s.path for s in self.shards)

    @property
    def has_truth(self) -> bool:
        """Whether every shard carries ``/entry_1/truth``."""
        return all(s.has_truth for s in self.shards)

    def __repr__(self) -> str:
        return (f"ShardIndex({len(self.shards)} shards, {len(self)} frames of "
                f"{self.frame_shape[0]}x{self.frame_shape[1]}, data_path={self.data_path!r})")

    # -- addressing
    def locate(self, index: int) -> tuple[int, int]:
        """``(shard number, frame index within the shard)`` of dataset index ``index``."""
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} frames")
        if i < 0:
            i += n
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return s, i - int(self.offsets[s])

    # -- reading
    def _dataset(self, shard: int) -> h5py.Dataset:
        info = self.shards[shard]
        f = self._cache.get(info.path)
        return _frames_dataset(f, info.path, self.data_path)

    def read_frame(self, index: int) -> np.ndarray:
        """Frame at dataset index ``index`` as float32 ``(H, W)`` photons."""
        s, local = self.locate(index)
        rows = _read_rows(self._dataset(s), self.shards[s].path, np.array([local]),
                          self.check_finite, np.array([int(self.offsets[s]) + local]))
        return fit_to_shape(rows, self.frame_shape)[0]

    def shard_mask(self, shard: int, mask_path: str | None = None) -> np.ndarray:
        """Bad-pixel mask (True = bad) of shard ``shard`` at :attr:`frame_shape`, bool (H, W).

        The file's CXI mask (:func:`read_mask`; none = every pixel good), with the pixels
        added by centre-padding (see ``frame_shape``) marked bad.
        """
        info = self.shards[shard]
        m = read_mask(info.path, mask_path)
        return fit_mask(None if m is None else m != 0, info.frame_shape, self.frame_shape)

    def read_frames(self, indices) -> np.ndarray:
        """Frames at dataset indices ``indices`` (any order) as float32 ``(k, H, W)``."""
        idx = _index_array(indices, len(self), "ShardIndex.read_frames")
        out = np.empty((idx.size,) + self.frame_shape, dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            local = idx[sel] - self.offsets[s]
            out[sel] = fit_to_shape(_read_rows(self._dataset(int(s)), self.shards[s].path, local,
                                               self.check_finite, idx[sel]), self.frame_shape)
        return out

    def verify_finite(self, block_frames: int = 64) -> None:
        """Scan every frame and raise :class:`DatasetError` at the first NaN/inf one.

        The error names the file and the frame index within it. Reads all frames
        (streamed ``block_frames`` at a time).
        """
        for s, info in enumerate(self.shards):
            ds = self._dataset(s)
            for start in range(0, info.n_frames, block_frames):
                rows = np.arange(start, min(start + block_frames, info.n_frames))
                _read_rows(ds, info.path, rows, True, rows + self.offsets[s])

    def close(self) -> None:
        """Close the files this process has open (they reopen on the next read)."""
        self._cache.close()

    def __enter__(self) -> "ShardIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):  # pickling (spawn workers): never carry open handles
        state = self.__dict__.copy()
        state["_cache"] = _HandleCache(self._cache.max_open)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = _HandleCache(self._cache.max_open)


def open_dataset(paths_or_dir, data_path: str = DEFAULT_DATA_PATH, **kwargs) -> ShardIndex:
    """Index the shards at ``paths_or_dir`` without loading frames.

    Parameters
    ----------
    paths_or_dir : str, os.PathLike or iterable of them
        A directory of ``*.h5``/``*.cxi`` shards, one file, or a list of files/directories.
    data_path : str, optional
        HDF5 path of the ``(n, H, W)`` frames (default ``/entry_1/data_1/data``).
    **kwargs
        ``structure_names``, ``check_finite``, ``recursive``, ``max_open_files``,
        ``frame_shape`` of :class:`ShardIndex`.

    Returns
    -------
    ShardIndex

    Examples
    --------
    >>> index = open_dataset("data/train")                       # doctest: +SKIP
    >>> index.labels.hit_class[:5], index.read_frame(0).shape    # doctest: +SKIP
    """
    return ShardIndex(paths_or_dir, data_path, **kwargs)


# ----------------------------------------------------------------------------- torch dataset
class SpeckleH5Dataset(Dataset):
    """Frames of HDF5 shards as a :class:`torch.utils.data.Dataset`.

    Item ``i`` is ``(frame, hit_class, structure_index)``: ``frame`` a float32 tensor of
    shape ``(H, W)`` in photons (after ``transform`` if given), ``hit_class`` and
    ``structure_index`` Python ints (``-1`` when the file has no truth). Files are opened
    lazily by the process that reads them and reopened after a fork, so the dataset can
    be used with ``DataLoader(num_workers > 0)`` (fork, spawn or forkserver).

    Parameters
    ----------
    paths : ShardIndex, or anything :func:`open_dataset` accepts
    indices : array_like of int, optional
        Dataset indices (into the full index) forming this dataset, e.g. a train split.
        Default: all frames.
    transform : callable, optional
        Applied to the ``(H, W)`` float32 frame tensor. Must be picklable for spawn workers.
    data_path, structure_names, check_finite, recursive, max_open_files
        Passed to :class:`ShardIndex` when ``paths`` is not already one.

    Attributes
    ----------
    index : ShardIndex
    indices : ndarray of int64, shape (N,)
    labels : FrameLabels
        Labels of this dataset's frames (in item order), for samplers.
    """

    def __init__(self, paths, indices=None, transform: Callable | None = None, *,
                 data_path: str = DEFAULT_DATA_PATH, structure_names: Sequence[str] | None = None,
                 check_finite: bool = False, recursive: bool = False, max_open_files: int = 64):
        if isinstance(paths, ShardIndex):
            self.index = paths
        else:
            self.index = ShardIndex(paths, data_path, structure_names=structure_names,
                                    check_finite=check_finite, recursive=recursive,
                                    max_open_files=max_open_files)
        n = len(self.index)
        self.indices = (np.arange(n, dtype=np.int64) if indices is None
                        else _index_array(indices, n, "SpeckleH5Dataset indices"))
        self.transform = transform
        self.labels: FrameLabels = self.index.labels.subset(self.indices)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i):
        if isinstance(i, torch.Tensor):
            i = int(i.item())
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} frames")
        j = int(self.indices[i])
        frame = torch.from_numpy(self.index.read_frame(j))
        if self.transform is not None:
            frame = self.transform(frame)
        return frame, int(self.labels.hit_class[i]), int(self.labels.structure_index[i])

    # -- conveniences for samplers / few-shot code
    @property
    def hit_class(self) -> np.ndarray:
        """Hit-class code of every item, int64 ``(N,)``, ``-1`` where unknown."""
        return self.labels.hit_class

    @property
    def structure_index(self) -> np.ndarray:
        """Structure index of every item, int64 ``(N,)``, ``-1`` where unknown."""
        return self.labels.structure_index

    @property
    def structure_names(self) -> tuple[str, ...]:
        return self.index.structure_names

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.index.frame_shape

    def get_labels(self, kind: str = "hit_class") -> list[int]:
        """Labels as a list of int (easyfsl's ``TaskSampler`` calls ``get_labels()``).

        Parameters
        ----------
        kind : {"hit_class", "structure_index", "n_particles"}
        """
        if kind not in ("hit_class", "structure_index", "n_particles"):
            raise ValueError(f"kind must be hit_class, structure_index or n_particles, got {kind!r}")
        return getattr(self.labels, kind).tolist()

    def close(self) -> None:
        self.index.close()


# ----------------------------------------------------------------------------- one-off readers
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
    with _h5open(p) as f:
        ds = _frames_dataset(f, p, data_path)
        n = ds.shape[0]
        if indices is None:
            rows = np.arange(n)
        elif isinstance(indices, slice):
            rows = np.arange(n)[indices]
        elif np.ndim(indices) == 0:
            rows = _index_array([indices], n, f"read_frames({p})")
            return _read_rows(ds, p, rows, check_finite)[0]
        else:
            rows = _index_array(indices, n, f"read_frames({p})")
        return _read_rows(ds, p, rows, check_finite)


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
    with _h5open(p) as f:
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
