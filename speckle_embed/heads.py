"""Supervised comparison heads: CNN classifiers trained on labelled frames.

The few-shot :class:`~speckle_embed.classifier.FewShotClassifier` is compared with fully
supervised single-hit classifiers from the literature. They share its estimator surface, so an
evaluation treats every method alike::

    head = SupervisedHead(model={"name": "preact_resnet"}, recipe="maxf1").fit(X, y, val=(Xv, yv))
    head.predict(Xq), head.predict_proba(Xq), head.score(Xq, yq)
    head.save("heads/resnet"); head = SupervisedHead.load("heads/resnet")

    ens = EnsembleHead(n_folds=5, head={"recipe": "moresh"}).fit(X, y)   # 5-fold CV ensemble
    ens.predict_proba(Xq)                                                # softmax average + mirror TTA

* :class:`SupervisedHead`: one network (any model of :data:`~speckle_embed.models.MODEL_REGISTRY`
  that outputs logits: :class:`~speckle_embed.models.resnet.PreActResNetClassifier`,
  :class:`~speckle_embed.models.shi2019.Shi2019CNN`, ...) with the training recipe of
  Assalauova et al. (IUCrJ 9, 2022): Adam (lr 1e-4), batches of 64, "epochs" of 50 iterations,
  polynomial learning-rate decay ``lr * (1 - t/T)**0.9``, random horizontal mirroring, and a
  class-sampling strategy (:data:`RECIPES`):

  ============  ========================================  =================================
  recipe        single hits per batch                     loss
  ============  ========================================  =================================
  ``"maxf1"``   2 % (maximises F1)                        cross-entropy
  ``"moresh"``  5 % ("more single hits": high recall)     cross-entropy weighted 0.1 / 0.9
  ``None``      frames drawn uniformly                    cross-entropy
  ============  ========================================  =================================

  The fraction is met in expectation: each batch holds ``floor(f * B)`` or ``ceil(f * B)``
  positives (stochastic rounding; 1.28 per batch of 64 on average for 2 %), drawn by cycling
  through a shuffled list of the positive frames, the rest likewise from the other frames
  (:class:`ClassFractionSampler`). Weighted cross-entropy is PyTorch's (the batch loss is the
  weighted mean, normalised by the sum of the weights of the batch's targets).

* **Binary mode** (``positive_class="single"``, the default): every class other than the
  positive one becomes ``"non-single"``; ``classes_ == ["non-single", "single"]``, column 1 of
  :meth:`~SupervisedHead.predict_proba` is P(single), and :meth:`~SupervisedHead.predict` says
  "single" where that probability is at least ``threshold`` (0.5 for the ResNet ensemble, 0.9
  for Shi et al. 2019). Labels may be hit-class codes (``1``) or names (``"single"``), see
  :data:`speckle_embed.data.h5dataset.HIT_CLASSES`. ``positive_class=None`` trains a
  multi-class head over the classes present (``classes_`` sorted, argmax decision).

* :class:`EnsembleHead`: stratified ``n_folds``-fold cross-validation (5 in the paper); the
  model of fold ``k`` trains on the other folds and selects its best epoch on fold ``k``. The
  ``n_folds`` models form the ensemble: probabilities are the mean of the members' softmax
  outputs, each averaged over the frame and its horizontal mirror (test-time augmentation);
  decision threshold 0.5. Out-of-fold probabilities are kept in ``oof_proba_``.

Models with a single logit ``z`` (Shi et al.'s sigmoid output) are read as two-class logits
``[0, z]``: softmax of those is ``[1 - sigmoid(z), sigmoid(z)]``.

Inputs: frames ``(N, H, W)`` in photons go through :func:`~speckle_embed.preprocess.preprocess`
to an ``S x S`` square (``preprocessing.input_size = S >= max(h, w)``), of which the central
``h x w`` window (the model's ``input_size``) is the patch the network sees; the ResNet's
192 x 96 patch is the central 192 x 96 window of a 192 x 192 square (:meth:`SupervisedHead.transform`).

Saved head layout (one directory, written atomically: a ``<dir>.<pid>-<hex>.tmp`` sibling
renamed into place)::

    head.json        format, kind, parameters, classes, model config, preprocessing, history
    model.pt         state_dict (torch.save; loads with weights_only=True)

and for an ensemble ``ensemble.json`` plus one such pair per member in ``member_<k>/``.
:func:`load_head` reads either. :func:`head_from_config` builds a head from a config dict such
as ``conf/heads/resnet_maxf1.yaml``.
"""
from __future__ import annotations

import copy
import datetime as _dt
import inspect
import json
import math
import numbers
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from speckle_embed.atomic import build_directory_atomically, read_format_json
from speckle_embed.classifier import NotFittedError
from speckle_embed.data.h5dataset import HIT_CLASSES
from speckle_embed.models import MODEL_REGISTRY, build_model, model_config
from speckle_embed.models.resnet import PreActResNetClassifier  # noqa: F401  (registers "preact_resnet")
from speckle_embed.models.shi2019 import SHI2019_THRESHOLD, Shi2019CNN  # noqa: F401  (registers "shi2019")
from speckle_embed.preprocess import Preprocessing, preprocess

__all__ = [
    "SupervisedHead",
    "EnsembleHead",
    "ClassFractionSampler",
    "RECIPES",
    "HEAD_FORMAT",
    "SHI2019_THRESHOLD",
    "HeadFileError",
    "NotFittedError",
    "stratified_folds",
    "poly_lr_lambda",
    "head_from_config",
    "load_head",
]

#: ``format`` of ``head.json`` / ``ensemble.json``.
HEAD_FORMAT = "speckle_embed-head-1"

#: Class-sampling strategies of Assalauova et al. (2022): fraction of positive (single-hit)
#: frames per batch and cross-entropy class weights ``(negative, positive)`` (None = unweighted).
RECIPES: dict[str, dict[str, Any]] = {
    "maxf1": {"positive_fraction": 0.02, "class_weights": None},
    "moresh": {"positive_fraction": 0.05, "class_weights": (0.1, 0.9)},
}

