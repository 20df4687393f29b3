"""Selection metrics for single-hit classification (Assalauova et al., IUCrJ 2022).

Assalauova et al., "Classification of diffraction patterns using a convolutional neural network
in single-particle-imaging experiments performed at X-ray free-electron lasers" (IUCrJ 9, 2022),
compare ways of selecting the single hits of a run in two ways, both provided here:

* **as classifications**, against the true single-hit flags: precision, recall, F1 and accuracy
  (:func:`selection_metrics`), and by how far the selections of two methods agree
  (:func:`selection_iou`, intersection over union);
* **by the quality of what they select**: the power spectral density (PSD), i.e. the
  azimuthally averaged intensity of the mean of the selected patterns
  (:func:`radial_profile`), shows the fringes of the particle's form factor; frames that are not
  single hits (multiple hits, background, other particles) wash them out. :func:`psd_contrast`
  measures the Michelson contrast of the first minimum/maximum pairs.

:func:`selection_report` does both for several selections at once and :func:`plot_psd` draws
the PSDs. Everything is numpy; scipy (``find_peaks``) and matplotlib are imported only when used.

Selections are boolean masks of shape (N,): ``True`` = "frame selected as a single hit".
Detector masks follow CXI: nonzero = bad pixel. Radii are in pixels.

Examples
--------
>>> import numpy as np
>>> truth = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
>>> cnn = np.array([1, 1, 0, 0, 0, 1], dtype=bool)
>>> m = selection_metrics(cnn, truth)
>>> round(m["precision"], 3), round(m["recall"], 3), m["tp"], m["fp"], m["fn"]
(0.667, 0.667, 2, 1, 1)
>>> round(selection_iou(cnn, truth), 3)
0.5
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["selection_metrics", "selection_iou", "radial_profile", "psd_contrast",
           "selection_report", "plot_psd"]

#: Frames averaged at a time when forming a selection's mean pattern (bounds memory).
_MEAN_CHUNK = 256


# --------------------------------------------------------------------------- validation

def _as_selection(x: Any, name: str) -> np.ndarray:
    """Boolean (N,) copy of a selection given as booleans or 0/1 numbers."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D selection of shape (N,), got shape {a.shape}")
    if a.dtype == np.bool_:
        return a.copy()
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must hold booleans or 0/1 values, got dtype {a.dtype}")
    bad = ~((a == 0) | (a == 1))
    if np.any(bad):
        shown = np.unique(a[bad])[:5].tolist()
        raise ValueError(f"{name} must hold booleans or 0/1 values, found {shown}")
    return a == 1


def _as_index_selection(x: Any, n_frames: int, name: str) -> np.ndarray:
    """Boolean (n_frames,) mask from a boolean mask or an array of frame indices."""
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if a.dtype == np.bool_:
        if a.shape != (n_frames,):
            raise ValueError(f"{name} is a boolean mask of shape {a.shape}, expected ({n_frames},)")
        return a.copy()
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of frame indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer frame indices (or be a boolean mask), "
                         f"got dtype {a.dtype}")
    idx = a.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_frames):
        raise ValueError(f"{name} holds indices outside 0 .. {n_frames - 1}: "
                         f"min {idx.min()}, max {idx.max()}")
    out = np.zeros(n_frames, dtype=bool)
    out[idx] = True
    return out


def _check_n_frames(n_frames: Any) -> int:
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 0:
        raise ValueError(f"n_frames must be an integer >= 0, got {n_frames!r}")
    return int(n_frames)


# --------------------------------------------------------------------------- classification view

