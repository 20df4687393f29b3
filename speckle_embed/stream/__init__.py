"""The online veto: frames stream in from a facility, decisions stream out (``speckle-embed stream``).

Sources (Karabo bridge, generic ZMQ, file replay) -> validation and detector assembly -> a
bounded queue with a backpressure policy -> the :class:`~speckle_embed.FewShotClassifier` in
batches -> decisions on a ZMQ PUB socket, a decision log (HDF5 parts + CSV), the frames of the
veto class in size-bounded CXI files, and a live monitor page. Message schemas and policies:
``docs/stream.md``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "FramePacket": "speckle_embed.stream.packet",
    "MalformedMessage": "speckle_embed.stream.packet",
    "FrameQueue": "speckle_embed.stream.queue",
    "StreamCounters": "speckle_embed.stream.counters",
    "encode_frames": "speckle_embed.stream.messages",
    "decode_frames": "speckle_embed.stream.messages",
    "decode_decisions": "speckle_embed.stream.messages",
    "ZmqFrameSource": "speckle_embed.stream.zmq_source",
    "KaraboBridgeSource": "speckle_embed.stream.karabo_source",
    "FileReplaySource": "speckle_embed.stream.replay_source",
    "FileFrames": "speckle_embed.stream.replay_source",
    "send_replay": "speckle_embed.stream.replay_sender",
    "DetectorAssembler": "speckle_embed.stream.assembly",
    "build_geometry": "speckle_embed.stream.assembly",
    "DecisionPublisher": "speckle_embed.stream.publisher",
    "DecisionLog": "speckle_embed.stream.decision_log",
    "read_decision_log": "speckle_embed.stream.decision_log",
    "SinglesWriter": "speckle_embed.stream.singles_cxi",
    "MonitorServer": "speckle_embed.stream.monitor",
    "StreamService": "speckle_embed.stream.service",
    "run_stream": "speckle_embed.stream.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speckle_embed.stream' has no attribute {name!r}")
