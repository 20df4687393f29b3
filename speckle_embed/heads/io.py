"""The saved-head format: ``head.json`` / ``ensemble.json`` + ``model.pt`` in one directory.

Layout (one directory, written atomically: a ``<dir>.<pid>-<hex>.tmp`` sibling renamed into
place by :func:`speckle_embed.atomic.build_directory_atomically`)::

    head.json        format, kind, parameters, classes, model config, preprocessing, history
    model.pt         state_dict (torch.save; loads with weights_only=True)

and for an ensemble ``ensemble.json`` plus one such pair per member in ``member_<k>/``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from speckle_embed.atomic import build_directory_atomically, read_format_json

__all__ = ["HEAD_FORMAT", "HeadFileError", "HEAD_JSON", "ENSEMBLE_JSON", "MODEL_PT", "plain",
           "save_directory", "write_json", "read_json", "classes_array"]

#: ``format`` of ``head.json`` / ``ensemble.json``.
HEAD_FORMAT = "speckle_embed-head-1"

HEAD_JSON, ENSEMBLE_JSON, MODEL_PT = "head.json", "ensemble.json", "model.pt"


class HeadFileError(ValueError):
    """A saved head is corrupt or incomplete; the message names the file."""


def plain(obj):
    """Mappings/sequences (also OmegaConf containers) -> dicts/lists, recursively; numpy
    scalars -> Python scalars (JSON-ready)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or (isinstance(obj, Sequence) and not isinstance(obj, (str, bytes))):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_directory(directory, marker: str, write) -> Path:
    """Build a saved head in a ``.tmp`` sibling with ``write(tmp)``, then rename it into place.

    An existing saved head (or empty directory) at ``directory`` is replaced; any other
    non-empty directory, or a file, is refused (``FileExistsError``).
    """
    directory = Path(os.fspath(directory)).expanduser().absolute()
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()) and not any((directory / m).exists() for m in (HEAD_JSON, ENSEMBLE_JSON)):
            raise FileExistsError(f"refusing to overwrite {directory}: a non-empty directory that does "
                                  f"not hold a saved head ({marker} missing)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    return build_directory_atomically(directory, write)


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON and fsync it (inside the temporary directory)."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path, kind: str) -> dict:
    """Read a ``head.json`` / ``ensemble.json`` of format :data:`HEAD_FORMAT` (else :class:`HeadFileError`)."""
    return read_format_json(path, HEAD_FORMAT, HeadFileError, kind)


def classes_array(values: list, kind: str) -> np.ndarray:
    """``classes_`` from JSON: int64 codes (``kind == "int"``) or str names."""
    return np.array([int(v) for v in values], dtype=np.int64) if kind == "int" else np.array(
        [str(v) for v in values], dtype=str)
