"""A supervised CNN classifier of diffraction frames: :class:`SupervisedHead`.

One network (any model of :data:`~speckle_embed.models.MODEL_REGISTRY` that outputs logits)
trained on labelled frames with the recipe of Assalauova et al. (IUCrJ 9, 2022); see
:mod:`speckle_embed.heads` for the recipes, binary mode and the input patch.
"""
from __future__ import annotations

import copy
import datetime as _dt
import inspect
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from speckle_embed.device import resolve_device
from speckle_embed.estimator import FrameClassifier, as_labels, check_frames
from speckle_embed.formats import HIT_CLASSES
from speckle_embed.heads.io import (HEAD_FORMAT, HEAD_JSON, MODEL_PT, HeadFileError, classes_array, plain,
                                    read_json, save_directory, write_json)
from speckle_embed.heads.sampling import ClassFractionSampler
from speckle_embed.heads.training import head_metrics, train_classifier, two_class_logits
from speckle_embed.models import MODEL_REGISTRY, build_model, model_config
from speckle_embed.models.resnet import PreActResNetClassifier  # noqa: F401  (registers "preact_resnet")
from speckle_embed.models.shi2019 import Shi2019CNN  # noqa: F401  (registers "shi2019")
from speckle_embed.preprocess import Preprocessing, preprocess

__all__ = ["SupervisedHead", "RECIPES", "norm_name"]

#: Class-sampling strategies of Assalauova et al. (2022): fraction of positive (single-hit)
#: frames per batch and cross-entropy class weights ``(negative, positive)`` (None = unweighted).
RECIPES: dict[str, dict[str, Any]] = {
    "maxf1": {"positive_fraction": 0.02, "class_weights": None},
    "moresh": {"positive_fraction": 0.05, "class_weights": (0.1, 0.9)},
}

_CHUNK = 256  # frames preprocessed at a time


def norm_name(name: str) -> str:
    """Case- and dash-insensitive name (``"MaxF1"`` -> ``"maxf1"``, ``"no-hit"`` -> ``"no_hit"``)."""
    return name.strip().lower().replace("-", "_")


