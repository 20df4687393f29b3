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
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from speckle_embed.evaluation.baselines import baseline_features, baseline_predictions, evaluate_baselines
from speckle_embed.fewshot.episodes import Episode, evaluate_episodes
from speckle_embed.evaluation.labelled import LabelledSet
from speckle_embed.evaluation.selection import selection_metrics

__all__ = ["detector_fraction_mask", "split_labelled_pool", "online_protocol", "head_config_for",
           "finetune_embedder", "write_labelled_pool", "ONLINE_CLASSES"]

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
    if member.get("val_metric") == "f1":  # binary-only metric: pick epochs by accuracy
        member["val_metric"] = "accuracy"
    model = dict(member.get("model", {}))
    key = "n_outputs" if model.get("name") == "shi2019" else "n_classes"
    model[key] = int(n_classes)
    member["model"] = model
    member.update(dict(overrides or {}))
    return cfg


def write_labelled_pool(path, frames: np.ndarray, hit: np.ndarray, mask: np.ndarray) -> Path:
    """Write labelled frames as a CXI-flavoured HDF5 file the trainer reads (one dummy structure)."""
    import h5py

    from speckle_embed.atomic import tmp_sibling

    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    with h5py.File(tmp, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=np.asarray(frames, dtype=np.float32), chunks=True)
        f.create_dataset("/entry_1/data_1/mask", data=np.asarray(mask, dtype=np.uint16))
        f.create_dataset("/entry_1/truth/hit_class", data=np.asarray(hit, dtype=np.int8))
        f.attrs["structure_name"] = path.stem
    os.replace(tmp, path)
    return path