_HEAD_JSON, _ENSEMBLE_JSON, _MODEL_PT = "head.json", "ensemble.json", "model.pt"
_CHUNK = 256  # frames preprocessed at a time


class HeadFileError(ValueError):
    """A saved head is corrupt or incomplete; the message names the file."""


# ============================================================================ small helpers
def _plain(obj):
    """Mappings/sequences (also OmegaConf containers) -> dicts/lists, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or (isinstance(obj, Sequence) and not isinstance(obj, (str, bytes))):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _norm_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _label_kind(labels: np.ndarray) -> str:
    if labels.dtype.kind in "iu":
        return "int"
    if labels.dtype.kind in "US":
        return "str"
    if labels.dtype.kind == "b":
        raise ValueError("labels must be hit-class codes (int) or names (str), not booleans")
    if labels.dtype.kind == "f":
        raise ValueError(f"labels must be integers or strings; got floats (dtype {labels.dtype}); "
                         "convert integer-valued float labels with .astype(int)")
    kinds = {type(v) for v in labels.tolist()}
    if kinds <= {str}:
        return "str"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels.tolist()):
        return "int"
    raise ValueError(f"labels must be all integers or all strings; got types {sorted(k.__name__ for k in kinds)}")


def _as_labels(y, n: int | None = None, what: str = "labels") -> tuple[np.ndarray, str]:
    if hasattr(y, "detach") and hasattr(y, "cpu"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one label per frame); got shape {arr.shape}")
    if arr.dtype.kind == "S":
        arr = arr.astype(str)
    kind = _label_kind(arr)
    arr = arr.astype(np.int64) if kind == "int" else arr.astype(str)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} entries but there are {n} frames")
    return arr, kind


def _frames_array(frames):
    """Frames as something with ``len``, ``ndim == 3`` and slicing (ndarray, Tensor, h5py)."""
    if not (hasattr(frames, "shape") and hasattr(frames, "__getitem__")):
        frames = np.asarray(frames)
    if len(frames.shape) == 2:
        frames = frames[None]
    if len(frames.shape) != 3:
        raise ValueError(f"frames must have shape (N, H, W) or (H, W); got {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("no frames given (N = 0)")
    return frames


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _two_class(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1) sigmoid logits -> (N, 2) softmax logits ``[0, z]``; (N, C) unchanged."""
    if logits.ndim != 2:
        raise ValueError(f"model output must have shape (N, C); got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], 1)
    return logits


def poly_lr_lambda(total_iterations: int, power: float = 0.9):
    """Multiplier of the base learning rate at iteration ``t``: ``(1 - t / T) ** power``.

    For :class:`torch.optim.lr_scheduler.LambdaLR` (stepped once per iteration).

    Examples
    --------
    >>> f = poly_lr_lambda(100, 0.9)
    >>> f(0), round(f(50), 4), f(100)
    (1.0, 0.5359, 0.0)
    """
    total = max(int(total_iterations), 1)

    def factor(t: int) -> float:
        return max(1.0 - t / total, 0.0) ** power

    return factor


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


def _metrics(proba: np.ndarray, codes: np.ndarray, binary: bool, threshold: float) -> dict:
    """NLL, accuracy and (binary) precision/recall/F1 of the positive class."""
    p = np.clip(proba[np.arange(codes.size), codes], 1e-12, 1.0)
    pred = (proba[:, 1] >= threshold).astype(np.int64) if binary else proba.argmax(1)
    out = {"loss": float(-np.log(p).mean()), "accuracy": float((pred == codes).mean())}
    if binary:
        tp = int(((pred == 1) & (codes == 1)).sum())
        fp = int(((pred == 1) & (codes == 0)).sum())
        fn = int(((pred == 0) & (codes == 1)).sum())
        out["precision"] = tp / (tp + fp) if tp + fp else 0.0
        out["recall"] = tp / (tp + fn) if tp + fn else 0.0
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return out


def _atomic_dir(directory, marker: str, write) -> Path:
    """Build a directory in a ``.tmp`` sibling with ``write(tmp)``, then rename it into place."""
    directory = Path(os.fspath(directory)).expanduser().absolute()
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()) and not any((directory / m).exists() for m in (_HEAD_JSON, _ENSEMBLE_JSON)):
            raise FileExistsError(f"refusing to overwrite {directory}: a non-empty directory that does "
                                  f"not hold a saved head ({marker} missing)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    return build_directory_atomically(directory, write)


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path, kind: str) -> dict:
    return read_format_json(path, HEAD_FORMAT, HeadFileError, kind)


def _classes_array(values: list, kind: str) -> np.ndarray:
    return np.array([int(v) for v in values], dtype=np.int64) if kind == "int" else np.array(
        [str(v) for v in values], dtype=str)


# ============================================================================ SupervisedHead
class _ParamsMixin:
    """scikit-learn's ``get_params`` / ``set_params`` over the names in ``_PARAMS``."""

    _PARAMS: tuple = ()

    def get_params(self, deep: bool = True) -> dict:
        """Constructor parameters (as scikit-learn's ``get_params``)."""
        return {p: getattr(self, p) for p in self._PARAMS}

    def set_params(self, **params):
        """Set constructor parameters; returns ``self`` (refit to apply)."""
        for key, value in params.items():
            if key not in self._PARAMS:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; valid: {self._PARAMS}")
            setattr(self, key, value)
        return self


