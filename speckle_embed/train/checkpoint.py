"""Checkpoint files: atomic writes, RNG states, and rebuilding an embedder for inference.

Format (``DESIGN.md``): a ``torch.save`` dict with ``format``, ``model`` (registry config),
``state_dict``, ``preprocessing`` and ``training`` metadata; ``last.pt`` adds the optimizer,
scheduler, scaler, sampler and RNG states needed to resume. Everything stored is plain
Python data or tensors, so every checkpoint loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speckle_embed.atomic import replace_atomically
from speckle_embed.models import build_model
from speckle_embed.preprocess import Preprocessing

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_torch_save",
    "atomic_write_text",
    "load_checkpoint",
    "load_embedder",
    "checkpoint_hash",
    "get_rng_states",
    "set_rng_states",
]

CHECKPOINT_FORMAT = "speckle_embed-checkpoint-1"


def atomic_torch_save(obj: Any, path) -> Path:
    """``torch.save`` to ``<name>.<pid>-<hex>.tmp``, fsync, then ``os.replace`` onto ``path``.

    A reader (or a resumed run) sees either the previous complete file or the new one,
    whenever the process is killed.
    """
    return replace_atomically(lambda f: torch.save(obj, f), Path(path))


def atomic_write_text(text: str, path) -> Path:
    """Write a text file atomically (same scheme as :func:`atomic_torch_save`)."""
    return replace_atomically(lambda f: f.write(text.encode("utf-8")), Path(path))


def load_checkpoint(path, map_location="cpu", *, expand_compressed: bool = False) -> dict:
    """Load a checkpoint written by the trainer (``weights_only=True``) and check its format.

    ``expand_compressed=True`` also accepts the int8-compressed form of the shipped embeddings
    (:mod:`speckle_embed.pretrained`), returned as a regular checkpoint with float32 weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - add the file name to any unpickling error
        raise ValueError(f"cannot load checkpoint {path}: {exc}") from exc
    if expand_compressed and isinstance(ckpt, dict):
        from speckle_embed.pretrained import PRETRAINED_FORMAT, expand_checkpoint
        if ckpt.get("format") == PRETRAINED_FORMAT:
            ckpt = expand_checkpoint(ckpt, path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (format: {got!r})")
    return ckpt


def load_embedder(path, map_location="cpu") -> tuple[torch.nn.Module, Preprocessing, dict]:
    """Rebuild the embedding model and its preprocessing from a checkpoint alone.

    Returns
    -------
    model : nn.Module
        In eval mode, weights loaded.
    preprocessing : Preprocessing
    checkpoint : dict
        The loaded checkpoint (``training`` metadata etc.).

    Examples
    --------
    >>> model, prep, ckpt = load_embedder("outputs/train/default/best.pt")   # doctest: +SKIP
    >>> emb = model(preprocess(frames, prep, mask=mask))                      # doctest: +SKIP
    """
    ckpt = load_checkpoint(path, map_location)
    model = build_model(ckpt["model"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, Preprocessing.from_dict(ckpt["preprocessing"]), ckpt


def checkpoint_hash(path) -> str:
    """First 16 hex digits of the sha256 of the file bytes (identifies an embedder)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def get_rng_states() -> dict:
    """Python, numpy and torch (CPU + CUDA) global RNG states as weights-only-safe data."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what :func:`get_rng_states` returned."""
    if "python" in states:
        v, keys, gauss = states["python"]
        random.setstate((v, tuple(keys), gauss))
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), int(pos),
                             int(has_gauss), float(cached)))
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
