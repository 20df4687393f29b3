"""Decisions out on a ZMQ PUB socket (schema in :mod:`speckle_embed.stream.messages`).

PUB never blocks: a subscriber that is slow or gone only loses its own messages (counted as
``publish_dropped`` when the send high-water mark is reached); the veto goes on.
"""
from __future__ import annotations

import zmq

from speckle_embed.stream.messages import DECISIONS_TOPIC, STATUS_TOPIC, encode_status

__all__ = ["DecisionPublisher"]


class DecisionPublisher:
    """Bind a PUB socket on ``endpoint`` (e.g. ``"tcp://127.0.0.1:5556"``)."""

    def __init__(self, endpoint: str, hwm: int = 10000):
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, int(hwm))
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"publish.endpoint {endpoint}: cannot bind ({exc}); choose a free port") from exc

    def publish(self, body: bytes, topic: bytes = DECISIONS_TOPIC) -> bool:
        """Send one message; ``False`` if the socket's queue is full (message dropped)."""
        try:
            self._sock.send_multipart([topic, body], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def publish_status(self, snapshot: dict) -> bool:
        return self.publish(encode_status(snapshot), STATUS_TOPIC)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
