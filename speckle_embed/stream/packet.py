"""The unit that travels from a source to the classifier: a :class:`FramePacket` of frames with ids.

A packet holds the frames of one message (a Karabo train, a ZMQ message, a slice of a replayed
file) and the time it was received, from which the service measures its latency
(receipt -> published decision).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FramePacket", "MalformedMessage", "SourceDisconnected", "SourceExhausted", "frame_id"]


@dataclass
class FramePacket:
    """Frames of one received message.

    Attributes
    ----------
    frames : ndarray, shape (n, H, W)
        Photons (or ADU) per pixel, any real dtype (uint16 and float32 in practice).
    train_id : ndarray of int64, shape (n,)
        Facility train id (European XFEL) or message sequence number (other sources).
    pulse_id : ndarray of int64, shape (n,)
        Pulse (or frame) index within the train.
    timestamp : ndarray of float64, shape (n,)
        Source time stamp, seconds since the Unix epoch (NaN when the source sends none).
    received_ns : int
        ``time.perf_counter_ns()`` when the message arrived (start of the latency clock).
    mask : ndarray, shape (H, W) or (n, H, W), optional
        Bad pixels of these frames (non-zero = bad), added to the service's static mask.
    source : str
        Name of the source (for logs).
    """

    frames: np.ndarray
    train_id: np.ndarray
    pulse_id: np.ndarray
    timestamp: np.ndarray
    received_ns: int = field(default_factory=time.perf_counter_ns)
    mask: np.ndarray | None = None
    source: str = ""

    def __post_init__(self):
        n = len(self.frames)
        self.train_id = np.broadcast_to(np.asarray(self.train_id, dtype=np.int64), (n,))
        self.pulse_id = np.broadcast_to(np.asarray(self.pulse_id, dtype=np.int64), (n,))
        self.timestamp = np.broadcast_to(np.asarray(self.timestamp, dtype=np.float64), (n,))

    def __len__(self) -> int:
        return len(self.frames)

    def take(self, start: int, stop: int) -> FramePacket:
        """Frames ``start:stop`` as a packet of their own (views, same receipt time)."""
        mask = self.mask
        if mask is not None and mask.ndim == 3:
            mask = mask[start:stop]
        return FramePacket(self.frames[start:stop], self.train_id[start:stop], self.pulse_id[start:stop],
                           self.timestamp[start:stop], self.received_ns, mask, self.source)


def frame_id(train_id, pulse_id) -> str:
    """Printable id of one frame, ``"<train>:<pulse>"`` (used in log messages)."""
    return f"{int(train_id)}:{int(pulse_id)}"


class MalformedMessage(ValueError):
    """A message that cannot be turned into frames; counted under ``reason`` and skipped.

    Parameters
    ----------
    reason : str
        Short counter key (``"decode"``, ``"dtype"``, ``"shape"``, ``"truncated"``...).
    detail : str
        One line for the log, naming the message id when known.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceDisconnected(ConnectionError):
    """The source lost its peer; the runner reconnects with back-off."""


class SourceExhausted(Exception):
    """A finite source (file replay) has delivered everything."""
