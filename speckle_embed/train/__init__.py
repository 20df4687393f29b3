"""Training of embedding models: P x K sampling, on-device augmentation, resumable loop.

``python -m speckle_embed.train`` runs :func:`train` with the configuration composed by Hydra
from ``conf/train/train.yaml``; library code here never imports hydra. :func:`train` is the app-layer
one (:mod:`~speckle_embed.train.app`: simulates a missing dataset when ``data.generate_if_missing``);
:func:`speckle_embed.train.loop.train` is the library loop, which never imports the simulator.
"""
from .augment import AugmentConfig, SpeckleAugment
from .checkpoint import CHECKPOINT_FORMAT, checkpoint_hash, load_checkpoint, load_embedder
from .config import TrainConfig
from .app import train
from .loop import TrainingDivergedError, TrainResult
from .sampler import PKSampler
from .split import split_by_class, split_by_structure

__all__ = [
    "train",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "PKSampler",
    "SpeckleAugment",
    "AugmentConfig",
    "split_by_structure",
    "split_by_class",
    "load_checkpoint",
    "load_embedder",
    "checkpoint_hash",
    "CHECKPOINT_FORMAT",
]
