"""Reading simulated and facility HDF5/CXI datasets (h5py only; no simulator imports)."""
from .h5dataset import (DEFAULT_DATA_PATH, HIT_CLASSES, CorruptShardError, DatasetError, FrameLabels,
                        ShardIndex, ShardInfo, SpeckleH5Dataset, discover_shards, fit_mask, fit_to_shape,
                        open_dataset, read_frames, read_mask)

__all__ = ["DEFAULT_DATA_PATH", "HIT_CLASSES", "CorruptShardError", "DatasetError", "FrameLabels",
           "ShardIndex", "ShardInfo", "SpeckleH5Dataset", "discover_shards", "fit_mask", "fit_to_shape",
           "open_dataset",
           "read_frames", "read_mask"]
