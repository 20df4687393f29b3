"""Few-shot episodes over held-out structures and their evaluation.

An episode (easyfsl vocabulary: ``n_way``, ``k_shot``, ``n_query``, ``n_tasks``) is drawn from
the frames of **one** structure: ``k_shot`` support frames of each of ``n_way`` hit classes
(by default ``single`` and ``multi``) and a label-balanced query set of ``n_query`` other
frames per class. :func:`evaluate_episodes` classifies the queries with a rule of
:mod:`speckle_embed.fewshot.rules` (default ``mean_distance``, SpeckleNN's) over a
:class:`~speckle_embed.fewshot.index.SupportIndex` of the supports and reports accuracy and F1 with
``single`` as the positive class, pooled over episodes and per structure.

Episodes hold indices into an embedding array, so a validation set is embedded once and the
same episodes (fixed seed) are scored after every epoch.

Examples
--------
>>> import numpy as np
>>> hit = np.array([1] * 10 + [2] * 10); structure = np.zeros(20, dtype=int)
>>> episodes = sample_episodes(hit, structure, k_shot=3, n_query=5, n_tasks=4, seed=0)
>>> emb = np.where(hit[:, None] == 1, [1.0, 0.0], [0.0, 1.0])
>>> evaluate_episodes(emb, episodes)["accuracy"]
1.0
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from speckle_embed.fewshot.index import SupportIndex
from speckle_embed.fewshot.linear import view_rows
from speckle_embed.fewshot.rules import get_rule, logistic
from speckle_embed.formats import HIT_CLASSES

__all__ = ["Episode", "sample_episodes", "evaluate_episodes", "episode_distances", "support_distances", "evaluate_predictions", "HIT_CLASSES", "POSITIVE_CLASS"]

#: Hit class that F1 treats as positive.
POSITIVE_CLASS = 1


@dataclass(frozen=True)
class Episode:
    """One few-shot task drawn from one structure.

    Attributes
    ----------
    structure : int
        Structure index the frames come from.
    classes : tuple of int
        Hit classes of the episode; episode label ``j`` means hit class ``classes[j]``.
    support_idx, query_idx : ndarray of int64
        Positions into the label (and embedding) arrays.
    support_labels, query_labels : ndarray of int64
        Episode labels ``0 .. n_way-1``.
    """

    structure: int
    classes: tuple[int, ...]
    support_idx: np.ndarray
    support_labels: np.ndarray
    query_idx: np.ndarray
    query_labels: np.ndarray

    @property
    def n_way(self) -> int:
        return len(self.classes)


def _default_classes(n_way: int) -> tuple[int, ...]:
    if not 2 <= n_way <= len(HIT_CLASSES) - 1:
        raise ValueError(f"n_way must be 2 or 3 without explicit classes, got {n_way}")
    return tuple(range(1, 1 + n_way))  # (single, multi[, non_sample])


def sample_episodes(labels, structure_index, n_way: int = 2, k_shot: int = 5, n_query: int = 10,
                    n_tasks: int = 20, seed: int = 0, *, classes: Sequence[int] | None = None,
                    structures: Sequence[int] | None = None) -> list[Episode]:
    """Draw ``n_tasks`` episodes per structure.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Hit class of every frame (``-1`` = unknown, never used).
    structure_index : array_like of int, shape (N,)
        Structure of every frame (one value everywhere for single-structure data).
    n_way : int
        Classes per episode.
    k_shot : int
        Supports per class.
    n_query : int
        Queries per class (at most); every class of an episode gets the same number,
        ``min(n_query, smallest class size - k_shot)``.
    n_tasks : int
        Episodes per structure.
    seed : int
    classes : sequence of int, optional
        Hit classes (length ``n_way``); default ``single, multi`` (``n_way = 2``) or
        ``single, multi, non_sample`` (``n_way = 3``).
    structures : sequence of int, optional
        Structures to draw from; default every structure present.

    Returns
    -------
    list of Episode
        Structure by structure (ascending), ``n_tasks`` each. Structures that do not have
        ``k_shot + 1`` frames of every class are skipped.

    Raises
    ------
    ValueError
        Bad arguments, mismatched lengths, or no structure with enough frames (the message
        lists the class counts).
    """
    hit = np.asarray(labels).reshape(-1)
    struct = np.asarray(structure_index).reshape(-1)
    if hit.shape != struct.shape:
        raise ValueError(f"labels ({hit.shape[0]}) and structure_index ({struct.shape[0]}) differ in length")
    classes = _default_classes(n_way) if classes is None else tuple(int(c) for c in classes)
    if len(classes) != n_way or len(set(classes)) != n_way:
        raise ValueError(f"classes {classes} must be {n_way} distinct hit classes")
    for name, v, low in (("k_shot", k_shot, 1), ("n_query", n_query, 1), ("n_tasks", n_tasks, 1)):
        if isinstance(v, bool) or int(v) != v or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if structures is None:
        structures = sorted(set(struct[struct >= 0].tolist()))
    episodes: list[Episode] = []
    counts_seen = {}
    for s in structures:
        members = [np.flatnonzero((struct == s) & (hit == c)) for c in classes]
        counts_seen[int(s)] = [m.size for m in members]
        smallest = min(m.size for m in members)
        if smallest < k_shot + 1:
            continue
        q = min(int(n_query), smallest - k_shot)
        rng = np.random.default_rng([int(seed), int(s), 0xE915])
        for _ in range(int(n_tasks)):
            sup, sup_y, qry, qry_y = [], [], [], []
            for j, m in enumerate(members):
                pick = m[rng.permutation(m.size)[:k_shot + q]]
                sup.append(pick[:k_shot])
                qry.append(pick[k_shot:])
                sup_y.append(np.full(k_shot, j))
                qry_y.append(np.full(q, j))
            episodes.append(Episode(int(s), classes, np.concatenate(sup).astype(np.int64),
                                    np.concatenate(sup_y).astype(np.int64),
                                    np.concatenate(qry).astype(np.int64),
                                    np.concatenate(qry_y).astype(np.int64)))
    if not episodes:
        names = ", ".join(HIT_CLASSES[c] if 0 <= c < len(HIT_CLASSES) else str(c) for c in classes)
        raise ValueError(
            f"no structure has k_shot + 1 = {k_shot + 1} frames of each class ({names}); "
            f"frames per structure and class: {counts_seen}")
    return episodes


def _binary_counts(pred_pos: np.ndarray, true_pos: np.ndarray) -> tuple[int, int, int]:
    tp = int(np.sum(pred_pos & true_pos))
    fp = int(np.sum(pred_pos & ~true_pos))
    fn = int(np.sum(~pred_pos & true_pos))
    return tp, fp, fn


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0


def evaluate_episodes(embeddings, episodes: Sequence[Episode], rule: Any = "mean_distance", *,
                      structure_names: Sequence[str] | None = None, positive_class: int = POSITIVE_CLASS,
                      support_views: np.ndarray | None = None, **rule_kwargs: Any) -> dict:
    """Classify the queries of every episode and score them.

    Parameters
    ----------
    embeddings : array_like (N, d) or Tensor
        Embeddings of the frames the episodes index.
    episodes : sequence of Episode
    rule : str or callable
        A rule of :mod:`speckle_embed.fewshot.rules` (``"mean_distance"``, ``"prototype"``,
        ``"knn"``) or a callable with the same signature.
    structure_names : sequence of str, optional
        Names for the per-structure keys (default ``str(structure index)``).
    positive_class : int
        Hit class counted as positive for F1 (``single``).
    support_views : ndarray, shape (N, n_views, d), optional
        Symmetry-view embeddings that train ``rule="logistic"`` (:func:`episode_distances`).
    **rule_kwargs
        Passed to the rule (e.g. ``k`` for knn).

    Returns
    -------
    dict
        See :func:`evaluate_predictions`.
    """
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if emb.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, d), got {emb.shape}")
    def predict(ep: Episode) -> np.ndarray:
        return episode_distances(emb, ep, rule, support_views=support_views, **rule_kwargs).argmin(axis=1)

    return evaluate_predictions(predict, episodes, structure_names=structure_names,
                                positive_class=positive_class)


def episode_distances(embeddings: np.ndarray, ep: Episode, rule: Any = "mean_distance", *,
                      support_views: np.ndarray | None = None, query_views: bool = False,
                      **rule_kwargs: Any) -> np.ndarray:
    """The rule's per-class distances ``(n_query, n_way)`` of one episode's queries.

    Parameters
    ----------
    embeddings : ndarray of float32, shape (N, d)
        Embeddings of the frames the episode indexes.
    ep : Episode
    rule : str or callable
    support_views : ndarray of float32, shape (N, n_views, d), optional
        Embeddings of the symmetry views of every frame
        (:func:`speckle_embed.inference.views.embed_views`): with ``rule="logistic"`` the
        supports' views train the regression, as in ``FewShotClassifier(support_views="d4")``.
    query_views : bool, default False
        With ``rule="logistic"``, classify each query by its probabilities averaged over its views
        in ``support_views`` (as ``FewShotClassifier(query_views="d4")``).
    **rule_kwargs
        Passed to the rule.
    """
    views = None if support_views is None else support_views[ep.support_idx]
    if query_views:
        if support_views is None or get_rule(rule) is not logistic:
            raise ValueError("query_views=True needs rule='logistic' and the views (support_views=)")
        queries = support_views[ep.query_idx]
    else:
        queries = embeddings[ep.query_idx]
    return support_distances(embeddings[ep.support_idx], ep.support_labels, queries, ep.n_way,
                             rule, views=views, **rule_kwargs)


def support_distances(support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, n_way: int,
                      rule: Any = "mean_distance", *, views: np.ndarray | None = None, **rule_kwargs: Any) -> np.ndarray:
    """The rule's distances ``(m, n_way)`` of ``queries`` (m, d) to ``support`` (k, d) with labels
    ``0 .. n_way-1``; ``views`` (k, n_views, d), if given, train ``rule="logistic"``, whose
    ``queries`` may also be ``(m, n_views, d)`` (probabilities averaged over each query's views)."""
    fn = get_rule(rule)
    if np.ndim(queries) == 3 and fn is not logistic:
        raise ValueError("queries of shape (m, n_views, d) need rule='logistic'")
    index = SupportIndex(support.shape[1], use_gpu=False)
    index.add(support, support_labels)
    if fn is logistic and views is not None:
        rule_kwargs = {**rule_kwargs, "training": view_rows(views, support_labels)}
    return fn(index, queries, n_classes=n_way, **rule_kwargs)


def evaluate_predictions(predict: Callable[[Episode], np.ndarray], episodes: Sequence[Episode], *,
                         structure_names: Sequence[str] | None = None,
                         positive_class: int = POSITIVE_CLASS) -> dict:
    """Score any few-shot method on episodes: ``predict(episode)`` -> episode labels of its queries.

    The same episodes scored by different methods (an embedding's rule, a classical baseline, an
    adapted classifier) give directly comparable numbers.

    Parameters
    ----------
    predict : callable
        ``predict(ep)`` returns the predicted episode labels ``0 .. n_way-1`` of ``ep.query_idx``.
    episodes : sequence of Episode
    structure_names : sequence of str, optional
    positive_class : int
        Hit class counted as positive for F1.

    Returns
    -------
    dict
        ``accuracy`` (pooled over all queries), ``f1`` (pooled counts, positive class),
        ``n_tasks``, ``n_queries``, ``confusion`` (pooled ``(n_way, n_way)`` counts, rows = true
        class, columns = predicted, in the order of ``confusion_classes``, the hit classes of the
        episodes; ``None`` when episodes mix class sets) and ``per_structure``:
        ``{name: {"accuracy", "f1", "n_tasks", "n_queries"}}``.
    """
    if not episodes:
        raise ValueError("no episodes to evaluate")
    per: dict[int, list[int]] = {}  # structure -> [correct, total, tp, fp, fn, tasks]
    classes = episodes[0].classes
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for ep in episodes:
        pred = np.asarray(predict(ep)).reshape(-1)
        if pred.shape != ep.query_labels.shape:
            raise ValueError(f"predict returned {pred.shape[0]} labels for {ep.query_labels.shape[0]} queries")
        if confusion is not None and ep.classes == classes:
            np.add.at(confusion, (ep.query_labels, pred), 1)
        else:
            confusion = None
        acc = per.setdefault(ep.structure, [0, 0, 0, 0, 0, 0])
        acc[0] += int(np.sum(pred == ep.query_labels))
        acc[1] += int(pred.size)
        if positive_class in ep.classes:
            j = ep.classes.index(positive_class)
            tp, fp, fneg = _binary_counts(pred == j, ep.query_labels == j)
            acc[2] += tp
            acc[3] += fp
            acc[4] += fneg
        acc[5] += 1
    tot = np.sum(np.array(list(per.values()), dtype=np.int64), axis=0)
    result = {
        "accuracy": float(tot[0] / tot[1]) if tot[1] else float("nan"),
        "f1": _f1(int(tot[2]), int(tot[3]), int(tot[4])),
        "n_tasks": int(tot[5]),
        "n_queries": int(tot[1]),
        "confusion": None if confusion is None else confusion.tolist(),
        "confusion_classes": list(classes),
        "per_structure": {},
    }
    for s in sorted(per):
        c = per[s]
        name = structure_names[s] if structure_names is not None and 0 <= s < len(structure_names) else str(s)
        result["per_structure"][name] = {"accuracy": c[0] / c[1] if c[1] else float("nan"),
                                         "f1": _f1(c[2], c[3], c[4]), "n_tasks": c[5], "n_queries": c[1]}
    return result