def finetune_embedder(embedder, frames: np.ndarray, hit: np.ndarray, mask: np.ndarray, run_dir,
                      train_config: Mapping | None = None, *, classes=ONLINE_CLASSES, n_train: int = 40,
                      n_val: int = 20, seed: int = 0, progress: bool = False):
    """Online training (SpeckleNN section 4.2) of ``embedder`` on a small labelled pool.

    The pool (``n_train + n_val`` frames per class, nothing else) is written to
    ``run_dir/labelled_pool.h5`` and :func:`speckle_embed.train.train` runs in class mode from
    the embedder's weights (``init_checkpoint``), keeping its architecture and preprocessing.

    Parameters
    ----------
    embedder : SpeckleEmbedder
        Starting point (e.g. the pretrained embedding).
    frames, hit : arrays (M, H, W), (M,)
        The labelled pool only.
    mask : ndarray (H, W)
        Bad pixels (non-zero), e.g. with the detector-fraction mask applied.
    run_dir : path
        Training run folder (checkpoints, metrics.csv, learning_curve.png).
    train_config : mapping, optional
        :class:`~speckle_embed.train.config.TrainConfig` keys (``epochs``, ``steps_per_epoch``,
        ``sampler``, ``optim``, ``augment``...); data, init and evaluation keys are set here.

    Returns
    -------
    SpeckleEmbedder
        From the run's ``best.pt`` (validation 3-way 5-shot accuracy on the ``n_val`` frames).
    """
    from speckle_embed.inference.embedder import SpeckleEmbedder
    from speckle_embed.train.loop import train

    run_dir = Path(os.fspath(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    masked = np.where(np.asarray(mask)[None] != 0, 0.0, frames).astype(np.float32)
    pool = write_labelled_pool(run_dir / "labelled_pool.h5", masked, hit, mask)
    init = run_dir / "init.pt"
    embedder.save_checkpoint(init)
    cfg = {"name": run_dir.name, "seed": int(seed), "run_dir": str(run_dir), "epochs": 20,
           "steps_per_epoch": 10, "device": "cpu", "progress": progress, "tensorboard": False,
           "resume": "never", "sampler": {"p": len(classes), "k": 20}, "optim": {"lr": 3e-4},
           **dict(train_config or {})}
    cfg.update({"init_checkpoint": str(init),
                "data": {"dirs": [str(pool)], "mode": "class", "hit_classes": list(classes),
                         "n_train_per_class": int(n_train), "n_val_per_class": int(n_val),
                         "generate_if_missing": False, "split_seed": int(seed)},
                "eval": {"n_way": len(classes), "classes": list(classes), "k_shot": 5,
                         "n_query": max(1, int(n_val) - 5), "n_tasks": 20}})
    result = train(cfg)
    return SpeckleEmbedder.from_checkpoint(result.best_checkpoint, device=embedder.device)


def _single_pr(confusion, classes) -> dict:
    """Precision and recall of the single-hit class (code 1) from a confusion matrix."""
    if 1 not in classes or confusion is None:
        return {}
    c, j = np.asarray(confusion), list(classes).index(1)
    tp, pred, true = c[j, j], c[:, j].sum(), c[j, :].sum()
    return {"precision": float(tp / pred) if pred else 0.0, "recall": float(tp / true) if true else 0.0}


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
    single = selection_metrics(pred == 1, true == 1)
    return {"accuracy": float(np.mean(pred == true)),
            **{k: single[k] for k in ("precision", "recall", "f1")},
            "n_queries": int(qidx.size), "confusion": conf.tolist(), "confusion_classes": list(classes)}


def online_protocol(embedder, data: LabelledSet, *, heads: Mapping[str, Mapping] | None = None,
                    detector_fractions: Sequence[float] = (1.0, 0.25), k_shot: int = 5,
                    n_query: int = 50, n_tasks: int = 20, n_train: int = 40, n_val: int = 20,
                    classes: Sequence[int] = ONLINE_CLASSES, rule: str = "mean_distance", seed: int = 0,
                    head_overrides: Mapping | None = None, single_model: bool = True,
                    embed_kwargs: Mapping | None = None, progress: bool = True,
                    finetune: Mapping | None = None, run_dir=None, baselines: bool = True) -> dict:
    """SpeckleNN 3-way K-shot against supervised heads on one labelled experiment.

    Parameters
    ----------
    embedder : SpeckleEmbedder
    data : LabelledSet
        Frames with hit classes ``classes`` (noisy frames as recorded).
    heads : mapping name -> head config, optional
        :func:`speckle_embed.heads.head_from_config` configs (e.g. ``conf/evaluate/heads/*.yaml``),
        turned into ``len(classes)``-way heads by :func:`head_config_for`.
    detector_fractions : sequence of float
        Shares of the detector kept (:func:`detector_fraction_mask`).
    k_shot, n_query, n_tasks : int
        Episodes: supports per class (labelled pool), queries per class (query pool), episodes.
    n_train, n_val : int
        Labelled frames per class for the heads (the supports come from the ``n_train``).
    embed_kwargs : mapping, optional
        Passed to ``embedder.embed`` (``scale``, ``center`` for foreign detectors).
    finetune : mapping, optional
        With ``enabled: true``, also a "SpeckleNN (fine-tuned)" row per fraction: the
        embedder trained on the labelled pool (with that fraction's mask) by
        :func:`finetune_embedder`; the other keys are its ``train_config``. Needs ``run_dir``.
    baselines : bool
        Also a row per classical baseline (:mod:`speckle_embed.baselines`): fitted on each
        episode's supports, scored on the same queries, with that fraction's mask.

    Returns
    -------
    dict
        ``rows``: one per (fraction, method) with accuracy, F1 (single positive), precision,
        recall and confusion; ``selections``: per fraction, method -> boolean single-hit
        selection over the query pool (plus ``"truth"``); ``masks``: per fraction, the mask
        used (file mask | detector-fraction mask); ``split`` sizes.
    """
    from speckle_embed.fewshot.rules import get_rule
    from speckle_embed.heads import head_from_config
    from speckle_embed.fewshot.index import SupportIndex

    classes = tuple(int(c) for c in classes)
    keep = np.isin(data.hit, classes)
    hit = np.where(keep, data.hit, -1)
    train, val, query = split_labelled_pool(hit, n_train, n_val, classes=classes, seed=seed)
    episodes = _episodes(hit, train, query, classes=classes, k_shot=k_shot, n_query=n_query,
                         n_tasks=n_tasks, seed=seed)
    base = np.zeros(data.frames.shape[1:], np.uint16) if data.mask is None else data.mask.astype(np.uint16)
    def speckle_row(z: np.ndarray, method: str, tag: str, fraction: float) -> tuple[dict, np.ndarray]:
        """Score the episodes on embeddings ``z``; single-hit selection over the whole query pool
        with the first episode's supports."""
        res = evaluate_episodes(z, episodes, rule=rule)
        row = {"detector": tag, "fraction": float(fraction), "method": method, "accuracy": res["accuracy"],
               "f1": res["f1"], **_single_pr(res["confusion"], classes), "n_queries": res["n_queries"],
               "confusion": res["confusion"], "confusion_classes": list(classes)}
        index = SupportIndex(z.shape[1], use_gpu=False)
        index.add(z[episodes[0].support_idx], episodes[0].support_labels)
        pred = np.asarray(classes)[get_rule(rule)(index, z[query], n_classes=len(classes)).argmin(1)]
        return row, pred == 1

    rows, selections, masks = [], {}, {}
    for fraction in detector_fractions:
        mask = base | detector_fraction_mask(base.shape, float(fraction))
        tag = f"{100 * fraction:g}%"
        masks[tag] = mask
        z = np.asarray(embedder.embed(data.frames, mask=mask, **dict(embed_kwargs or {})), dtype=np.float32)
        row, single = speckle_row(z, "SpeckleNN (few-shot)", tag, fraction)
        rows.append(row)
        sel = {row["method"]: single}
        if finetune and finetune.get("enabled", False):
            if run_dir is None:
                raise ValueError("finetune needs run_dir (where the training run is written)")
            pool = np.concatenate([train, val])
            tuned = finetune_embedder(embedder, data.frames[pool], hit[pool], mask,
                                      Path(os.fspath(run_dir)) / f"finetune_{int(round(100 * fraction))}",
                                      {k: v for k, v in finetune.items() if k != "enabled"},
                                      classes=classes, n_train=n_train, n_val=n_val, seed=seed)
            zt = np.asarray(tuned.embed(data.frames, mask=mask), dtype=np.float32)
            row, single = speckle_row(zt, "SpeckleNN (fine-tuned)", tag, fraction)
            rows.append(row)
            sel[row["method"]] = single
        if baselines:
            center = (embed_kwargs or {}).get("center")
            feats = baseline_features([data], masks=[mask], center=None if isinstance(center, str) else center)
            for name, res in evaluate_baselines(feats, episodes).items():
                rows.append({"detector": tag, "fraction": float(fraction), "method": name,
                             "accuracy": res["accuracy"], "f1": res["f1"],
                             **_single_pr(res["confusion"], classes), "n_queries": res["n_queries"],
                             "confusion": res["confusion"], "confusion_classes": list(classes)})
                est, f = feats[name]
                first = Episode(0, episodes[0].classes, episodes[0].support_idx, episodes[0].support_labels,
                                query, np.zeros(query.size, dtype=np.int64))
                sel[name] = np.asarray(classes)[baseline_predictions(est, f, first)] == 1
        for name, cfg in (heads or {}).items():
            if not cfg:  # heads.<name>=null switches a head off
                continue
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
    return {"rows": rows, "selections": selections, "masks": masks, "query_index": query,
            "split": {"train": int(train.size), "val": int(val.size), "query": int(query.size)},
            "k_shot": int(k_shot), "n_query": int(min(n_query, *(np.sum(hit[query] == c) for c in classes))),
            "n_tasks": int(n_tasks), "classes": list(classes), "rule": rule,
            "chance": 1.0 / len(classes) if classes else math.nan}
