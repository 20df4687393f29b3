"""Several classifier workers, one order: batch numbers, the first batch's set-up, emission in turn.

With ``workers > 1`` each :class:`~speckle_embed.stream.worker.ClassifierWorker` takes its own
batch from the queue and embeds it on its own torch thread(s), but decisions must still leave in
the order the frames arrived, and the outputs (PUB socket, decision log, CXI writer) are not
thread-safe. :class:`BatchOrder` numbers the batches as they are taken, lets batch ``k`` emit
only after batch ``k - 1`` has (so the outputs see one batch at a time, in order), and holds the
other workers back until batch 0 has run the service's one-time set-up (int8 calibration, CXI
writer) and its classification. A hand-written class because :mod:`queue` and
:mod:`concurrent.futures` order results by submission only for a single consumer.
"""
from __future__ import annotations

import threading

from speckle_embed.stream.packet import FramePacket
from speckle_embed.stream.queue import FrameQueue

__all__ = ["BatchOrder"]


class BatchOrder:
    """Shared by the workers of one service.

    Parameters
    ----------
    on_first_batch : callable, optional
        ``on_first_batch(packets)``, run once by the worker of batch 0 before it classifies.
    """

    def __init__(self, on_first_batch=None):
        self.on_first_batch = on_first_batch
        self._take = threading.Lock()
        self._cond = threading.Condition()
        self._next = 0        # number of the next batch taken
        self._turn = 0        # number of the batch whose outputs go next
        self.first_ready = threading.Event()

    def take(self, queue: FrameQueue, max_frames: int, timeout: float, max_wait: float) -> tuple[int, list[FramePacket]]:
        """``(number, packets)`` of the next batch (``(-1, [])`` when nothing arrived in ``timeout``)."""
        with self._take:   # one worker fills a batch at a time: numbers follow the queue's order
            packets = queue.get_batch(max_frames, timeout=timeout, max_wait=max_wait)
            if not packets:
                return -1, []
            k = self._next
            self._next += 1
            return k, packets

    def before_classify(self, k: int, packets: list[FramePacket]) -> None:
        """Batch 0 runs the set-up; the others wait until batch 0 is classified (or failed)."""
        if k == 0:
            if self.on_first_batch is not None:
                self.on_first_batch(packets)
        else:
            self.first_ready.wait()

    def classified(self, k: int) -> None:
        """Batch ``k`` has its results (or failed): batch 0 releases the other workers."""
        if k == 0:
            self.first_ready.set()

    def wait_turn(self, k: int) -> None:
        """Block until every batch before ``k`` has emitted (or been abandoned)."""
        with self._cond:
            while self._turn < k:
                self._cond.wait()

    def done(self, k: int) -> None:
        """Batch ``k`` has emitted or is abandoned: the next one may go (waits for its own turn first)."""
        self.classified(k)
        with self._cond:
            while self._turn < k:
                self._cond.wait()
            if self._turn == k:
                self._turn = k + 1
                self._cond.notify_all()
