"""Generic ZMQ source: frames messages (:mod:`speckle_embed.stream.messages`) on a PULL socket.

The socket connects to the sender's endpoint (or binds, ``bind=True``). ZMQ reconnects by
itself with exponential back-off (``RECONNECT_IVL`` doubling up to ``RECONNECT_IVL_MAX``) and
detects a silent dead peer with heartbeats; a socket monitor reports each disconnection and
reconnection to the counters.
"""
from __future__ import annotations

import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from speckle_embed.stream.messages import decode_frames
from speckle_embed.stream.packet import FramePacket
from speckle_embed.stream.source import FrameSource

__all__ = ["ZmqFrameSource"]


class ZmqFrameSource(FrameSource):
    """Frames from a ZMQ PUSH (or PUB with ``socket_type="SUB"``) sender.

    Parameters
    ----------
    endpoint : str
        E.g. ``"tcp://127.0.0.1:5555"``.
    bind : bool, default False
        Bind instead of connect (when the senders connect to us).
    socket_type : {"PULL", "SUB"}
    hwm : int
        Receive high-water mark (messages); with the queue's ``block`` policy a full HWM pushes
        back on the sender.
    backoff_s : (float, float)
        ZMQ's reconnection interval and its cap, seconds.
    max_messages : int
        Most messages taken per :meth:`receive` call.
    """

    name = "zmq"

    def __init__(self, endpoint: str, *, bind: bool = False, socket_type: str = "PULL", hwm: int = 64,
                 backoff_s=(0.1, 5.0), max_messages: int = 64):
        super().__init__()
        if socket_type not in ("PULL", "SUB"):
            raise ValueError(f"source.socket_type must be PULL or SUB; got {socket_type!r}")
        self.endpoint, self.bind, self.socket_type, self.hwm = endpoint, bind, socket_type, int(hwm)
        self.backoff_s = backoff_s
        self.max_messages = int(max_messages)
        self._ctx = None
        self._sock = None
        self._mon = None
        self._down = False
        self._pending: list[FramePacket] = []

    def open(self) -> None:
        self._ctx = zmq.Context()
        s = self._ctx.socket(zmq.PULL if self.socket_type == "PULL" else zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, self.hwm)
        s.setsockopt(zmq.RECONNECT_IVL, int(self.backoff_s[0] * 1000))
        s.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.backoff_s[1] * 1000))
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        if self.socket_type == "SUB":
            s.setsockopt(zmq.SUBSCRIBE, b"")
        self._mon = s.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED)
        try:
            s.bind(self.endpoint) if self.bind else s.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"cannot {'bind' if self.bind else 'connect'} {self.endpoint}: {exc}") from exc
        self._sock = s
        self._poller = zmq.Poller()
        self._poller.register(s, zmq.POLLIN)
        self._poller.register(self._mon, zmq.POLLIN)

    def _events(self) -> None:
        while self._mon.poll(0):
            ev = recv_monitor_message(self._mon)["event"]
            if ev == zmq.EVENT_DISCONNECTED:
                self._down = True
                self.notify("disconnect")
            elif ev in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                if self._down:
                    self.notify("reconnect")
                self._down = False

    def receive(self, timeout: float) -> list[FramePacket]:
        if self._pending:  # decoded before a malformed message interrupted the previous call
            out, self._pending = self._pending, []
            return out
        out: list[FramePacket] = []
        events = dict(self._poller.poll(int(timeout * 1000)))
        if self._mon in events:
            self._events()
        if self._sock not in events:
            return out
        for _ in range(self.max_messages):
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                out.append(decode_frames(parts, time.perf_counter_ns(), self.name))
            except Exception:
                self._pending = out
                raise
        return out

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
        for s in (self._mon, self._sock):
            if s is not None:
                s.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        self._ctx = self._sock = self._mon = None
