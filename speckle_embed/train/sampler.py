"""P x K batch sampler: P (structure, hit) groups x K frames each, a pure function of the seed.

SpeckleNN's mining rule (:func:`speckle_embed.losses.valid_pair_masks`) needs, in every batch,
several frames that share both the structure and the hit label (positives) and frames with
another hit label (negatives). :class:`PKSampler` builds such batches: each batch holds ``P``
distinct groups, a group being one ``(structure, hit)`` pair, and ``K`` frames of each.

Determinism and resumption: the batches of epoch ``e`` depend only on ``(seed, e)``
(:meth:`PKSampler.epoch_batches`), so an interrupted run restarts mid-epoch by skipping the
batches already done (:meth:`PKSampler.set_epoch` with ``start``) and sees exactly the same
data order as an uninterrupted run.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["PKSampler"]


class PKSampler(Sampler[list[int]]):
    """Batches of ``P`` (structure, hit) groups x ``K`` frames, deterministic from a seed.

    Own code because pytorch-metric-learning's ``MPerClassSampler`` (``m`` frames of each of
    ``batch_size / m`` labels) draws from a global NumPy RNG (no pure function of the seed and
    epoch, so no exact mid-epoch resume), never ensures a second hit label per batch, and cannot
    hand each DDP rank whole (structure, hit) groups (:meth:`shard`).

    Within an epoch the groups are visited in shuffled rounds (every eligible group once per
    round, so rare groups are not starved) and each group's frames in a shuffled cycle (every
    frame of a group once before any repeats); a batch never holds a frame twice unless its
    group has fewer than ``K`` frames. If the ``P`` groups of a batch happen to share one hit label (no
    negatives for the mining rule) and other hit labels exist, the last group is swapped for
    one with another hit label.

    Parameters
    ----------
    structure_ids : array_like of int, shape (N,)
        Structure index of each sample (one dummy value for single-label training).
    hit_labels : array_like of int, shape (N,)
        Hit class of each sample.
    p : int
        Groups per batch (>= 2).
    k : int
        Frames per group (>= 2, so that every frame has a positive).
    seed : int
        Seed of the data order.
    batches_per_epoch : int, optional
        Default ``ceil(N / (p * k))``.
    min_group_size : int
        Groups with fewer samples are left out (listed in :attr:`dropped_groups`); default 2,
        the least that gives a positive pair without repeating a frame.

    Attributes
    ----------
    groups : list of (int, int)
        Eligible ``(structure, hit)`` groups, sorted.
    group_members : list of ndarray
        Sample positions of each eligible group (sorted).
    dropped_groups : dict
        ``(structure, hit) -> size`` of the groups left out.
    epoch, start : int
        Epoch and first batch yielded by the next ``iter()`` (see :meth:`set_epoch`).

    Raises
    ------
    ValueError
        Label arrays of different lengths, ``p``/``k`` < 2, or fewer than ``p`` eligible
        groups (the message names the group sizes).

    Examples
    --------
    >>> s = np.repeat([0, 1, 2], 8); h = np.tile([1, 2], 12)
    >>> sampler = PKSampler(s, h, p=4, k=3, seed=0)
    >>> batch = next(iter(sampler))
    >>> len(batch), len({(s[i], h[i]) for i in batch})
    (12, 4)
    """

    def __init__(self, structure_ids, hit_labels, p: int, k: int, *, seed: int = 0,
                 batches_per_epoch: int | None = None, min_group_size: int = 2) -> None:
        s = np.asarray(structure_ids).reshape(-1)
        h = np.asarray(hit_labels).reshape(-1)
        if s.shape != h.shape:
            raise ValueError(f"structure_ids ({s.shape[0]}) and hit_labels ({h.shape[0]}) must "
                             "have the same length")
        for name, v in (("p", p), ("k", k)):
            if isinstance(v, bool) or int(v) != v or v < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
        if s.size and (s.dtype.kind not in "iu" or h.dtype.kind not in "iu"):
            raise ValueError("structure_ids and hit_labels must be integers")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.n_samples = int(s.size)
        pairs: dict[tuple[int, int], list[int]] = {}
        for i, key in enumerate(zip(s.tolist(), h.tolist())):
            pairs.setdefault(key, []).append(i)
        self.groups: list[tuple[int, int]] = []
        self.group_members: list[np.ndarray] = []
        self.dropped_groups: dict[tuple[int, int], int] = {}
        for key in sorted(pairs):
            members = np.asarray(pairs[key], dtype=np.int64)
            if members.size < min_group_size:
                self.dropped_groups[key] = int(members.size)
            else:
                self.groups.append(key)
                self.group_members.append(members)
        if len(self.groups) < self.p:
            sizes = ", ".join(f"(structure {a}, hit {b}): {len(pairs[(a, b)])}" for a, b in sorted(pairs))
            raise ValueError(
                f"PKSampler needs at least p={self.p} (structure, hit) groups with >= "
                f"{min_group_size} samples, found {len(self.groups)} (group sizes: {sizes or 'none'})")
        self.group_hit = np.array([g[1] for g in self.groups], dtype=np.int64)
        if batches_per_epoch is None:
            batches_per_epoch = math.ceil(self.n_samples / (self.p * self.k))
        if int(batches_per_epoch) < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.batches_per_epoch = int(batches_per_epoch)
        self.epoch = 0
        self.start = 0

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next ``iter()`` yield batches ``start ..`` of epoch ``epoch``."""
        if not 0 <= int(start) <= self.batches_per_epoch:
            raise ValueError(f"start must be in [0, {self.batches_per_epoch}], got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.epoch_batches(self.epoch)[self.start:]:
            yield batch.tolist()

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """All batches of ``epoch`` (int64 arrays of ``p * k`` sample positions).

        A pure function of ``(seed, epoch)`` and the labels; frames of a group are
        contiguous in a batch, groups in the order they were drawn.
        """
        rng = np.random.default_rng([self.seed, int(epoch), 0x504B])
        n_groups = len(self.groups)
        group_queue: list[int] = []
        cursors = [0] * n_groups
        orders = [rng.permutation(m.size) for m in self.group_members]
        has_other_hits = np.unique(self.group_hit).size > 1
        batches = []
        for _ in range(self.batches_per_epoch):
            chosen: list[int] = []
            while len(chosen) < self.p:
                if not group_queue:
                    group_queue = rng.permutation(n_groups).tolist()
                # take the first queued group not already in the batch
                for j, g in enumerate(group_queue):
                    if g not in chosen:
                        chosen.append(group_queue.pop(j))
                        break
                else:  # every queued group is already in the batch: start a new round
                    group_queue = [g for g in rng.permutation(n_groups).tolist() if g not in chosen] + group_queue
            if has_other_hits and np.unique(self.group_hit[chosen]).size == 1:
                others = np.flatnonzero(self.group_hit != self.group_hit[chosen[0]])
                chosen[-1] = int(others[rng.integers(others.size)])
            parts = []
            for g in chosen:
                members = self.group_members[g]
                take = []
                while len(take) < self.k:
                    if cursors[g] >= members.size:  # new cycle; frames of this batch go last
                        order = rng.permutation(members.size)
                        used = np.isin(order, take)
                        orders[g] = np.concatenate([order[~used], order[used]])
                        cursors[g] = 0
                    n = min(self.k - len(take), members.size - cursors[g])
                    take.extend(orders[g][cursors[g]:cursors[g] + n].tolist())
                    cursors[g] += n
                parts.append(members[np.asarray(take, dtype=np.int64)])
            batches.append(np.concatenate(parts))
        return batches

    def shard(self, batch, rank: int, world_size: int) -> np.ndarray:
        """The part of ``batch`` that process ``rank`` of ``world_size`` trains on.

        A batch holds its ``p`` groups as contiguous runs of ``k`` frames, so each process
        gets ``p / world_size`` whole groups x ``k`` frames; the parts of ranks ``0, 1, ...``
        concatenated are the batch. ``p`` must be a multiple of ``world_size``.
        """
        if self.p % int(world_size):
            raise ValueError(f"sampler.p ({self.p}) must be a multiple of the number of processes "
                             f"({world_size}) so that every process gets whole (structure, hit) groups")
        n = self.batch_size // int(world_size)
        return np.asarray(batch)[int(rank) * n:(int(rank) + 1) * n]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler {self.seed}")
        self.set_epoch(state["epoch"], state["start"])

