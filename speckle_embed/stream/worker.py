"""The classifier worker: batches from the queue -> FewShotClassifier -> decisions out.

For each batch it publishes the decisions first (the latency clock stops there), then appends
them to the decision log and writes the frames of the veto class to the CXI output. Frames the
embedder refuses (no finite pixel in its field of view) are counted as malformed and skipped.
Several workers may share one queue (``workers`` in the config): each classifies its own batch,
and a shared :class:`~speckle_embed.stream.batch_order.BatchOrder` makes them emit in the order
the batches were taken, one at a time.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from speckle_embed.stream.batch_order import BatchOrder
from speckle_embed.stream.counters import StreamCounters
from speckle_embed.stream.messages import encode_decisions
from speckle_embed.stream.packet import FramePacket, frame_id
from speckle_embed.stream.queue import FrameQueue
from speckle_embed.stream.source import RateLimitedLog

__all__ = ["ClassifierWorker", "decision_margin"]

log = logging.getLogger("speckle_embed.stream")


def decision_margin(proba: np.ndarray) -> np.ndarray:
    """Best minus second-best class probability per row (1 with a single class), shape (m,)."""
    if proba.shape[1] < 2:
        return np.ones(proba.shape[0])
    top2 = np.sort(proba, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


class ClassifierWorker(threading.Thread):
    """Thread that classifies until ``stop`` is set (finishing the batch in flight) or, once
    ``source_done`` is set, the queue is empty.

    Parameters
    ----------
    classifier : FewShotClassifier
    queue : FrameQueue
    counters : StreamCounters
    stop, source_done : threading.Event
    publisher : DecisionPublisher, optional
    decision_log : DecisionLog, optional
    singles : SinglesWriter, optional
    veto_class : str
        Frames predicted as this class go to ``singles``.
    batch_size : int
    max_wait_s : float
        How long a batch may wait to fill after its first frame.
    mask : ndarray (H, W), optional
        Static bad-pixel mask (assembly gaps, calibration mask).
    order : BatchOrder, optional
        Shared by all workers of a service (default: one of its own).
    latest, latest_lock : dict, threading.Lock, optional
        Shared ``class -> (frame, id)`` of the latest frame per class, for the monitor.
    name : str
    """

    def __init__(self, classifier, queue: FrameQueue, counters: StreamCounters, stop: threading.Event,
                 source_done: threading.Event, *, publisher=None, decision_log=None, singles=None,
                 veto_class: str = "single", batch_size: int = 256, max_wait_s: float = 0.02, mask=None,
                 order: BatchOrder | None = None, latest: dict | None = None, latest_lock=None,
                 name: str = "classifier"):
        super().__init__(name=name, daemon=True)
        self.clf, self.queue, self.counters = classifier, queue, counters
        self.stop, self.source_done = stop, source_done
        self.publisher, self.decision_log, self.singles = publisher, decision_log, singles
        self.veto_class = str(veto_class)
        self.batch_size, self.max_wait_s = int(batch_size), float(max_wait_s)
        self.mask = mask
        self.classes = [str(c) for c in classifier.classes_]
        self.order = order if order is not None else BatchOrder()
        self.latest: dict[str, tuple[np.ndarray, str]] = {} if latest is None else latest   # class -> (frame, id)
        self.latest_lock = latest_lock if latest_lock is not None else threading.Lock()
        self.error: BaseException | None = None
        self.batches = 0
        self._warn = RateLimitedLog()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                k, packets = self.order.take(self.queue, self.batch_size, 0.1, self.max_wait_s)
                if packets:
                    try:
                        self.process(packets, k)
                    finally:
                        self.order.done(k)
                elif self.source_done.is_set() and len(self.queue) == 0:
                    return
        except BaseException as exc:
            self.error = exc
            log.exception("classifier worker failed")

    # ------------------------------------------------------------------ one batch
    def _masks(self, packets: list[FramePacket], shape) -> np.ndarray | None:
        if all(p.mask is None for p in packets):
            return self.mask
        parts = []
        for p in packets:
            m = np.zeros((len(p),) + shape, np.uint16) if self.mask is None else np.broadcast_to(
                self.mask, (len(p),) + shape).astype(np.uint16)
            if p.mask is not None:
                m = m | (np.broadcast_to(p.mask, (len(p),) + shape) != 0)
            parts.append(m)
        return np.concatenate(parts)

    def _classify(self, frames, mask, ids):
        """classify(); on a refused frame, classify one by one and drop the refused ones."""
        try:
            return self.clf.classify(frames, mask), np.arange(len(frames))
        except ValueError:
            keep, results = [], []
            for i in range(len(frames)):
                m = mask[i:i + 1] if mask is not None and mask.ndim == 3 else mask
                try:
                    results.append(self.clf.classify(frames[i:i + 1], m))
                    keep.append(i)
                except ValueError as exc:
                    self.counters.add_malformed("unusable")
                    self._warn.warning("unusable", "skipped frame %s: %s", ids[i], exc)
            if not results:
                return None, np.array([], dtype=np.int64)
            cat = [np.concatenate([getattr(r, f) for r in results]) for f in ("labels", "codes", "distances", "proba")]
            return type(results[0])(*cat), np.asarray(keep)

    def process(self, packets: list[FramePacket], k: int = 0) -> None:
        """Classify batch number ``k`` and, in its turn (:class:`BatchOrder`), emit its decisions."""
        try:
            self.order.before_classify(k, packets)
            batch = self._classify_batch(packets)
        finally:
            self.order.classified(k)
        self.order.wait_turn(k)
        if batch is not None:
            self._emit(*batch)

    def _classify_batch(self, packets: list[FramePacket]):
        frames = packets[0].frames if len(packets) == 1 else np.concatenate([p.frames for p in packets])
        train = np.concatenate([p.train_id for p in packets])
        pulse = np.concatenate([p.pulse_id for p in packets])
        stamp = np.concatenate([p.timestamp for p in packets])
        recv = np.concatenate([np.full(len(p), p.received_ns, np.int64) for p in packets])
        mask = self._masks(packets, frames.shape[1:])
        res, keep = self._classify(frames, mask, _LazyIds(train, pulse))
        if res is None:
            return None
        if len(keep) != len(frames):
            frames, train, pulse, stamp, recv = (a[keep] for a in (frames, train, pulse, stamp, recv))
        return res, frames, train, pulse, stamp, recv

    def _emit(self, res, frames, train, pulse, stamp, recv) -> None:
        labels = np.array([str(v) for v in res.labels])
        margins = decision_margin(res.proba)
        latency = (time.perf_counter_ns() - recv) / 1e9
        if self.publisher is not None:
            body = encode_decisions(self.classes, train, pulse, stamp, labels, res.codes, res.distances,
                                    res.proba, margins, latency)
            ok = self.publisher.publish(body)
            self.counters.add_published(len(labels) if ok else 0, 0 if ok else len(labels))
        self.counters.add_classified(np.asarray(res.codes), latency, margins)
        self.batches += 1
        self._remember(frames, labels, train, pulse)
        if self.decision_log is not None:
            self.decision_log.append(train_id=train, pulse_id=pulse, timestamp=stamp, code=np.asarray(res.codes),
                                     label=labels, distances=res.distances.astype(np.float32),
                                     probabilities=res.proba.astype(np.float32),
                                     margin=margins.astype(np.float32), latency_ms=(latency * 1e3).astype(np.float32))
        if self.singles is not None:
            sel = np.flatnonzero(labels == self.veto_class)
            if sel.size:
                n = self.singles.write(frames[sel], train[sel], pulse[sel], stamp[sel], res.proba[sel])
                self.counters.add_singles(n)

    def _remember(self, frames, labels, train, pulse) -> None:
        last = {}
        for i, lab in enumerate(labels):
            last[lab] = i
        with self.latest_lock:
            for lab, i in last.items():
                self.latest[lab] = (np.array(frames[i]), frame_id(train[i], pulse[i]))


class _LazyIds:
    """Frame ids built only when one is needed (a refused frame)."""

    def __init__(self, train, pulse):
        self.train, self.pulse = train, pulse

    def __getitem__(self, i):
        return frame_id(self.train[i], self.pulse[i])
