"""Detector frames -> model inputs for inference: input checks, the window the model sees, batches.

:meth:`~speckle_embed.inference.SpeckleEmbedder.embed` accepts frames of any size and numeric
dtype (NumPy arrays, tensors, h5py datasets read batch by batch). This module checks them and
turns them into model inputs with the one preprocessing implementation,
:func:`speckle_embed.preprocess.model_inputs`, in fewer passes over memory than
:func:`~speckle_embed.preprocess.preprocess` of the whole frames (same result up to float
rounding):

* only the window that resampling about the beam centre can touch (:func:`window`) is read and
  converted to float32; integer frames (uint16...) cannot hold NaN/inf and skip those checks;
* a mask shared by all frames is cut and moved to the device once;
* on CUDA the window travels in its stored dtype through pinned buffers
  (:class:`~speckle_embed.inference.transfer.HostToDevice`).

Frames from other detectors
---------------------------
The model sees an ``input_size x input_size`` window resampled about the beam centre with
``scale`` input pixels per model pixel (default ``preprocessing.scale``: the training crop).

* **Same pixel sampling as training, other size** (e.g. 128 x 128 binned pnCCD frames with their
  own mask): ``emb.embed(frames, mask=pnccd_mask)``; the central window is used, masked pixels
  (non-zero CXI bits or ``True``) are ignored. The frame must be at least ``input_size * scale``
  pixels across for the window to be filled; pixels outside the frame count as masked.
* **Known geometry** (pixel size, distance, photon energy of both detectors):
  ``scale=speckle_embed.scale.geometric_scale(...)``; e.g. 1024 x 1024 assembled frames of
  75 um pixels against a model trained on 600 um (8x8-binned) pixels take ``scale=8.0``: each
  model pixel averages an 8 x 8 block (area-weighted, masked pixels excluded).
* **Unknown geometry**: ``scale="auto"`` measures the speckle size of the incoming frames
  (:func:`speckle_embed.scale.speckle_size`) and compares it to ``reference_speckle_px``, the
  speckle size of the training frames stored in the checkpoint (``preprocessing`` dict). When the
  checkpoint has none, assume the model was trained at its default crop and give it yourself:
  ``SpeckleEmbedder.from_checkpoint(path, reference_speckle_px=...)``, or measure it once on
  training-like frames with :meth:`~speckle_embed.inference.SpeckleEmbedder.calibrate_reference_speckle`. One scale is
  estimated per :meth:`~speckle_embed.inference.SpeckleEmbedder.embed` call, from up to 64 of its frames; for
  reproducible pipelines call :meth:`~speckle_embed.inference.SpeckleEmbedder.estimate_scale` once and pass the number.
* **Off-centre beam**: ``center=(row, col)`` (pixels; default the geometric centre
  ``((H-1)/2, (W-1)/2)``), one per frame as an ``(N, 2)`` array, or ``center="auto"``
  (:func:`speckle_embed.scale.estimate_center`, Friedel symmetry).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch

from speckle_embed.frame_checks import check_frame_size
from speckle_embed.preprocess import Preprocessing, model_inputs

__all__ = ["SAMPLE_FRAMES", "is_tensor", "check_frames", "check_mask", "window", "sample_frames", "sample_mask",
           "resolve_center", "check_scale", "subsample", "window_batches", "prepare_window"]

SAMPLE_FRAMES = 64  # frames used by scale="auto" / center="auto"


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def check_frames(frames) -> Any:
    """Frames as an (N, H, W) numpy array, tensor or h5py-like dataset (not yet converted)."""
    if is_tensor(frames):
        x = frames.detach()
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"frames must hold real numbers; got dtype {x.dtype}")
    elif hasattr(frames, "shape") and hasattr(frames, "dtype") and hasattr(frames, "__getitem__") \
            and not isinstance(frames, np.ndarray):
        x = frames  # h5py.Dataset and friends: read batch by batch
        if len(x.shape) == 2:
            x = np.asarray(x[()])
    else:
        x = np.asarray(frames)
    if not is_tensor(x):
        kind = np.dtype(x.dtype).kind
        if kind not in "iuf":
            raise ValueError(f"frames must hold real numbers (int, uint or float); got dtype {x.dtype}")
    shape = tuple(x.shape)
    if len(shape) == 2:
        x = x[None]
    elif len(shape) != 3:
        raise ValueError(f"frames must have shape (N, H, W) or (H, W); got shape {shape}")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"frames must have H, W >= 1; got shape {shape}")
    return x


def check_mask(mask, n: int, hw: tuple[int, int]) -> np.ndarray | None:
    """Boolean bad-pixel mask, (H, W) or (N, H, W), or None."""
    if mask is None:
        return None
    m = mask.detach().cpu().numpy() if is_tensor(mask) else np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise ValueError(f"mask must be boolean or integer (non-zero = bad pixel); got dtype {m.dtype}")
    if m.shape != hw and not (m.ndim == 3 and m.shape == (n,) + hw):
        raise ValueError(f"mask shape {m.shape} does not match the frames: expected {hw} "
                         f"(one mask for all frames) or {(n,) + hw} (one per frame)")
    return m != 0


def window(h: int, w: int, cy: float, cx: float, size: int, scale: float) -> tuple[int, int, int, int]:
    """Rows/cols ``r0:r1, c0:c1`` that hold every pixel ``resample_center`` can touch."""
    half = (size - 1) / 2 * scale
    k = max(int(round(scale)), 1)
    margin = k // 2 + 2
    r0 = max(int(math.floor(cy - half)) - margin, 0)
    r1 = min(int(math.ceil(cy + half)) + margin + 1, h)
    c0 = max(int(math.floor(cx - half)) - margin, 0)
    c1 = min(int(math.ceil(cx + half)) + margin + 1, w)
    if r0 >= r1 or c0 >= c1:
        raise ValueError(f"the beam centre ({cy}, {cx}) is so far outside the {h}x{w} frame that the "
                         "model's field of view holds no pixel")
    return r0, r1, c0, c1


def _spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)`` (deterministic)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def sample_frames(frames, max_frames: int = SAMPLE_FRAMES) -> np.ndarray:
    """Up to ``max_frames`` frames spread evenly over ``frames``, as a float32 numpy array."""
    x = check_frames(frames)
    idx = _spread(int(x.shape[0]), max_frames)
    if is_tensor(x):
        return x[torch.from_numpy(idx)].float().cpu().numpy()
    if isinstance(x, np.ndarray):
        return np.asarray(x[idx], dtype=np.float32)
    return np.stack([np.asarray(x[int(i)], dtype=np.float32) for i in idx])


def sample_mask(mask, frames, max_frames: int = SAMPLE_FRAMES):
    """The mask matching :func:`sample_frames` (per-frame masks are subsampled alike)."""
    if mask is None:
        return None
    m = mask.detach().cpu().numpy() if is_tensor(mask) else np.asarray(mask)
    if m.ndim == 3:
        return m[_spread(m.shape[0], max_frames)]
    return m


def subsample(frames, mask, center, n: int):
    """Up to ``n`` frames spread evenly over ``frames`` with their mask and centres (int8 calibration).

    Returns ``(frames, mask, center, n_used)``; per-frame masks and ``(N, 2)`` centres are
    subsampled alike, shared ones passed through.
    """
    x = check_frames(frames)
    total = int(x.shape[0])
    if total == 0:
        raise ValueError("calibrate_int8 needs at least one frame")
    idx = _spread(total, int(n))
    if is_tensor(x):
        sub = x[torch.from_numpy(idx)]
    elif isinstance(x, np.ndarray):
        sub = x[idx]
    else:  # h5py-like: increasing indices
        sub = np.asarray(x[idx.tolist()])
    if mask is not None:
        m = mask.detach().cpu().numpy() if is_tensor(mask) else np.asarray(mask)
        mask = m[idx] if m.ndim == 3 and m.shape[0] == total else m
    if center is not None and not isinstance(center, str):
        c = np.asarray(center.detach().cpu() if is_tensor(center) else center, dtype=np.float64)
        if c.ndim == 2 and c.shape[0] == total:
            center = c[idx]
    return sub, mask, center, int(len(idx))


def resolve_center(center, x, bad) -> tuple[float, float, np.ndarray | None]:
    """``(cy, cx, centers)``: one beam centre, or per-frame ``centers`` (N, 2) (then cy, cx are the
    geometric centre). ``center`` is None (geometric centre), (row, col), (N, 2) or ``"auto"``."""
    n, h, w = (int(v) for v in x.shape)
    if isinstance(center, str):
        if center != "auto":
            raise ValueError(f"center must be (row, col), an (N, 2) array, 'auto' or None; got {center!r}")
        from speckle_embed.scale import estimate_center

        center = estimate_center(sample_frames(x), sample_mask(bad, x), max_frames=None)
    if center is None:
        return (h - 1) / 2.0, (w - 1) / 2.0, None
    c = np.asarray(center.detach().cpu() if is_tensor(center) else center, dtype=np.float64)
    if c.shape == (2,):
        cy, cx, centers = float(c[0]), float(c[1]), None
    elif c.shape == (n, 2):
        cy, cx, centers = (h - 1) / 2.0, (w - 1) / 2.0, c
    else:
        raise ValueError(f"center must be (row, col) or an array of shape ({n}, 2); got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("center holds NaN or inf")
    return cy, cx, centers


def check_scale(scale, requested) -> float:
    """``scale`` as a positive float; ``requested`` is what the caller passed (for the message)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number (input pixels per model pixel); got {requested!r}")
    return float(scale)


