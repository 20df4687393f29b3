"""Live counters of the stream: frames in / classified / dropped / malformed, per-class rates,
frames/s, latency percentiles and the decision-margin distribution.

Every thread updates one :class:`StreamCounters` under its lock; :meth:`StreamCounters.snapshot`
is what the monitor page, the ``status`` messages and the exit summary show.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

__all__ = ["StreamCounters"]

_LATENCY_WINDOW = 16384   # latencies kept for the percentiles (most recent)
_MARGIN_WINDOW = 4096     # decision margins kept for the histogram
_HISTORY_S = 300          # seconds of per-second history for the time plots


class StreamCounters:
    """Thread-safe counters.

    Parameters
    ----------
    classes : sequence of str
        Class names, in the classifier's order.
    clock : callable, default time.monotonic
        Seconds (injectable for tests).
    """

    def __init__(self, classes, clock=time.monotonic):
        self.classes = [str(c) for c in classes]
        self._clock = clock
        self._lock = threading.Lock()
        self.t0 = clock()
        self.frames_in = 0
        self.classified = 0
        self.dropped = 0
        self.malformed: Counter = Counter()
        self.reconnects = 0
        self.disconnects = 0
        self.published = 0
        self.publish_dropped = 0
        self.write_errors: Counter = Counter()
        self.singles_written = 0
        self.per_class = Counter()
        self._lat = np.full(_LATENCY_WINDOW, np.nan)
        self._lat_i = 0
        self._margins = deque(maxlen=_MARGIN_WINDOW)
        # per-second history: second -> [classified, per-class counts...]
        self._hist: deque = deque(maxlen=_HISTORY_S)

    # ------------------------------------------------------------------ updates
    def add_in(self, n: int) -> None:
        with self._lock:
            self.frames_in += n

    def add_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def add_malformed(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.malformed[reason] += n

    def add_disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1

    def add_reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def add_write_error(self, output: str) -> None:
        with self._lock:
            self.write_errors[output] += 1

    def add_published(self, n: int, dropped: int = 0) -> None:
        with self._lock:
            self.published += n
            self.publish_dropped += dropped

    def add_singles(self, n: int) -> None:
        with self._lock:
            self.singles_written += n

    def add_classified(self, codes: np.ndarray, latencies_s: np.ndarray, margins: np.ndarray) -> None:
        """Record a classified batch: class codes (-1 = rejected), latencies (s), margins."""
        now = int(self._clock())
        counts = np.bincount(codes[codes >= 0], minlength=len(self.classes))
        with self._lock:
            self.classified += len(codes)
            for i, c in enumerate(counts):
                if c:
                    self.per_class[self.classes[i]] += int(c)
            rejected = int((codes < 0).sum())
            if rejected:
                self.per_class["unknown"] += rejected
            n = len(latencies_s)
            idx = (self._lat_i + np.arange(n)) % _LATENCY_WINDOW
            self._lat[idx] = latencies_s
            self._lat_i = (self._lat_i + n) % _LATENCY_WINDOW
            self._margins.extend(np.asarray(margins, dtype=float).tolist())
            if not self._hist or self._hist[-1][0] != now:
                self._hist.append([now, 0] + [0] * len(self.classes))
            row = self._hist[-1]
            row[1] += len(codes)
            for i, c in enumerate(counts):
                row[2 + i] += int(c)

    # ------------------------------------------------------------------ reading
    def latency_percentiles(self) -> dict:
        """p50/p90/p99/max of the recent receipt -> published latencies, in milliseconds."""
        with self._lock:
            lat = self._lat[np.isfinite(self._lat)]
        if lat.size == 0:
            return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
        p = np.percentile(lat, [50, 90, 99]) * 1e3
        return {"p50_ms": float(p[0]), "p90_ms": float(p[1]), "p99_ms": float(p[2]),
                "max_ms": float(lat.max() * 1e3)}

    def margin_histogram(self, bins: int = 20) -> dict:
        """Histogram of recent decision margins (probability of the best class minus the second)."""
        with self._lock:
            m = np.asarray(self._margins, dtype=float)
        counts, edges = np.histogram(m, bins=bins, range=(0.0, 1.0))
        return {"edges": edges.round(4).tolist(), "counts": counts.tolist()}

    def history(self) -> dict:
        """Per-second series: ``t`` (s since start), ``frames_per_s``, ``class_rates`` per class."""
        with self._lock:
            rows = [list(r) for r in self._hist]
        now = int(self._clock())
        rows = [r for r in rows if r[0] < now]  # completed seconds only
        return {"t": [r[0] - int(self.t0) for r in rows], "frames_per_s": [r[1] for r in rows],
                "class_rates": {c: [r[2 + i] for r in rows] for i, c in enumerate(self.classes)}}

    def rate(self, seconds: int = 5) -> float:
        """Classified frames per second over the last ``seconds`` completed seconds."""
        h = self.history()["frames_per_s"][-seconds:]
        return float(np.mean(h)) if h else 0.0

    def snapshot(self) -> dict:
        """Everything as plain JSON-able values."""
        with self._lock:
            snap = {
                "uptime_s": round(self._clock() - self.t0, 3),
                "frames_in": self.frames_in, "classified": self.classified, "dropped": self.dropped,
                "malformed": dict(self.malformed), "malformed_total": int(sum(self.malformed.values())),
                "disconnects": self.disconnects, "reconnects": self.reconnects,
                "published": self.published, "publish_dropped": self.publish_dropped,
                "write_errors": dict(self.write_errors), "singles_written": self.singles_written,
                "per_class": {c: int(self.per_class.get(c, 0)) for c in self.classes + ["unknown"]},
            }
        snap["frames_per_s"] = self.rate()
        snap["latency"] = self.latency_percentiles()
        return snap
