"""Bounded frame queue between the sources and the classifier, with a backpressure policy.

Policies (``docs/stream.md``)
-----------------------------
``drop_oldest`` (default online)
    A full queue evicts its oldest packets to make room and counts their frames as dropped: the
    veto always works on the newest frames and memory stays bounded.
``block``
    A full queue makes the source wait (it stops reading its socket, so ZMQ's high-water marks
    push back on the sender): nothing is dropped; for replays and rehearsals.

The capacity counts frames, not messages, so memory is bounded by ``capacity x frame bytes``
(plus one packet). A hand-written class because :class:`queue.Queue` has neither a
drop-oldest policy nor a frame-count bound.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from speckle_embed.stream.packet import FramePacket

__all__ = ["POLICIES", "FrameQueue"]

POLICIES = ("drop_oldest", "block")


class FrameQueue:
    """Thread-safe bounded queue of :class:`FramePacket`.

    Parameters
    ----------
    capacity : int
        Most frames held (a single packet larger than this is still accepted alone).
    policy : {"drop_oldest", "block"}
    on_drop : callable, optional
        ``on_drop(n_frames)`` for every eviction (the counters).
    """

    def __init__(self, capacity: int, policy: str = "drop_oldest", on_drop=None):
        if policy not in POLICIES:
            raise ValueError(f"queue.policy must be one of {POLICIES}; got {policy!r}")
        if int(capacity) < 1:
            raise ValueError(f"queue.capacity_frames must be >= 1; got {capacity!r}")
        self.capacity = int(capacity)
        self.policy = policy
        self._on_drop = on_drop or (lambda n: None)
        self._items: deque[FramePacket] = deque()
        self._frames = 0
        self._cond = threading.Condition()
        self.dropped = 0

    def __len__(self) -> int:
        """Frames waiting."""
        with self._cond:
            return self._frames

    def put(self, packet: FramePacket, stop: threading.Event | None = None) -> bool:
        """Enqueue ``packet``; ``False`` if ``stop`` was set while blocking (packet not queued)."""
        n = len(packet)
        with self._cond:
            if self.policy == "block":
                while self._frames > 0 and self._frames + n > self.capacity:
                    if stop is not None and stop.is_set():
                        return False
                    self._cond.wait(0.05)
            else:
                while self._items and self._frames + n > self.capacity:
                    old = self._items.popleft()
                    self._frames -= len(old)
                    self.dropped += len(old)
                    self._on_drop(len(old))
            self._items.append(packet)
            self._frames += n
            self._cond.notify_all()
        return True

    def get_batch(self, max_frames: int, timeout: float, max_wait: float = 0.0) -> list[FramePacket]:
        """Up to ``max_frames`` frames as packets (a larger packet is split).

        Waits up to ``timeout`` s for the first frame, then up to ``max_wait`` s more for the batch
        to fill. Returns ``[]`` when nothing arrived.
        """
        out: list[FramePacket] = []
        got = 0
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return out
                self._cond.wait(left)
            fill_deadline = time.monotonic() + max_wait
            while got < max_frames:
                if not self._items:
                    left = fill_deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    continue
                p = self._items[0]
                take = min(len(p), max_frames - got)
                if take == len(p):
                    self._items.popleft()
                    out.append(p)
                else:
                    out.append(p.take(0, take))
                    self._items[0] = p.take(take, len(p))
                self._frames -= take
                got += take
            self._cond.notify_all()
        return out

    def clear(self) -> int:
        """Remove everything; returns the number of frames removed."""
        with self._cond:
            n = self._frames
            self._items.clear()
            self._frames = 0
            self._cond.notify_all()
        return n
