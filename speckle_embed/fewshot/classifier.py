"""Few-shot classification of diffraction frames: a scikit-learn-style estimator.

:class:`FewShotClassifier` embeds support frames with a :class:`~speckle_embed.inference.embedder.SpeckleEmbedder`,
keeps them in a FAISS :class:`~speckle_embed.fewshot.index.SupportIndex` and classifies queries with one
of the rules of :mod:`speckle_embed.fewshot.rules` (``"logistic"``, the default: a logistic
regression on the supports and their symmetry views; ``"mean_distance"``, SpeckleNN's rule;
``"prototype"``; ``"knn"``)::

    import speckle_embed as se
    emb = se.SpeckleEmbedder.from_checkpoint("best.pt")
    clf = se.FewShotClassifier(emb).fit(support_frames, support_labels)
    clf.register("single", five_more_frames)        # incremental; new classes allowed
    clf.predict(queries), clf.predict_proba(queries)
    clf.save("clf/"); clf = se.FewShotClassifier.load("clf/")

Saving and loading (:meth:`FewShotClassifier.save` / :meth:`FewShotClassifier.load`, the folder
layout, ``classifier.json`` and its checks) live in :mod:`speckle_embed.fewshot.persistence`; class-label
coercion in :mod:`speckle_embed.fewshot.labels`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from speckle_embed.adaptation import adapt_embedder, adapt_prototypes, parse_adapt
from speckle_embed.estimator import FrameClassifier, NotFittedError
from speckle_embed.fewshot.index import SupportIndex
from speckle_embed.fewshot.labels import as_label_list, label_kind, labels_array
from speckle_embed.fewshot.linear import fit_logistic, logistic, logistic_distances, view_rows
from speckle_embed.fewshot.persistence import (
    CLASSIFIER_FORMAT,
    ClassifierFileError,
    load_classifier,
    save_classifier,
)
from speckle_embed.fewshot.rules import (
    RULES,
    UNKNOWN,
    calibrate_rejection_threshold,
    get_rule,
    knn,
    scores_to_proba,
)
from speckle_embed.frame_checks import warn_empty
from speckle_embed.inference.embedder import SpeckleEmbedder
from speckle_embed.inference.views import embed_views, view_indices

__all__ = ["FewShotClassifier", "ClassificationResult", "NotFittedError", "ClassifierFileError",
           "CLASSIFIER_FORMAT"]

_DEFAULT_TEMPERATURE = {"mean_distance": 0.1, "prototype": 0.1, "knn": 1.0, "logistic": 1.0}
_DEFAULTS = {"rule": "logistic", "k": 5, "support_views": "d4", "query_views": "none"}  # __init__'s defaults, left out of repr()


class ClassificationResult(NamedTuple):
    """Everything :meth:`FewShotClassifier.classify` computes for a batch of queries.

    Attributes
    ----------
    labels : ndarray, shape (m,)
        Predicted class labels (the unknown label where rejected).
    codes : ndarray of int64, shape (m,)
        Index into ``classes_``, ``-1`` where rejected.
    distances : ndarray of float64, shape (m, n_classes)
        The rule's per-class distances (smaller = closer).
    proba : ndarray of float64, shape (m, n_classes)
        Softmax of ``-distances / temperature``.
    empty : ndarray of bool, shape (m,)
        Frames with no photons or no contrast in the model's field of view (all zero,
        constant): their label and probabilities are meaningless
        (:mod:`speckle_embed.frame_checks`). Appended last, so indices 0-3 and construction
        from four values are unchanged (``None`` then); unpack by attribute, not as a 4-tuple.
    """

    labels: np.ndarray
    codes: np.ndarray
    distances: np.ndarray
    proba: np.ndarray
    empty: np.ndarray | None = None



class FewShotClassifier(FrameClassifier):
    """Classify diffraction frames from a few labelled examples per class.

    Parameters
    ----------
    embedder : SpeckleEmbedder
        Maps frames to unit-norm embeddings.
    rule : {"logistic", "mean_distance", "prototype", "knn"} or callable, default "logistic"
        Decision rule (:mod:`speckle_embed.fewshot.rules`): a logistic regression fitted on the
        supports (and their symmetry views, ``support_views``), mean squared L2 distance to the
        supports of each class (SpeckleNN), distance to the class mean, or majority vote of the
        ``k`` nearest supports. A callable ``rule(index, queries, *, n_classes)`` works too (not
        savable). ``"logistic"`` is the default because it was best on the held-out validation
        domain of ``docs/domains.md`` (5-shot, v3: 0.951 against 0.815 for ``"prototype"`` and
        0.759 for ``"mean_distance"``).
    k : int, default 5
        Neighbours for ``rule="knn"``; capped at the number of supports.
    temperature : float, optional
        Softmax temperature of :meth:`predict_proba` (``proba = softmax(-distance / T)``). Default
        0.1 for the distance rules (squared distances of unit vectors lie in [0, 4]) and 1.0 for
        ``"knn"`` (whose scores count votes).
    reject_quantile : float in (0, 1], optional
        Enables rejection: a query farther from every class than the ``reject_quantile``
        quantile of the supports' leave-one-out distances to their own class is answered
        "unknown" by :meth:`predict`. Needs at least 2 supports per class.
    unknown_label : str or int, optional
        What :meth:`predict` answers for a rejected query: default ``"unknown"`` for string
        classes and ``-1`` for integer classes.
    scale, center : optional
        Passed to :meth:`SpeckleEmbedder.embed` for supports and queries alike (``scale`` a
        float or ``"auto"``; ``center`` ``(row, col)`` or ``"auto"``).
    use_gpu : {"auto", True, False}, default "auto"
        Where the :class:`SupportIndex` searches.
    adapt : None, {"prototypes", "batchnorm", "finetune"} or list of them, default None
        Classification-time adaptation done by :meth:`fit` (:mod:`speckle_embed.adaptation`):
        ``"batchnorm"`` re-estimates the network's BatchNorm statistics on ``fit(...,
        unlabelled=frames)``; ``"finetune"`` fine-tunes a copy of the embedding on the
        augmented supports (<= 60 s by default); ``"prototypes"`` refines the class
        prototypes by soft k-means over the unlabelled frames and classifies by the distance
        to them (instead of ``rule``). Off by default: on the held-out PR772-like set none
        beat the frozen embedding (README, "Adaptation at classification time").
    adapt_options : dict, optional
        Per-option overrides, e.g. ``{"finetune": {"budget_s": 30}}`` (defaults in
        :data:`speckle_embed.adaptation.ADAPTATIONS`).
    support_views : {"d4", "none"}, default "d4"
        Symmetry views of every support frame that train the ``"logistic"`` rule: ``"d4"`` adds
        the frame rotated by 90, 180 and 270 degrees about its beam centre and the four mirrors
        (:mod:`speckle_embed.inference.views`: each is a physically valid pattern of the same
        hit class), so K supports give 8 K examples; costs 8 embeddings per support (none per
        query). The distance rules and rejection use the frames themselves, and with another
        ``rule`` the views are not embedded at all (choose the rule before :meth:`fit`).
    query_views : {"none", "d4"}, default "none"
        ``"d4"``: every query is embedded in its eight symmetry views and classified by the
        logistic rule's probabilities averaged over them (test-time augmentation; 8 times the
        embedding cost of a query, so off for the online veto by default). ``rule="logistic"``
        only. Rejection (``reject_quantile``) keeps its threshold, calibrated on the supports
        themselves. On the three validation domains of ``docs/domains.md`` (v12, 5-shot, seed 0)
        it gave 0.961 / 0.986 / 0.959 against 0.959 / 0.983 / 0.955 without.

    Attributes
    ----------
    classes_ : ndarray, shape (n_classes,)
        Class labels (str or int64); :meth:`fit` sorts them, :meth:`register` appends new ones.
    n_supports_ : ndarray of int64, shape (n_classes,)
        Supports per class.
    index_ : SupportIndex
        Support embeddings with integer labels ``0 .. n_classes-1`` (positions in ``classes_``).
    threshold_ : float or None
        Rejection threshold (``None`` without ``reject_quantile``).
    embedding_size_ : int
    adaptation_ : AdaptationState or None
        What ``adapt`` changed (adapted embedder copy, refined prototypes, timings).
    support_view_embeddings_ : ndarray of float32, shape (n_supports, n_views, d)
        Embeddings of every view of every support, rows in the order of ``index_``
        (``n_views = 1`` with ``support_views="none"`` or a rule other than ``"logistic"``; view 0
        is the frame itself).

    Notes
    -----
    scikit-learn's contract comes from :class:`~speckle_embed.estimator.FrameClassifier`: ``clone``
    and ``cross_val_score`` work (the ``embedder`` parameter is deep-copied for each clone: one
    model copy per fold).

    Examples
    --------
    >>> import numpy as np
    >>> emb = SpeckleEmbedder.random_init(device="cpu")
    >>> yy, xx = np.mgrid[:128, :128] - 63.5
    >>> rings = np.stack([100 * (np.cos(np.hypot(yy, xx) / p) > 0) for p in (2, 2.2, 2.4)])
    >>> stripes = np.stack([100 * (np.cos(xx / p) > 0) for p in (2, 2.2, 2.4)])
    >>> clf = FewShotClassifier(emb).fit(np.concatenate([rings, stripes]), ["ring"] * 3 + ["stripe"] * 3)
    >>> clf.classes_.tolist(), clf.n_supports_.tolist()
    (['ring', 'stripe'], [3, 3])
    >>> clf.predict(np.stack([100 * (np.cos(xx / 2.1) > 0)])).tolist()
    ['stripe']
    """

    def __init__(self, embedder: SpeckleEmbedder, rule: Any = "logistic", k: int = 5,
                 temperature: float | None = None, reject_quantile: float | None = None, *,
                 unknown_label: str | int | None = None, scale: Any = None, center: Any = None,
                 use_gpu: bool | str = "auto", adapt: Any = None, adapt_options: dict | None = None,
                 support_views: str = "d4", query_views: str = "none"):
        self.embedder = embedder
        self.rule = rule
        self.k = k
        self.temperature = temperature
        self.reject_quantile = reject_quantile
        self.unknown_label = unknown_label
        self.scale = scale
        self.center = center
        self.use_gpu = use_gpu
        self.adapt = adapt
        self.adapt_options = adapt_options
        self.support_views = support_views
        self.query_views = query_views

    # ------------------------------------------------------------------ sklearn plumbing
    # get_params/set_params (the parameters of __init__'s signature, ``embedder`` included),
    # sklearn.base.clone, check_is_fitted, NotFittedError and score come from FrameClassifier.
    _not_fitted_hint = "no supports yet, call fit() or register() first"

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}"
                         for p in ("rule", "k", "temperature", "reject_quantile", "support_views", "query_views")
                         if getattr(self, p) != _DEFAULTS.get(p))
        fitted = (f"; {len(self.classes_)} classes, {int(self.n_supports_.sum())} supports"
                  if self._is_fitted() else "")
        return f"FewShotClassifier({args}){fitted}"

    def _is_fitted(self) -> bool:
        return getattr(self, "index_", None) is not None and getattr(self, "classes_", None) is not None

    def _check_params(self) -> None:
        if isinstance(self.rule, str) and self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose one of {sorted(RULES)} or pass a callable")
        if not isinstance(self.rule, str) and not callable(self.rule):
            raise ValueError(f"rule must be a rule name or a callable; got {self.rule!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be a positive integer; got {self.k!r}")
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float, np.number))
                              or not math.isfinite(t) or t <= 0):
            raise ValueError(f"temperature must be a positive number; got {t!r}")
        q = self.reject_quantile
        if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float, np.number))
                              or not 0.0 < q <= 1.0):
            raise ValueError(f"reject_quantile must be in (0, 1] or None; got {q!r}")
        if not isinstance(self.embedder, SpeckleEmbedder):
            raise TypeError(f"embedder must be a SpeckleEmbedder; got {type(self.embedder).__name__}")
        parse_adapt(self.adapt)
        view_indices(self.support_views)
        view_indices(self.query_views)
        if self.query_views != "none" and self.rule != "logistic":
            raise ValueError(f"query_views={self.query_views!r} averages the logistic rule's probabilities over "
                             f"each query's views: it needs rule='logistic' (got rule={self.rule!r})")

    # ------------------------------------------------------------------ fitting
    def _embedder_in_use(self) -> SpeckleEmbedder:
        state = getattr(self, "adaptation_", None)
        return self.embedder if state is None or state.embedder is None else state.embedder

    def _embed(self, frames, mask) -> np.ndarray:
        return self._embedder_in_use().embed(frames, mask, scale=self.scale, center=self.center)

    def _embed_queries(self, frames, mask, return_empty: bool = False):
        """Query embeddings ``(m, d)``, or ``(m, n_views, d)`` with ``query_views`` (view 0 = the
        frame); with ``return_empty`` also the empty flags of the frames (view 0)."""
        emb, kw = self._embedder_in_use(), {"scale": self.scale, "center": self.center}
        if self.query_views == "none":
            return emb.embed(frames, mask, **kw, return_empty=return_empty)
        return embed_views(emb, frames, mask, group=self.query_views, return_empty=return_empty, **kw)

    def _embed_supports(self, frames, mask) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of support frames ``(n, d)`` and of all their views ``(n, n_views, d)``."""
        # the views train the logistic rule only: the other rules embed the frames alone
        group = self.support_views if self.rule == "logistic" else "none"
        views = embed_views(self._embedder_in_use(), frames, mask, group=group,
                            scale=self.scale, center=self.center)
        return np.ascontiguousarray(views[:, 0]), views

    def fit(self, X, y, *, mask=None, classes=None, unlabelled=None,
            unlabelled_mask=None) -> "FewShotClassifier":
        """Replace the support set by ``X`` with labels ``y``.

        Parameters
        ----------
        X : array_like, shape (n, H, W)
            Support frames (photons, any real dtype).
        y : array_like of str or int, shape (n,)
            Class of each frame.
        mask : array_like, shape (H, W) or (n, H, W), optional
            Bad pixels (non-zero), see :meth:`SpeckleEmbedder.embed`.
        classes : sequence of str or int, optional
            The full list of classes, in the order of ``classes_``; each must have at least one
            support. Default: the sorted distinct labels of ``y``.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Empty support set, labels of the wrong length or type, a class of ``classes`` with
            no supports, a label not in ``classes``, frames with bad dimensions or NaN-only frames
            (the embedder names the frame); an ``adapt`` option that needs ``unlabelled``
            without it.
        unlabelled : array_like, shape (M, H, W), optional
            The run's unlabelled frames (queries may be among them), for ``adapt``.
        unlabelled_mask : array_like, optional
            Their bad pixels (default ``mask``).
        """
        self._check_params()
        labels = as_label_list(y)
        shape = tuple(X.shape) if hasattr(X, "shape") else np.shape(X)
        if len(shape) not in (2, 3):
            raise ValueError(f"X must have shape (n, H, W) (or (H, W) for one frame); got shape {shape}")
        n_frames = 1 if len(shape) == 2 else int(shape[0])
        if n_frames == 0 or not labels:
            raise ValueError("empty support set: fit() needs at least one support frame per class")
        if len(labels) != n_frames:
            raise ValueError(f"y has {len(labels)} labels but X has {n_frames} frames")
        kind = label_kind(labels)
        if classes is None:
            names = sorted(set(labels))
        else:
            names = as_label_list(list(classes))
            if label_kind(names) != kind and names:
                raise ValueError("classes and y mix strings and integers")
            if len(set(names)) != len(names):
                raise ValueError(f"classes contains duplicates: {names}")
            unknown = sorted(set(labels) - set(names), key=str)
            if unknown:
                raise ValueError(f"label {unknown[0]!r} of y is not in classes={names}")
            counts = {c: 0 for c in names}
            for v in labels:
                counts[v] += 1
            empty = [c for c in names if counts[c] == 0]
            if empty:
                raise ValueError(f"class {empty[0]!r} has no supports: every class needs at least one "
                                 "support frame")
        self._check_unknown_label(names, kind)
        lookup = {c: i for i, c in enumerate(names)}
        codes = np.array([lookup[v] for v in labels], dtype=np.int64)
        options = parse_adapt(self.adapt)
        umask = mask if unlabelled_mask is None else unlabelled_mask
        self.adaptation_ = None
        if options:  # the embedding-changing options come first: supports are embedded with the result
            self.adaptation_ = adapt_embedder(self.embedder, options, X, codes, mask, unlabelled, umask,
                                              center=self.center, scale=self.scale,
                                              adapt_options=self.adapt_options)
        Z, views = self._embed_supports(X, mask)
        index = SupportIndex(Z.shape[1], metric="l2", use_gpu=self.use_gpu)
        index.add(Z, codes)
        self.support_view_embeddings_ = views
        self._set_state(index, labels_array(names, kind), kind)
        if options:
            adapt_prototypes(self.adaptation_, Z, codes, None if unlabelled is None else self._embed(unlabelled, umask),
                             len(names), adapt_options=self.adapt_options)
        return self

    def register(self, label, frames, mask=None) -> "FewShotClassifier":
        """Add support frames of one class (a new class is appended to ``classes_``).

        Parameters
        ----------
        label : str or int
        frames : array_like, shape (n, H, W) or (H, W)
        mask : array_like, optional

        Returns
        -------
        self
        """
        self._check_params()
        if getattr(self, "adaptation_", None) is not None:
            raise ValueError("this classifier was adapted (adapt=...) to its supports and unlabelled frames; "
                             "to add supports refit with fit(X, y, unlabelled=frames)")
        label = label.decode() if isinstance(label, bytes) else label
        if isinstance(label, np.generic):
            label = label.item()
        kind = label_kind([label])
        shape = tuple(frames.shape) if hasattr(frames, "shape") else np.shape(frames)
        if len(shape) not in (2, 3):
            raise ValueError(f"frames must have shape (n, H, W) or (H, W); got shape {shape}")
        if len(shape) == 3 and shape[0] == 0:
            raise ValueError(f"register({label!r}, ...) got no frames")
        Z, views = self._embed_supports(frames, mask)
        if not self._is_fitted():
            self._check_unknown_label([label], kind)
            index = SupportIndex(Z.shape[1], metric="l2", use_gpu=self.use_gpu)
            index.add(Z, np.zeros(Z.shape[0], dtype=np.int64))
            self.support_view_embeddings_ = views
            self._set_state(index, labels_array([label], kind), kind)
            return self
        if kind != self._label_kind_:
            raise ValueError(f"label {label!r} is a {'string' if kind == 'str' else 'integer'} but this "
                             f"classifier's classes are {'strings' if self._label_kind_ == 'str' else 'integers'}")
        names = self.classes_.tolist()
        if label in names:
            code = names.index(label)
        else:
            self._check_unknown_label([label], kind)
            names.append(label)
            code = len(names) - 1
        if Z.shape[1] != self.index_.dim:
            raise ValueError(f"the embedder gives {Z.shape[1]}-D embeddings but the supports are "
                             f"{self.index_.dim}-D")
        self.index_.add(Z, np.full(Z.shape[0], code, dtype=np.int64))
        old = getattr(self, "support_view_embeddings_", None)
        self.support_view_embeddings_ = (views if old is None or old.shape[1] != views.shape[1]
                                         else np.concatenate([old, views]))
        self._set_state(self.index_, labels_array(names, kind), kind)
        return self

    def _check_unknown_label(self, names, kind) -> None:
        if self.reject_quantile is None:
            return
        unk = self._unknown_for(kind)
        if unk in names:
            raise ValueError(f"{unk!r} is a class label but also the answer for rejected queries; "
                             "pass another unknown_label=")

    def _unknown_for(self, kind: str):
        if self.unknown_label is not None:
            return self.unknown_label
        return "unknown" if kind == "str" else UNKNOWN

    def _set_state(self, index: SupportIndex, classes: np.ndarray, kind: str) -> None:
        counts = np.bincount(index.labels_, minlength=len(classes)).astype(np.int64)
        self.index_ = index
        self.classes_ = classes
        self._label_kind_ = kind
        self.n_supports_ = counts
        self.embedding_size_ = int(index.dim)
        self.checkpoint_hash_ = self.embedder.checkpoint_hash
        self._logistic_model = None  # fitted on first use (rule "logistic")
        self.threshold_ = None
        if self.reject_quantile is not None:
            few = np.flatnonzero(counts < 2)
            if few.size:
                raise ValueError(f"rejection (reject_quantile={self.reject_quantile}) needs at least 2 "
                                 f"supports per class for its leave-one-out calibration; class "
                                 f"{classes[few[0]]!r} has {counts[few[0]]}")
            kw = {"n_classes": len(classes), "use_gpu": self.use_gpu}
            if get_rule(self.rule) is knn:
                kw["k"] = min(int(self.k), index.ntotal - 1)
            self.threshold_ = calibrate_rejection_threshold(
                index.get_embeddings(), index.labels_, self.rule, float(self.reject_quantile), **kw)

    # ------------------------------------------------------------------ inference
    def _k_eff(self) -> int:
        return max(1, min(int(self.k), self.index_.ntotal))

    def _temperature(self) -> float:
        if self.temperature is not None:
            return float(self.temperature)
        return _DEFAULT_TEMPERATURE.get(self.rule, 1.0) if isinstance(self.rule, str) else 1.0

    def _scores(self, Z: np.ndarray) -> np.ndarray:
        """The rule's distances of query embeddings ``Z`` ``(m, d)``, or ``(m, n_views, d)`` (the
        logistic rule averages over the views; the other rules use view 0)."""
        state = getattr(self, "adaptation_", None)
        fn = get_rule(self.rule)
        if Z.ndim == 3 and not (fn is logistic and (state is None or state.prototypes is None)):
            Z = np.ascontiguousarray(Z[:, 0])
        if state is not None and state.prototypes is not None:
            return state.distances(Z)
        kw: dict[str, Any] = {"n_classes": len(self.classes_)}
        if fn is logistic:
            if getattr(self, "_logistic_model", None) is None:
                x, y = self._logistic_training()
                self._logistic_model = fit_logistic(x, y, len(self.classes_))
            return logistic_distances(self._logistic_model, Z, len(self.classes_))
        if fn is knn:
            kw["k"] = self._k_eff()
        return fn(self.index_, Z, **kw)

    def _logistic_training(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows that train the logistic rule: every view of every support, with its class code."""
        views = getattr(self, "support_view_embeddings_", None)
        labels = self.index_.labels_
        if views is None or views.shape[0] != labels.shape[0]:
            return self.index_.get_embeddings(), labels
        return view_rows(views, labels)

    def _codes(self, dist: np.ndarray) -> np.ndarray:
        codes = dist.argmin(axis=1).astype(np.int64)
        if self.threshold_ is not None:
            codes[dist.min(axis=1) > self.threshold_] = UNKNOWN
        return codes

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        unk = self._unknown_for(self._label_kind_)
        if self._label_kind_ == "str":
            names = self.classes_.tolist() + [str(unk)]
            return np.array([names[c] for c in codes], dtype=str) if codes.size else np.empty(0, dtype=str)
        out = self.classes_[np.clip(codes, 0, None)] if codes.size else np.empty(0, dtype=np.int64)
        return np.where(codes == UNKNOWN, int(unk), out).astype(np.int64)

    def transform(self, X, mask=None) -> np.ndarray:
        """Embeddings of ``X`` (``embedder.embed`` with this classifier's ``scale``/``center``)."""
        return self._embed(X, mask)

    def decision_distances(self, X, mask=None) -> np.ndarray:
        """Per-class distances of the rule, smaller = closer.

        Returns
        -------
        ndarray of float64, shape (m, n_classes)
            Columns in ``classes_`` order. Squared L2 for ``"mean_distance"``/``"prototype"``;
            ordinal vote scores for ``"knn"`` (see :func:`speckle_embed.fewshot.rules.knn`).
        """
        self._check_fitted()
        return self._scores(self._embed_queries(X, mask))

    def classify(self, X, mask=None) -> ClassificationResult:
        """Labels, codes, distances, probabilities and empty flags from one embedding pass.

        Frames smaller than the model's field of view raise ``ValueError`` (as every method
        that embeds frames); frames with no photons or no contrast in it are classified but
        flagged in ``result.empty`` and reported by one
        :class:`~speckle_embed.frame_checks.EmptyFrameWarning` (how many, which indices).
        """
        self._check_fitted()
        Z, empty = self._embed_queries(X, mask, return_empty=True)
        warn_empty(empty)
        dist = self._scores(Z)
        codes = self._codes(dist)
        return ClassificationResult(self._decode(codes), codes, dist,
                                    scores_to_proba(dist, self._temperature()), empty)

    def predict(self, X, mask=None) -> np.ndarray:
        """Class of each query (the closest by the rule; "unknown" where rejected).

        Returns
        -------
        ndarray, shape (m,)
            Labels from ``classes_`` (str or int64), or the unknown label.
        """
        self._check_fitted()
        return self._decode(self._codes(self._scores(self._embed_queries(X, mask))))

    def predict_proba(self, X, mask=None) -> np.ndarray:
        """Class probabilities ``softmax(-distances / temperature)``; rows sum to 1.

        Rejection does not change them (there is no "unknown" column).

        Returns
        -------
        ndarray of float64, shape (m, n_classes)
        """
        self._check_fitted()
        return scores_to_proba(self._scores(self._embed_queries(X, mask)), self._temperature())

    def kneighbors(self, X, k: int = 5, mask=None, *, return_ids: bool = False):
        """The ``k`` nearest supports of each query.

        Parameters
        ----------
        X : array_like, shape (m, H, W)
        k : int, default 5
            ``1 <= k <= n_supports``.
        return_ids : bool, default False
            Also return the supports' ids in ``index_``.

        Returns
        -------
        distances : ndarray of float32, shape (m, k)
            Squared L2 distances, ascending.
        labels : ndarray, shape (m, k)
            Class labels of the neighbours.
        ids : ndarray of int64, shape (m, k)
            Only with ``return_ids=True``.
        """
        self._check_fitted()
        n = self.index_.ntotal
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(f"k must be an integer in [1, n_supports={n}]; got {k!r}")
        dist, codes, ids = self.index_.search(self._embed(X, mask), int(k))
        labels = self.classes_[codes]
        return (dist, labels, ids) if return_ids else (dist, labels)

    def encode_labels(self, y) -> np.ndarray:
        """Labels ``y`` as values comparable with :meth:`predict` (str or int64, as ``classes_``);
        :meth:`score` (from :class:`~speckle_embed.estimator.FrameClassifier`) compares them."""
        self._check_fitted()
        return np.asarray(as_label_list(y), dtype=str if self.classes_.dtype.kind == "U" else np.int64)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the classifier to ``directory`` atomically (layout in the module docstring).

        The classifier's files are built in a ``<directory>.<pid>-<hex>.tmp`` sibling and the
        folder swapped into place; saving over a saved classifier replaces its three files and
        keeps any other file there. A non-empty directory that is not a saved classifier is refused.

        ``embedder.pt`` holds the weights in use: the embedder's checkpoint file is copied only
        while the weights in memory still match it (:meth:`SpeckleEmbedder.weights_match_checkpoint`);
        otherwise (weights changed since loading, no file, or a file that needed
        ``trust_checkpoint=True``) the current weights are written as plain data. Weights that
        changed get a new identity: the new file's hash becomes the embedder's and the
        classifier's ``checkpoint_hash``.

        Returns
        -------
        pathlib.Path

        Raises
        ------
        FileExistsError
            ``directory`` is a file, or a non-empty folder without ``classifier.json``.
        ValueError
            A callable rule, or the embedder was replaced by another one since fitting.
        """
        return save_classifier(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, embedder: SpeckleEmbedder | None = None, *,
             device: str = "auto", use_gpu: bool | str = "auto",
             trust_checkpoint: bool = False) -> "FewShotClassifier":
        """Read a classifier written by :meth:`save`.

        Parameters
        ----------
        directory : str or os.PathLike
        embedder : SpeckleEmbedder, optional
            Use this embedder instead of the saved copy; its ``checkpoint_hash`` must equal the
            saved one.
        device : str, default "auto"
            Device of the saved embedder copy (when ``embedder`` is not given).
        use_gpu : {"auto", True, False}, default "auto"
        trust_checkpoint : bool, default False
            Explicit opt-in for a folder **you trust** whose ``embedder.pt`` needs more than plain
            data to load (an old file): it is then unpickled in full, which can run code it
            contains. Convert such a folder once with ``FewShotClassifier.load(old,
            trust_checkpoint=True).save(new)``. Without it the file is refused
            (:class:`~speckle_embed.checkpoint.UntrustedCheckpointError`) and nothing in it runs.

        Raises
        ------
        FileNotFoundError
            No such directory, or it holds no ``classifier.json``.
        ClassifierFileError
            (a ``ValueError``) A file is corrupt (bad JSON, checksum mismatch, unreadable index or
            checkpoint), a value of ``classifier.json`` is invalid, or the files disagree; the
            message names the file and the key.
        UntrustedCheckpointError
            (a ``ValueError``) ``embedder.pt`` needs arbitrary objects to load and
            ``trust_checkpoint`` is False.
        ValueError
            ``embedder`` is not the one the classifier was fitted with.
        """
        return load_classifier(cls, directory, embedder, device=device, use_gpu=use_gpu,
                               trust_checkpoint=trust_checkpoint)
