"""Shared pieces of the stream tests: a small fitted classifier, free ports, bounded waits."""
from __future__ import annotations

import socket
import time

import numpy as np

from speckle_embed.classifier import FewShotClassifier
from speckle_embed.embedder import SpeckleEmbedder

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}
YY, XX = np.mgrid[:128, :128] - 63.5


def rings(n, seed=0, shape=(128, 128)):
    """'single'-like frames: concentric fringes (uint16 photons)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]] - (np.array(shape)[:, None, None] - 1) / 2
    return np.stack([rng.poisson(50 * (1 + np.cos(np.hypot(yy, xx) / rng.uniform(2.9, 3.1))))
                     for _ in range(n)]).astype(np.uint16)


def stripes(n, seed=0, shape=(128, 128)):
    """'no_hit'-like frames: straight fringes."""
    rng = np.random.default_rng(seed + 1000)
    xx = np.mgrid[:shape[0], :shape[1]][1] - (shape[1] - 1) / 2
    return np.stack([rng.poisson(50 * (1 + np.cos(xx / rng.uniform(2.9, 3.1)))) for _ in range(n)]).astype(np.uint16)


def small_classifier() -> FewShotClassifier:
    emb = SpeckleEmbedder.random_init(model=SMALL, seed=0, device="cpu")
    return FewShotClassifier(emb, use_gpu=False).fit(np.concatenate([rings(4, 1), stripes(4, 1)]),
                                                     ["single"] * 4 + ["no_hit"] * 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def base_cfg(tmp_path, source: dict, **kw) -> dict:
    cfg = {"source": source, "assembly": {"detector": "none"}, "device": "cpu", "batch_size": 64,
           "max_wait_ms": 5, "queue": {"capacity_frames": 4096, "policy": "block"},
           "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "status_interval_s": 0.5},
           "log": {"enabled": True, "flush_records": 64, "flush_seconds": 0.2, "csv": True},
           "singles": {"enabled": False}, "monitor": {"enabled": False}, "output_dir": str(tmp_path / "out"),
           "max_seconds": 30, "stop_when_source_ends": True}
    cfg.update(kw)
    return cfg
