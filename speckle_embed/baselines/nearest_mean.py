"""The plumbing shared by the classical baselines: features -> impute -> standardise -> nearest mean.

A subclass fills one hook, :meth:`NearestMeanBaseline.features` (frames ``(N, H, W)`` + mask ->
``(N, F)`` float64, NaN where a feature is undefined, e.g. a ring with no valid pixel); this
base validates inputs and runs a scikit-learn pipeline
``SimpleImputer(mean) -> StandardScaler -> NearestCentroid`` fitted on the supports.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.impute import SimpleImputer
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

__all__ = ["NearestMeanBaseline", "check_frames", "valid_pixels", "beam_center"]


def check_frames(X) -> np.ndarray:
    """``X`` as float64 ``(N, H, W)`` (a single ``(H, W)`` frame becomes ``(1, H, W)``)."""
    x = np.asarray(X)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.dtype.kind not in "biuf":
        raise ValueError(f"frames must be a real array of shape (N, H, W); got shape {x.shape}, "
                         f"dtype {x.dtype}")
    return x.astype(np.float64, copy=False)


def valid_pixels(x: np.ndarray, mask) -> np.ndarray:
    """Boolean ``(N, H, W)``: finite and not flagged by ``mask`` ((H, W) or (N, H, W), non-zero = bad)."""
    good = np.isfinite(x)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape not in (x.shape[1:], x.shape):
            raise ValueError(f"mask must have shape {x.shape[1:]} or {x.shape}; got {m.shape}")
        good &= (m == 0)
    return good


def beam_center(shape: tuple[int, int], center) -> tuple[float, float]:
    """``center`` ``(row, col)`` in pixels, or the geometric frame centre when None."""
    h, w = shape
    if center is None:
        return (h - 1) / 2.0, (w - 1) / 2.0
    c = np.asarray(center, dtype=np.float64)
    if c.shape != (2,) or not np.isfinite(c).all():
        raise ValueError(f"center must be a finite (row, col) pair or None; got {center!r}")
    return float(c[0]), float(c[1])


class NearestMeanBaseline(ClassifierMixin, BaseEstimator):
    """Base class: nearest class mean on standardised per-frame features (subclasses: ``features``).

    Attributes
    ----------
    classes_ : ndarray, shape (n_classes,)
    pipeline_ : sklearn.pipeline.Pipeline
        ``SimpleImputer -> StandardScaler -> NearestCentroid`` fitted on the support features.
    n_features_ : int
    """

    def features(self, X, mask=None) -> np.ndarray:  # pragma: no cover - the hook
        """Features of every frame, ``(N, F)`` float64 (NaN = undefined)."""
        raise NotImplementedError

    def transform(self, X, mask=None) -> np.ndarray:
        """Same as :meth:`features` (raw, not standardised): lets an evaluation compute them once."""
        return self.features(X, mask)

    def fit(self, X, y, mask=None) -> "NearestMeanBaseline":
        """Fit on support frames ``X`` (N, H, W) with labels ``y`` (N,); returns ``self``."""
        return self.fit_features(self.features(X, mask), y)

    def fit_features(self, F, y) -> "NearestMeanBaseline":
        """Fit on precomputed :meth:`features` ``F`` (N, n_features); returns ``self``."""
        F = np.asarray(F, dtype=np.float64)
        y = np.asarray(y)
        if F.ndim != 2 or y.shape != (F.shape[0],):
            raise ValueError(f"features must be (N, F) with one label each; got {F.shape} and {y.shape} labels")
        if np.unique(y).size < 2:
            raise ValueError("fit needs supports of at least 2 classes")
        self.pipeline_ = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True),
                                       StandardScaler(), NearestCentroid())
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            # NearestCentroid also computes within-class spreads (for its predict_proba); a feature
            # that is constant within a class of 5 supports (an empty ring, a saturated bin) makes
            # it warn although the nearest-mean decision is unaffected
            warnings.filterwarnings("ignore", message=".*within_class_std_dev_.*", category=UserWarning)
            self.pipeline_.fit(F, y)
        self.classes_ = self.pipeline_.classes_
        self.n_features_ = int(F.shape[1])
        return self

    def _checked(self, F) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        F = np.asarray(F, dtype=np.float64)
        if F.ndim != 2 or F.shape[1] != self.n_features_:
            raise ValueError(f"expected (N, {self.n_features_}) features; got {F.shape}")
        return F

    def predict_features(self, F) -> np.ndarray:
        """Nearest-mean class of precomputed features ``F``."""
        return self.pipeline_.predict(self._checked(F))

    def predict(self, X, mask=None) -> np.ndarray:
        """Class of each frame (the nearest class mean in standardised feature space)."""
        return self.predict_features(self.features(X, mask))

    def predict_proba(self, X, mask=None) -> np.ndarray:
        """``NearestCentroid.predict_proba`` (softmax of negative squared distances), ``(N, n_classes)``."""
        return self.pipeline_.predict_proba(self._checked(self.features(X, mask)))

    def score(self, X, y, mask=None) -> float:
        """Accuracy on frames ``X`` with labels ``y``."""
        return float(np.mean(self.predict(X, mask) == np.asarray(y)))
