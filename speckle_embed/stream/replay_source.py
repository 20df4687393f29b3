"""File replay: the frames of CXI/HDF5 files played at a chosen rate, for tests and for
rehearsals before a beamtime.

:class:`FileFrames` reads the files message by message (``frames_per_message`` frames, only
that much in memory); :class:`FileReplaySource` feeds them to the service directly, and
:mod:`speckle_embed.stream.replay_sender` sends them over ZMQ as a facility would.
"""
from __future__ import annotations

import time

import h5py
import numpy as np

from speckle_embed.cli import find_frames_dataset, resolve_inputs
from speckle_embed.stream.packet import FramePacket, SourceExhausted
from speckle_embed.stream.source import FrameSource

__all__ = ["FileFrames", "FileReplaySource", "Pacer"]


class FileFrames:
    """Iterate ``(train_id, pulse_ids, frames)`` over the frames of files, ``repeat`` times.

    Parameters
    ----------
    inputs : path, glob or list of them
        HDF5/CXI files (``speckle_embed.cli.resolve_inputs``).
    data_path : str, optional
        Path of the (n, H, W) frames (default ``/entry_1/data_1/data`` or the first 3-D dataset).
    frames_per_message : int
    repeat : int
        Passes over the files (0: forever).
    first_train : int
        Train id of the first message (each message is one "train"; pulse id = frame in file).
    """

    def __init__(self, inputs, data_path: str | None = None, frames_per_message: int = 32, repeat: int = 1,
                 first_train: int = 1):
        self.files = resolve_inputs(inputs)
        self.data_path, self.per_msg = data_path, int(frames_per_message)
        if self.per_msg < 1:
            raise ValueError(f"frames_per_message must be >= 1; got {frames_per_message}")
        self.repeat, self.first_train = int(repeat), int(first_train)

    def __iter__(self):
        train = self.first_train
        passes = 0
        while self.repeat == 0 or passes < self.repeat:
            for p in self.files:
                with h5py.File(p, "r") as f:
                    ds = find_frames_dataset(f, self.data_path)
                    for start in range(0, ds.shape[0], self.per_msg):
                        stop = min(start + self.per_msg, ds.shape[0])
                        yield train, np.arange(start, stop, dtype=np.int64), ds[start:stop]
                        train += 1
            passes += 1

    def mask(self) -> np.ndarray | None:
        """The CXI mask of the first file (``/entry_1/data_1/mask``), if it has one."""
        with h5py.File(self.files[0], "r") as f:
            for key in ("/entry_1/data_1/mask", "/entry_1/instrument_1/detector_1/mask"):
                if key in f and f[key].ndim == 2:
                    return f[key][()]
        return None


class Pacer:
    """Release item ``k`` at ``t0 + k * n / rate`` (no drift; ``rate <= 0``: as fast as possible)."""

    def __init__(self, rate_hz: float):
        self.rate = float(rate_hz)
        self.t0 = None
        self.sent = 0

    def delay(self, n: int) -> float:
        """Seconds to wait before sending the next ``n`` frames."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        if self.rate <= 0:
            return 0.0
        due = self.t0 + self.sent / self.rate
        self.sent += n
        return max(0.0, due - now)


class FileReplaySource(FrameSource):
    """Frames of files at ``rate_hz`` frames/s (0 = as fast as the service takes them).

    Raises :class:`SourceExhausted` after the last frame (``repeat`` passes).
    """

    name = "replay"

    def __init__(self, inputs, *, rate_hz: float = 100.0, data_path: str | None = None,
                 frames_per_message: int = 32, repeat: int = 1):
        super().__init__()
        self.reader = FileFrames(inputs, data_path, frames_per_message, repeat)
        self.rate_hz = float(rate_hz)
        self._it = None
        self._pacer = None
        self._next = None

    def open(self) -> None:
        if self._it is None:
            self._it = iter(self.reader)
            self._pacer = Pacer(self.rate_hz)

    def receive(self, timeout: float) -> list[FramePacket]:
        if self._next is None:
            try:
                train, pulses, frames = next(self._it)
            except StopIteration:
                raise SourceExhausted() from None
            self._next = (train, pulses, frames, time.monotonic() + self._pacer.delay(len(frames)))
        train, pulses, frames, due = self._next
        wait = due - time.monotonic()
        if wait > timeout:  # stay responsive to stop requests at low rates
            time.sleep(timeout)
            return []
        if wait > 0:
            time.sleep(wait)
        self._next = None
        return [FramePacket(frames, train, pulses, time.time(), source=self.name)]

    def close(self) -> None:
        pass
