"""Few-shot decision rules on embeddings, as pure functions over a :class:`SupportIndex`.

Every rule maps query embeddings to per-class **distances** of shape ``(m, n_classes)``
(smaller = closer), so ``scores.argmin(axis=1)`` is the prediction, :func:`scores_to_proba` turns
them into probabilities and :func:`predict_with_rejection` answers ``-1`` ("unknown") when even
the best class is too far.  The distance rules use squared L2 (an ``"ip"`` index is converted,
see :meth:`SupportIndex.all_distances`); ``knn`` gives ordinal vote scores and ``logistic``
``-log p``.

Rules (``n_way`` classes labelled ``0 .. n_classes-1``; every class needs at least one support):

``mean_distance``
    The SpeckleNN rule: mean squared L2 distance from the query to the supports of each class,
    ``D_c(q) = 1/n_c sum_{j in c} ||q - x_j||^2``.
``prototype``
    Squared L2 distance to the class mean (the prototypical-network rule),
    ``P_c(q) = ||q - mu_c||^2``.  The raw mean is used: the mean of unit vectors is *not* unit
    norm (``||mu_c|| < 1`` unless all supports coincide) and is deliberately not renormalised.
``knn``
    Majority vote of the ``k`` nearest supports, ties broken by the smaller summed distance.
``logistic``
    ``-log p`` of a logistic regression fitted on the supports
    (:mod:`speckle_embed.fewshot.linear`; the classifier's default: chosen on the held-out
    validation domain, ``docs/domains.md``).

The first two are related by ``D_c(q) = P_c(q) + s_c`` with ``s_c = 1/n_c sum ||x_j - mu_c||^2``
the spread of class ``c``: ``mean_distance`` penalises spread-out classes, ``prototype`` does not,
so they disagree when a query sits near the centre of a wide class and near a tight one.

Examples
--------
>>> import numpy as np
>>> from speckle_embed.fewshot.index import SupportIndex
>>> index = SupportIndex(dim=2)
>>> _ = index.add(np.array([[-3.0, 0.0], [3.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), labels=[0, 0, 1, 1])
>>> query = np.zeros((1, 2))
>>> mean_distance(index, query).tolist()   # wide class 0 is far on average
[[9.0, 1.0]]
>>> prototype(index, query).tolist()       # ...but its centre is exactly at the query
[[0.0, 1.0]]
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from speckle_embed.fewshot.index import SupportIndex, _check_int_vector, _check_matrix
from speckle_embed.fewshot.linear import logistic

__all__ = [
    "UNKNOWN",
    "RULES",
    "mean_distance",
    "prototype",
    "class_prototypes",
    "knn",
    "logistic",
    "get_rule",
    "predict",
    "scores_to_proba",
    "leave_one_out_distances",
    "calibrate_rejection_threshold",
    "predict_with_rejection",
]

#: Label returned by :func:`predict_with_rejection` for a rejected query.
UNKNOWN = -1

Rule = Callable[..., np.ndarray]

# mean_distance materialises (chunk, ntotal) float32 distances; keep a chunk under this.
_CHUNK_BYTES = 128 * 2**20


def _class_counts(index: SupportIndex, n_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Labels (ordered by id) and support counts per class, checking classes are 0..C-1.

    Returns
    -------
    labels : ndarray of int64, shape (ntotal,)
    counts : ndarray of int64, shape (n_classes,)
    """
    if not isinstance(index, SupportIndex):
        raise TypeError(f"index must be a SupportIndex; got {type(index).__name__}")
    if index.ntotal == 0:
        raise ValueError("the SupportIndex is empty: add() supports first")
    labels = index.labels_
    top = int(labels.max())
    if n_classes is None:
        n_classes = top + 1
    elif isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer; got {n_classes!r}")
    elif top >= n_classes:
        raise ValueError(f"support label {top} is out of range for n_classes={n_classes} "
                         f"(classes must be labelled 0..{n_classes - 1})")
    counts = np.bincount(labels, minlength=int(n_classes))
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        present = np.flatnonzero(counts).tolist()
        raise ValueError(f"class {int(empty[0])} has no supports in the index "
                         f"(classes must be labelled 0..{int(n_classes) - 1}; labels present: {present})")
    return labels, counts


