"""What every frame source provides, and the thread that runs one.

A source (:class:`FrameSource`) only turns messages into :class:`FramePacket`; the
:class:`SourceRunner` thread around it does the rest, the same way for all of them:
reconnects with exponential back-off (counted), counts and logs malformed messages and skips
them, validates each frame (:class:`~speckle_embed.stream.validate.FrameValidator`), assembles
modular detectors, and puts the packets in the bounded queue.
"""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

from speckle_embed.stream.counters import StreamCounters
from speckle_embed.stream.packet import (
    FramePacket,
    MalformedMessage,
    SourceDisconnected,
    SourceExhausted,
)
from speckle_embed.stream.queue import FrameQueue

__all__ = ["FrameSource", "RateLimitedLog", "SourceRunner"]

log = logging.getLogger("speckle_embed.stream")


class FrameSource(ABC):
    """A stream of frame packets.

    Subclasses implement :meth:`open`, :meth:`receive` and :meth:`close`. ``notify(event)``
    (set by the runner) reports transport events a source sees itself: ``"disconnect"``,
    ``"reconnect"``.
    """

    name = "source"

    def __init__(self):
        self.notify = lambda event: None

    @abstractmethod
    def open(self) -> None:
        """Connect (or open the file). Raises ``OSError``/``SourceDisconnected`` if impossible now."""

    @abstractmethod
    def receive(self, timeout: float) -> list[FramePacket]:
        """Packets that arrived within ``timeout`` s (possibly none).

        Raises
        ------
        MalformedMessage
            One message could not be decoded (it is skipped).
        SourceDisconnected
            The peer is gone; the runner closes, waits and calls :meth:`open` again.
        SourceExhausted
            A finite source has nothing more.
        """

    @abstractmethod
    def close(self) -> None:
        """Release sockets/files (idempotent)."""


class RateLimitedLog:
    """Log the first ``first`` messages of each key, then every ``every``-th (a flood of bad
    messages must not flood the log)."""

    def __init__(self, first: int = 20, every: int = 1000):
        self.first, self.every = first, every
        self._n: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args) -> None:
        n = self._n.get(key, 0) + 1
        self._n[key] = n
        if n <= self.first or n % self.every == 0:
            log.warning(msg + (f" (#{n} of its kind)" if n > self.first else ""), *args)


class SourceRunner(threading.Thread):
    """Thread: source -> (assembly, validation) -> queue, until ``stop`` is set or the source ends.

    Parameters
    ----------
    source : FrameSource
    queue : FrameQueue
    counters : StreamCounters
    stop : threading.Event
    validator : FrameValidator, optional
    assembler : DetectorAssembler, optional
        Applied to packets of module data (``frames`` of shape (n, modules, ss, fs)).
    backoff_s : (float, float)
        First and largest wait between reconnection attempts (doubling), seconds.
    """

    def __init__(self, source: FrameSource, queue: FrameQueue, counters: StreamCounters,
                 stop: threading.Event, validator=None, assembler=None, backoff_s=(0.1, 5.0)):
        super().__init__(name=f"source-{source.name}", daemon=True)
        self.source, self.queue, self.counters, self.stop = source, queue, counters, stop
        self.validator, self.assembler = validator, assembler
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self.exhausted = threading.Event()
        self.error: BaseException | None = None
        self.attempts = 0
        self._warn = RateLimitedLog()
        source.notify = self._on_event

    def _on_event(self, event: str) -> None:
        if event == "disconnect":
            self.counters.add_disconnect()
            log.warning("source %s: peer disconnected; reconnecting", self.source.name)
        elif event == "reconnect":
            self.counters.add_reconnect()
            log.warning("source %s: reconnected", self.source.name)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.error = exc
            log.exception("source %s failed", self.source.name)
        finally:
            self.source.close()

    def _loop(self) -> None:
        delay = self.backoff_s[0]
        is_open = False
        lost = False          # a disconnection happened and no message arrived since
        while not self.stop.is_set():
            if not is_open:
                try:
                    self.attempts += 1
                    self.source.open()
                    is_open = True
                except (OSError, SourceDisconnected) as exc:
                    self._warn.warning("open", "source %s: cannot connect (%s); next try in %.1f s",
                                       self.source.name, exc, delay)
                    self.stop.wait(delay)
                    delay = min(2 * delay, self.backoff_s[1])
                    continue
            try:
                packets = self.source.receive(0.1)
            except SourceDisconnected as exc:
                if not lost:
                    self.counters.add_disconnect()
                lost = True
                log.warning("source %s: %s; reconnecting in %.1f s", self.source.name, exc, delay)
                self.source.close()
                is_open = False
                self.stop.wait(delay)
                delay = min(2 * delay, self.backoff_s[1])
                continue
            except MalformedMessage as exc:
                self.counters.add_malformed(exc.reason)
                self._warn.warning(exc.reason, "source %s: skipped a malformed message: %s",
                                   self.source.name, exc)
                continue
            except SourceExhausted:
                self.exhausted.set()
                return
            if packets:
                if lost:
                    self.counters.add_reconnect()
                    log.warning("source %s: receiving again", self.source.name)
                    lost = False
                delay = self.backoff_s[0]
            for p in packets:
                p = self._prepare(p)
                if p is None or len(p) == 0:
                    continue
                self.counters.add_in(len(p))
                if not self.queue.put(p, self.stop):
                    return

    def _prepare(self, p: FramePacket) -> FramePacket | None:
        if p.frames.ndim == 4:
            if self.assembler is None:
                self.counters.add_malformed("shape", len(p))
                self._warn.warning("shape", "source %s: train %d has module data %s but no assembly is "
                                   "configured (set assembly=agipd|jungfrau|geom_file)", self.source.name,
                                   int(p.train_id[0]), p.frames.shape)
                return None
            try:
                p = self.assembler.assemble_packet(p)
            except ValueError as exc:
                self.counters.add_malformed("shape", len(p))
                self._warn.warning("assembly", "source %s: train %d: %s", self.source.name,
                                   int(p.train_id[0]), exc)
                return None
        if self.validator is not None:
            p, rejected = self.validator.check(p)
            for reason, ident, detail in rejected:
                self.counters.add_malformed(reason)
                self._warn.warning(reason, "source %s: skipped frame %s: %s", self.source.name, ident, detail)
        return p

