"""The online protocol of SpeckleNN (Wang et al. 2023, section 4.2, Table 1).

One experiment's labelled frames (single, multi and non-sample hits) are split once into a
small **labelled pool** (``n_train + n_val`` frames per class, the labels a scientist would
give: 40 + 20 in the paper) and a **query pool** (everything else). Then, for each detector
fraction (``1.0`` = whole detector, ``0.25`` = one quadrant, a fixed angular sector about the
beam centre):

* **SpeckleNN**: 3-way 5-shot episodes, supports drawn from the labelled pool, label-balanced
  queries from the query pool, mean-distance rule;
* **supervised heads** (the pre-activation ResNet of Assalauova et al. 2022 and the Shi et al.
  2019 CNN): trained on the same labelled pool (``n_train`` per class, ``n_val`` for epoch
  selection) as 3-class classifiers, then scored on **the same episode queries**.

Each method's single-hit selection over the whole query pool feeds the selection metrics of
Assalauova et al. (:mod:`speckle_embed.evaluation.selection`).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from speckle_embed.evaluation.episodes import Episode, evaluate_episodes
from speckle_embed.evaluation.labelled import LabelledSet

__all__ = ["detector_fraction_mask", "split_labelled_pool", "online_protocol", "head_config_for",
           "ONLINE_CLASSES"]

#: single, multi, non-sample hit codes (DESIGN.md).
ONLINE_CLASSES = (1, 2, 3)


def detector_fraction_mask(shape: tuple[int, int], fraction: float, center=None,
                           start_angle_deg: float = 180.0) -> np.ndarray:
    """Mask (1 = removed) keeping an angular sector of ``fraction`` of the detector.

    The kept pixels are those whose polar angle about ``center`` lies within
    ``[start, start + 360 fraction)`` degrees (angle of ``(row - cy, col - cx)`` measured from
    +col towards +row); ``fraction = 0.25`` with the default start keeps the quadrant of
    smaller rows and smaller columns (top-left in an image display). ``fraction = 1`` removes
    nothing.

    Parameters
    ----------
    shape : (int, int)
        Frame shape ``(H, W)``.
    fraction : float
        Share of the detector kept, in ``(0, 1]``.
    center : (float, float), optional
        Beam centre ``(row, col)`` in pixels (default ``((H-1)/2, (W-1)/2)``).
    start_angle_deg : float

    Returns
    -------
    ndarray of uint16, shape (H, W)
        CXI-style bits: ``1`` (invalid) outside the sector, ``0`` inside.

    Examples
    --------
    >>> m = detector_fraction_mask((4, 4), 0.25)
    >>> (m == 0).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"detector fraction must be in (0, 1], got {fraction}")
    h, w = shape
    if fraction == 1:
        return np.zeros((h, w), dtype=np.uint16)
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if center is None else center
    rows, cols = np.mgrid[:h, :w]
    angle = np.degrees(np.arctan2(rows - cy, cols - cx)) % 360.0
    rel = (angle - start_angle_deg) % 360.0
    return (rel >= 360.0 * fraction).astype(np.uint16)