class SupervisedHead(_ParamsMixin):
    """A CNN classifier of diffraction frames trained on labelled frames.

    Parameters
    ----------
    model : Mapping or nn.Module, default ``{"name": "preact_resnet"}``
        Registry config (``build_model``; a fresh model is built, seeded, by every ``fit``;
        ``n_classes`` is filled in when the config omits it) or a module, copied and trained
        from its current weights. The model maps ``(N, 1, h, w)`` patches to logits
        ``(N, n_classes)`` or, for two classes, ``(N, 1)``; it must have ``input_size = (h, w)``.
    preprocessing : Preprocessing or dict, optional
        How frames become the ``S x S`` square whose central ``h x w`` window is the patch.
        Default ``Preprocessing(input_size=max(h, w), crop=max(h, w))``.
    positive_class : str or int or None, default "single"
        Binary mode (positive vs rest; ``classes_ = ["non-<name>", "<name>"]``), or ``None``
        for a multi-class head over the classes present in the training labels.
    recipe : {"maxf1", "moresh", None}, default "maxf1"
        Class-sampling strategy (:data:`RECIPES`, binary mode only); names are case-insensitive.
    positive_fraction : float, optional
        Overrides the recipe's fraction of positives per batch.
    class_weights : sequence of float, optional
        Overrides the recipe's cross-entropy weights, in ``classes_`` order.
    threshold : float, default 0.5
        Binary mode: "positive" where P(positive) >= threshold (Shi et al. 2019: 0.9).
    lr, weight_decay : float
        Adam learning rate (1e-4) and weight decay (0).
    batch_size : int, default 64
    iterations_per_epoch : int, default 50
        Iterations of one "epoch" (validation and best-model selection happen at epoch ends).
    n_epochs : int, default 100
        Training length in epochs; ``n_iterations`` overrides it.
    n_iterations : int, optional
        Total iterations (the last epoch may be shorter).
    lr_power : float, default 0.9
        Exponent of the polynomial learning-rate decay (:func:`poly_lr_lambda`).
    augment_mirror : bool, default True
        Flip each training patch horizontally with probability 1/2.
    mirror_tta : bool, default False
        Average the probabilities of each frame and its horizontal mirror at prediction time.
    val_metric : {"auto", "f1", "accuracy", "loss"}, default "auto"
        Epoch selection on ``val`` (``"f1"`` in binary mode, else ``"accuracy"``).
    restore_best : bool, default True
        With ``val``: end with the weights of the best epoch (else the last).
    predict_batch_size : int, default 256
    nan_policy : {"mask", "raise"}, default "mask"
        Non-finite pixels are masked (a frame without any finite pixel raises) or refused.
    device : str, default "auto"
        ``"auto"`` = CUDA when available.
    seed : int, default 0
        Model initialisation, batch sampling, augmentation, dropout (the global torch RNG is
        left untouched). Bit-reproducible on the CPU; on CUDA up to cuDNN's nondeterminism.
    progress : bool, default True
        tqdm progress bar during ``fit``.

    Attributes
    ----------
    classes_ : ndarray, shape (n_classes,)
        Class labels (str, or int64 in multi-class mode with integer labels).
    model_ : nn.Module
        The trained network (eval mode).
    preprocessing_ : Preprocessing
    input_size_ : (int, int)
        Patch size ``(h, w)``.
    positive_fraction_, class_weights_ : float or None, list or None
        Resolved sampling fraction and loss weights.
    history_ : list of dict
        One entry per epoch: ``epoch``, ``iteration``, ``lr``, ``train_loss`` and, with
        ``val``, ``val_loss``, ``val_accuracy`` (and ``val_precision``/``val_recall``/``val_f1``).
    best_epoch_ : int or None

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:32, :32] - 15.5
    >>> ring = lambda r: 50.0 * (np.abs(np.hypot(yy, xx) - r) < 1.5)
    >>> stripes = lambda p: 50.0 * (np.cos(yy / p) > 0.5)
    >>> X = np.stack([ring(4 + i % 4) for i in range(24)] + [stripes(1 + i % 4 / 4) for i in range(24)])
    >>> y = np.r_[np.ones(24, int), np.zeros(24, int)]          # 1 = single, 0 = no_hit
    >>> tiny = {"name": "preact_resnet", "input_size": [32, 16], "channels": [4, 8], "blocks": [1, 1]}
    >>> head = SupervisedHead(tiny,
    ...                       recipe=None, lr=3e-3, batch_size=16, n_iterations=40, progress=False)
    >>> head.fit(X, y).classes_.tolist()
    ['non-single', 'single']
    >>> head.predict(X[[0, -1]]).tolist()
    ['single', 'non-single']
    """

    _PARAMS = ("model", "preprocessing", "positive_class", "recipe", "positive_fraction",
               "class_weights", "threshold", "lr", "weight_decay", "batch_size",
               "iterations_per_epoch", "n_epochs", "n_iterations", "lr_power", "augment_mirror",
               "mirror_tta", "val_metric", "restore_best", "predict_batch_size", "nan_policy",
               "device", "seed", "progress")

    def __init__(self, model: Mapping | nn.Module | None = None, preprocessing=None, *,
                 positive_class: str | int | None = "single", recipe: str | None = "maxf1",
                 positive_fraction: float | None = None, class_weights: Sequence[float] | None = None,
                 threshold: float = 0.5, lr: float = 1e-4, weight_decay: float = 0.0,
                 batch_size: int = 64, iterations_per_epoch: int = 50, n_epochs: int = 100,
                 n_iterations: int | None = None, lr_power: float = 0.9, augment_mirror: bool = True,
                 mirror_tta: bool = False, val_metric: str = "auto", restore_best: bool = True,
                 predict_batch_size: int = 256, nan_policy: str = "mask", device: str = "auto",
                 seed: int = 0, progress: bool = True):
        self.model = {"name": "preact_resnet"} if model is None else model
        self.preprocessing = preprocessing
        self.positive_class = positive_class
        self.recipe = recipe
        self.positive_fraction = positive_fraction
        self.class_weights = class_weights
        self.threshold = threshold
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.iterations_per_epoch = iterations_per_epoch
        self.n_epochs = n_epochs
        self.n_iterations = n_iterations
        self.lr_power = lr_power
        self.augment_mirror = augment_mirror
        self.mirror_tta = mirror_tta
        self.val_metric = val_metric
        self.restore_best = restore_best
        self.predict_batch_size = predict_batch_size
        self.nan_policy = nan_policy
        self.device = device
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:
        name = self.model.get("name") if isinstance(self.model, Mapping) else type(self.model).__name__
        fitted = f"; classes {self.classes_.tolist()}" if self._is_fitted() else ""
        return (f"SupervisedHead(model={name!r}, positive_class={self.positive_class!r}, "
                f"recipe={self.recipe!r}, threshold={self.threshold}){fitted}")

    def _is_fitted(self) -> bool:
        return getattr(self, "model_", None) is not None and getattr(self, "classes_", None) is not None

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit() first")

    @property
    def binary(self) -> bool:
        """Binary (positive vs rest) mode."""
        return self.positive_class is not None

    def _check_params(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")

        for name in ("batch_size", "iterations_per_epoch", "n_epochs", "predict_batch_size"):
            positive_int(name)
        if self.n_iterations is not None:
            positive_int("n_iterations")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, numbers.Real) and self.lr > 0):
            raise ValueError(f"lr must be positive; got {self.lr!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {self.threshold!r}")
        if self.nan_policy not in ("mask", "raise"):
            raise ValueError(f"nan_policy must be 'mask' or 'raise'; got {self.nan_policy!r}")
        if self.val_metric not in ("auto", "f1", "accuracy", "loss"):
            raise ValueError(f"val_metric must be auto, f1, accuracy or loss; got {self.val_metric!r}")
        if self.val_metric == "f1" and not self.binary:
            raise ValueError("val_metric='f1' needs binary mode (positive_class set)")
        if self.recipe is not None and _norm_name(str(self.recipe)) not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)} or None")

    @property
    def total_iterations(self) -> int:
        """``n_iterations`` or ``n_epochs * iterations_per_epoch``."""
        return int(self.n_iterations) if self.n_iterations is not None else int(
            self.n_epochs) * int(self.iterations_per_epoch)

    def _resolve_sampling(self, n_classes: int) -> tuple[float | None, list | None]:
        recipe = RECIPES[_norm_name(str(self.recipe))] if self.recipe is not None else {
            "positive_fraction": None, "class_weights": None}
        if not self.binary:
            if self.recipe is not None or self.positive_fraction is not None:
                raise ValueError("recipes and positive_fraction sample the positive class of binary mode; "
                                 "with positive_class=None pass recipe=None (class_weights may be given)")
            fraction = None
        else:
            fraction = self.positive_fraction if self.positive_fraction is not None else recipe["positive_fraction"]
        weights = self.class_weights if self.class_weights is not None else recipe["class_weights"]
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != n_classes or not all(w > 0 and math.isfinite(w) for w in weights):
                raise ValueError(f"class_weights must be {n_classes} positive numbers (classes_ order); "
                                 f"got {weights}")
        return (None if fraction is None else float(fraction)), weights

    # ------------------------------------------------------------------ labels
    def _positive_name(self, kind: str) -> tuple[Any, str]:
        """(value of the positive class in the label space, its name)."""
        pc = self.positive_class
        if isinstance(pc, (bool, np.bool_)):
            raise ValueError(f"positive_class must be a class name or code; got {pc!r}")
        if isinstance(pc, (int, np.integer)):
            name = HIT_CLASSES[int(pc)] if 0 <= int(pc) < len(HIT_CLASSES) else str(int(pc))
            value = int(pc) if kind == "int" else name
        elif isinstance(pc, str):
            name = _norm_name(pc)
            if kind == "int":
                if name not in HIT_CLASSES:
                    raise ValueError(f"positive_class {pc!r} is not a hit class ({', '.join(HIT_CLASSES)}); "
                                     "integer labels are hit-class codes")
                value = HIT_CLASSES.index(name)
            else:
                value = name
        else:
            raise ValueError(f"positive_class must be a str, an int or None; got {pc!r}")
        return value, name

    def _encode_with(self, labels: np.ndarray, kind: str, classes: np.ndarray, what: str) -> np.ndarray:
        """Integer codes (positions in ``classes``) of raw labels."""
        if self.binary:  # codes or names both work: the positive class is looked up in either
            value, _ = self._positive_name(kind)
            if kind == "str":
                return np.array([_norm_name(v) == value for v in labels.tolist()], dtype=np.int64)
            return (labels == value).astype(np.int64)
        if kind != self._label_kind_:
            raise ValueError(f"{what} are {kind}s but the head was fitted on {self._label_kind_} labels")
        codes = np.searchsorted(classes, labels)
        bad = (codes >= classes.size) | (classes[np.clip(codes, 0, classes.size - 1)] != labels)
        if bad.any():
            raise ValueError(f"{what} contain classes not seen in training: {sorted(set(labels[bad].tolist()))}")
        return codes.astype(np.int64)

    def _fit_labels(self, y, n: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(classes_, codes, label kind) of training labels."""
        labels, kind = _as_labels(y, n)
        self._label_kind_ = kind
        if self.binary:
            _, name = self._positive_name(kind)
            classes = np.array([f"non-{name.replace('_', '-')}", name.replace("_", "-")], dtype=str)
        else:
            classes = np.unique(labels)
        codes = self._encode_with(labels, kind, classes, "labels")
        return classes, codes, kind

    def encode_labels(self, y) -> np.ndarray:
        """Labels mapped into ``classes_`` (e.g. hit codes ``[1, 0, 2]`` ->
        ``["single", "non-single", "non-single"]`` in binary mode)."""
        self._check_fitted()
        labels, kind = _as_labels(y)
        return self.classes_[self._encode_with(labels, kind, self.classes_, "labels")]

    # ------------------------------------------------------------------ inputs
    def _patch_geometry(self, model: nn.Module, prep) -> tuple[Preprocessing, tuple[int, int]]:
        size = getattr(model, "input_size", None)
        if size is None:
            raise ValueError(f"{type(model).__name__} has no input_size attribute: the head cannot tell "
                             "which patch to feed it")
        size = (int(size[0]), int(size[1])) if not isinstance(size, int) else (int(size), int(size))
        if prep is None:
            prep = Preprocessing(input_size=max(size), crop=max(size))
        elif isinstance(prep, Mapping):
            prep = Preprocessing.from_dict(_plain(prep))
        elif not isinstance(prep, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing, a dict or None; got {type(prep).__name__}")
        if prep.input_size < max(size):
            raise ValueError(f"preprocessing.input_size={prep.input_size} is smaller than the model's "
                             f"patch {size[0]}x{size[1]}; it must be >= {max(size)}")
        return prep, size

    def _transform(self, frames, mask, prep: Preprocessing, size: tuple[int, int], device,
                   what: str = "frames") -> torch.Tensor:
        frames = _frames_array(frames)
        n = frames.shape[0]
        s = prep.input_size
        h, w = size
        r0, c0 = (s - h) // 2, (s - w) // 2
        out = torch.empty((n, 1, h, w), dtype=torch.float32)
        for start in range(0, n, _CHUNK):
            chunk = frames[start:start + _CHUNK]
            x = chunk if torch.is_tensor(chunk) else torch.as_tensor(np.asarray(chunk))
            x = x.to(device=device)
            finite = torch.isfinite(x.float()) if x.is_floating_point() else None
            if finite is not None:
                if self.nan_policy == "raise":
                    bad = (~finite).flatten(1).any(1)
                    if bad.any():
                        i = start + int(torch.nonzero(bad)[0])
                        raise ValueError(f"{what}[{i}] contains non-finite pixels (NaN or inf); mask them "
                                         "or use nan_policy='mask'")
                empty = ~finite.flatten(1).any(1)
                if empty.any():
                    i = start + int(torch.nonzero(empty)[0])
                    raise ValueError(f"{what}[{i}] has no finite pixel (all NaN or inf)")
            sq = preprocess(x, prep, mask=mask, device=device)
            out[start:start + chunk.shape[0]] = sq[:, :, r0:r0 + h, c0:c0 + w].cpu()
        return out

    def transform(self, X, mask=None) -> torch.Tensor:
        """Model input of frames: the central ``h x w`` patch of the preprocessed square.

        Returns
        -------
        Tensor of float32, shape (N, 1, h, w), on the CPU
        """
        self._check_fitted()
        return self._transform(X, mask, self.preprocessing_, self.input_size_, self.device_)

    # ------------------------------------------------------------------ model
    def _build_model(self, n_classes: int) -> nn.Module:
        if isinstance(self.model, nn.Module):
            return copy.deepcopy(self.model)
        if not isinstance(self.model, Mapping):
            raise TypeError(f"model must be a registry config (Mapping) or an nn.Module; got "
                            f"{type(self.model).__name__}")
        cfg = _plain(self.model)
        name = cfg.get("name", "preact_resnet")
        cfg["name"] = name
        cls = MODEL_REGISTRY.get(name)
        if cls is not None and "n_classes" not in cfg and "n_classes" in inspect.signature(cls).parameters:
            cfg["n_classes"] = n_classes
        return build_model(cfg)

    @staticmethod
    def _check_output(model: nn.Module, size, n_classes: int, device) -> None:
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros((2, 1, *size), device=device))
        model.train(was)
        width = out.shape[1] if out.ndim == 2 else None
        if width != n_classes and not (width == 1 and n_classes == 2):
            raise ValueError(f"the model outputs shape {tuple(out.shape)} but the head has {n_classes} classes: "
                             f"it must output (N, {n_classes})" + (" or (N, 1)" if n_classes == 2 else ""))

    def _proba_inputs(self, inputs: torch.Tensor, model: nn.Module | None = None,
                      mirror: bool | None = None) -> np.ndarray:
        """Softmax probabilities of preprocessed patches (eval mode, optional mirror TTA)."""
        model = self.model_ if model is None else model
        mirror = self.mirror_tta if mirror is None else mirror
        was = model.training
        model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, inputs.shape[0], int(self.predict_batch_size)):
                xb = inputs[start:start + int(self.predict_batch_size)].to(self.device_)
                p = F.softmax(_two_class(model(xb)).float(), 1)
                if mirror:
                    p = 0.5 * (p + F.softmax(_two_class(model(torch.flip(xb, (-1,)))).float(), 1))
                out.append(p.double().cpu())
        model.train(was)
        return torch.cat(out).numpy()

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, *, val=None, mask=None) -> "SupervisedHead":
        """Train a fresh network on frames ``X`` with labels ``y``.

        Parameters
        ----------
        X : array_like, shape (N, H, W)
            Frames in photons (ndarray, Tensor or h5py dataset).
        y : array_like of int or str, shape (N,)
            Hit-class codes or names (any labels in multi-class mode).
        val : (frames, labels), optional
            Validation frames, scored at the end of every epoch (``history_``); the best epoch
            by ``val_metric`` is kept when ``restore_best``.
        mask : array_like (H, W), optional
            Bad-pixel mask (non-zero = bad) of ``X`` (and of the validation frames).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Fewer than two classes after the binary mapping, mismatched lengths, a frame with
            no finite pixel (its index is named), bad parameters.
        """
        self._check_params()
        frames = _frames_array(X)
        classes, codes, kind = self._fit_labels(y, frames.shape[0])
        self._check_classes(classes, codes)
        self._resolve_sampling(len(classes))  # fail fast on recipe / weights errors
        device = _resolve_device(self.device)
        self.device_ = device
        # geometry from a throwaway model (built again, seeded, in _fit_inputs)
        with torch.random.fork_rng(devices=[]):
            probe = self._build_model(len(classes))
        prep, size = self._patch_geometry(probe, self.preprocessing)
        inputs = self._transform(frames, mask, prep, size, device)
        val_inputs = val_codes = None
        if val is not None:
            if not (isinstance(val, (tuple, list)) and len(val) == 2):
                raise ValueError("val must be a pair (frames, labels)")
            vframes = _frames_array(val[0])
            vlabels, vkind = _as_labels(val[1], vframes.shape[0], "val labels")
            val_codes = self._encode_with(vlabels, vkind, classes, "val labels")
            val_inputs = self._transform(vframes, mask, prep, size, device, "val frames")
        return self._fit_inputs(inputs, codes, classes, kind, prep, size, val_inputs, val_codes)

    def _check_classes(self, classes: np.ndarray, codes: np.ndarray) -> None:
        present = np.unique(codes)
        if present.size < 2:
            only = classes[present[0]] if present.size else "nothing"
            hint = (f" (binary mode maps every class other than positive_class={self.positive_class!r} "
                    f"to {classes[0]!r})" if self.binary else "")
            raise ValueError(f"{type(self).__name__}.fit needs frames of at least two classes; got only "
                             f"{only!r} ({codes.size} frames){hint}")

    def _fit_inputs(self, inputs: torch.Tensor, codes: np.ndarray, classes: np.ndarray, kind: str,
                    prep: Preprocessing, size, val_inputs=None, val_codes=None) -> "SupervisedHead":
        """Train on preprocessed patches with integer codes (positions in ``classes``)."""
        self._check_params()
        device = _resolve_device(self.device)
        self.device_ = device
        self._label_kind_ = kind
        n_classes = len(classes)
        fraction, weights = self._resolve_sampling(n_classes)
        total = self.total_iterations
        per_epoch = int(self.iterations_per_epoch)
        metric = self.val_metric if self.val_metric != "auto" else ("f1" if self.binary else "accuracy")
        cuda_devices = [device] if device.type == "cuda" else []
        history: list[dict] = []
        best_state, best_score, best_epoch = None, None, None
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(int(self.seed))
            model = self._build_model(n_classes).to(device)
            self._check_output(model, size, n_classes, device)
            sampler = ClassFractionSampler(codes, int(self.batch_size), fraction, positive=1,
                                           seed=int(self.seed))
            gen = torch.Generator(device="cpu").manual_seed(int(self.seed) + 1)
            data = inputs.to(device) if inputs.numel() * 4 < (1 << 30) else inputs
            targets = torch.as_tensor(codes, dtype=torch.long)
            weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
            criterion = nn.CrossEntropyLoss(weight=weight)
            optimizer = torch.optim.Adam(model.parameters(), lr=float(self.lr),
                                         weight_decay=float(self.weight_decay))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(total, float(self.lr_power)))
            model.train()
            losses: list[float] = []
            bar = tqdm(total=total, desc=type(self).__name__, unit="it", disable=not self.progress,
                       leave=False)
            try:
                for it in range(1, total + 1):
                    idx = torch.as_tensor(sampler.next_batch())
                    xb = data[idx.to(data.device)].to(device, non_blocking=True)
                    yb = targets[idx].to(device, non_blocking=True)
                    if self.augment_mirror:
                        flip = (torch.rand(xb.shape[0], generator=gen) < 0.5).to(device)
                        xb = torch.where(flip[:, None, None, None], torch.flip(xb, (-1,)), xb)
                    loss = criterion(_two_class(model(xb)), yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    lr_now = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    if it % per_epoch == 0 or it == total:
                        entry = {"epoch": (it - 1) // per_epoch + 1, "iteration": it, "lr": lr_now,
                                 "train_loss": float(np.mean(losses))}
                        losses = []
                        if val_inputs is not None:
                            self.model_ = model
                            proba = self._proba_inputs(val_inputs, model)
                            m = _metrics(proba, val_codes, self.binary, float(self.threshold))
                            entry.update({f"val_{k}": v for k, v in m.items()})
                            score = -m["loss"] if metric == "loss" else m[metric]
                            if best_score is None or score > best_score:
                                best_score, best_epoch = score, entry["epoch"]
                                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                            bar.set_postfix(loss=f"{entry['train_loss']:.3g}",
                                            **{f"val_{metric}": f"{m[metric]:.3g}"})
                        else:
                            bar.set_postfix(loss=f"{entry['train_loss']:.3g}")
                        history.append(entry)
            except BaseException:
                self.model_ = None
                raise
            finally:
                bar.close()
        if best_state is not None and self.restore_best:
            model.load_state_dict(best_state)
        model.eval()
        self.model_ = model
        self.classes_ = classes
        self.preprocessing_ = prep
        self.input_size_ = (int(size[0]), int(size[1]))
        self.positive_fraction_ = fraction
        self.class_weights_ = weights
        self.criterion_ = criterion
        self.history_ = history
        self.best_epoch_ = best_epoch if (best_state is not None and self.restore_best) else None
        self.n_train_ = int(codes.size)
        return self

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, X, mask=None) -> np.ndarray:
        """Class probabilities (softmax; averaged over the mirror image with ``mirror_tta``).

        Returns
        -------
        ndarray of float64, shape (N, n_classes)
            Columns in ``classes_`` order; in binary mode column 1 is P(positive).
        """
        self._check_fitted()
        return self._proba_inputs(self.transform(X, mask))

    def _decide(self, proba: np.ndarray) -> np.ndarray:
        if self.binary:
            return self.classes_[(proba[:, 1] >= float(self.threshold)).astype(np.int64)]
        return self.classes_[proba.argmax(1)]

    def predict(self, X, mask=None) -> np.ndarray:
        """Class of each frame: binary mode thresholds P(positive) at ``threshold``, else argmax.

        Returns
        -------
        ndarray, shape (N,)
            Labels from ``classes_``.
        """
        return self._decide(self.predict_proba(X, mask))

    def score(self, X, y, mask=None) -> float:
        """Accuracy of :meth:`predict` against labels ``y`` (mapped by :meth:`encode_labels`)."""
        pred = self.predict(X, mask)
        truth = self.encode_labels(y)
        if truth.shape != pred.shape:
            raise ValueError(f"y has {truth.shape[0]} labels but X has {pred.shape[0]} frames")
        return float((pred == truth).mean())

    # ------------------------------------------------------------------ construction from a model
    @classmethod
    def from_model(cls, model: nn.Module, classes=None, *, preprocessing=None,
                   label_kind: str | None = None, device: str = "auto", **params) -> "SupervisedHead":
        """Wrap an already trained network as a fitted head (no training).

        Parameters
        ----------
        model : nn.Module
            Maps ``(N, 1, h, w)`` patches to logits; has ``input_size``.
        classes : sequence, optional
            ``classes_``, in the order of the model's outputs. Default (binary mode only)
            ``["non-<name>", "<name>"]`` from ``positive_class``.
        preprocessing : Preprocessing or dict, optional
        label_kind : {"int", "str"}, optional
            Kind of the labels the head will be given (default: ``"int"`` in binary mode,
            else the kind of ``classes``).
        **params
            Other constructor parameters (``positive_class``, ``threshold``, ``mirror_tta``, ...).
        """
        head = cls(model=model, preprocessing=preprocessing, device=device, **params)
        head._check_params()
        if classes is None:
            if not head.binary:
                raise ValueError("classes must be given in multi-class mode (positive_class=None)")
            _, name = head._positive_name(label_kind or "int")
            classes = [f"non-{name.replace('_', '-')}", name.replace("_", "-")]
        classes_arr, ckind = _as_labels(list(classes), what="classes")
        head.device_ = _resolve_device(device)
        prep, size = head._patch_geometry(model, preprocessing)
        model = model.to(head.device_).eval()
        head._check_output(model, size, len(classes_arr), head.device_)
        head.model_ = model
        head.classes_ = classes_arr
        head._label_kind_ = label_kind or ("int" if head.binary else ckind)
        head.preprocessing_ = prep
        head.input_size_ = size
        head.positive_fraction_, head.class_weights_ = None, None
        head.history_, head.best_epoch_, head.n_train_ = [], None, 0
        return head

    # ------------------------------------------------------------------ persistence
    def _json_params(self) -> dict:
        params = {p: getattr(self, p) for p in self._PARAMS if p not in ("model", "preprocessing")}
        if isinstance(params["class_weights"], (tuple, list)):
            params["class_weights"] = [float(w) for w in params["class_weights"]]
        return _plain(params)

    def _write(self, directory: Path) -> None:
        try:
            mcfg = model_config(self.model_)
        except ValueError as exc:
            raise ValueError(f"cannot save a head whose model is not registered: {exc}") from exc
        state = {k: v.detach().cpu() for k, v in self.model_.state_dict().items()}
        torch.save(state, directory / _MODEL_PT)
        meta = {
            "format": HEAD_FORMAT,
            "kind": "SupervisedHead",
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "params": self._json_params(),
            "label_kind": self._label_kind_,
            "classes": self.classes_.tolist(),
            "classes_kind": "int" if self.classes_.dtype.kind in "iu" else "str",
            "model": _plain(mcfg),
            "preprocessing": self.preprocessing_.to_dict(),
            "input_size": list(self.input_size_),
            "positive_fraction": self.positive_fraction_,
            "class_weights": self.class_weights_,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "n_train": self.n_train_,
        }
        _write_json(directory / _HEAD_JSON, meta)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted head to ``directory`` atomically (``head.json`` + ``model.pt``).

        An existing saved head there is replaced; another non-empty directory is refused.

        Returns
        -------
        pathlib.Path
        """
        self._check_fitted()
        return _atomic_dir(directory, _HEAD_JSON, self._write)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: str = "auto") -> "SupervisedHead":
        """Read a head written by :meth:`save` (on ``device``; ``"auto"`` = CUDA when available).

        Raises
        ------
        FileNotFoundError
            No such directory or no ``head.json`` in it.
        HeadFileError
            A file is corrupt or missing; the message names it.
        """
        directory = Path(os.fspath(directory)).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"saved head directory {directory} does not exist")
        jpath = directory / _HEAD_JSON
        meta = _read_json(jpath, "SupervisedHead")
        try:
            params = {k: v for k, v in dict(meta["params"]).items() if k in cls._PARAMS}
            kind = meta["label_kind"]
            classes = _classes_array(list(meta["classes"]), meta["classes_kind"])
            mcfg = dict(meta["model"])
            prep = Preprocessing.from_dict(meta["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadFileError(f"{jpath} lacks or garbles a field: {exc!r}") from exc
        ppath = directory / _MODEL_PT
        if not ppath.is_file():
            raise HeadFileError(f"{ppath} is missing from the saved head")
        try:
            model = build_model(mcfg)
            state = torch.load(ppath, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001
            raise HeadFileError(f"{ppath} cannot be loaded into {mcfg.get('name')!r}: {exc}") from exc
        params["device"] = device
        head = cls(model=mcfg, preprocessing=prep.to_dict(), **{k: v for k, v in params.items()
                                                                if k not in ("model", "preprocessing")})
        head.device_ = _resolve_device(device)
        head.model_ = model.to(head.device_).eval()
        head.classes_ = classes
        head._label_kind_ = kind
        head.preprocessing_ = prep
        head.input_size_ = tuple(int(v) for v in meta.get("input_size", model.input_size))
        head.positive_fraction_ = meta.get("positive_fraction")
        head.class_weights_ = meta.get("class_weights")
        head.history_ = list(meta.get("history", []))
        head.best_epoch_ = meta.get("best_epoch")
        head.n_train_ = int(meta.get("n_train", 0))
        return head


# ============================================================================ EnsembleHead
class EnsembleHead(_ParamsMixin):
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

    _PARAMS = ("head", "n_folds", "mirror_tta", "threshold", "seed", "progress")

    def __init__(self, head: Mapping | None = None, n_folds: int = 5, *, mirror_tta: bool = True,
                 threshold: float = 0.5, seed: int = 0, progress: bool = True, **head_params):
        bad = set(head_params) - set(SupervisedHead._PARAMS)
        if bad:
            raise TypeError(f"unknown parameters {sorted(bad)} for EnsembleHead/SupervisedHead")
        self.head = {**_plain(dict(head or {})), **head_params}
        self.n_folds = n_folds
        self.mirror_tta = mirror_tta
        self.threshold = threshold
        self.seed = seed
        self.progress = progress

    def __repr__(self) -> str:
        fitted = f"; {len(self.members_)} members" if self._is_fitted() else ""
        return f"EnsembleHead(n_folds={self.n_folds}, head={self.head!r}){fitted}"

    def _is_fitted(self) -> bool:
        return bool(getattr(self, "members_", None))

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError("this EnsembleHead is not fitted yet: call fit() first")

    def _member(self, k: int) -> SupervisedHead:
        params = {**self.head, "threshold": self.threshold, "mirror_tta": self.mirror_tta,
                  "seed": int(self.head.get("seed", 0)) + int(self.seed) + k,
                  "progress": self.progress and self.head.get("progress", True)}
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
        frames = _frames_array(X)
        raw, _ = _as_labels(y, frames.shape[0])
        classes, codes, kind = proto._fit_labels(y, frames.shape[0])
        proto._check_classes(classes, codes)
        counts = np.bincount(codes, minlength=len(classes))
        if counts.min() < 2:
            raise ValueError(f"every class needs at least 2 frames for cross-validation; "
                             f"{classes[counts.argmin()]!r} has {counts.min()}")
        if counts.min() < int(self.n_folds):
            warnings.warn(f"class {classes[counts.argmin()]!r} has {counts.min()} frames, fewer than "
                          f"n_folds={self.n_folds}: some validation folds lack it", stacklevel=2)
        device = _resolve_device(proto.device)
        proto.device_ = device
        with torch.random.fork_rng(devices=[]):
            probe = proto._build_model(len(classes))
        prep, size = proto._patch_geometry(probe, proto.preprocessing)
        inputs = proto._transform(frames, mask, prep, size, device)
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
            vlabels, vkind = _as_labels(val[1], None, "val labels")
            vcodes = members[0]._encode_with(vlabels, vkind, classes, "val labels")
            self.val_metrics_ = _metrics(self.predict_proba(val[0], mask), vcodes, self.binary,
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

    def score(self, X, y, mask=None) -> float:
        """Accuracy of :meth:`predict` against labels ``y``."""
        pred = self.predict(X, mask)
        truth = self.encode_labels(y)
        if truth.shape != pred.shape:
            raise ValueError(f"y has {truth.shape[0]} labels but X has {pred.shape[0]} frames")
        return float((pred == truth).mean())

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
                "params": {"head": _plain(self.head), "n_folds": int(self.n_folds),
                           "mirror_tta": bool(self.mirror_tta), "threshold": float(self.threshold),
                           "seed": int(self.seed), "progress": bool(self.progress)},
                "label_kind": self._label_kind_,
                "classes": self.classes_.tolist(),
                "members": [f"member_{k}" for k in range(len(self.members_))],
                "fold_sizes": None if self.folds_ is None else [int(f.size) for f in self.folds_],
                "val_metrics": self.val_metrics_,
            }
            _write_json(tmp / _ENSEMBLE_JSON, meta)

        return _atomic_dir(directory, _ENSEMBLE_JSON, write)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: str = "auto") -> "EnsembleHead":
        """Read an ensemble written by :meth:`save`."""
        directory = Path(os.fspath(directory)).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"saved ensemble directory {directory} does not exist")
        jpath = directory / _ENSEMBLE_JSON
        meta = _read_json(jpath, "EnsembleHead")
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
        ens.head = dict(params.get("head", ens.head))
        ens.n_folds = int(params.get("n_folds", len(members)))
        ens.seed = int(params.get("seed", 0))
        ens.progress = bool(params.get("progress", True))
        ens.val_metrics_ = meta.get("val_metrics")
        return ens


# ============================================================================ config / loading
def head_from_config(cfg: Mapping) -> SupervisedHead | EnsembleHead:
    """Build an (unfitted) head from a config dict, e.g. ``conf/heads/resnet_maxf1.yaml``.

    Parameters
    ----------
    cfg : Mapping
        ``kind``: ``"supervised"`` (default) or ``"ensemble"``. A supervised config holds
        :class:`SupervisedHead` parameters; an ensemble config holds ``n_folds``,
        ``mirror_tta``, ``threshold``, ``seed``, ``progress`` and ``head`` (member parameters).
        ``name``/``description`` keys are ignored. OmegaConf ``DictConfig`` works too.

    Examples
    --------
    >>> h = head_from_config({"kind": "supervised", "model": {"name": "shi2019"}, "threshold": 0.9})
    >>> type(h).__name__, h.threshold
    ('SupervisedHead', 0.9)
    """
    cfg = _plain(cfg)
    if not isinstance(cfg, dict):
        raise TypeError(f"head config must be a mapping; got {type(cfg).__name__}")
    kind = _norm_name(str(cfg.pop("kind", "supervised")))
    for key in ("name", "description"):
        cfg.pop(key, None)
    if kind in ("supervised", "supervisedhead"):
        cls, valid = SupervisedHead, SupervisedHead._PARAMS
    elif kind in ("ensemble", "ensemblehead"):
        cls, valid = EnsembleHead, EnsembleHead._PARAMS + SupervisedHead._PARAMS
    else:
        raise ValueError(f"unknown head kind {kind!r}; use 'supervised' or 'ensemble'")
    bad = sorted(set(cfg) - set(valid))
    if bad:
        raise ValueError(f"unknown keys {bad} in {cls.__name__} config; valid keys: {sorted(valid)}")
    return cls(**cfg)


def load_head(directory: str | os.PathLike, *, device: str = "auto") -> SupervisedHead | EnsembleHead:
    """Load a saved :class:`SupervisedHead` or :class:`EnsembleHead` (whichever the directory holds)."""
    directory = Path(os.fspath(directory)).expanduser()
    if (directory / _ENSEMBLE_JSON).is_file():
        return EnsembleHead.load(directory, device=device)
    if (directory / _HEAD_JSON).is_file():
        return SupervisedHead.load(directory, device=device)
    raise FileNotFoundError(f"{directory} holds no saved head ({_HEAD_JSON} or {_ENSEMBLE_JSON})")
