"""The estimator base of the classifiers of diffraction frames (scikit-learn's contract).

Every classifier of this package (:class:`~speckle_embed.heads.SupervisedHead`,
:class:`~speckle_embed.heads.EnsembleHead`, :class:`~speckle_embed.fewshot.FewShotClassifier`)
derives from :class:`FrameClassifier`, which is scikit-learn's ``BaseEstimator`` +
``ClassifierMixin``:

* ``get_params`` / ``set_params`` read the parameters from ``__init__``'s signature, so
  ``__init__`` only stores its arguments (unchanged) and ``sklearn.base.clone``,
  ``Pipeline`` and ``cross_val_score`` work on frame stacks ``(N, H, W)``;
* one :class:`NotFittedError` (a subclass of scikit-learn's), raised by :meth:`_check_fitted`;
* one label coercion, :func:`as_labels` (hit-class codes or names, never floats or booleans),
  and one frame-stack check, :func:`check_frames`;
* one :meth:`~FrameClassifier.score`: accuracy of ``predict`` against the labels mapped by
  ``encode_labels`` (a head in binary mode maps hit classes to ``single`` / ``non-single``).

A subclass fills two hooks: ``_is_fitted()`` and ``encode_labels(y)``; it may set
``_not_fitted_hint`` (what to call instead of ``fit``).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = ["FrameClassifier", "NotFittedError", "as_labels", "check_frames"]


class NotFittedError(_SklearnNotFittedError):
    """The estimator is used before ``fit`` (scikit-learn's ``NotFittedError``, so also a
    ``ValueError`` and an ``AttributeError``)."""


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


def as_labels(y, n: int | None = None, what: str = "labels") -> tuple[np.ndarray, str]:
    """Labels as a 1-D array of int64 codes or of str names, and which of the two they are.

    Parameters
    ----------
    y : array_like or Tensor, shape (n,)
        Integers (hit-class codes) or strings (names; bytes are decoded).
    n : int, optional
        Expected number of labels (the number of frames).
    what : str
        How error messages call ``y``.

    Returns
    -------
    labels : ndarray of int64 or str, shape (n,)
    kind : {"int", "str"}

    Raises
    ------
    ValueError
        Not 1-D, booleans, floats, mixed types, or not ``n`` entries.

    Examples
    --------
    >>> as_labels([1, 0, 2])[1], as_labels(np.array([b"single"]))[0].tolist()
    ('int', ['single'])
    """
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


def check_frames(frames):
    """Frames as something with ``shape``, 3 dimensions and slicing (ndarray, Tensor, h5py).

    A single ``(H, W)`` frame becomes ``(1, H, W)``; anything else that is not ``(N, H, W)``
    with ``N >= 1`` raises ``ValueError``.
    """
    if not (hasattr(frames, "shape") and hasattr(frames, "__getitem__")):
        frames = np.asarray(frames)
    if len(frames.shape) == 2:
        frames = frames[None]
    if len(frames.shape) != 3:
        raise ValueError(f"frames must have shape (N, H, W) or (H, W); got {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("no frames given (N = 0)")
    return frames


class FrameClassifier(ClassifierMixin, BaseEstimator):
    """scikit-learn estimator plumbing for classifiers of frame stacks ``(N, H, W)``.

    Subclasses implement ``fit``, ``predict``, ``_is_fitted()`` and ``encode_labels(y)``
    (labels mapped into ``classes_``). ``__init__`` must store its arguments unchanged
    (``sklearn.base.clone`` checks it).
    """

    #: What the not-fitted message tells the user to call.
    _not_fitted_hint = "call fit() first"

    def _is_fitted(self) -> bool:
        raise NotImplementedError

    def __sklearn_is_fitted__(self) -> bool:
        return self._is_fitted()

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: {self._not_fitted_hint}")

    def encode_labels(self, y) -> np.ndarray:
        """Labels ``y`` as values of ``classes_`` (default: coerced by :func:`as_labels`)."""
        return as_labels(y)[0]

    def score(self, X, y, mask=None) -> float:
        """Accuracy of :meth:`predict` against labels ``y`` (mapped by :meth:`encode_labels`).

        Parameters
        ----------
        X : array_like, shape (N, H, W)
            Frames in photons.
        y : array_like, shape (N,)
        mask : array_like (H, W), optional
            Bad-pixel mask (non-zero = bad).

        Returns
        -------
        float
            Fraction of frames whose prediction equals the label, in [0, 1].
        """
        pred = self.predict(X, mask)
        truth = self.encode_labels(y)
        if truth.shape != pred.shape:
            raise ValueError(f"y has {truth.shape[0]} labels but X has {pred.shape[0]} frames")
        return float((pred == truth).mean())
