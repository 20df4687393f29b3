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

One concept per module: :mod:`~speckle_embed.data.shard` (one file: discovery, metadata, frames and
masks), :mod:`~speckle_embed.data.shard_index` (:class:`ShardIndex` over many shards),
:mod:`~speckle_embed.data.shapes` (fit to a common frame shape), :mod:`~speckle_embed.data.errors`;
this module holds the torch :class:`SpeckleH5Dataset` and re-exports the others' names.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from speckle_embed.data.errors import CorruptShardError, DatasetError
from speckle_embed.data.shapes import fit_mask, fit_to_shape
from speckle_embed.data.shard import (
    DEFAULT_DATA_PATH,
    SHARD_SUFFIXES,
    UNKNOWN as UNKNOWN,  # re-exported (owner: data.shard)
    ShardInfo,
    discover_shards,
    index_array,
    read_frames,
    read_mask,
)
from speckle_embed.data.shard_index import FrameLabels, ShardIndex, open_dataset
from speckle_embed.formats import HIT_CLASSES, TRUTH_GROUP
from speckle_embed.formats import MASK_PATHS as MASK_PATHS  # re-exported (owner: formats)

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
                        else index_array(indices, n, "SpeckleH5Dataset indices"))
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
