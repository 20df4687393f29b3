"""Nearest class mean on the log radial profile and per-ring contrast of each frame.

A single hit of a near-spherical particle gives a strongly modulated radial profile with
deep minima and little azimuthal variation; multiple hits and non-sample scatter fill the
minima and add azimuthal speckle. Two classical descriptors capture that without learning:

* **log radial profile**: ``log1p`` of the mean photons per valid pixel in ``n_bins`` rings
  of equal width about the beam centre, out to ``r_max`` pixels;
* **ring contrast**: the azimuthal standard deviation over the mean of each ring's valid
  pixels (0 for a constant ring; 0 also for an empty-of-photons ring).

scikit-learn has no radial-profile transform (and ``numpy.bincount`` over ring indices is the
whole computation), hence this small function, tested against an analytic oracle.
"""
from __future__ import annotations

import numpy as np

from speckle_embed.baselines.nearest_mean import (
    NearestMeanBaseline,
    beam_center,
    check_frames,
    valid_pixels,
)

__all__ = ["radial_profile_features", "RadialProfileClassifier"]


def radial_profile_features(X, mask=None, *, n_bins: int = 40, center=None, r_min: float = 0.0,
                            r_max: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean intensity and azimuthal contrast in rings about the beam centre.

    Parameters
    ----------
    X : array_like, shape (N, H, W) or (H, W)
        Photons per pixel.
    mask : array_like, shape (H, W) or (N, H, W), optional
        Bad pixels (non-zero); they and non-finite pixels are ignored.
    n_bins : int
        Rings of equal width ``(r_max - r_min) / n_bins`` pixels.
    center : (float, float), optional
        Beam centre ``(row, col)`` in pixels; default the frame centre ``((H-1)/2, (W-1)/2)``.
    r_min, r_max : float
        Radii (pixels) covered; ``r_max`` defaults to the distance from the centre to the
        nearest frame edge (the largest full ring).

    Returns
    -------
    mean : ndarray, shape (N, n_bins), float64
        Mean photons per valid pixel of each ring (NaN where a ring has no valid pixel).
    contrast : ndarray, shape (N, n_bins), float64
        ``std / mean`` of the ring's valid pixels (0 where the mean is not positive, NaN where
        the ring has no valid pixel).
    """
    x = check_frames(X)
    n, h, w = x.shape
    cy, cx = beam_center((h, w), center)
    if r_max is None:
        r_max = min(cy, cx, h - 1 - cy, w - 1 - cx) + 0.5
    if not (isinstance(n_bins, (int, np.integer)) and n_bins >= 1) or not 0 <= r_min < r_max:
        raise ValueError(f"need n_bins >= 1 and 0 <= r_min < r_max; got {n_bins}, {r_min}, {r_max}")
    rr = np.hypot(np.arange(h)[:, None] - cy, np.arange(w)[None, :] - cx)
    ring = np.floor((rr - r_min) / (r_max - r_min) * n_bins).astype(np.int64)
    ring = np.where((rr >= r_min) & (rr < r_max), ring, n_bins)  # n_bins = outside every ring
    good = valid_pixels(x, mask)
    xv = np.where(good, x, 0.0)
    idx = (np.arange(n)[:, None] * (n_bins + 1) + ring.reshape(1, -1)).ravel()
    size = n * (n_bins + 1)

    def per_ring(v):
        return np.bincount(idx, weights=v.reshape(-1), minlength=size).reshape(n, n_bins + 1)[:, :n_bins]

    count = per_ring(good.astype(np.float64).reshape(n, -1))
    s1 = per_ring(xv.reshape(n, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / count
        s2 = per_ring((xv * xv).reshape(n, -1))
        var = np.clip(s2 / count - mean ** 2, 0.0, None)
        contrast = np.where(mean > 0, np.sqrt(var) / np.where(mean > 0, mean, 1.0), 0.0)
    empty = count == 0
    mean[empty] = np.nan
    contrast[empty] = np.nan
    return mean, contrast


class RadialProfileClassifier(NearestMeanBaseline):
    """Nearest class mean on ``[log1p(radial profile), ring contrast]`` (``2 n_bins`` features).

    Parameters
    ----------
    n_bins : int, default 40
    center : (float, float), optional
        Beam centre ``(row, col)`` in pixels (default the frame centre), as ``SpeckleEmbedder``'s.
    r_min, r_max : float
        Radii covered, pixels (default 0 to the nearest frame edge).
    contrast : bool, default True
        Append the per-ring contrast to the profile.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:32, :32] - 15.5
    >>> r = np.hypot(yy, xx)
    >>> a = np.stack([50 * np.exp(-r / s) for s in (3, 3.2, 3.4)])
    >>> b = np.stack([50 * np.exp(-r / s) for s in (8, 8.5, 9)])
    >>> clf = RadialProfileClassifier(n_bins=8).fit(np.concatenate([a, b]), [0, 0, 0, 1, 1, 1])
    >>> clf.predict(50 * np.exp(-r / 8.2)[None]).tolist()
    [1]
    """

    def __init__(self, n_bins: int = 40, center=None, r_min: float = 0.0, r_max: float | None = None,
                 contrast: bool = True):
        self.n_bins = n_bins
        self.center = center
        self.r_min = r_min
        self.r_max = r_max
        self.contrast = contrast

    def features(self, X, mask=None) -> np.ndarray:
        """``(N, n_bins)`` log radial profile, then ``(N, n_bins)`` ring contrasts if ``contrast``."""
        mean, con = radial_profile_features(X, mask, n_bins=self.n_bins, center=self.center,
                                            r_min=self.r_min, r_max=self.r_max)
        prof = np.log1p(np.clip(mean, 0.0, None))
        return np.concatenate([prof, con], axis=1) if self.contrast else prof
