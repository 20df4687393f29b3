"""Training data: index the shards (lazily), split, pick validation frames, read batches.

Frames stay on disk: :class:`~speckle_embed.data.h5dataset.ShardIndex` reads the labels once
and each batch's frames when it is needed (no cache); the split is made on labels only,
before any frame is read or augmented.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speckle_embed.data.h5dataset import (HIT_CLASSES, SHARD_SUFFIXES, DatasetError, ShardIndex,
                                          open_dataset)
from speckle_embed.paths import absolute_path

from .config import DataConfig, EvalConfig
from .split import frames_of_structures, split_by_class, split_by_structure

__all__ = ["TrainData", "build_train_data", "merge_labels", "ensure_dataset", "DEFAULT_GENERATE", "DatasetGenerator"]

logger = logging.getLogger(__name__)

#: Simulator arguments of ``data.generate_if_missing`` (``data.generate`` overrides them): a
#: small procedural dataset on the paper geometry, a few minutes on two CPU cores.
DEFAULT_GENERATE = {
    "source": {"kind": "procedural", "n_structures": 8, "seed": 0, "n_atoms_min": 10000,
               "n_atoms_max": 60000},
    "geometry": {},
    "n_frames": 48,
    "chunk": 48,
    "mix": {"single": 0.4, "multi": 0.3, "no_hit": 0.15, "non_sample": 0.15},
    "noise": None,
    "fluence": None,
    "seed": 0,
    "method": "fast",
    "device": "cpu",
    "threads": None,
}


def _has_shards(path: Path) -> bool:
    if path.is_file():
        return True
    if not path.is_dir():
        return False
    return any(q.is_file() for s in SHARD_SUFFIXES for q in path.glob(f"*{s}"))


#: ``generate(target_dir, settings)``: simulate a dataset into ``target_dir`` (``settings`` =
#: :data:`DEFAULT_GENERATE` updated by ``data.generate``). The app layer supplies it
#: (:func:`speckle_embed.train.app.simulate_dataset`); this library module never imports the simulator.
DatasetGenerator = Callable[[Path, dict], None]


def ensure_dataset(dirs: list[Path], generate: dict | None, *, enabled: bool,
                   generator: DatasetGenerator | None = None) -> None:
    """Simulate a small dataset into ``dirs[0]`` with ``generator`` if it holds no shard.

    Raises
    ------
    ValueError
        ``generate`` has a key that :data:`DEFAULT_GENERATE` lacks.
    RuntimeError
        A dataset is missing, ``enabled`` is set and no ``generator`` was given.
    """
    target = dirs[0]
    if _has_shards(target) or not enabled:
        return
    cfg = {**DEFAULT_GENERATE, **(generate or {})}
    unknown = sorted(set(cfg) - set(DEFAULT_GENERATE))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in data.generate; allowed: {sorted(DEFAULT_GENERATE)}")
    if generator is None:
        raise RuntimeError(f"{target} holds no dataset and data.generate_if_missing needs a dataset generator: "
                           "call speckle_embed.train.train (it simulates with the simulator) rather than "
                           "speckle_embed.train.loop.train, or pass dataset_generator=")
    logger.info("no shards in %s: simulating %s x %d frames (data.generate_if_missing)", target,
                cfg["source"], cfg["n_frames"])
    generator(target, cfg)


@dataclass
class TrainData:
    """Labels and positions of the training and validation frames (frames stay on disk).

    Attributes
    ----------
    index : ShardIndex
    train_idx : ndarray of int64
        Dataset indices of the training frames.
    train_structure, train_hit : ndarray of int64
        Mining labels of the training frames (structure is 0 everywhere in class mode).
    val_idx, val_structure, val_hit : ndarray of int64
        The validation frames kept for episodes (at most ``max_per_class`` per structure and
        class).
    train_structures, val_structures : list of str
        Structure names on each side (class mode: the structures the frames come from).
    eval_structure_names : list of str
        Names of the values of ``val_structure``.
    masks : BoolTensor (n_shards, H, W)
        Bad-pixel mask of every shard (True = bad), on the CPU.
    """

    index: ShardIndex
    train_idx: np.ndarray
    train_structure: np.ndarray
    train_hit: np.ndarray
    val_idx: np.ndarray
    val_structure: np.ndarray
    val_hit: np.ndarray
    train_structures: list
    val_structures: list
    eval_structure_names: list
    masks: torch.Tensor

    def shard_of(self, dataset_idx: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.index.offsets, dataset_idx, side="right") - 1

    def reader(self) -> "BatchReader":
        """A reader with its own file handles (for a prefetch thread)."""
        return BatchReader(copy.copy(self.index), self.masks)


class BatchReader:
    """Reads ``(frames float32 (N, H, W), bad mask bool (N, H, W))`` for dataset indices."""

    def __init__(self, index: ShardIndex, masks: torch.Tensor):
        self.index = index
        self.masks = masks

    def __call__(self, dataset_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.from_numpy(self.index.read_frames(dataset_idx))
        shard = torch.from_numpy(np.searchsorted(self.index.offsets, dataset_idx, side="right") - 1)
        return frames, self.masks[shard]

    def close(self):
        self.index.close()


def _cap_per_group(idx: np.ndarray, structure: np.ndarray, hit: np.ndarray, cap: int,
                   seed: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), 0x7A1])
    keep = []
    for key in sorted(set(zip(structure.tolist(), hit.tolist()))):
        members = np.flatnonzero((structure == key[0]) & (hit == key[1]))
        if members.size > cap:
            members = np.sort(rng.choice(members, cap, replace=False))
        keep.append(members)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def merge_labels(hit: np.ndarray, merge: dict) -> np.ndarray:
    """``hit`` with every class ``k`` of ``merge`` replaced by ``merge[k]`` (a copy; others unchanged)."""
    out = np.array(hit, copy=True)
    for k, v in merge.items():
        out[np.asarray(hit) == int(k)] = int(v)
    return out


def build_train_data(cfg: DataConfig, ev: EvalConfig, *, seed: int, base_dir: Path,
                     generator: DatasetGenerator | None = None) -> TrainData:
    """Index the shards of ``cfg.dirs`` and split them (see :class:`~.config.DataConfig`).

    ``generator`` simulates a missing dataset when ``cfg.generate_if_missing`` (:func:`ensure_dataset`).

    Raises
    ------
    DatasetError, FileNotFoundError
        From the reader (missing/empty/truncated files, mixed frame sizes, truth arrays whose
        length does not match the frames: the message names the file).
    ValueError
        No labelled frames, a class with fewer than 2 frames, too few groups.
    """
    dirs = [absolute_path(d, base_dir) for d in cfg.dirs]
    ensure_dataset(dirs, cfg.generate, enabled=cfg.generate_if_missing, generator=generator)
    index = open_dataset([str(d) for d in dirs], cfg.data_path, check_finite=True,
                         recursive=cfg.recursive, max_open_files=cfg.max_open_files,
                         frame_shape=cfg.frame_shape)
    labels = index.labels
    where = ", ".join(str(d) for d in dirs)
    known = (labels.hit_class >= 0)
    if not known.any():
        raise DatasetError(f"no frame of {where} has a hit_class label (/entry_1/truth/hit_class)")
    split_seed = seed if cfg.split_seed is None else int(cfg.split_seed)
    eval_classes = list(ev.classes) if ev.classes is not None else list(range(1, 1 + ev.n_way))

    # labels as the few-shot task sees them (data.merge_classes): the training and validation labels
    merged_hit = merge_labels(labels.hit_class, cfg.merge_classes) if cfg.merge_classes else labels.hit_class
    if cfg.mode == "structure":
        classes = (sorted(set(labels.hit_class[known].tolist())) if cfg.hit_classes is None
                   else [int(c) for c in cfg.hit_classes])
        usable = known & (labels.structure_index >= 0) & np.isin(labels.hit_class, classes)
        if not usable.any():
            raise DatasetError(f"no frame of {where} has both a structure_id and a hit class in {classes}")
        names = sorted({labels.structure_id[i] for i in np.flatnonzero(usable)})
        train_names, val_names = split_by_structure(names, cfg.val_fraction, cfg.val_structures,
                                                    seed=split_seed)
        train_idx = np.intersect1d(frames_of_structures(labels.structure_id, train_names),
                                   np.flatnonzero(usable))
        val_all = np.intersect1d(frames_of_structures(labels.structure_id, val_names),
                                 np.flatnonzero(known & np.isin(merged_hit, eval_classes)))
        train_structure = labels.structure_index[train_idx]
        train_hit = merged_hit[train_idx]
        val_structure = labels.structure_index[val_all]
        val_hit = merged_hit[val_all]
        eval_names = list(index.structure_names)
    else:
        classes = [1, 2, 3] if cfg.hit_classes is None else [int(c) for c in cfg.hit_classes]
        train_idx, val_all = split_by_class(labels.hit_class, classes, cfg.n_train_per_class,
                                            cfg.n_val_per_class, seed=split_seed, where=where)
        train_structure = np.zeros(train_idx.size, dtype=np.int64)
        train_hit = merged_hit[train_idx]
        val_structure = np.zeros(val_all.size, dtype=np.int64)
        val_hit = merged_hit[val_all]
        eval_names = ["all"]
        src = lambda ix: sorted({s for s in labels.structure_id[ix] if s is not None})  # noqa: E731
        train_names, val_names = src(train_idx), src(val_all)

    counts = {HIT_CLASSES[c] if 0 <= c < len(HIT_CLASSES) else str(c): int(np.sum(train_hit == c))
              for c in sorted(set(train_hit.tolist()))}
    small = [name for name, n in counts.items() if n < 2]
    if small:
        raise ValueError(f"hit class(es) {small} have fewer than 2 training frames in {where} "
                         f"(training frames per class: {counts}); a triplet needs two frames of a class")
    if train_idx.size == 0:
        raise ValueError(f"no training frames in {where}")
    val_keep = _cap_per_group(np.arange(val_all.size), val_structure, val_hit, int(ev.max_per_class),
                              ev.seed) if val_all.size else np.zeros(0, dtype=np.int64)
    masks = [index.shard_mask(s) for s in range(len(index.shards))]
    logger.info("training frames: %d of %d structures %s; validation frames: %d of %d structures",
                train_idx.size, len(train_names), counts, val_keep.size, len(val_names))
    return TrainData(index, train_idx.astype(np.int64), train_structure.astype(np.int64),
                     train_hit.astype(np.int64), val_all[val_keep].astype(np.int64),
                     val_structure[val_keep].astype(np.int64), val_hit[val_keep].astype(np.int64),
                     list(train_names), list(val_names), eval_names,
                     torch.from_numpy(np.stack(masks)))
