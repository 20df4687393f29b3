"""A cross-validation ensemble of supervised heads: :class:`EnsembleHead`.

Stratified ``n_folds``-fold cross-validation (5 in Assalauova et al. 2022): the model of fold
``k`` trains on the other folds and selects its best epoch on fold ``k``; the ensemble averages
the members' softmax outputs, each over the frame and its horizontal mirror.
"""
from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from speckle_embed.estimator import FrameClassifier, as_labels, check_frames
from speckle_embed.heads.io import ENSEMBLE_JSON, HEAD_FORMAT, HeadFileError, plain, read_json, save_directory, write_json
from speckle_embed.heads.sampling import stratified_folds
from speckle_embed.heads.supervised import SupervisedHead
from speckle_embed.heads.training import head_metrics

__all__ = ["EnsembleHead"]


class EnsembleHead(FrameClassifier):
    """Stratified k-fold cross-validation ensemble of :class:`SupervisedHead` models.

    Fold ``k``'s model trains on the other folds (validating, and picking its best epoch, on
    fold ``k``) with seed ``seed + k``; the ensemble's probabilities are the mean of the members'
    softmax outputs, each averaged over the frame and its horizontal mirror (``mirror_tta``).

    Parameters
    ----------
    head : Mapping, optional
        :class:`SupervisedHead` parameters shared by the members (``model``, ``recipe``, ...).
    n_folds : int, default 5
    mirror_tta : bool, default True
    threshold : float, default 0.5
        Binary mode: positive where the ensemble's P(positive) >= threshold.
    seed : int, default 0
        Fold assignment; member ``k`` uses ``seed + k``.
    progress : bool, default True
    **head_params
        More member parameters (merged over ``head``).

    Attributes
    ----------
    members_ : list of SupervisedHead
    classes_ : ndarray
    folds_ : list of ndarray
        Validation indices of each fold (into the training frames).
    oof_proba_ : ndarray, shape (N, n_classes)
        Out-of-fold probabilities of the training frames (each from the member that did not
        train on it, with mirror TTA).
    val_metrics_ : dict or None
        Scores of the ensemble on ``val`` when given to :meth:`fit`.
    """

    def __init__(self, head: Mapping | None = None, n_folds: int = 5, *, mirror_tta: bool = True,
                 threshold: float = 0.5, seed: int = 0, progress: bool = True, **head_params):
        bad = set(head_params) - set(SupervisedHead._get_param_names())
        if bad:
            raise TypeError(f"unknown parameters {sorted(bad)} for EnsembleHead/SupervisedHead")
        # stored as given (sklearn.base.clone checks it); extra keywords are merged into it
        self.head = {**plain(dict(head or {})), **head_params} if head_params else head
        self.n_folds = n_folds
        self.mirror_tta = mirror_tta
        self.threshold = threshold
        self.seed = seed
        self.progress = progress

    @property
    def member_params(self) -> dict:
        """The :class:`SupervisedHead` parameters shared by the members (``head`` as a dict)."""
        return plain(dict(self.head or {}))

    def __repr__(self) -> str:
        fitted = f"; {len(self.members_)} members" if self._is_fitted() else ""
        return f"EnsembleHead(n_folds={self.n_folds}, head={self.head!r}){fitted}"

    def _is_fitted(self) -> bool:
        return bool(getattr(self, "members_", None))

    def _member(self, k: int) -> SupervisedHead:
        shared = self.member_params
        params = {**shared, "threshold": self.threshold, "mirror_tta": self.mirror_tta,
                  "seed": int(shared.get("seed", 0)) + int(self.seed) + k,
                  "progress": self.progress and shared.get("progress", True)}
        return SupervisedHead(**params)

    @property
    def binary(self) -> bool:
        return self._member(0).binary

    def fit(self, X, y, *, val=None, mask=None) -> "EnsembleHead":
        """Train the ``n_folds`` members on stratified folds of ``(X, y)``.

        ``val`` (frames, labels), if given, is only scored (``val_metrics_``): each member
        selects its epoch on its own held-out fold.

        Returns
        -------
        self
        """
        proto = self._member(0)
        proto._check_params()
        frames = check_frames(X)
        raw, _ = as_labels(y, frames.shape[0])
        classes, codes, kind = proto._fit_labels(y, frames.shape[0])
        proto._check_classes(classes, codes)
        counts = np.bincount(codes, minlength=len(classes))
        if counts.min() < 2:
            raise ValueError(f"every class needs at least 2 frames for cross-validation; "
                             f"{classes[counts.argmin()]!r} has {counts.min()}")
        if counts.min() < int(self.n_folds):
            warnings.warn(f"class {classes[counts.argmin()]!r} has {counts.min()} frames, fewer than "
                          f"n_folds={self.n_folds}: some validation folds lack it", stacklevel=2)
        prep, size, inputs = proto._fit_geometry(frames, mask, len(classes))
        # stratified on the original labels: finer than the binary mapping
        folds = stratified_folds(raw, int(self.n_folds), int(self.seed))
        members, oof = [], np.zeros((codes.size, len(classes)))
        for k, val_idx in enumerate(folds):
            train_idx = np.setdiff1d(np.arange(codes.size), val_idx)
            member = self._member(k)
            member._check_classes(classes, codes[train_idx])
            vi = torch.as_tensor(val_idx)
            member._fit_inputs(inputs[torch.as_tensor(train_idx)], codes[train_idx], classes, kind, prep, size,
                               inputs[vi] if val_idx.size else None, codes[val_idx] if val_idx.size else None)
            if val_idx.size:
                oof[val_idx] = member._proba_inputs(inputs[vi])
            members.append(member)
        self.members_ = members
        self.classes_ = classes
        self._label_kind_ = kind
        self.folds_ = folds
        self.oof_proba_ = oof
        self.val_metrics_ = None
        if val is not None:
            vlabels, vkind = as_labels(val[1], None, "val labels")
            vcodes = members[0]._encode_with(vlabels, vkind, classes, "val labels")
            self.val_metrics_ = head_metrics(self.predict_proba(val[0], mask), vcodes, self.binary,
                                         float(self.threshold))
        return self

    @classmethod
    def from_members(cls, members: Sequence[SupervisedHead], *, mirror_tta: bool = True,
                     threshold: float = 0.5) -> "EnsembleHead":
        """An ensemble of already fitted heads (same classes, preprocessing and patch size)."""
        members = list(members)
        if not members:
            raise ValueError("need at least one member")
        for m in members:
            m._check_fitted()
        first = members[0]
        for m in members[1:]:
            if (m.classes_.tolist() != first.classes_.tolist() or m.preprocessing_ != first.preprocessing_
                    or m.input_size_ != first.input_size_ or m.binary != first.binary):
                raise ValueError("ensemble members must share classes_, preprocessing and input size")
        ens = cls(head=first._json_params(), n_folds=len(members), mirror_tta=mirror_tta,
                  threshold=threshold, progress=False)
        ens.members_ = members
        ens.classes_ = first.classes_
        ens._label_kind_ = first._label_kind_
        ens.folds_, ens.oof_proba_, ens.val_metrics_ = None, None, None
        return ens

    # ------------------------------------------------------------------ prediction
    def encode_labels(self, y) -> np.ndarray:
        """Labels mapped into ``classes_`` (see :meth:`SupervisedHead.encode_labels`)."""
        self._check_fitted()
        return self.members_[0].encode_labels(y)

    def transform(self, X, mask=None) -> torch.Tensor:
        """The members' (shared) model input, shape (N, 1, h, w)."""
        self._check_fitted()
        return self.members_[0].transform(X, mask)

    def predict_proba(self, X, mask=None) -> np.ndarray:
        """Mean of the members' softmax probabilities (each with mirror TTA when ``mirror_tta``).

        Returns
        -------
        ndarray of float64, shape (N, n_classes)
        """
        inputs = self.transform(X, mask)
        return np.mean([m._proba_inputs(inputs, mirror=bool(self.mirror_tta)) for m in self.members_], axis=0)

    def predict(self, X, mask=None) -> np.ndarray:
        """Binary mode: positive where the ensemble's P(positive) >= ``threshold``; else argmax."""
        proba = self.predict_proba(X, mask)
        if self.members_[0].binary:
            return self.classes_[(proba[:, 1] >= float(self.threshold)).astype(np.int64)]
        return self.classes_[proba.argmax(1)]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``ensemble.json`` and ``member_<k>/`` (each a saved SupervisedHead) atomically."""
        self._check_fitted()

        def write(tmp: Path) -> None:
            for k, m in enumerate(self.members_):
                (tmp / f"member_{k}").mkdir()
                m._write(tmp / f"member_{k}")
            meta = {
                "format": HEAD_FORMAT,
                "kind": "EnsembleHead",
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "params": {"head": self.member_params, "n_folds": int(self.n_folds),
                           "mirror_tta": bool(self.mirror_tta), "threshold": float(self.threshold),
                           "seed": int(self.seed), "progress": bool(self.progress)},
                "label_kind": self._label_kind_,
                "classes": self.classes_.tolist(),
                "members": [f"member_{k}" for k in range(len(self.members_))],
                "fold_sizes": None if self.folds_ is None else [int(f.size) for f in self.folds_],
                "val_metrics": self.val_metrics_,
            }
            write_json(tmp / ENSEMBLE_JSON, meta)

        return save_directory(directory, ENSEMBLE_JSON, write)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: str = "auto") -> "EnsembleHead":
        """Read an ensemble written by :meth:`save`."""
        directory = Path(os.fspath(directory)).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"saved ensemble directory {directory} does not exist")
        jpath = directory / ENSEMBLE_JSON
        meta = read_json(jpath, "EnsembleHead")
        try:
            params = dict(meta["params"])
            names = list(meta["members"])
        except (KeyError, TypeError) as exc:
            raise HeadFileError(f"{jpath} lacks or garbles a field: {exc!r}") from exc
        members = []
        for name in names:
            if not (directory / name).is_dir():
                raise HeadFileError(f"{directory / name} (member listed in {jpath.name}) is missing")
            members.append(SupervisedHead.load(directory / name, device=device))
        ens = cls.from_members(members, mirror_tta=bool(params.get("mirror_tta", True)),
                               threshold=float(params.get("threshold", 0.5)))
        ens.head = dict(params.get("head") or ens.member_params)
        ens.n_folds = int(params.get("n_folds", len(members)))
        ens.seed = int(params.get("seed", 0))
        ens.progress = bool(params.get("progress", True))
        ens.val_metrics_ = meta.get("val_metrics")
        return ens