def selection_metrics(predicted, truth) -> dict:
    """Score a single-hit selection against the true single-hit flags.

    The positive class is "single hit": ``tp`` counts frames selected that are true single
    hits, ``fp`` frames selected that are not, ``fn`` single hits missed and ``tn`` the other
    frames correctly left out.

    Parameters
    ----------
    predicted : array_like of bool or 0/1, shape (N,)
        ``True`` where the method selected the frame as a single hit.
    truth : array_like of bool or 0/1, shape (N,)
        ``True`` where the frame is a single hit.

    Returns
    -------
    dict
        ``precision`` = tp / (tp + fp), ``recall`` = tp / (tp + fn),
        ``f1`` = 2 tp / (2 tp + fp + fn), ``accuracy`` = (tp + tn) / N (floats);
        ``n_predicted`` (selected frames, tp + fp), ``n_true`` (true single hits, tp + fn),
        ``n_frames`` (N), ``tp``, ``fp``, ``fn``, ``tn`` (ints).

        Undefined ratios are **0.0**, never nan (scikit-learn's ``zero_division=0``, and the
        F1 of :mod:`~speckle_embed.fewshot.episodes`): the precision of an empty selection,
        the recall when there are no true single hits, and the F1 when both happen. An empty
        selection thus scores 0 everywhere except accuracy.

    Raises
    ------
    ValueError
        Arrays not 1-D, of different lengths, empty, or holding values other than booleans
        or 0/1.

    Examples
    --------
    >>> m = selection_metrics([1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 0])
    >>> m["tp"], m["fp"], m["fn"], m["tn"], m["n_predicted"], m["n_true"]
    (2, 1, 1, 2, 3, 3)
    >>> round(m["f1"], 4), round(m["accuracy"], 4)
    (0.6667, 0.6667)
    >>> selection_metrics([0, 0, 0], [1, 0, 0])["precision"]   # empty selection
    0.0
    """
    pred = _as_selection(predicted, "predicted")
    true = _as_selection(truth, "truth")
    if pred.shape != true.shape:
        raise ValueError(f"predicted ({pred.size}) and truth ({true.size}) differ in length")
    if pred.size == 0:
        raise ValueError("selections are empty (N = 0); there is nothing to score")
    tp = int(np.sum(pred & true))
    fp = int(np.sum(pred & ~true))
    fn = int(np.sum(~pred & true))
    tn = int(pred.size - tp - fp - fn)
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0,
        "accuracy": (tp + tn) / pred.size,
        "n_predicted": tp + fp,
        "n_true": tp + fn,
        "n_frames": int(pred.size),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def selection_iou(a, b, n_frames: int | None = None) -> float:
    """Intersection over union (Jaccard index) of two selections.

    Parameters
    ----------
    a, b : array_like
        Without ``n_frames``: selections of equal length N, booleans or 0/1 values. With
        ``n_frames``: each is either a boolean mask of length ``n_frames`` or an array of
        integer frame indices in ``0 .. n_frames-1`` (repeats count once).
    n_frames : int, optional
        Number of frames N; required for index arrays.

    Returns
    -------
    float
        ``|a & b| / |a | b|`` in [0, 1]; **1.0 when both selections are empty** (two methods
        that select nothing agree). Against the truth it equals ``tp / (tp + fp + fn)``,
        i.e. ``f1 / (2 - f1)`` of :func:`selection_metrics`.

    Raises
    ------
    ValueError
        Lengths differ, values are not booleans or 0/1 (masks), or indices are not integers
        or lie outside the frame range.

    Examples
    --------
    >>> selection_iou([1, 1, 0, 0], [0, 1, 1, 0])
    0.3333333333333333
    >>> selection_iou([0, 3, 5], [3, 5, 7], n_frames=10)
    0.5
    >>> selection_iou([], [], n_frames=4)
    1.0
    """
    if n_frames is None:
        sa, sb = _as_selection(a, "a"), _as_selection(b, "b")
        if sa.shape != sb.shape:
            raise ValueError(f"selections differ in length: {sa.size} and {sb.size} "
                             "(pass n_frames to compare index arrays)")
    else:
        n = _check_n_frames(n_frames)
        sa, sb = _as_index_selection(a, n, "a"), _as_index_selection(b, n, "b")
    union = int(np.sum(sa | sb))
    return int(np.sum(sa & sb)) / union if union else 1.0


# --------------------------------------------------------------------------- PSD view

def _center_of(shape: tuple[int, int], center) -> tuple[float, float]:
    h, w = shape
    if center is None:
        return (h - 1) / 2.0, (w - 1) / 2.0
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    if c.size != 2 or not np.all(np.isfinite(c)):
        raise ValueError(f"center must be two finite numbers (row, col), got {center!r}")
    return float(c[0]), float(c[1])


