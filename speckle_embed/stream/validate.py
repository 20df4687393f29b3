"""Per-frame checks before a frame may enter the queue: shape, dtype and non-finite pixels.

A frame that fails is counted under its reason, logged with its id (``train:pulse``) and
skipped; the rest of its message goes on.
"""
from __future__ import annotations

import numpy as np

from speckle_embed.stream.messages import ACCEPTED_DTYPES
from speckle_embed.stream.packet import FramePacket, frame_id

__all__ = ["FrameValidator"]


class FrameValidator:
    """Accept frames of one shape and a real dtype, without NaN/inf on good pixels.

    Parameters
    ----------
    frame_shape : (H, W), optional
        Expected frame shape; default: the shape of the first accepted frame.
    mask : ndarray (H, W), optional
        Bad pixels (non-zero), whose values are not checked (assembly gaps, dead pixels).
    """

    def __init__(self, frame_shape=None, mask=None):
        self.frame_shape = None if frame_shape is None else tuple(int(s) for s in frame_shape)
        self.good = None if mask is None else (np.asarray(mask) == 0)

    def check(self, p: FramePacket) -> tuple[FramePacket | None, list[tuple[str, str, str]]]:
        """The packet without its bad frames, and ``(reason, frame id, detail)`` per bad frame."""
        n = len(p)
        ids = [frame_id(p.train_id[i], p.pulse_id[i]) for i in range(n)] if n else []
        x = p.frames
        if x.dtype.kind not in ACCEPTED_DTYPES or x.dtype.itemsize > 8:
            return None, [("dtype", i, f"dtype {x.dtype} is not a real number type") for i in ids]
        if x.ndim != 3:
            return None, [("shape", i, f"frame of {x.ndim - 1} dimensions, expected 2") for i in ids]
        if self.frame_shape is None:
            self.frame_shape = tuple(x.shape[1:])
        if tuple(x.shape[1:]) != self.frame_shape:
            return None, [("shape", i, f"frame shape {tuple(x.shape[1:])}, expected {self.frame_shape}")
                          for i in ids]
        if x.dtype.kind != "f":
            return p, []
        fin = np.isfinite(x)
        if self.good is not None and self.good.shape == x.shape[1:]:
            fin |= ~self.good
        ok = fin.reshape(n, -1).all(axis=1)
        if ok.all():
            return p, []
        bad = [("nonfinite", ids[i], "NaN or inf on unmasked pixels") for i in np.flatnonzero(~ok)]
        keep = np.flatnonzero(ok)
        if keep.size == 0:
            return None, bad
        mask = p.mask[keep] if p.mask is not None and p.mask.ndim == 3 else p.mask
        return FramePacket(x[keep], p.train_id[keep], p.pulse_id[keep], p.timestamp[keep], p.received_ns,
                           mask, p.source), bad
