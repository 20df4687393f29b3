"""Reading simulated and facility HDF5/CXI datasets (h5py only; no simulator imports).

* :mod:`~speckle_embed.data.shard`: one shard file (discovery, metadata and truth, frames, masks);
* :mod:`~speckle_embed.data.shard_index`: :class:`ShardIndex` over many shards, :func:`open_dataset`;
* :mod:`~speckle_embed.data.shapes`: frames of different sizes on one grid (:func:`fit_to_shape`, :func:`fit_mask`);
* :mod:`~speckle_embed.data.h5dataset`: :class:`SpeckleH5Dataset`, the torch dataset (and the old names);
* :mod:`~speckle_embed.data.errors`: :class:`DatasetError`, :class:`CorruptShardError`.
"""
from speckle_embed.formats import HIT_CLASSES

from .errors import CorruptShardError, DatasetError
from .h5dataset import SpeckleH5Dataset
from .shapes import fit_mask, fit_to_shape
from .shard import DEFAULT_DATA_PATH, ShardInfo, discover_shards, read_frames, read_mask
from .shard_index import FrameLabels, ShardIndex, open_dataset

__all__ = ["DEFAULT_DATA_PATH", "HIT_CLASSES", "CorruptShardError", "DatasetError", "FrameLabels",
           "ShardIndex", "ShardInfo", "SpeckleH5Dataset", "discover_shards", "fit_mask", "fit_to_shape",
           "open_dataset",
           "read_frames", "read_mask"]