def mean_distance(index: SupportIndex, queries: Any, *, n_classes: int | None = None) -> np.ndarray:
    """Mean squared L2 distance from each query to the supports of each class (SpeckleNN rule).

    Parameters
    ----------
    index : SupportIndex
        Supports with labels ``0 .. n_classes-1``.
    queries : array-like, shape (m, d)
    n_classes : int, optional
        Number of classes; default ``max(label) + 1``.

    Returns
    -------
    ndarray of float64, shape (m, n_classes)
        ``D[i, c] = mean_{j : y_j = c} ||q_i - x_j||^2``.

    Notes
    -----
    Computed from :meth:`SupportIndex.all_distances` (exact FAISS brute force), queries in chunks.
    Equals ``prototype(...) + spread_c``, see the module docstring.
    """
    labels, counts = _class_counts(index, n_classes)
    q = _check_matrix(queries, index.dim, "queries")
    onehot = np.zeros((labels.size, counts.size), dtype=np.float64)
    onehot[np.arange(labels.size), labels] = 1.0 / counts[labels]
    out = np.empty((q.shape[0], counts.size), dtype=np.float64)
    chunk = max(1, _CHUNK_BYTES // (4 * labels.size))
    for start in range(0, q.shape[0], chunk):
        dist = index.all_distances(q[start:start + chunk]).astype(np.float64)
        out[start:start + chunk] = dist @ onehot
    return out


def class_prototypes(index: SupportIndex, *, n_classes: int | None = None) -> np.ndarray:
    """Mean embedding of each class (not renormalised).

    Parameters
    ----------
    index : SupportIndex
    n_classes : int, optional

    Returns
    -------
    ndarray of float64, shape (n_classes, d)
    """
    labels, counts = _class_counts(index, n_classes)
    x = index.get_embeddings().astype(np.float64)
    sums = np.zeros((counts.size, index.dim), dtype=np.float64)
    np.add.at(sums, labels, x)
    return sums / counts[:, None]


def _sq_dist(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``(m, C)`` in float64, clipped at 0."""
    q = q.astype(np.float64)
    d = (q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * q @ c.T
    return np.maximum(d, 0.0)


def prototype(index: SupportIndex, queries: Any, *, n_classes: int | None = None) -> np.ndarray:
    """Squared L2 distance from each query to each class prototype (mean support embedding).

    Parameters
    ----------
    index : SupportIndex
    queries : array-like, shape (m, d)
    n_classes : int, optional

    Returns
    -------
    ndarray of float64, shape (m, n_classes)
        ``P[i, c] = ||q_i - mu_c||^2`` with ``mu_c`` the raw class mean.

    Notes
    -----
    For unit-norm embeddings the prototype is *not* unit norm (``||mu_c|| <= 1``); it is used as is,
    so ``P`` is a squared L2 distance to the raw mean, not a cosine distance.
    """
    protos = class_prototypes(index, n_classes=n_classes)
    q = _check_matrix(queries, index.dim, "queries")
    return _sq_dist(q, protos)


def _knn_scores(dist: np.ndarray, nb_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Vote scores from neighbour distances/labels, both ``(m, k)``.  See :func:`knn`."""
    m, k = nb_labels.shape
    rows = np.repeat(np.arange(m), k)
    votes = np.zeros((m, n_classes), dtype=np.float64)
    sums = np.zeros((m, n_classes), dtype=np.float64)
    np.add.at(votes, (rows, nb_labels.ravel()), 1.0)
    np.add.at(sums, (rows, nb_labels.ravel()), dist.ravel().astype(np.float64))
    total = sums.sum(1, keepdims=True)
    frac = np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)
    return np.where(votes > 0, (k - votes) + 0.5 * frac, k + 1.0)


def knn(index: SupportIndex, queries: Any, *, k: int = 5, n_classes: int | None = None) -> np.ndarray:
    """k-nearest-neighbour majority vote, as per-class distance-like scores.

    Parameters
    ----------
    index : SupportIndex
    queries : array-like, shape (m, d)
    k : int, default 5
        Number of neighbours, ``1 <= k <= ntotal``.
    n_classes : int, optional

    Returns
    -------
    ndarray of float64, shape (m, n_classes)
        ``S[i, c] = (k - votes_c) + 0.5 * sumdist_c / sumdist_all`` for a class with at least one
        vote among the ``k`` neighbours, and ``k + 1`` for a class with none.  ``votes_c`` is the
        number of neighbours of class ``c`` and ``sumdist_c`` their summed squared L2 distance.
        The tie-break term lies in ``[0, 0.5]`` so it never outweighs a vote: ``argmin`` is the
        majority class, ties broken by the smaller summed distance (then by the smaller label).
        The score is ordinal, not a metric distance.

    Notes
    -----
    Neighbours come from :meth:`SupportIndex.search`.  With an ``"ip"`` index they are the
    largest inner products (the same as the nearest in L2 when supports share one norm, e.g.
    unit-normalised embeddings) and their distances are converted to squared L2.
    """
    _, counts = _class_counts(index, n_classes)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be an integer in [1, ntotal={index.ntotal}]; got {k!r}")
    q = _check_matrix(queries, index.dim, "queries")
    dist, nb_labels, ids = index.search(q, int(k))
    dist = dist.astype(np.float64)
    if index.metric == "ip":
        sq = index.squared_norms_[np.searchsorted(index.ids_, ids)]
        qn = np.einsum("ij,ij->i", q, q, dtype=np.float64)
        dist = np.maximum(qn[:, None] + sq - 2.0 * dist, 0.0)
    return _knn_scores(dist, nb_labels, counts.size)


RULES: dict[str, Rule] = {"mean_distance": mean_distance, "prototype": prototype, "knn": knn, "logistic": logistic}


def get_rule(rule: str | Rule) -> Rule:
    """A rule function from its name (``"mean_distance"``, ``"prototype"``, ``"knn"``, ``"logistic"``) or itself.

    A custom rule is any callable ``rule(index, queries, *, n_classes=None, **kw) -> (m, C)``.
    """
    if callable(rule):
        return rule
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {sorted(RULES)} or pass a callable")
    return RULES[rule]


def predict(
    index: SupportIndex, queries: Any, rule: str | Rule = "mean_distance", **rule_kwargs: Any
) -> np.ndarray:
    """Class of smallest distance for each query.

    Returns
    -------
    ndarray of int64, shape (m,)
    """
    return get_rule(rule)(index, queries, **rule_kwargs).argmin(axis=1).astype(np.int64)


def scores_to_proba(dist: Any, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``-dist / temperature`` over the last axis.

    Parameters
    ----------
    dist : array-like, shape (m, n_classes)
        Distances (smaller = closer).  ``+inf`` entries get probability 0; NaN is refused.
    temperature : float, default 1.0
        ``> 0``; small values sharpen towards the argmin, large values flatten.

    Returns
    -------
    ndarray of float64, shape (m, n_classes)
        Rows sum to 1; ``argmax`` of a row is the ``argmin`` of its distances.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim == 0 or d.shape[-1] == 0:
        raise ValueError(f"dist must have at least one class on its last axis; got shape {d.shape}")
    if np.isnan(d).any() or (d == -np.inf).any():
        raise ValueError("dist contains NaN or -inf")
    best = d.min(axis=-1, keepdims=True)
    if not np.isfinite(best).all():
        raise ValueError("a row of dist is +inf for every class")
    z = np.exp(-(d - best) / temperature)
    return z / z.sum(axis=-1, keepdims=True)


def leave_one_out_distances(
    support_embeddings: Any,
    labels: Any,
    rule: str | Rule = "mean_distance",
    *,
    use_gpu: bool | str = "auto",
    **rule_kwargs: Any,
) -> np.ndarray:
    """Distance of each support to its own class, computed without that support.

    Parameters
    ----------
    support_embeddings : array-like, shape (n, d)
    labels : array-like of int, shape (n,)
        Labels ``0 .. n_classes-1``; every class needs at least 2 supports.
    rule : {"mean_distance", "prototype", "knn"} or callable, default "mean_distance"
    use_gpu : {"auto", True, False}, default "auto"
        Passed to the :class:`SupportIndex` built here.
    **rule_kwargs
        Passed to the rule (``k`` for knn, ``n_classes``).

    Returns
    -------
    ndarray of float64, shape (n,)
        ``loo[i] = rule(supports without i, x_i)[y_i]``.

    Notes
    -----
    Closed forms (float64) for the built-in rules, with ``n_c``, ``mu_c`` over the full class:
    prototype ``(n_c/(n_c-1))^2 ||x_i - mu_c||^2``; mean_distance
    ``(n_c ||x_i - mu_c||^2 + sum_j ||x_j - mu_c||^2) / (n_c - 1)``; knn searches ``k + 1``
    neighbours and drops the support itself.  A custom callable is evaluated by an explicit loop.
    """
    index = SupportIndex(_dim_of(support_embeddings), use_gpu=use_gpu)
    x = _check_matrix(support_embeddings, index.dim, "support_embeddings")
    y = _check_int_vector(labels, "labels", length=x.shape[0])
    index.add(x, y)
    n_classes = rule_kwargs.get("n_classes")
    _, counts = _class_counts(index, n_classes)
    single = np.flatnonzero(counts < 2)
    if single.size:
        raise ValueError(f"class {int(single[0])} has a single support; leave-one-out needs at "
                         "least 2 supports per class")
    fn = get_rule(rule)
    if fn is mean_distance or fn is prototype:
        xd = x.astype(np.float64)
        protos = class_prototypes(index, n_classes=n_classes)
        r2 = ((xd - protos[y]) ** 2).sum(1)
        nc = counts[y].astype(np.float64)
        if fn is prototype:
            return (nc / (nc - 1.0)) ** 2 * r2
        spread = np.zeros(counts.size, dtype=np.float64)
        np.add.at(spread, y, r2)
        return (nc * r2 + spread[y]) / (nc - 1.0)
    if fn is knn:
        k = rule_kwargs.get("k", 5)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0] - 1:
            raise ValueError(f"k must be an integer in [1, n_supports - 1 = {x.shape[0] - 1}] for "
                             f"leave-one-out; got {k!r}")
        k = int(k)
        dist, nb_labels, ids = index.search(x, k + 1)
        self_ids = index.ids_[:, None]  # supports were added in order: row i has id ids_[i]
        is_self = ids == self_ids
        drop = np.where(is_self.any(1), is_self.argmax(1), k)  # else drop the farthest
        keep = np.ones_like(is_self)
        keep[np.arange(x.shape[0]), drop] = False
        dist = dist[keep].reshape(-1, k).astype(np.float64)
        nb_labels = nb_labels[keep].reshape(-1, k)
        scores = _knn_scores(dist, nb_labels, counts.size)
        return scores[np.arange(x.shape[0]), y]
    out = np.empty(x.shape[0], dtype=np.float64)
    everyone = np.arange(x.shape[0])
    for i in everyone:
        sub = SupportIndex(index.dim, use_gpu=use_gpu)
        sub.add(x[everyone != i], y[everyone != i])
        kwargs = dict(rule_kwargs)
        kwargs.setdefault("n_classes", counts.size)
        out[i] = fn(sub, x[i:i + 1], **kwargs)[0, y[i]]
    return out


def _dim_of(x: Any) -> int:
    shape = np.shape(x) if not hasattr(x, "shape") else tuple(x.shape)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"support_embeddings must be a 2-D array of shape (n, d); got shape {shape}")
    return int(shape[1])