def split_labelled_pool(hit: np.ndarray, n_train: int, n_val: int, *, classes=ONLINE_CLASSES,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split frame indices into training, validation and query pools.

    Returns
    -------
    train, val, query : ndarray of int64
        ``n_train`` and ``n_val`` frames of every class; the queries are all other frames of
        those classes.

    Raises
    ------
    ValueError
        A class has fewer than ``n_train + n_val + 1`` frames (counts named).
    """
    rng = np.random.default_rng([int(seed), 0x0A11])
    train, val, query = [], [], []
    counts = {int(c): int(np.sum(hit == c)) for c in classes}
    short = {c: n for c, n in counts.items() if n < n_train + n_val + 1}
    if short:
        raise ValueError(f"the online protocol needs more than n_train + n_val = {n_train + n_val} "
                         f"frames of each class; frames per class: {counts}")
    for c in classes:
        idx = rng.permutation(np.flatnonzero(hit == c))
        train.append(idx[:n_train])
        val.append(idx[n_train:n_train + n_val])
        query.append(idx[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in (train, val, query))


def _episodes(hit: np.ndarray, labelled: np.ndarray, query: np.ndarray, *, classes, k_shot: int,
              n_query: int, n_tasks: int, seed: int) -> list[Episode]:
    """Episodes with supports from ``labelled`` and balanced queries from ``query``."""
    rng = np.random.default_rng([int(seed), 0xE0])
    sup_pool = [labelled[hit[labelled] == c] for c in classes]
    qry_pool = [query[hit[query] == c] for c in classes]
    q = min(int(n_query), *(p.size for p in qry_pool))
    if min(p.size for p in sup_pool) < k_shot or q < 1:
        raise ValueError(f"not enough frames for {k_shot}-shot episodes: supports per class "
                         f"{[p.size for p in sup_pool]}, queries per class {[p.size for p in qry_pool]}")
    episodes = []
    for _ in range(int(n_tasks)):
        sup = [rng.choice(p, k_shot, replace=False) for p in sup_pool]
        qry = [rng.choice(p, q, replace=False) for p in qry_pool]
        episodes.append(Episode(
            0, tuple(int(c) for c in classes),
            np.concatenate(sup).astype(np.int64), np.repeat(np.arange(len(classes)), k_shot).astype(np.int64),
            np.concatenate(qry).astype(np.int64), np.repeat(np.arange(len(classes)), q).astype(np.int64)))
    return episodes


def head_config_for(cfg: Mapping, n_classes: int, overrides: Mapping | None = None,
                    single_model: bool = True) -> dict:
    """A head config turned into a ``n_classes``-way classifier for the online table.

    Binary settings (``positive_class``, ``recipe``, ``threshold``) are dropped, the model's
    output width set to ``n_classes``; ``overrides`` (e.g. a shorter ``n_epochs`` for a CPU)
    apply to the member parameters; ``single_model`` replaces a cross-validation ensemble by
    one member trained on the training pool (its validation pool picks the epoch).
    """
    cfg = copy.deepcopy(dict(cfg))
    if cfg.get("kind", "supervised") == "ensemble":
        member = dict(cfg.get("head", {}))
        if single_model:
            cfg = {"kind": "supervised", **member}
            member = cfg
        else:
            cfg["head"] = member
            cfg.pop("threshold", None)
    else:
        member = cfg
    member["positive_class"] = None
    member["recipe"] = None
    member.pop("threshold", None)
    member.pop("positive_fraction", None)
    member.pop("class_weights", None)
    model = dict(member.get("model", {}))
    key = "n_outputs" if model.get("name") == "shi2019" else "n_classes"
    model[key] = int(n_classes)
    member["model"] = model
    member.update(dict(overrides or {}))
    return cfg


def _binary_metrics(pred: np.ndarray, truth: np.ndarray, positive: int = 1) -> dict:
    p, t = pred == positive, truth == positive
    tp, fp, fn = int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t))
    return {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0}


def _score_predictions(pred_by_frame: np.ndarray, hit: np.ndarray, episodes: Sequence[Episode],
                       classes) -> dict:
    """Accuracy, single-hit F1 and confusion of per-frame predictions over the episode queries."""
    qidx = np.concatenate([ep.query_idx for ep in episodes])
    pred, true = pred_by_frame[qidx], hit[qidx]
    conf = np.zeros((len(classes), len(classes)), dtype=np.int64)
    pos = {c: j for j, c in enumerate(classes)}
    for t, p in zip(true, pred):
        if int(p) in pos:
            conf[pos[int(t)], pos[int(p)]] += 1
    return {"accuracy": float(np.mean(pred == true)), **_binary_metrics(pred, true),
            "n_queries": int(qidx.size), "confusion": conf.tolist(), "confusion_classes": list(classes)}


def online_protocol(embedder, data: LabelledSet, *, heads: Mapping[str, Mapping] | None = None,
                    detector_fractions: Sequence[float] = (1.0, 0.25), k_shot: int = 5,
                    n_query: int = 50, n_tasks: int = 20, n_train: int = 40, n_val: int = 20,
                    classes: Sequence[int] = ONLINE_CLASSES, rule: str = "mean_distance", seed: int = 0,
                    head_overrides: Mapping | None = None, single_model: bool = True,
                    embed_kwargs: Mapping | None = None, progress: bool = True) -> dict:
    """SpeckleNN 3-way K-shot against supervised heads on one labelled experiment.

    Parameters
    ----------
    embedder : SpeckleEmbedder
    data : LabelledSet
        Frames with hit classes ``classes`` (noisy frames as recorded).
    heads : mapping name -> head config, optional
        :func:`speckle_embed.heads.head_from_config` configs (e.g. ``conf/heads/*.yaml``),
        turned into ``len(classes)``-way heads by :func:`head_config_for`.
    detector_fractions : sequence of float
        Shares of the detector kept (:func:`detector_fraction_mask`).
    k_shot, n_query, n_tasks : int
        Episodes: supports per class (labelled pool), queries per class (query pool), episodes.
    n_train, n_val : int
        Labelled frames per class for the heads (the supports come from the ``n_train``).
    embed_kwargs : mapping, optional
        Passed to ``embedder.embed`` (``scale``, ``center`` for foreign detectors).

    Returns
    -------
    dict
        ``rows``: one per (fraction, method) with accuracy, F1 (single positive), precision,
        recall and confusion; ``selections``: per fraction, method -> boolean single-hit
        selection over the query pool (plus ``"truth"``); ``split`` sizes.
    """
    from speckle_embed.heads import head_from_config

    classes = tuple(int(c) for c in classes)
    keep = np.isin(data.hit, classes)
    hit = np.where(keep, data.hit, -1)
    train, val, query = split_labelled_pool(hit, n_train, n_val, classes=classes, seed=seed)
    episodes = _episodes(hit, train, query, classes=classes, k_shot=k_shot, n_query=n_query,
                         n_tasks=n_tasks, seed=seed)
    base = np.zeros(data.frames.shape[1:], np.uint16) if data.mask is None else data.mask.astype(np.uint16)
    rows, selections = [], {}
    for fraction in detector_fractions:
        mask = base | detector_fraction_mask(base.shape, float(fraction))
        tag = f"{100 * fraction:g}%"
        z = np.asarray(embedder.embed(data.frames, mask=mask, **dict(embed_kwargs or {})), dtype=np.float32)
        res = evaluate_episodes(z, episodes, rule=rule)
        rows.append({"detector": tag, "fraction": float(fraction), "method": "SpeckleNN (few-shot)",
                     "accuracy": res["accuracy"], "f1": res["f1"], "n_queries": res["n_queries"],
                     "confusion": res["confusion"], "confusion_classes": list(classes)})
        # single-hit selection over the whole query pool with the first episode's supports
        from speckle_embed.fewshot_rules import get_rule
        from speckle_embed.index import SupportIndex
        index = SupportIndex(z.shape[1], use_gpu=False)
        index.add(z[episodes[0].support_idx], episodes[0].support_labels)
        pred = np.asarray(classes)[get_rule(rule)(index, z[query], n_classes=len(classes)).argmin(1)]
        sel = {"SpeckleNN (few-shot)": pred == 1}
        for name, cfg in (heads or {}).items():
            head = head_from_config(head_config_for(cfg, len(classes), head_overrides, single_model))
            head.set_params(progress=progress)
            head.fit(data.frames[train], hit[train], val=(data.frames[val], hit[val]), mask=mask)
            pred_frames = np.full(hit.shape, -1, dtype=np.int64)
            pred_frames[query] = np.asarray(head.predict(data.frames[query], mask=mask)).astype(np.int64)
            rows.append({"detector": tag, "fraction": float(fraction), "method": str(name),
                         **_score_predictions(pred_frames, hit, episodes, classes)})
            sel[str(name)] = pred_frames[query] == 1
        sel["truth"] = hit[query] == 1
        selections[tag] = sel
    return {"rows": rows, "selections": selections, "query_index": query,
            "split": {"train": int(train.size), "val": int(val.size), "query": int(query.size)},
            "k_shot": int(k_shot), "n_query": int(min(n_query, *(np.sum(hit[query] == c) for c in classes))),
            "n_tasks": int(n_tasks), "classes": list(classes), "rule": rule,
            "chance": 1.0 / len(classes) if classes else math.nan}
