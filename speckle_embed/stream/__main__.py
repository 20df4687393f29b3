"""``speckle-embed stream`` / ``python -m speckle_embed stream``: the online veto service.

Composes ``conf/stream/stream.yaml`` (groups ``source`` and ``assembly``, ``conf/stream/``) with
``key=value`` overrides and calls :func:`speckle_embed.stream.service.run_stream`::

    speckle-embed stream supports=supports/ source.endpoint=tcp://127.0.0.1:5555
    speckle-embed stream classifier=clf/ source=karabo source.endpoint=tcp://127.0.0.1:4545 \\
        assembly=agipd
    speckle-embed stream classifier=clf/ source=replay source.inputs=[run42.cxi] source.rate_hz=500
    speckle-embed stream --cfg
"""
from __future__ import annotations

import json
import sys

from speckle_embed.stream.app import compose_main

_USAGE = """usage: speckle-embed stream (classifier=DIR | supports=DIR) [key=value ...]

Classify a stream of frames and publish the decisions. Keys (conf/stream/stream.yaml):
"""


def _run(cfg: dict) -> int:
    from speckle_embed.stream.service import run_stream

    summary = run_stream(cfg)
    print(json.dumps({k: summary[k] for k in ("frames_in", "classified", "dropped", "malformed_total",
                                              "reconnects", "per_class", "latency", "error")}))
    return 1 if summary.get("error") else 0


def main(argv: list[str] | None = None) -> int:
    return compose_main(argv, "stream", _USAGE, _run)


if __name__ == "__main__":
    sys.exit(main())
