"""Karabo bridge source (European XFEL), through the facility's ``karabo-bridge`` client.

Each message is one train: ``data[source][data_key]`` holds the pulses of every module. The
array order differs between the online pipeline and files (``karabo_bridge.simulation``):

* ``layout="file"``: ``(pulses, modules, ss, fs)`` (or ``(pulses, ss, fs)`` for one module);
* ``layout="online"``: ``(modules, fs, ss, pulses)`` (or ``(fs, ss, pulses)``).

Packets carry module data ``(pulses, modules, ss, fs)`` for the assembler
(:mod:`speckle_embed.stream.assembly`), or ``(pulses, ss, fs)`` frames for a one-module detector.
The client polls with a short timeout; a bridge silent for ``silence_s`` is treated as gone
(the REQ socket is closed and re-created with back-off by the runner).
"""
from __future__ import annotations

import time

import numpy as np
from karabo_bridge import Client

from speckle_embed.stream.packet import (
    FramePacket,
    MalformedMessage,
    SourceDisconnected,
)
from speckle_embed.stream.source import FrameSource

__all__ = ["LAYOUTS", "KaraboBridgeSource"]

LAYOUTS = ("file", "online")


class KaraboBridgeSource(FrameSource):
    """Trains from a Karabo bridge server.

    Parameters
    ----------
    endpoint : str
        E.g. ``"tcp://127.0.0.1:4545"``.
    source_name : str, optional
        Karabo device (e.g. ``"SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"``); default the first
        source of each train that has ``data_key``.
    data_key, pulse_key, mask_key : str
        Keys of the pixel data, the pulse ids and the (optional) per-pulse calibration mask.
    layout : {"file", "online"}
    socket_type : {"REQ", "SUB", "PULL"}
    silence_s : float
        Seconds without a train before the bridge is considered gone.
    """

    name = "karabo"

    def __init__(self, endpoint: str, *, source_name: str | None = None, data_key: str = "image.data",
                 pulse_key: str = "image.pulseId", mask_key: str | None = "image.mask", layout: str = "file",
                 socket_type: str = "REQ", silence_s: float = 5.0):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"source.layout must be one of {LAYOUTS}; got {layout!r}")
        self.endpoint, self.source_name, self.data_key = endpoint, source_name, data_key
        self.pulse_key, self.mask_key, self.layout = pulse_key, mask_key, layout
        self.socket_type, self.silence_s = socket_type, float(silence_s)
        self._client = None
        self._last = 0.0

    def open(self) -> None:
        self._client = Client(self.endpoint, sock=self.socket_type, timeout=0.1)
        self._last = time.monotonic()

    def receive(self, timeout: float) -> list[FramePacket]:
        try:
            data, meta = self._client.next()
        except TimeoutError:
            if time.monotonic() - self._last > self.silence_s:
                raise SourceDisconnected(f"no train from {self.endpoint} for {self.silence_s:.1f} s") from None
            return []
        except Exception as exc:  # noqa: BLE001 - garbage on the wire: msgpack/zmq/KeyError...
            self._last = time.monotonic()
            raise MalformedMessage("decode", f"undecodable train from {self.endpoint} "
                                             f"({type(exc).__name__}: {exc})") from None
        received = time.perf_counter_ns()
        self._last = time.monotonic()
        return [self._packet(data, meta, received)]

    def _packet(self, data: dict, meta: dict, received: int) -> FramePacket:
        src = self.source_name
        if src is None:
            src = next((s for s, d in data.items() if isinstance(d, dict) and self.data_key in d), None)
        if src is None or src not in data or self.data_key not in data[src]:
            raise MalformedMessage("content", f"train without {src or 'any source'}[{self.data_key!r}]")
        d, m = data[src], meta.get(src, {})
        tid = m.get("timestamp.tid", None)
        if tid is None and "image.trainId" in d:
            tid = np.asarray(d["image.trainId"]).ravel()[0]
        tid = -1 if tid is None else int(tid)
        arr = np.asarray(d[self.data_key])
        if arr.ndim not in (3, 4):
            raise MalformedMessage("shape", f"train {tid}: {self.data_key} has shape {arr.shape}, expected "
                                            "3 or 4 dimensions")
        x = self._reorder(arr)
        n = x.shape[0]
        pulses = np.asarray(d.get(self.pulse_key, np.arange(n))).astype(np.int64).ravel()
        if pulses.size != n:
            raise MalformedMessage("header", f"train {tid}: {pulses.size} pulse ids for {n} pulses")
        mask = None
        if self.mask_key and self.mask_key in d:
            mk = self._reorder(np.asarray(d[self.mask_key]))
            if mk.shape == x.shape:
                mask = mk
        ts = float(m.get("timestamp", np.nan))
        return FramePacket(x, tid, pulses, ts, received, mask, self.name)

    def _reorder(self, arr: np.ndarray) -> np.ndarray:
        if self.layout == "file":
            return arr
        # online: (modules, fs, ss, pulses) -> (pulses, modules, ss, fs); (fs, ss, pulses) -> (pulses, ss, fs)
        return np.ascontiguousarray(arr.transpose((3, 0, 2, 1)) if arr.ndim == 4 else arr.transpose((2, 1, 0)))

    def close(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)  # destroys its ZMQ context
            self._client = None
