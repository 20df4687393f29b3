"""The wire formats of the stream (owner of both schemas; ``docs/stream.md`` describes them).

Frames in (the generic ZMQ source, :mod:`speckle_embed.stream.zmq_source`)
    A two-part ZMQ message ``[header, data]``: ``header`` is a msgpack map
    ``{"schema": "speckle_embed.frames/1", "train_id": int, "pulse_id": [int] * n,
    "timestamp": float (s since the epoch), "dtype": "<u2" (numpy dtype string),
    "shape": [n, H, W]}`` and ``data`` the ``n x H x W`` pixels in C order.

Decisions out (the ``PUB`` socket, :mod:`speckle_embed.stream.publisher`)
    ``[b"decisions", body]`` with ``body`` a msgpack map holding one record per frame of a
    classified batch, column-wise: ``schema`` (``"speckle_embed.decisions/1"``), ``classes``
    (names, the column order of ``distances``/``probabilities``), ``train_id``, ``pulse_id``,
    ``timestamp``, ``label`` (class name, ``"unknown"`` if rejected), ``code`` (index into
    ``classes``, -1 if rejected), ``distances`` and ``probabilities`` (n lists of n_classes
    floats), ``margin`` (best minus second-best probability), ``latency_ms`` (receipt -> publish)
    and ``published_unix`` (s). ``[b"status", body]`` every ``status_interval_s`` carries the
    counters (:meth:`StreamCounters.snapshot`).
"""
from __future__ import annotations

import time

import msgpack
import numpy as np

from speckle_embed.stream.packet import FramePacket, MalformedMessage

__all__ = [
    "ACCEPTED_DTYPES",
    "DECISIONS_SCHEMA",
    "DECISIONS_TOPIC",
    "FRAMES_SCHEMA",
    "STATUS_TOPIC",
    "decode_decisions",
    "decode_frames",
    "encode_decisions",
    "encode_frames",
    "encode_status",
]

FRAMES_SCHEMA = "speckle_embed.frames/1"
DECISIONS_SCHEMA = "speckle_embed.decisions/1"
DECISIONS_TOPIC = b"decisions"
STATUS_TOPIC = b"status"
#: numpy kinds accepted as frames: unsigned/signed integers and floats (uint16, float32 ...)
ACCEPTED_DTYPES = "uif"


def encode_frames(frames: np.ndarray, train_id: int, pulse_id=None, timestamp: float | None = None) -> list:
    """The two parts of one frames message (``frames`` of shape (n, H, W) or (H, W))."""
    frames = np.ascontiguousarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    n = frames.shape[0]
    pulses = list(range(n)) if pulse_id is None else [int(p) for p in np.atleast_1d(pulse_id)]
    header = {"schema": FRAMES_SCHEMA, "train_id": int(train_id), "pulse_id": pulses,
              "timestamp": float(time.time() if timestamp is None else timestamp),
              "dtype": frames.dtype.str, "shape": list(frames.shape)}
    return [msgpack.packb(header), memoryview(frames).cast("B")]


def decode_frames(parts, received_ns: int | None = None, source: str = "zmq") -> FramePacket:
    """A :class:`FramePacket` from the parts of a frames message.

    Raises
    ------
    MalformedMessage
        Wrong number of parts, undecodable header, wrong schema, unsupported dtype, a shape that
        is not (n, H, W), pulse ids of the wrong length, or a truncated data part.
    """
    if len(parts) != 2:
        raise MalformedMessage("parts", f"expected 2 message parts [header, data], got {len(parts)}")
    raw_header = parts[0].bytes if hasattr(parts[0], "bytes") else parts[0]
    try:
        h = msgpack.unpackb(raw_header)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types for garbage
        raise MalformedMessage("decode", f"header is not msgpack ({type(exc).__name__})") from None
    if not isinstance(h, dict) or h.get("schema") != FRAMES_SCHEMA:
        got = h.get("schema") if isinstance(h, dict) else type(h).__name__
        raise MalformedMessage("schema", f"header schema {got!r}, expected {FRAMES_SCHEMA!r}")
    tid = h.get("train_id")
    ident = f"train {tid}"
    try:
        dtype = np.dtype(h["dtype"])
        shape = tuple(int(s) for s in h["shape"])
        pulses = np.asarray(h["pulse_id"], dtype=np.int64)
        tid = int(tid)
        ts = float(h.get("timestamp", np.nan))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage("header", f"{ident}: bad header field ({exc})") from None
    if dtype.kind not in ACCEPTED_DTYPES or dtype.itemsize > 8:
        raise MalformedMessage("dtype", f"{ident}: dtype {dtype} is not a real number type")
    if len(shape) != 3 or min(shape) < 1:
        raise MalformedMessage("shape", f"{ident}: shape {list(shape)} is not (n, H, W)")
    if pulses.shape != (shape[0],):
        raise MalformedMessage("header", f"{ident}: {pulses.size} pulse ids for {shape[0]} frames")
    buf = parts[1].buffer if hasattr(parts[1], "buffer") else parts[1]
    need = int(np.prod(shape)) * dtype.itemsize
    if len(memoryview(buf).cast("B")) != need:
        raise MalformedMessage("truncated", f"{ident}: data has {len(memoryview(buf).cast('B'))} bytes, "
                                            f"the header promises {need}")
    frames = np.frombuffer(buf, dtype=dtype).reshape(shape)
    kw = {} if received_ns is None else {"received_ns": received_ns}
    return FramePacket(frames, tid, pulses, ts, source=source, **kw)


def encode_decisions(classes, train_id, pulse_id, timestamp, labels, codes, distances, probabilities,
                     margins, latency_s) -> bytes:
    """The body of one ``decisions`` message (one record per frame, column-wise)."""
    return msgpack.packb({
        "schema": DECISIONS_SCHEMA, "classes": [str(c) for c in classes],
        "train_id": np.asarray(train_id).tolist(), "pulse_id": np.asarray(pulse_id).tolist(),
        "timestamp": np.asarray(timestamp, dtype=float).tolist(),
        "label": [str(v) for v in labels], "code": np.asarray(codes).tolist(),
        "distances": np.asarray(distances, dtype=float).round(6).tolist(),
        "probabilities": np.asarray(probabilities, dtype=float).round(6).tolist(),
        "margin": np.asarray(margins, dtype=float).round(6).tolist(),
        "latency_ms": (np.asarray(latency_s, dtype=float) * 1e3).round(3).tolist(),
        "published_unix": time.time(),
    })


def decode_decisions(body: bytes) -> dict:
    """A decisions body as a dict (checks the schema)."""
    d = msgpack.unpackb(body)
    if d.get("schema") != DECISIONS_SCHEMA:
        raise ValueError(f"not a {DECISIONS_SCHEMA} message: schema {d.get('schema')!r}")
    return d


def encode_status(snapshot: dict) -> bytes:
    """The body of a ``status`` message."""
    return msgpack.packb(snapshot)
