"""Nearest class mean on the number of photons and the lit-pixel fraction of each frame.

The crudest hit classifier of an SPI beamline (hit finding by photon count): a multiple hit
scatters more, a non-sample hit lights pixels differently. Two features per frame, over the
valid pixels of a central window: ``log1p`` of the total photons and the fraction of pixels
with at least ``threshold`` photons.
"""
from __future__ import annotations

import numpy as np

from speckle_embed.baselines.nearest_mean import (
    NearestMeanBaseline,
    beam_center,
    check_frames,
    valid_pixels,
)

__all__ = ["photon_count_features", "PhotonCountClassifier"]


def photon_count_features(X, mask=None, *, window: int | None = None, center=None,
                          threshold: float = 0.5) -> np.ndarray:
    """``(N, 2)``: ``log1p(total photons)`` and lit-pixel fraction over the valid pixels.

    Parameters
    ----------
    X : array_like, shape (N, H, W) or (H, W)
        Photons per pixel.
    mask : array_like, optional
        Bad pixels (non-zero); ignored with non-finite pixels.
    window : int, optional
        Side (pixels) of the square about the beam centre to count in (default the whole frame).
    center : (float, float), optional
        Beam centre ``(row, col)``, default the frame centre.
    threshold : float
        Photons above which a pixel is lit (0.5: one photon after rounding).

    Returns
    -------
    ndarray, shape (N, 2), float64
        NaN where a frame has no valid pixel in the window.
    """
    x = check_frames(X)
    n, h, w = x.shape
    good = valid_pixels(x, mask)
    if window is not None:
        cy, cx = beam_center((h, w), center)
        half = int(window) / 2.0
        r0, r1 = max(0, int(round(cy - half + 0.5))), min(h, int(round(cy + half + 0.5)))
        c0, c1 = max(0, int(round(cx - half + 0.5))), min(w, int(round(cx + half + 0.5)))
        x, good = x[:, r0:r1, c0:c1], good[:, r0:r1, c0:c1]
    count = good.reshape(n, -1).sum(1).astype(np.float64)
    xv = np.where(good, x, 0.0).reshape(n, -1)
    total = np.clip(xv, 0.0, None).sum(1)
    lit = ((xv >= threshold) & good.reshape(n, -1)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([np.log1p(total), lit / count], axis=1)
    out[count == 0] = np.nan
    return out


class PhotonCountClassifier(NearestMeanBaseline):
    """Nearest class mean on ``[log1p(total photons), lit-pixel fraction]``.

    Parameters
    ----------
    window : int, optional
        Side of the central counting window, pixels (default the whole frame).
    center : (float, float), optional
        Beam centre ``(row, col)``, default the frame centre.
    threshold : float, default 0.5
        Photons for a pixel to count as lit.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.poisson(0.1, (4, 16, 16)), rng.poisson(2.0, (4, 16, 16))])
    >>> clf = PhotonCountClassifier().fit(X, [0] * 4 + [1] * 4)
    >>> clf.predict(rng.poisson(2.0, (2, 16, 16))).tolist()
    [1, 1]
    """

    def __init__(self, window: int | None = None, center=None, threshold: float = 0.5):
        self.window = window
        self.center = center
        self.threshold = threshold

    def features(self, X, mask=None) -> np.ndarray:
        return photon_count_features(X, mask, window=self.window, center=self.center, threshold=self.threshold)
