"""Transductive refinement of class prototypes with a run's unlabelled frames (soft k-means).

Semi-supervised prototypical networks (Ren et al., ICLR 2018, "Meta-learning for
semi-supervised few-shot classification") start from the class means of the labelled supports
and run soft k-means over the unlabelled embeddings, the supports kept in every mean with a
weight; TIM (Boudiaf et al., NeurIPS 2020) motivates using the query set's statistics at
classification time. This is the optimisation-free variant: no network update, only the
prototypes move. scikit-learn's KMeans has neither soft assignments nor fixed labelled members,
hence this small loop (tested against a direct computation).
"""
from __future__ import annotations

import numpy as np

__all__ = ["refine_prototypes", "prototype_distances"]


def prototype_distances(queries: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``(m, C)`` of queries ``(m, d)`` to prototypes ``(C, d)`` (float64)."""
    q = np.asarray(queries, dtype=np.float64)
    p = np.asarray(prototypes, dtype=np.float64)
    d = (q * q).sum(1)[:, None] - 2 * q @ p.T + (p * p).sum(1)[None]
    return np.clip(d, 0.0, None)


def refine_prototypes(support: np.ndarray, labels: np.ndarray, unlabelled: np.ndarray, n_classes: int, *,
                      temperature: float = 0.1, n_iter: int = 10, support_weight: float = 1.0) -> np.ndarray:
    """Class prototypes after ``n_iter`` soft k-means steps over the unlabelled embeddings.

    Parameters
    ----------
    support : ndarray, shape (n, d)
        Labelled support embeddings.
    labels : ndarray of int, shape (n,)
        Class codes ``0 .. n_classes-1``; every class needs a support.
    unlabelled : ndarray, shape (M, d)
        Embeddings of the run's unlabelled frames (queries included).
    n_classes : int
    temperature : float
        Soft assignment ``w_uc = softmax_c(-||u - p_c||^2 / temperature)`` (squared distances of
        unit vectors lie in [0, 4]; 0.1 is the classifier's probability temperature).
    n_iter : int
        Refinement steps (0 returns the support means).
    support_weight : float
        Weight of each support relative to one unlabelled frame of weight ``w_uc``.

    Returns
    -------
    ndarray, shape (n_classes, d), float64
        ``p_c = (a sum_{s in c} z_s + sum_u w_uc z_u) / (a n_c + sum_u w_uc)``.
    """
    z = np.asarray(support, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    u = np.asarray(unlabelled, dtype=np.float64).reshape(-1, z.shape[1])
    if not temperature > 0 or support_weight < 0 or n_iter < 0:
        raise ValueError(f"need temperature > 0, support_weight >= 0, n_iter >= 0; got {temperature}, "
                         f"{support_weight}, {n_iter}")
    onehot = np.zeros((z.shape[0], n_classes))
    onehot[np.arange(z.shape[0]), y] = 1.0
    counts = onehot.sum(0)
    if (counts == 0).any():
        raise ValueError(f"class {int(np.flatnonzero(counts == 0)[0])} has no support")
    sums = onehot.T @ z
    protos = sums / counts[:, None]
    for _ in range(int(n_iter)):
        if u.shape[0] == 0:
            break
        logits = -prototype_distances(u, protos) / temperature
        logits -= logits.max(1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(1, keepdims=True)
        protos = (support_weight * sums + w.T @ u) / (support_weight * counts + w.sum(0))[:, None]
    return protos
