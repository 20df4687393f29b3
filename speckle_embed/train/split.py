"""Train / validation splits, made on labels before any frame is read or augmented.

* :func:`split_by_structure` (offline training): whole structures are held out, so the
  validation few-shot accuracy measures generalisation to *unseen* structures.
* :func:`split_by_class` (online training on a few labelled frames of one experiment):
  ``n_train`` + ``n_val`` frames per hit class, disjoint.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

__all__ = ["split_by_structure", "split_by_class", "frames_of_structures"]

logger = logging.getLogger(__name__)


def split_by_structure(structure_names: Sequence[str], val_fraction: float | None = 0.2,
                       val_structures: Sequence[str] | None = None,
                       seed: int = 0) -> tuple[list[str], list[str]]:
    """Split structure names into disjoint train and validation lists.

    Parameters
    ----------
    structure_names : sequence of str
        All structures of the dataset (duplicates are refused).
    val_fraction : float, optional
        Fraction of structures held out, in ``[0, 1)``; rounded to the nearest count but at
        least 1 when ``> 0`` and at most ``len - 1``. Ignored when ``val_structures`` is given.
    val_structures : sequence of str, optional
        Explicit held-out structures (every name must be in ``structure_names``).
    seed : int
        Seed of the random choice (the result does not depend on the input order).

    Returns
    -------
    train_names, val_names : list of str
        Sorted, disjoint, together ``structure_names``.

    Raises
    ------
    ValueError
        Duplicate or unknown names, a fraction outside ``[0, 1)``, or a split that would leave
        no training structure.

    Examples
    --------
    >>> split_by_structure(["a", "b", "c", "d", "e"], 0.4, seed=0)[1].__len__()
    2
    >>> split_by_structure(["a", "b", "c"], val_structures=["b"])
    (['a', 'c'], ['b'])
    """
    names = [str(n) for n in structure_names]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate structure names {dup}")
    names = sorted(names)
    if val_structures is not None:
        val = sorted({str(v) for v in val_structures})
        unknown = [v for v in val if v not in names]
        if unknown:
            raise ValueError(f"validation structures {unknown} are not in the dataset "
                             f"(structures: {names})")
    else:
        frac = 0.0 if val_fraction is None else float(val_fraction)
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = int(round(frac * len(names)))
        if frac > 0:
            n_val = min(max(n_val, 1), len(names) - 1)
        order = np.random.default_rng([int(seed), 0x5B17]).permutation(len(names))
        val = sorted(names[i] for i in order[:n_val])
    train = [n for n in names if n not in set(val)]
    if not train:
        raise ValueError(f"the split leaves no training structure (all of {names} are held out)")
    return train, val


def frames_of_structures(structure_id: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Positions (int64, ascending) of the frames whose structure id is in ``names``."""
    wanted = set(names)
    return np.flatnonzero(np.array([s in wanted for s in structure_id], dtype=bool)).astype(np.int64)


def split_by_class(hit: np.ndarray, classes: Sequence[int], n_train: int, n_val: int,
                   seed: int = 0, *, min_train: int = 2, min_val: int = 2,
                   where: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """``n_train`` training and ``n_val`` validation frames of each class, disjoint.

    Parameters
    ----------
    hit : ndarray of int, shape (N,)
        Class label of every frame (``-1`` = unknown, never picked).
    classes : sequence of int
        Classes to use.
    n_train, n_val : int
        Frames per class. A class with fewer than ``n_train + n_val`` frames is split in
        the same proportion (with a warning).
    seed : int
    min_train, min_val : int
        Fewest frames per class in each part; fewer raises.
    where : str
        Name of the data source, for error messages.

    Returns
    -------
    train_idx, val_idx : ndarray of int64
        Positions into ``hit``, sorted.

    Raises
    ------
    ValueError
        A class with too few frames (the message names the class and the count).
    """
    hit = np.asarray(hit)
    rng = np.random.default_rng([int(seed), 0xC1A5])
    train, val = [], []
    for c in classes:
        members = np.flatnonzero(hit == int(c))
        members = members[rng.permutation(members.size)]
        want = int(n_train) + int(n_val)
        if members.size >= want:
            nt, nv = int(n_train), int(n_val)
        else:
            nt = int(round(members.size * n_train / max(want, 1)))
            nv = members.size - nt
            logger.warning("class %s has %d labelled frames in %s, fewer than n_train + n_val = %d; "
                           "using %d for training and %d for validation", c, members.size, where,
                           want, nt, nv)
        if nt < min_train or nv < min_val:
            raise ValueError(
                f"class {c} has {members.size} labelled frame(s) in {where}; need at least "
                f"{min_train} for training and {min_val} for validation")
        train.append(members[:nt])
        val.append(members[nt:nt + nv])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
