"""``speckle-embed stream-replay`` / ``python -m speckle_embed.stream.replay_main``: send the
frames of CXI/HDF5 files over ZMQ at a chosen rate (the facility side of a rehearsal)::

    speckle-embed stream-replay inputs=[run42.cxi] endpoint=tcp://127.0.0.1:5555 rate_hz=500
"""
from __future__ import annotations

import json
import signal
import sys
import threading

from speckle_embed.stream.app import compose_main

_USAGE = """usage: speckle-embed stream-replay inputs=[FILE,...] [key=value ...]

Send frames of files over ZMQ (PUSH, bound) at rate_hz frames/s. Keys (conf/stream/stream_replay.yaml):
"""


def _run(cfg: dict) -> int:
    from speckle_embed.stream.replay_sender import send_replay
    from speckle_embed.stream.replay_source import FileFrames

    frames = FileFrames(cfg["inputs"], cfg.get("data_path"), int(cfg.get("frames_per_message", 32)),
                        int(cfg.get("repeat", 1)))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"sending {', '.join(map(str, frames.files))} to {cfg['endpoint']} at {cfg.get('rate_hz')} frames/s",
          flush=True)
    out = send_replay(frames, cfg["endpoint"], rate_hz=float(cfg.get("rate_hz", 100)),
                      block=bool(cfg.get("block", True)), hwm=int(cfg.get("hwm", 64)), stop=stop,
                      max_frames=cfg.get("max_frames"), wait_for_peer_s=float(cfg.get("wait_for_peer_s", 60)))
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    return compose_main(argv, "stream_replay", _USAGE, _run)


if __name__ == "__main__":
    sys.exit(main())
