"""The application layer of training: :func:`train` with the simulator wired in.

The library (:mod:`speckle_embed.train.loop`, :mod:`speckle_embed.train.data`) never imports the
simulator; ``data.generate_if_missing`` calls a dataset generator it is handed. This module
hands it :func:`simulate_dataset`, so :func:`speckle_embed.train.train` and
``python -m speckle_embed.train`` simulate a missing dataset as before.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .loop import TrainResult
from .loop import train as _train_library

__all__ = ["train", "simulate_dataset"]


def simulate_dataset(target: Path, settings: dict) -> None:
    """Simulate a dataset into ``target`` (a :data:`~speckle_embed.train.data.DatasetGenerator`).

    Parameters
    ----------
    target : Path
        Output folder (one shard per structure).
    settings : dict
        :data:`~speckle_embed.train.data.DEFAULT_GENERATE` updated by ``data.generate``:
        ``source``, ``geometry``, ``n_frames``, ``chunk``, ``mix``, ``noise``, ``fluence``,
        ``method``, ``device``, ``seed``, ``threads``.

    Raises
    ------
    RuntimeError
        The simulator's dependencies are missing (``pip install -e '.[sim]'``), or it wrote no shard.
    """
    try:  # the simulator is an optional dependency (the sim extra)
        from simulate.app import geometry_from_config
        from simulate.generate import generate_dataset
        from simulate.sources import resolve_sources
    except ImportError as exc:
        raise RuntimeError(
            f"{target} holds no dataset and data.generate_if_missing needs the simulator "
            f"(pip install -e '.[sim]'): {exc}") from exc
    cfg = settings
    report = generate_dataset(
        resolve_sources(dict(cfg["source"])), geometry_from_config(dict(cfg["geometry"] or {})),
        out_dir=target, n_frames=int(cfg["n_frames"]), chunk=int(cfg["chunk"]), mix=cfg["mix"],
        noise=cfg["noise"], fluence=cfg["fluence"], method=cfg["method"], device=cfg["device"],
        seed=int(cfg["seed"]), threads=cfg["threads"], progress=False)
    if not report.shard_paths:
        raise RuntimeError(f"simulating a dataset into {target} produced no shard:\n{report.table()}")


def train(cfg: Any, *, callbacks: Sequence[Callable[[str, dict], None]] = ()) -> TrainResult:
    """:func:`speckle_embed.train.loop.train` with :func:`simulate_dataset` for ``data.generate_if_missing``.

    Parameters and result as :func:`speckle_embed.train.loop.train`.
    """
    return _train_library(cfg, callbacks=callbacks, dataset_generator=simulate_dataset)