def radial_profile(frames_or_mean, mask=None, center=None,
                   bin_width_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthally averaged intensity (the PSD of Assalauova et al.) of an image or a frame mean.

    Parameters
    ----------
    frames_or_mean : array_like, shape (H, W) or (N, H, W)
        One image (e.g. the mean pattern of a selection), or frames that are averaged first
        (a pixel that is non-finite in any frame drops out). Intensity units are kept
        (photons in, photons per pixel out).
    mask : array_like, shape (H, W), optional
        CXI convention: nonzero = bad pixel (beam stop, gaps, hot pixels), ignored.
        Non-finite pixels are ignored too.
    center : (row, col), optional
        Beam centre in pixel-index coordinates (pixel ``[i, j]`` sits at ``(i, j)``); default
        the geometric centre ``((H - 1) / 2, (W - 1) / 2)``, between the four middle pixels of
        an even-sized detector. Same convention as :mod:`speckle_embed.scale`.
    bin_width_px : float
        Width of the radial bins in pixels. Bin ``k`` holds the pixels at distance
        ``d`` from the centre with ``round(d / bin_width_px) == k``.

    Returns
    -------
    r_px : ndarray of float64, shape (K,)
        Bin centres ``k * bin_width_px`` in pixels, ``k = 0 .. K-1``, out to the farthest
        pixel (masked or not), so profiles of one geometry always align.
    profile : ndarray of float64, shape (K,)
        Mean intensity of the valid pixels of each bin; **nan where a bin has none** (the
        beam-stop region, the empty centre bin of an even-sized detector, gaps).

    Raises
    ------
    ValueError
        Wrong number of dimensions, no frames, non-numeric data, mask of another shape,
        bad centre or bin width.

    Examples
    --------
    >>> img = np.ones((4, 4)); img[0, 0] = 100.0
    >>> mask = np.zeros((4, 4), dtype=np.uint16); mask[0, 0] = 1       # CXI: nonzero = bad
    >>> r, p = radial_profile(img, mask)
    >>> r
    array([0., 1., 2.])
    >>> p
    array([nan,  1.,  1.])
    """
    x = np.asarray(frames_or_mean.detach().cpu().numpy() if hasattr(frames_or_mean, "detach")
                   else frames_or_mean)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"frames_or_mean must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        if x.shape[0] == 0:
            raise ValueError("frames_or_mean holds no frames (shape (0, H, W))")
        img = np.mean(x, axis=0, dtype=np.float64)
    elif x.ndim == 2:
        img = x.astype(np.float64)
    else:
        raise ValueError(f"frames_or_mean must have shape (H, W) or (N, H, W), got {x.shape}")
    h, w = img.shape
    if h == 0 or w == 0:
        raise ValueError(f"frames_or_mean has an empty detector: {x.shape}")
    if not (np.isfinite(bin_width_px) and bin_width_px > 0):
        raise ValueError(f"bin_width_px must be a positive number, got {bin_width_px!r}")
    valid = np.isfinite(img)
    if mask is not None:
        m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
        if m.shape != (h, w):
            raise ValueError(f"mask shape {m.shape} does not match the detector ({h}, {w})")
        valid &= m == 0
    cy, cx = _center_of((h, w), center)
    yy, xx = np.mgrid[0:h, 0:w]
    ring = np.rint(np.hypot(yy - cy, xx - cx) / float(bin_width_px)).astype(np.int64).ravel()
    nbins = int(ring.max()) + 1
    v = valid.ravel()
    cnt = np.bincount(ring[v], minlength=nbins)
    total = np.bincount(ring[v], weights=img.ravel()[v], minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
    return np.arange(nbins, dtype=np.float64) * float(bin_width_px), profile


def _gaussian_smooth(y: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing, ``sigma`` in samples, edges reflected."""
    half = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    if y.size < 2:
        return y.copy()
    return np.convolve(np.pad(y, half, mode="reflect"), kernel, mode="valid")


def _sign_change_extrema(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interior local minima and maxima of ``y`` (plateaus: their middle sample), numpy only.

    Same rule as ``scipy.signal.find_peaks`` without conditions: an extremum needs a strictly
    lower (higher) neighbour on both sides of it or of its plateau; the ends never count.
    """
    s = np.sign(np.diff(y))
    nz = np.flatnonzero(s != 0)
    if nz.size < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    sn = s[nz]
    k = np.flatnonzero(sn[1:] != sn[:-1]) + 1          # sign flips between nz[k-1] and nz[k]
    pos = (nz[k - 1] + 1 + nz[k]) // 2                  # middle of the plateau y[nz[k-1]+1 .. nz[k]]
    return pos[sn[k] > 0].astype(np.int64), pos[sn[k] < 0].astype(np.int64)


def _find_extrema(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(minima, maxima) indices; scipy's ``find_peaks`` when importable, else numpy."""
    try:
        from scipy.signal import find_peaks
    except ImportError:
        return _sign_change_extrema(y)
    return find_peaks(-y)[0].astype(np.int64), find_peaks(y)[0].astype(np.int64)


def psd_contrast(profile, r=None, n_pairs: int = 3, smooth: float = 0.0) -> dict:
    """Michelson contrast of the first minimum/maximum pairs of a radial profile.

    Leading nans (the beam-stop region) are skipped and trailing nans dropped; interior nans
    (gaps) are filled by linear interpolation. Local minima and maxima are then located
    (``scipy.signal.find_peaks`` if scipy is installed, otherwise an equivalent numpy
    sign-change detector), optionally on a Gaussian-smoothed copy. Pair ``i`` is the
    ``i``-th local minimum and the first local maximum after it (before the next minimum);
    maxima before the first minimum (the falling central peak, a beam-stop edge) are ignored.
    Its contrast is Michelson's ::

        C_i = (I_max - I_min) / (I_max + I_min)

    with both intensities read from the unsmoothed profile: 1 for fringes that go to zero
    (an ideal single-particle pattern), towards 0 as incoherent contributions fill them in.

    Parameters
    ----------
    profile : array_like, shape (K,)
        Radial profile, e.g. the second output of :func:`radial_profile` (non-negative).
    r : array_like, shape (K,), optional
        Radii of the profile samples (e.g. pixels); default the sample index.
    n_pairs : int
        Number of pairs wanted (Assalauova et al.: the first three).
    smooth : float
        Standard deviation, in samples, of the Gaussian applied before extrema are located;
        0 (default) for none. About 1 suppresses shot-noise wiggles of a noisy profile.

    Returns
    -------
    dict
        ``contrast`` (list of float, one per pair found), ``mean_contrast`` (float, nan if no
        pair), ``n_found`` (int, at most ``n_pairs``), ``r_min``, ``r_max`` (lists of positions
        in units of ``r``), ``intensity_min``, ``intensity_max`` (lists, units of the profile).
        A monotonic profile gives empty lists, not an error.

    Raises
    ------
    ValueError
        ``profile`` not 1-D, ``r`` of another length, ``n_pairs`` < 1 or ``smooth`` < 0.

    Examples
    --------
    >>> prof = [np.nan, 10.0, 4.0, 1.0, 3.0, 5.0, 3.0, 2.0, 2.5, 3.0, 1.0]
    >>> c = psd_contrast(prof, n_pairs=3)
    >>> c["n_found"], c["r_min"], c["r_max"]
    (2, [3.0, 7.0], [5.0, 9.0])
    >>> [round(v, 3) for v in c["contrast"]]
    [0.667, 0.2]
    >>> psd_contrast([5.0, 4.0, 3.0, 2.0])["mean_contrast"]
    nan
    """
    y = np.asarray(profile, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"profile must be 1-D (K,), got shape {y.shape}")
    if r is None:
        rr = np.arange(y.size, dtype=np.float64)
    else:
        rr = np.asarray(r, dtype=np.float64)
        if rr.shape != y.shape:
            raise ValueError(f"r has shape {rr.shape}, profile {y.shape}; they must match")
    if isinstance(n_pairs, bool) or int(n_pairs) != n_pairs or n_pairs < 1:
        raise ValueError(f"n_pairs must be an integer >= 1, got {n_pairs!r}")
    if not (np.isfinite(smooth) and smooth >= 0):
        raise ValueError(f"smooth must be a number >= 0, got {smooth!r}")
    result = {"contrast": [], "mean_contrast": float("nan"), "n_found": 0, "r_min": [], "r_max": [],
              "intensity_min": [], "intensity_max": []}
    finite = np.flatnonzero(np.isfinite(y))
    if finite.size < 3:
        return result
    lo, hi = int(finite[0]), int(finite[-1]) + 1
    seg, rseg = y[lo:hi], rr[lo:hi]
    ok = np.isfinite(seg)
    if not ok.all():
        t = np.arange(seg.size)
        seg = np.interp(t, t[ok], seg[ok])
    located = _gaussian_smooth(seg, float(smooth)) if smooth > 0 else seg
    minima, maxima = _find_extrema(located)
    for i_min in minima:
        if result["n_found"] == int(n_pairs):
            break
        after = maxima[maxima > i_min]
        nxt = minima[minima > i_min]
        if after.size == 0 or (nxt.size and after[0] > nxt[0]):
            continue
        i_max = int(after[0])
        lo_v, hi_v = float(seg[i_min]), float(seg[i_max])
        den = hi_v + lo_v
        result["contrast"].append((hi_v - lo_v) / den if den != 0 else float("nan"))
        result["r_min"].append(float(rseg[i_min]))
        result["r_max"].append(float(rseg[i_max]))
        result["intensity_min"].append(lo_v)
        result["intensity_max"].append(hi_v)
        result["n_found"] += 1
    if result["contrast"]:
        result["mean_contrast"] = float(np.mean(result["contrast"]))
    return result


# --------------------------------------------------------------------------- report

def _frames_shape(frames: Any) -> tuple[int, ...]:
    shape = getattr(frames, "shape", None)
    return tuple(int(s) for s in (shape if shape is not None else np.shape(frames)))


def _mean_frame(frames: Any, selected: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float64 mean of the selected frames, read in chunks (arrays, HDF5 datasets, tensors)."""
    idx = np.flatnonzero(selected)
    if idx.size == 0:
        return np.full(hw, np.nan)
    total = np.zeros(hw, dtype=np.float64)
    for start in range(0, idx.size, _MEAN_CHUNK):
        chunk = frames[idx[start:start + _MEAN_CHUNK]]
        if hasattr(chunk, "detach"):
            chunk = chunk.detach().cpu().numpy()
        total += np.sum(np.asarray(chunk, dtype=np.float64), axis=0)
    return total / idx.size


def selection_report(selections: Mapping[Any, Any], truth, frames=None, mask=None, *,
                     center=None, bin_width_px: float = 1.0, n_pairs: int = 3,
                     smooth: float = 0.0) -> dict:
    """Compare single-hit selections of several methods, as classifications and by their PSD.

    Parameters
    ----------
    selections : mapping of name to array_like of bool or 0/1, shape (N,)
        One selection per method (e.g. ``{"cnn": ..., "manual": ..., "em": ...}``).
    truth : array_like of bool or 0/1, shape (N,)
        True single-hit flags.
    frames : array_like, shape (N, H, W), optional
        The patterns (numpy array, HDF5 dataset or tensor; read in chunks of selected
        frames). If given, the PSD of each selection's mean pattern and of the true single
        hits' mean pattern is measured.
    mask : array_like, shape (H, W), optional
        Bad-pixel mask (nonzero = bad, CXI) for :func:`radial_profile`.
    center, bin_width_px
        Passed to :func:`radial_profile`.
    n_pairs, smooth
        Passed to :func:`psd_contrast`.

    Returns
    -------
    dict
        ``names`` (list, order of ``selections``), ``n_frames``, ``n_true``,
        ``metrics`` (``{name: selection_metrics(...)}``), ``iou`` (list of lists, K x K,
        ``iou[i][j] = selection_iou(names[i], names[j])``, 1 on the diagonal). With ``frames``
        also ``psd`` (``{name: psd_contrast(...)}``), ``psd_truth``, ``profiles``
        (``{name: (r_px, profile)}`` arrays, ready for :func:`plot_psd`) and
        ``profile_truth``. An empty selection has an all-nan profile and no pairs.
        Everything but the profile arrays is plain Python (JSON-serialisable).

    Raises
    ------
    ValueError
        No selections, a bad selection (the message names it), or frames whose shape is
        not (N, H, W) with N = len(truth).

    Examples
    --------
    >>> truth = np.array([1, 1, 0, 0], dtype=bool)
    >>> rep = selection_report({"a": [1, 1, 0, 0], "b": [1, 0, 1, 0]}, truth)
    >>> rep["names"], rep["metrics"]["b"]["precision"], rep["iou"]
    (['a', 'b'], 0.5, [[1.0, 0.3333333333333333], [0.3333333333333333, 1.0]])
    """
    if not selections:
        raise ValueError("selections is empty; give at least one {name: selection}")
    true = _as_selection(truth, "truth")
    names = list(selections)
    sel = {}
    for name in names:
        s = _as_selection(selections[name], f"selection {name!r}")
        if s.shape != true.shape:
            raise ValueError(f"selection {name!r} ({s.size}) and truth ({true.size}) differ in length")
        sel[name] = s
    report: dict[str, Any] = {
        "names": names,
        "n_frames": int(true.size),
        "n_true": int(true.sum()),
        "metrics": {name: selection_metrics(sel[name], true) for name in names},
        "iou": [[selection_iou(sel[a], sel[b]) for b in names] for a in names],
    }
    if frames is None:
        return report
    shape = _frames_shape(frames)
    if len(shape) != 3 or shape[0] != true.size:
        raise ValueError(f"frames must have shape (N, H, W) with N = {true.size} (len(truth)), got {shape}")
    hw = (shape[1], shape[2])
    report["psd"], report["profiles"] = {}, {}
    for name in names:
        r, p = radial_profile(_mean_frame(frames, sel[name], hw), mask, center, bin_width_px)
        report["profiles"][name] = (r, p)
        report["psd"][name] = psd_contrast(p, r, n_pairs=n_pairs, smooth=smooth)
    r, p = radial_profile(_mean_frame(frames, true, hw), mask, center, bin_width_px)
    report["profile_truth"] = (r, p)
    report["psd_truth"] = psd_contrast(p, r, n_pairs=n_pairs, smooth=smooth)
    return report


def plot_psd(profiles: Mapping[Any, tuple], path, *, title: str | None = None,
             xlabel: str = "radius (pixels)") -> Path:
    """Draw radial profiles (PSDs) of several selections on a log intensity axis.

    Parameters
    ----------
    profiles : mapping of name to (r, profile)
        1-D arrays of equal length per entry, e.g. ``selection_report(...)["profiles"]``
        (add ``"true singles": report["profile_truth"]`` for the reference).
        Nan and non-positive samples are left out of the curve.
    path : str or Path
        PNG file to write (replaced atomically).
    title : str, optional
    xlabel : str
        Label of the radius axis.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> r = np.arange(20.0); p = 1.0 + np.cos(r / 2.0) ** 2
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = plot_psd({"cnn": (r, p)}, Path(d) / "psd.png")
    ...     out.name, out.stat().st_size > 0
    ('psd.png', True)
    """
    if not profiles:
        raise ValueError("profiles is empty; give at least one {name: (r, profile)}")
    curves = []
    for name, pair in profiles.items():
        try:
            r, p = pair
        except (TypeError, ValueError):
            raise ValueError(f"profiles[{name!r}] must be a pair (r, profile)") from None
        r, p = np.asarray(r, dtype=np.float64), np.asarray(p, dtype=np.float64)
        if r.ndim != 1 or r.shape != p.shape:
            raise ValueError(f"profiles[{name!r}]: r {r.shape} and profile {p.shape} must be 1-D "
                             "of equal length")
        keep = np.isfinite(r) & np.isfinite(p) & (p > 0)
        curves.append((str(name), r[keep], p[keep]))

    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, r, p in curves:
        ax.plot(r, p, "-", lw=1.2, label=name)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("azimuthally averaged intensity")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from speckle_embed.atomic import save_figure_atomically

    return save_figure_atomically(fig, path, dpi=100)
