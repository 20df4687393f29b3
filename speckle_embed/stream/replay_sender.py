"""Send the frames of files over ZMQ at a chosen rate (``speckle-embed stream-replay``): the
"facility" half of a rehearsal or of the two-terminal example in the README.

Binds a PUSH socket (the stream service's ZMQ source connects to it) and sends frames messages
(:func:`speckle_embed.stream.messages.encode_frames`). With ``block=True`` a slow receiver
slows the sender down (nothing lost); otherwise messages the receiver cannot take are counted
as not sent.
"""
from __future__ import annotations

import logging
import threading
import time

import zmq

from speckle_embed.stream.messages import encode_frames
from speckle_embed.stream.replay_source import FileFrames, Pacer

__all__ = ["send_replay"]

log = logging.getLogger("speckle_embed.stream")


def send_replay(frames: FileFrames, endpoint: str, *, rate_hz: float = 100.0, block: bool = True,
                hwm: int = 64, stop: threading.Event | None = None, max_frames: int | None = None,
                wait_for_peer_s: float = 10.0) -> dict:
    """Send every message of ``frames`` to ``endpoint`` (bound PUSH socket).

    Parameters
    ----------
    frames : FileFrames
    endpoint : str
        E.g. ``"tcp://127.0.0.1:5555"``.
    rate_hz : float
        Frames per second (0: as fast as the receiver takes them).
    block : bool
        Wait for the receiver when its queue is full (else count the message as not sent).
    stop : threading.Event, optional
        Ends the sending early.
    max_frames : int, optional
        Stop after this many frames.
    wait_for_peer_s : float
        How long to wait for a receiver before the first message.

    Returns
    -------
    dict
        ``frames_sent``, ``messages_sent``, ``not_sent`` (messages), ``seconds``, ``frames_per_s``.
    """
    stop = stop or threading.Event()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, int(hwm))
    sock.bind(endpoint)
    pacer = Pacer(rate_hz)
    sent = msgs = not_sent = 0
    t0 = None
    try:
        poll_out = zmq.Poller()
        poll_out.register(sock, zmq.POLLOUT)
        end = time.monotonic() + wait_for_peer_s
        while not stop.is_set() and time.monotonic() < end and not poll_out.poll(100):
            pass
        for train, pulses, x in frames:
            if stop.is_set() or (max_frames is not None and sent >= max_frames):
                break
            stop.wait(pacer.delay(len(x)))
            t0 = t0 or time.perf_counter()
            parts = encode_frames(x, train, pulses)
            while True:
                try:
                    sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    sent += len(x)
                    msgs += 1
                    break
                except zmq.Again:
                    if not block:
                        not_sent += 1
                        break
                    if stop.is_set():
                        break
                    poll_out.poll(100)
    finally:
        sock.close()
        ctx.term()
    seconds = time.perf_counter() - t0 if t0 else 0.0
    return {"frames_sent": sent, "messages_sent": msgs, "not_sent": not_sent, "seconds": seconds,
            "frames_per_s": sent / seconds if seconds > 0 else 0.0}