def calibrate_rejection_threshold(
    support_embeddings: Any,
    labels: Any,
    rule: str | Rule = "mean_distance",
    quantile: float = 0.95,
    **rule_kwargs: Any,
) -> float:
    """Distance threshold for "unknown" from leave-one-out distances of the supports.

    Each support is scored against its own class with itself left out
    (:func:`leave_one_out_distances`); the threshold is the ``quantile`` of those distances, so
    about ``1 - quantile`` of in-distribution queries would be rejected.

    Parameters
    ----------
    support_embeddings : array-like, shape (n, d)
    labels : array-like of int, shape (n,)
        Labels ``0 .. n_classes-1``, at least 2 supports per class.
    rule : {"mean_distance", "prototype", "knn"} or callable, default "mean_distance"
    quantile : float, default 0.95
        In ``(0, 1]`` (``numpy.quantile``, linear interpolation).
    **rule_kwargs
        Passed to the rule (``k``, ``n_classes``) and ``use_gpu``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [10.0], [12.0]])
    >>> calibrate_rejection_threshold(x, [0, 0, 1, 1], rule="mean_distance", quantile=1.0)
    4.0
    """
    if not isinstance(quantile, (float, int, np.floating, np.integer)) or not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1]; got {quantile!r}")
    loo = leave_one_out_distances(support_embeddings, labels, rule, **rule_kwargs)
    return float(np.quantile(loo, quantile))