def window_batches(x, bad, prep: Preprocessing, cy: float, cx: float, centers, s: float, bs: int, *,
                   device: torch.device, h2d=None, nan_policy: str = "mask") -> Iterator:
    """``(start, stop, inputs)`` for consecutive batches of ``bs`` checked frames ``x`` (N, H, W):
    the model inputs (n, 1, S, S) of frames ``start:stop``, resampled about ``(cy, cx)`` (or the
    per-frame ``centers``) by ``s`` input pixels per model pixel. The frame size is checked first."""
    n, h, w = (int(v) for v in x.shape)
    check_frame_size(h, w, prep, s)
    bad_dev = None
    if centers is None:
        win = window(h, w, cy, cx, prep.input_size, s)
        r0, r1, c0, c1 = win
        if bad is not None and bad.ndim == 2:
            if bad[r0:r1, c0:c1].all():
                raise ValueError("the mask leaves no valid pixel in the model's field of view "
                                 f"(rows {r0}:{r1}, cols {c0}:{c1} of the {h}x{w} frame)")
            bad_dev = torch.from_numpy(np.ascontiguousarray(bad[r0:r1, c0:c1])).to(device)
    kw = dict(prep=prep, device=device, h2d=h2d, nan_policy=nan_policy)
    with torch.inference_mode():
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            if centers is None:
                inputs = prepare_window(x, start, stop, win, bad, bad_dev, cy, cx, s, **kw)
            else:
                inputs = torch.cat([
                    prepare_window(x, i, i + 1, window(h, w, centers[i, 0], centers[i, 1], prep.input_size, s),
                                   bad, None, centers[i, 0], centers[i, 1], s, **kw)
                    for i in range(start, stop)])
            yield start, stop, inputs