class SupervisedHead(FrameClassifier):
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
        Exponent of the polynomial learning-rate decay (:class:`torch.optim.lr_scheduler.PolynomialLR`).
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
        if self.recipe is not None and norm_name(str(self.recipe)) not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)} or None")

    @property
    def total_iterations(self) -> int:
        """``n_iterations`` or ``n_epochs * iterations_per_epoch``."""
        return int(self.n_iterations) if self.n_iterations is not None else int(
            self.n_epochs) * int(self.iterations_per_epoch)

    def _resolve_sampling(self, n_classes: int) -> tuple[float | None, list | None]:
        recipe = RECIPES[norm_name(str(self.recipe))] if self.recipe is not None else {
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
            name = norm_name(pc)
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
                return np.array([norm_name(v) == value for v in labels.tolist()], dtype=np.int64)
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
        labels, kind = as_labels(y, n)
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
        labels, kind = as_labels(y)
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
            prep = Preprocessing.from_dict(plain(prep))
        elif not isinstance(prep, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing, a dict or None; got {type(prep).__name__}")
        if prep.input_size < max(size):
            raise ValueError(f"preprocessing.input_size={prep.input_size} is smaller than the model's "
                             f"patch {size[0]}x{size[1]}; it must be >= {max(size)}")
        return prep, size

    def _transform(self, frames, mask, prep: Preprocessing, size: tuple[int, int], device,
                   what: str = "frames") -> torch.Tensor:
        frames = check_frames(frames)
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
        cfg = plain(self.model)
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
                p = F.softmax(two_class_logits(model(xb)).float(), 1)
                if mirror:
                    p = 0.5 * (p + F.softmax(two_class_logits(model(torch.flip(xb, (-1,)))).float(), 1))
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
        frames = check_frames(X)
        classes, codes, kind = self._fit_labels(y, frames.shape[0])
        self._check_classes(classes, codes)
        self._resolve_sampling(len(classes))  # fail fast on recipe / weights errors
        prep, size, inputs = self._fit_geometry(frames, mask, len(classes))
        val_inputs = val_codes = None
        if val is not None:
            if not (isinstance(val, (tuple, list)) and len(val) == 2):
                raise ValueError("val must be a pair (frames, labels)")
            vframes = check_frames(val[0])
            vlabels, vkind = as_labels(val[1], vframes.shape[0], "val labels")
            val_codes = self._encode_with(vlabels, vkind, classes, "val labels")
            val_inputs = self._transform(vframes, mask, prep, size, self.device_, "val frames")
        return self._fit_inputs(inputs, codes, classes, kind, prep, size, val_inputs, val_codes)

    def _fit_geometry(self, frames, mask, n_classes: int) -> tuple[Preprocessing, tuple[int, int], torch.Tensor]:
        """The prelude of every ``fit``: resolve the device (``device_``), take the patch geometry from a
        throwaway model with ``n_classes`` outputs (built again, seeded, in :meth:`_fit_inputs`; the
        global random state is left as it was) and preprocess ``frames`` into those patches.

        Returns
        -------
        prep : Preprocessing
            The preprocessing the network sees.
        size : (int, int)
            Patch height and width in pixels.
        inputs : Tensor, shape (N, 1, h, w), float32, on the CPU
        """
        self.device_ = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):
            probe = self._build_model(n_classes)
        prep, size = self._patch_geometry(probe, self.preprocessing)
        return prep, size, self._transform(frames, mask, prep, size, self.device_)

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
        device = resolve_device(self.device)
        self.device_ = device
        self._label_kind_ = kind
        n_classes = len(classes)
        fraction, weights = self._resolve_sampling(n_classes)
        metric = self.val_metric if self.val_metric != "auto" else ("f1" if self.binary else "accuracy")
        validate = None
        if val_inputs is not None:
            def validate(model: nn.Module) -> dict:
                return head_metrics(self._proba_inputs(val_inputs, model), val_codes, self.binary,
                                    float(self.threshold))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(self.seed))
            model = self._build_model(n_classes).to(device)
            self._check_output(model, size, n_classes, device)
            sampler = ClassFractionSampler(codes, int(self.batch_size), fraction, positive=1,
                                           seed=int(self.seed))
            weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
            criterion = nn.CrossEntropyLoss(weight=weight)
            try:
                result = train_classifier(
                    model, inputs, codes, sampler, criterion, device=device, lr=float(self.lr),
                    weight_decay=float(self.weight_decay), total_iterations=self.total_iterations,
                    iterations_per_epoch=int(self.iterations_per_epoch), lr_power=float(self.lr_power),
                    augment_mirror=bool(self.augment_mirror), seed=int(self.seed), validate=validate,
                    metric=metric, progress=bool(self.progress), desc=type(self).__name__)
            except BaseException:
                self.model_ = None
                raise
        restored = result.best_state is not None and self.restore_best
        if restored:
            model.load_state_dict(result.best_state)
        model.eval()
        self.model_ = model
        self.classes_ = classes
        self.preprocessing_ = prep
        self.input_size_ = (int(size[0]), int(size[1]))
        self.positive_fraction_ = fraction
        self.class_weights_ = weights
        self.criterion_ = criterion
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch if restored else None
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
        classes_arr, ckind = as_labels(list(classes), what="classes")
        head.device_ = resolve_device(device)
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
        params = {p: v for p, v in self.get_params(deep=False).items() if p not in ("model", "preprocessing")}
        if isinstance(params["class_weights"], (tuple, list)):
            params["class_weights"] = [float(w) for w in params["class_weights"]]
        return plain(params)

    def _write(self, directory: Path) -> None:
        try:
            mcfg = model_config(self.model_)
        except ValueError as exc:
            raise ValueError(f"cannot save a head whose model is not registered: {exc}") from exc
        state = {k: v.detach().cpu() for k, v in self.model_.state_dict().items()}
        torch.save(state, directory / MODEL_PT)
        meta = {
            "format": HEAD_FORMAT,
            "kind": "SupervisedHead",
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "params": self._json_params(),
            "label_kind": self._label_kind_,
            "classes": self.classes_.tolist(),
            "classes_kind": "int" if self.classes_.dtype.kind in "iu" else "str",
            "model": plain(mcfg),
            "preprocessing": self.preprocessing_.to_dict(),
            "input_size": list(self.input_size_),
            "positive_fraction": self.positive_fraction_,
            "class_weights": self.class_weights_,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "n_train": self.n_train_,
        }
        write_json(directory / HEAD_JSON, meta)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted head to ``directory`` atomically (``head.json`` + ``model.pt``).

        An existing saved head there is replaced; another non-empty directory is refused.

        Returns
        -------
        pathlib.Path
        """
        self._check_fitted()
        return save_directory(directory, HEAD_JSON, self._write)

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
        jpath = directory / HEAD_JSON
        meta = read_json(jpath, "SupervisedHead")
        try:
            params = {k: v for k, v in dict(meta["params"]).items() if k in cls._get_param_names()}
            kind = meta["label_kind"]
            classes = classes_array(list(meta["classes"]), meta["classes_kind"])
            mcfg = dict(meta["model"])
            prep = Preprocessing.from_dict(meta["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadFileError(f"{jpath} lacks or garbles a field: {exc!r}") from exc
        ppath = directory / MODEL_PT
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
        head.device_ = resolve_device(device)
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