def predict_with_rejection(
    index: SupportIndex,
    queries: Any,
    threshold: float,
    rule: str | Rule = "mean_distance",
    *,
    return_scores: bool = False,
    **rule_kwargs: Any,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict classes, answering :data:`UNKNOWN` (-1) when the best distance exceeds ``threshold``.

    Parameters
    ----------
    index : SupportIndex
    queries : array-like, shape (m, d)
    threshold : float
        Typically from :func:`calibrate_rejection_threshold` with the same rule.
    rule : {"mean_distance", "prototype", "knn"} or callable, default "mean_distance"
    return_scores : bool, default False
        Also return the per-class distances.
    **rule_kwargs
        Passed to the rule.

    Returns
    -------
    predictions : ndarray of int64, shape (m,)
        Class in ``0 .. n_classes-1``, or ``-1`` where ``min_c dist[i, c] > threshold``.
    scores : ndarray of float64, shape (m, n_classes)
        Only with ``return_scores=True``.
    """
    if threshold is None or np.isnan(threshold):
        raise ValueError(f"threshold must be a number; got {threshold!r}")
    scores = get_rule(rule)(index, queries, **rule_kwargs)
    pred = scores.argmin(axis=1).astype(np.int64)
    pred[scores.min(axis=1) > threshold] = UNKNOWN
    return (pred, scores) if return_scores else pred
