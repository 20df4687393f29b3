"""Frames of different detector sizes on one grid: centre-crop/pad (:func:`fit_to_shape`), the
matching bad-pixel mask (:func:`fit_mask`) and the common frame shape of several shards."""
from __future__ import annotations

import numpy as np

from speckle_embed.data.errors import DatasetError

__all__ = ["fit_to_shape", "fit_mask", "common_frame_shape"]


def fit_to_shape(frames: np.ndarray, shape, fill=0) -> np.ndarray:
    """Centre-crop and/or pad the last two axes of ``frames`` to ``shape = (H, W)``.

    The beam centre of a detector frame is its geometric centre ``((h-1)/2, (w-1)/2)``
    (the convention of :func:`speckle_embed.preprocess.resample_center`), so a frame of
    ``(h, w)`` pixels is placed with its centre on the centre of the ``(H, W)`` window: when
    ``H - h`` is even the centre is kept exactly; when it is odd the frame lands half a pixel
    off (the smaller side gets the extra row/column of padding or cropping).

    Parameters
    ----------
    frames : ndarray (..., h, w)
    shape : (H, W)
    fill : scalar
        Value of the padded pixels (padding is also what :func:`fit_mask` marks bad).

    Returns
    -------
    ndarray (..., H, W), same dtype; ``frames`` itself if the shape already matches.
    """
    H, W = (int(v) for v in shape)
    h, w = frames.shape[-2:]
    if (h, w) == (H, W):
        return frames
    out = np.full(frames.shape[:-2] + (H, W), fill, dtype=frames.dtype)
    src, dst = [], []
    for n_in, n_out in ((h, H), (w, W)):
        if n_out >= n_in:   # pad
            o = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(o, o + n_in))
        else:               # crop
            o = (n_in - n_out) // 2
            src.append(slice(o, o + n_out))
            dst.append(slice(0, n_out))
    out[..., dst[0], dst[1]] = frames[..., src[0], src[1]]
    return out


def fit_mask(bad: np.ndarray | None, native_shape, shape) -> np.ndarray:
    """Bad-pixel mask (True = bad) of frames fitted by :func:`fit_to_shape`: padding is bad.

    Parameters
    ----------
    bad : ndarray of bool (h, w) or None
        The shard's own mask (None: every pixel good).
    native_shape : (h, w)
        The shard's frame size.
    shape : (H, W)
        The common size.

    Returns
    -------
    ndarray of bool (H, W)
    """
    base = np.zeros(tuple(native_shape), dtype=bool) if bad is None else np.asarray(bad, dtype=bool)
    if base.shape != tuple(native_shape):
        raise DatasetError(f"mask shape {base.shape} does not match the frame shape {tuple(native_shape)}")
    return fit_to_shape(base, shape, fill=True)


def common_frame_shape(infos, frame_shape) -> tuple[int, int]:
    shapes = [info.frame_shape for info in infos]
    if frame_shape is None:
        for info in infos[1:]:
            if info.frame_shape != infos[0].frame_shape:
                raise DatasetError(
                    f"frames of mixed sizes: {infos[0].path} has (H, W) = {infos[0].frame_shape} "
                    f"but {info.path} has {info.frame_shape}; give a common frame_shape "
                    f"(training: data.frame_shape=max or data.frame_shape=[H,W]) to centre-crop/pad "
                    f"every shard to it (padding is masked as bad pixels)")
        return infos[0].frame_shape
    if isinstance(frame_shape, str):
        if frame_shape != "max":
            raise ValueError(f"frame_shape must be None, 'max' or (H, W); got {frame_shape!r}")
        return (max(s[0] for s in shapes), max(s[1] for s in shapes))
    try:
        h, w = (int(v) for v in frame_shape)
    except (TypeError, ValueError):
        raise ValueError(f"frame_shape must be None, 'max' or (H, W); got {frame_shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"frame_shape must be positive; got {frame_shape!r}")
    return (h, w)
