"""Which training frames a head sees: class-fraction batches and stratified folds.

* :class:`ClassFractionSampler`: batches with a fixed expected fraction of positive frames
  (the recipes of Assalauova et al. 2022, 2 % or 5 % single hits per batch).
* :func:`stratified_folds`: the folds of :class:`~speckle_embed.heads.EnsembleHead`.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["ClassFractionSampler", "stratified_folds"]


def stratified_folds(labels, n_folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Indices of the validation part of each of ``n_folds`` stratified folds.

    Every class is shuffled and dealt round-robin over the folds, continuing where the
    previous class stopped, so each fold holds ``n_c / n_folds`` (rounded either way) frames
    of class ``c`` and fold sizes differ by at most one.

    Parameters
    ----------
    labels : array_like, shape (N,)
    n_folds : int
        ``2 <= n_folds <= N``.
    seed : int

    Returns
    -------
    list of ndarray of int64
        ``n_folds`` sorted, disjoint index arrays covering ``0..N-1``.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if int(n_folds) != n_folds or not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be an integer in [2, {n}] (the number of frames); got {n_folds}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = (np.arange(idx.size) + offset) % n_folds
        offset = (offset + idx.size) % n_folds
    return [np.flatnonzero(fold_of == k) for k in range(int(n_folds))]




class _Cycler:
    """Endless draws without replacement from ``indices``, reshuffled after each pass."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.rng = rng
        self.order = rng.permutation(self.indices)
        self.pos = 0

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos == self.order.size:
                self.order, self.pos = self.rng.permutation(self.indices), 0
            step = min(k, self.order.size - self.pos)
            out.append(self.order[self.pos:self.pos + step])
            self.pos += step
            k -= step
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class ClassFractionSampler:
    """Batches of frame indices with a fixed expected fraction of positive frames.

    Own code because pytorch-metric-learning's ``MPerClassSampler`` draws a fixed ``m`` frames
    per class and cannot meet a fractional share of positives (1.28 per 64 for 2 %).

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Class codes (``positive`` marks the positive class).
    batch_size : int
    positive_fraction : float in [0, 1], optional
        Expected fraction of positives per batch: each batch holds ``floor(f * B)`` positives
        plus one more with probability ``f * B - floor(f * B)``. ``None``: frames are drawn
        uniformly (shuffled passes over all frames).
    positive : int
        Code of the positive class (1).
    seed : int

    Examples
    --------
    >>> labels = np.r_[np.zeros(900, int), np.ones(100, int)]
    >>> s = ClassFractionSampler(labels, batch_size=64, positive_fraction=0.05, seed=0)
    >>> batches = [b for b in s.batches(400)]
    >>> bool(abs(np.mean([labels[b].mean() for b in batches]) - 0.05) < 0.003)
    True
    """

    def __init__(self, labels, batch_size: int, positive_fraction: float | None = None, *,
                 positive: int = 1, seed: int = 0):
        self.labels = np.asarray(labels)
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
        if positive_fraction is not None and not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1]; got {positive_fraction}")
        self.batch_size = int(batch_size)
        self.positive_fraction = None if positive_fraction is None else float(positive_fraction)
        self.positive = positive
        self.rng = np.random.default_rng(seed)
        if self.positive_fraction is None:
            self._all = _Cycler(np.arange(self.labels.size), self.rng)
        else:
            pos = np.flatnonzero(self.labels == positive)
            neg = np.flatnonzero(self.labels != positive)
            if self.positive_fraction > 0 and pos.size == 0:
                raise ValueError("positive_fraction > 0 but there is no positive frame")
            if self.positive_fraction < 1 and neg.size == 0:
                raise ValueError("positive_fraction < 1 but every frame is positive")
            self._pos = _Cycler(pos, self.rng)
            self._neg = _Cycler(neg, self.rng)

    def n_positive(self) -> int:
        """Number of positives of the next batch (stochastic rounding of ``f * B``)."""
        x = self.positive_fraction * self.batch_size
        base = math.floor(x)
        return int(base + (self.rng.random() < x - base))

    def next_batch(self) -> np.ndarray:
        """One batch of indices (int64, shape ``(batch_size,)``), in random order."""
        if self.positive_fraction is None:
            return self._all.take(self.batch_size)
        k = self.n_positive()
        batch = np.concatenate([self._pos.take(k), self._neg.take(self.batch_size - k)])
        return self.rng.permutation(batch)

    def batches(self, n_batches: int) -> Iterator[np.ndarray]:
        """``n_batches`` successive batches."""
        for _ in range(int(n_batches)):
            yield self.next_batch()