def prepare_window(x, start: int, stop: int, win, bad, bad_dev, cy: float, cx: float, s: float, *,
                   prep: Preprocessing, device: torch.device, h2d=None, nan_policy: str = "mask") -> torch.Tensor:
    """Model inputs (n, 1, S, S) of frames ``start:stop``: crop, convert, check, preprocess.

    ``win`` = ``(r0, r1, c0, c1)`` from :func:`window`; ``bad`` the boolean mask ((H, W),
    (N, H, W) or None) and ``bad_dev`` its window already on ``device`` (or None).
    """
    r0, r1, c0, c1 = win
    if is_tensor(x):
        integer = not (x.is_floating_point() or x.is_complex())
        t = x[start:stop, r0:r1, c0:c1].to(device=device, dtype=torch.float32)
    elif h2d is not None:  # CUDA: pinned staging, stored dtype, overlapped copy
        integer = np.dtype(x.dtype).kind in "iu"
        t = h2d(x[start:stop, r0:r1, c0:c1])
    else:
        integer = np.dtype(x.dtype).kind in "iu"
        block = x[start:stop, r0:r1, c0:c1]
        t = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
    if bad_dev is not None:
        m = bad_dev
    elif bad is not None:
        sub = bad[r0:r1, c0:c1] if bad.ndim == 2 else bad[start:stop, r0:r1, c0:c1]
        m = torch.from_numpy(np.ascontiguousarray(sub)).to(device)
    else:
        m = None
    where = f"in the model's field of view (rows {r0}:{r1}, cols {c0}:{c1})"
    if integer:  # every pixel finite: only the mask decides (a 2-D mask was checked by window_batches)
        good = None if m is None else ~m
        if m is not None and m.ndim == 3:
            has = good.flatten(1).any(1)
            if not bool(has.all()):
                i = start + int(torch.nonzero(~has)[0, 0])
                raise ValueError(f"frame {i} has no finite, unmasked pixel {where}: entirely NaN/inf or masked")
    else:
        finite = torch.isfinite(t)
        if nan_policy == "raise":
            ok_all = finite.flatten(1).all(1) if m is None else (finite | m).flatten(1).all(1)
            if not bool(ok_all.all()):
                i = start + int(torch.nonzero(~ok_all)[0, 0])
                raise ValueError(f"frame {i} has NaN/inf pixels {where} and nan_policy='raise'")
        good = finite if m is None else finite & ~m
        has = good.flatten(1).any(1)
        if not bool(has.all()):
            i = start + int(torch.nonzero(~has)[0, 0])
            raise ValueError(f"frame {i} has no finite, unmasked pixel {where}: entirely NaN/inf or masked")
        if m is None and bool(finite.all()):
            good = None
    return model_inputs(t, good, prep, (cy - r0, cx - c0), s)
