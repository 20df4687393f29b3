"""Speckle size, resampling scale and beam centre estimated from the frames themselves.

A model sees frames resampled by ``scale`` input pixels per model pixel (see
:func:`speckle_embed.preprocess.preprocess`). Frames from another detector, distance or photon
energy have speckles of another size in pixels; matching the speckle size the model was trained
on makes the embedding comparable. Three tools:

* :func:`speckle_size`: width (FWHM, pixels) of the central peak of the mean autocorrelation of
  the masked, envelope-normalised frames, computed with zero-padded FFTs;
* :func:`estimate_scale`: ``reference_scale * measured / reference_speckle_px`` so that the
  speckles of the new frames cover as many model pixels as those of the training frames;
  :func:`geometric_scale` gives the same from the detector geometry when it is known;
* :func:`estimate_center`: the beam centre as the centre of Friedel (centro-)symmetry, from the
  cross-correlation of each frame with its copy rotated by 180 degrees.

Speckle-size measurement
------------------------
For each frame: non-finite or masked pixels are invalid; photon counts (negative values clipped
at 0) minus their mean over the 1-pixel-wide ring about the beam centre they lie on, which
removes the radial envelope and leaves the speckle fluctuations (rings with fewer than 8 valid
pixels are dropped). Linear intensities weight the bright, photon-rich rings, where speckles
are well sampled, over the sparse outer ones where shot noise dominates. The autocorrelation of
those fluctuations, normalised lag by lag by the autocorrelation of the validity mask (so gaps
and beam stops do not bias it), is summed over frames and radially averaged. Photon (shot)
noise adds a spike at zero lag only, so the zero-lag value is extrapolated from lag bins 1 and
2 with a Gaussian, and the speckle size is the full width at half of that maximum,
interpolated between lags. Only ratios of sizes matter (:func:`estimate_scale`).

Accuracy: on synthetic patterns (random objects, Poisson noise from 1e4 to 1e6 photons per
frame) a 2x zoom is measured as 1.7x-2.4x, typically within 10 %; best with speckles of 3-10
pixels and at least ~10 speckles across the frame. A large beam stop hiding the central
speckles and frames holding only a few speckles bias it (up to ~40 %): prefer
:func:`geometric_scale` when the geometry is known.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "speckle_size",
    "autocorrelation_profile",
    "estimate_scale",
    "geometric_scale",
    "estimate_center",
]

_MIN_RING_PIXELS = 8
_MIN_OVERLAP = 0.25  # lags whose mask overlap is below this fraction of the zero-lag overlap are ignored


def _as_frames(frames: Any, name: str = "frames") -> np.ndarray:
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):
        frames = frames.detach().cpu().numpy()
    x = np.asarray(frames)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] < 4 or x.shape[2] < 4:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W) with H, W >= 4; got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no frames")
    return x


def _valid(x: np.ndarray, mask: Any) -> np.ndarray:
    valid = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, dtype=bool)
    if mask is not None:
        m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
        if m.shape[-2:] != x.shape[-2:] or m.ndim not in (2, 3) or (m.ndim == 3 and m.shape[0] != x.shape[0]):
            raise ValueError(f"mask shape {m.shape} does not match frames {x.shape} "
                             f"(expected ({x.shape[1]}, {x.shape[2]}) or {x.shape})")
        valid = valid & (m == 0)
    return valid


def _pick(n: int, max_frames: int | None) -> np.ndarray:
    """Indices of at most ``max_frames`` frames spread evenly over ``n``."""
    if max_frames is None or n <= max_frames:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(max_frames)).round().astype(np.int64))


def _center_of(shape, center) -> tuple[float, float]:
    h, w = shape
    if center is None:
        return (h - 1) / 2.0, (w - 1) / 2.0
    cy, cx = (float(c) for c in center)
    return cy, cx


def _ring_fluctuations(x: np.ndarray, valid: np.ndarray, center) -> tuple[np.ndarray, np.ndarray]:
    """Intensity minus its mean over the 1-pixel ring (about ``center``) it lies on; invalid -> 0.

    Rings with fewer than 8 valid pixels or no signal are dropped (marked invalid).
    """
    n, h, w = x.shape
    cy, cx = _center_of((h, w), center)
    yy, xx = np.mgrid[0:h, 0:w]
    ring = np.rint(np.hypot(yy - cy, xx - cx)).astype(np.int64).ravel()
    nr = int(ring.max()) + 1
    out = np.zeros((n, h * w), dtype=np.float64)
    good = np.zeros((n, h * w), dtype=bool)
    for i in range(n):
        v = valid[i].ravel()
        f = np.clip(np.where(v, x[i].ravel(), 0.0).astype(np.float64), 0.0, None)
        cnt = np.bincount(ring[v], minlength=nr)
        mean = np.bincount(ring[v], weights=f[v], minlength=nr) / np.maximum(cnt, 1)
        ok = v & ((cnt >= _MIN_RING_PIXELS) & (mean > 0))[ring]
        out[i, ok] = f[ok] - mean[ring[ok]]
        good[i] = ok
    return out.reshape(n, h, w), good.reshape(n, h, w)


def _lag_grid(h2: int, w2: int) -> np.ndarray:
    """Euclidean length of every lag of an (h2, w2) wrap-around correlation."""
    ly = np.fft.fftfreq(h2) * h2
    lx = np.fft.fftfreq(w2) * w2
    return np.hypot(ly[:, None], lx[None, :])


def autocorrelation_profile(frames: Any, mask: Any = None, *, center=None,
                            max_frames: int | None = 64, return_radii: bool = False):
    """Radially averaged, mask-normalised mean autocorrelation of speckle fluctuations.

    Parameters
    ----------
    frames : array_like, shape (N, H, W) or (H, W)
        Photon counts, any real dtype; non-finite pixels are treated as masked.
    mask : array_like, shape (H, W) or (N, H, W), optional
        Non-zero = bad pixel (CXI bits).
    center : (row, col), optional
        Beam centre (default: geometric centre), used for the ring normalisation.
    max_frames : int or None, default 64
        Use at most this many frames, spread evenly over the input.

    return_radii : bool, default False
        Also return the mean lag length of every bin.

    Returns
    -------
    radii : ndarray of float64, shape (R,)
        Only with ``return_radii=True``: mean length of the lags in each bin.
    profile : ndarray of float64, shape (R,)
        Mean correlation of the lags whose length rounds to ``r = 0, 1, ...`` (bins of width
        1), normalised so that the zero-lag value is 1; NaN where no lag had enough mask
        overlap.
    """
    x = _as_frames(frames)
    valid = _valid(x, mask)
    idx = _pick(x.shape[0], max_frames)
    x, valid = x[idx], np.broadcast_to(valid, x.shape)[idx]
    z, good = _ring_fluctuations(x, valid, center)
    n, h, w = z.shape
    s = (2 * h, 2 * w)
    fz = np.fft.rfft2(z, s=s)
    fm = np.fft.rfft2(good.astype(np.float64), s=s)
    num = np.fft.irfft2((fz * fz.conj()).real.sum(0), s=s)
    den = np.fft.irfft2((fm * fm.conj()).real.sum(0), s=s)
    if den[0, 0] <= 0.5:
        raise ValueError("no frame has enough valid pixels to measure the speckle size")
    ok = den > _MIN_OVERLAP * den[0, 0]
    corr = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
    length = _lag_grid(*s)
    lag = np.rint(length).astype(np.int64)
    rmax = int(min(h, w) // 2)
    sel = ok & (lag <= rmax)
    cnt = np.bincount(lag[sel], minlength=rmax + 1).astype(np.float64)
    tot = np.bincount(lag[sel], weights=corr[sel], minlength=rmax + 1)
    rad = np.bincount(lag[sel], weights=length[sel], minlength=rmax + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = tot / cnt
        radius = rad / cnt
    if not return_radii:
        return prof / prof[0]
    return radius, prof / prof[0]


def _fwhm(radius: np.ndarray, profile: np.ndarray) -> float:
    """FWHM of a radial autocorrelation profile, with the zero-lag noise spike removed."""
    r = np.asarray(radius, dtype=np.float64)
    p = np.asarray(profile, dtype=np.float64)
    if p.size < 3 or not np.isfinite(p[1:3]).all():
        raise ValueError("autocorrelation profile too short to measure a speckle size")
    r1, r2, p1, p2 = r[1], r[2], p[1], p[2]
    if not p1 > 0:
        raise ValueError("no speckle contrast beyond the zero lag (the autocorrelation at a lag of "
                         "one pixel is not positive): shot noise only, a radially symmetric pattern "
                         "such as a sphere's, or speckles finer than a pixel")
    b = None
    if p1 > 0 and p2 > 0 and p1 > p2:
        b = (math.log(p1) - math.log(p2)) / (r2**2 - r1**2)  # log p = a - b r^2 through bins 1, 2
        peak = min(max(math.exp(math.log(p1) + b * r1**2), p1), p[0])
    else:  # flat top (speckles much larger than a pixel, or noise): the zero lag is p1
        peak = min(p1, p[0]) if p1 > 0 else p[0]
    half = 0.5 * peak
    if p1 <= half:  # narrower than ~2 px: Gaussian through bins 1, 2 (or lags 0, 1)
        if b is None:
            b = math.log(max(p[0], 1e-12) / max(p1, 1e-12)) / r1**2
        return 2.0 * math.sqrt(math.log(2.0) / b) if b > 0 else float("nan")
    for i in range(2, p.size):
        if not np.isfinite(p[i]):
            break
        if p[i] <= half:
            frac = (p[i - 1] - half) / (p[i - 1] - p[i])
            return 2.0 * (r[i - 1] + frac * (r[i] - r[i - 1]))
    raise ValueError("the autocorrelation never falls to half its peak: speckles larger than "
                     "half the frame, or no speckle contrast (empty frames?)")


def speckle_size(frames: Any, mask: Any = None, *, center=None, max_frames: int | None = 64) -> float:
    """Typical speckle size (pixels) of a set of frames.

    The full width at half maximum of the central peak of the mean autocorrelation of the
    frames' speckle fluctuations (module docstring). Frames are expected to share one geometry;
    the value describes the set, not one frame.

    Parameters
    ----------
    frames : array_like, shape (N, H, W) or (H, W)
    mask : array_like, shape (H, W) or (N, H, W), optional
        Non-zero = bad pixel.
    center : (row, col), optional
        Beam centre; default the geometric centre.
    max_frames : int or None, default 64
        Frames used (spread evenly); the FFTs cost ``O(H W log(H W))`` per frame.

    Returns
    -------
    float
        Speckle FWHM in pixels.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> obj = np.zeros((256, 256)); obj[:24, :24] = rng.random((24, 24))
    >>> frames = np.abs(np.fft.fft2(obj)) ** 2
    >>> 5 < speckle_size(np.fft.fftshift(frames)) < 15
    True
    """
    return float(_fwhm(*autocorrelation_profile(frames, mask, center=center, max_frames=max_frames,
                                                return_radii=True)))


def estimate_scale(frames: Any, reference_speckle_px: float, mask: Any = None, *, center=None,
                   reference_scale: float = 1.0, max_frames: int | None = 64) -> float:
    """Resampling scale (input pixels per model pixel) matching a reference speckle size.

    Parameters
    ----------
    frames : array_like, shape (N, H, W) or (H, W)
        Frames to be embedded.
    reference_speckle_px : float
        :func:`speckle_size` of the training frames, in training-detector pixels.
    mask, center, max_frames
        As :func:`speckle_size`.
    reference_scale : float, default 1.0
        Scale the model was trained with (``Preprocessing.scale``, training pixels per model
        pixel).

    Returns
    -------
    float
        ``reference_scale * speckle_size(frames) / reference_speckle_px``: with it, a speckle
        spans as many model pixels as it did in training.

    Raises
    ------
    ValueError
        Bad reference, or the frames show no speckle of at least 1 pixel (noise-only frames).
    """
    if reference_speckle_px is None or not np.isfinite(reference_speckle_px) or reference_speckle_px <= 0:
        raise ValueError(f"reference_speckle_px must be a positive number; got {reference_speckle_px!r}")
    try:
        measured = speckle_size(frames, mask, center=center, max_frames=max_frames)
    except ValueError as exc:
        raise ValueError(f"these frames show no resolvable speckle ({exc}); pass scale= explicitly, "
                         f"e.g. from the geometry (geometric_scale) or estimated on single-hit "
                         f"frames only") from exc
    if not np.isfinite(measured) or measured < 1.0:
        raise ValueError(f"these frames show no resolvable speckle (measured size {measured:.3g} px < 1 px: "
                         "shot noise only, e.g. no-hit frames?); pass scale= explicitly")
    return float(reference_scale) * measured / float(reference_speckle_px)


def geometric_scale(pixel_size_m: float, distance_m: float, photon_energy_ev: float, *,
                    reference_pixel_size_m: float, reference_distance_m: float,
                    reference_photon_energy_ev: float, reference_scale: float = 1.0) -> float:
    """Resampling scale from detector geometry (small-angle approximation).

    A pixel spans ``|dq| = pixel / (distance * wavelength)`` of reciprocal space, with
    ``wavelength`` proportional to ``1 / photon_energy``. Matching the reciprocal-space extent
    of a model pixel for the same particles gives
    ``scale = reference_scale * dq_ref / dq_new``.

    Returns
    -------
    float
        Input pixels per model pixel.

    Examples
    --------
    >>> geometric_scale(75e-6, 0.13, 1700, reference_pixel_size_m=600e-6,
    ...                 reference_distance_m=0.13, reference_photon_energy_ev=1700)
    8.0
    """
    for name, v in (("pixel_size_m", pixel_size_m), ("distance_m", distance_m),
                    ("photon_energy_ev", photon_energy_ev), ("reference_pixel_size_m", reference_pixel_size_m),
                    ("reference_distance_m", reference_distance_m),
                    ("reference_photon_energy_ev", reference_photon_energy_ev)):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive number; got {v!r}")
    dq_new = pixel_size_m * photon_energy_ev / distance_m
    dq_ref = reference_pixel_size_m * reference_photon_energy_ev / reference_distance_m
    return float(reference_scale) * dq_ref / dq_new


def estimate_center(frames: Any, mask: Any = None, *, max_shift: int | None = None,
                    max_frames: int | None = 64) -> tuple[float, float]:
    """Beam centre as the centre of Friedel symmetry of the frames.

    Diffraction intensities are centro-symmetric about the beam centre ``c`` (Friedel's law,
    exactly so for the projection approximation). The cross-correlation of a frame with its
    copy rotated by 180 degrees about the geometric centre ``g`` then peaks at the shift
    ``2 (c - g)``. Frames are ``log1p``-compressed and standardised over valid pixels; the
    correlation is normalised by the mask's, summed over frames and its peak refined to
    sub-pixel precision with a parabola.

    Parameters
    ----------
    frames : array_like, shape (N, H, W) or (H, W)
    mask : array_like, shape (H, W) or (N, H, W), optional
        Non-zero = bad pixel.
    max_shift : int, optional
        Largest ``|2 (c - g)|`` searched per axis, pixels (default ``min(H, W) // 4``).
    max_frames : int or None, default 64

    Returns
    -------
    (row, col) : tuple of float
        Beam centre in pixels (same convention as ``preprocess(center=...)``).
    """
    x = _as_frames(frames)
    valid = np.broadcast_to(_valid(x, mask), x.shape)
    idx = _pick(x.shape[0], max_frames)
    x, valid = x[idx], valid[idx]
    n, h, w = x.shape
    max_shift = int(min(h, w) // 4 if max_shift is None else max_shift)
    f = np.log1p(np.clip(np.where(valid, x, 0).astype(np.float64), 0.0, None))
    cnt = valid.sum((1, 2), keepdims=True).clip(min=1)
    mean = (f * valid).sum((1, 2), keepdims=True) / cnt
    std = np.sqrt((((f - mean) * valid) ** 2).sum((1, 2), keepdims=True) / cnt) + 1e-12
    z = np.where(valid, (f - mean) / std, 0.0)
    m = valid.astype(np.float64)
    s = (2 * h, 2 * w)
    zr, mr = z[:, ::-1, ::-1], m[:, ::-1, ::-1]
    num = np.fft.irfft2((np.fft.rfft2(z, s=s) * np.fft.rfft2(zr, s=s).conj()).sum(0), s=s)
    den = np.fft.irfft2((np.fft.rfft2(m, s=s) * np.fft.rfft2(mr, s=s).conj()).sum(0), s=s)
    # C(t) = sum_p z(p + t) zr(p) peaks at t = 2c - (H-1, W-1)
    num, den = np.fft.fftshift(num), np.fft.fftshift(den)
    oy, ox = h, w  # index of zero shift after fftshift
    ys = slice(oy - max_shift, oy + max_shift + 1)
    xs = slice(ox - max_shift, ox + max_shift + 1)
    num, den = num[ys, xs], den[ys, xs]
    if den.max() <= 0.5:
        raise ValueError("no valid pixels to estimate the beam centre")
    if den[max_shift, max_shift] < _MIN_OVERLAP * m.sum():
        # e.g. one quadrant: its Friedel mates are masked, and a quadrant rotated about its own
        # middle matches itself, which pulls the "centre" into the visible area
        raise ValueError(
            f"the valid pixels are not centro-symmetric about the frame centre (only "
            f"{den[max_shift, max_shift] / m.sum():.0%} of them have a valid Friedel mate; one "
            f"quadrant or sector of the detector?): the beam centre cannot be estimated from "
            f"Friedel symmetry, give center=(row, col) explicitly")
    ok = den > _MIN_OVERLAP * den.max()
    score = np.where(ok, num / np.where(ok, den, 1.0), -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)

    def refine(a, i):
        if 0 < i < a.size - 1 and np.isfinite(a[i - 1]) and np.isfinite(a[i + 1]):
            d = a[i - 1] - 2 * a[i] + a[i + 1]
            if d < 0:
                return i + 0.5 * (a[i - 1] - a[i + 1]) / d
        return float(i)

    ty = refine(score[:, ix], iy) - max_shift
    tx = refine(score[iy, :], ix) - max_shift
    return (float((ty + h - 1) / 2.0), float((tx + w - 1) / 2.0))
