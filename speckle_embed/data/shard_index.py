"""The frame index over many shards (:class:`ShardIndex`, :func:`open_dataset`): shard lengths,
frame shape and per-frame labels (:class:`FrameLabels`: ``hit_class``, ``structure_id``,
``n_particles`` from ``/entry_1/truth``) are read once, frames are not."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from speckle_embed.data.errors import DatasetError
from speckle_embed.data.shapes import common_frame_shape, fit_mask, fit_to_shape
from speckle_embed.data.shard import (
    DEFAULT_DATA_PATH,
    UNKNOWN,
    HandleCache,
    ShardInfo,
    discover_shards,
    frames_dataset,
    index_array,
    read_mask,
    read_rows,
    scan_shard,
)

__all__ = ["FrameLabels", "ShardIndex", "open_dataset"]


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
            info, hit, npart, sid = scan_shard(p, data_path)
            infos.append(info)
            hits.append(hit)
            nparts.append(npart)
            sids.append(sid)
        self.shards: tuple[ShardInfo, ...] = tuple(infos)
        self.offsets = np.concatenate([[0], np.cumsum([s.n_frames for s in infos])]).astype(np.int64)
        self.frame_shape: tuple[int, int] = common_frame_shape(infos, frame_shape)  # discover_shards found >= 1
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
        self._cache = HandleCache(max_open_files)

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
        return frames_dataset(f, info.path, self.data_path)

    def read_frame(self, index: int) -> np.ndarray:
        """Frame at dataset index ``index`` as float32 ``(H, W)`` photons."""
        s, local = self.locate(index)
        rows = read_rows(self._dataset(s), self.shards[s].path, np.array([local]),
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
        idx = index_array(indices, len(self), "ShardIndex.read_frames")
        out = np.empty((idx.size,) + self.frame_shape, dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            local = idx[sel] - self.offsets[s]
            out[sel] = fit_to_shape(read_rows(self._dataset(int(s)), self.shards[s].path, local,
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
                read_rows(ds, info.path, rows, True, rows + self.offsets[s])

    def close(self) -> None:
        """Close the files this process has open (they reopen on the next read)."""
        self._cache.close()

    def __enter__(self) -> "ShardIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):  # pickling (spawn workers): never carry open handles
        state = self.__dict__.copy()
        state["_cache"] = HandleCache(self._cache.max_open)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = HandleCache(self._cache.max_open)


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
