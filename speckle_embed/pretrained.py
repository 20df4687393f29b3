"""The embedding shipped inside the package, and the compression that makes it fit.

``se.load_pretrained()`` returns a :class:`~speckle_embed.embedder.SpeckleEmbedder` built from
``speckle_embed/weights/<name>.pt`` (no network access; ``SpeckleEmbedder.from_checkpoint`` reads
the compressed format through :func:`expand_checkpoint`). The model card is
``speckle_embed/weights/MODEL_CARD.md``: training data, command, seed and the evaluation
suite's numbers.

The default SpeckleNN network has 14.5 M parameters, 14.45 M of them in the first fully
connected layer (64 x 21 x 21 -> 512): 58 MB in float32. The shipped file stores every
2-D weight matrix with at least :data:`MIN_INT8_ELEMENTS` elements as **int8 with one float32
scale per group of** :data:`GROUP_SIZE` **consecutive inputs of a row** (symmetric, round to
nearest), everything else in float32, about 15 MB. Loading dequantises to float32, so inference
runs exactly as for a training checkpoint; the quantisation error of the weights is bounded
by half a step (``scale / 2``) per weight, and ``scripts/make_pretrained.py`` measures its effect
on embeddings and few-shot accuracy.

Examples
--------
>>> import speckle_embed as se
>>> emb = se.load_pretrained()                       # doctest: +SKIP
>>> emb.embed(frames, mask=mask).shape               # doctest: +SKIP
(N, 128)
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from speckle_embed.atomic import write_bytes_atomically
from speckle_embed.embedder import CHECKPOINT_FORMAT, CheckpointError, SpeckleEmbedder

__all__ = ["load_pretrained", "available_pretrained", "pretrained_checkpoint", "compress_checkpoint", "expand_checkpoint",
           "WEIGHTS_DIR", "DEFAULT_PRETRAINED", "PRETRAINED_FORMAT", "GROUP_SIZE", "MIN_INT8_ELEMENTS"]

#: Folder of the shipped weights (package data).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Name of the default shipped embedding.
DEFAULT_PRETRAINED = "specklenn-offline-v2"
#: ``format`` key of a compressed (shipped) checkpoint.
PRETRAINED_FORMAT = "speckle_embed-pretrained-1"
#: Inputs per int8 quantisation group (one float32 scale each).
GROUP_SIZE = 128
#: Weight matrices smaller than this stay float32.
MIN_INT8_ELEMENTS = 65536


def _quantise(w: torch.Tensor, group: int) -> dict:
    """Symmetric int8 of a 2-D float tensor, one scale per ``group`` inputs of each row."""
    rows, cols = w.shape
    pad = (-cols) % group
    wp = torch.nn.functional.pad(w.float(), (0, pad)).reshape(rows, -1, group)
    scale = wp.abs().amax(dim=2) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(wp / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return {"int8": q.reshape(rows, -1)[:, :cols].contiguous(), "scale": scale.contiguous(),
            "group": int(group), "shape": [int(rows), int(cols)]}


def _dequantise(entry: dict) -> torch.Tensor:
    rows, cols = entry["shape"]
    group = int(entry["group"])
    pad = (-cols) % group
    q = torch.nn.functional.pad(entry["int8"].float(), (0, pad)).reshape(rows, -1, group)
    return (q * entry["scale"][..., None]).reshape(rows, -1)[:, :cols].contiguous()


def compress_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, name: str = DEFAULT_PRETRAINED,
                        group: int = GROUP_SIZE, min_int8_elements: int = MIN_INT8_ELEMENTS,
                        provenance: dict | None = None) -> dict:
    """Write the shipped (int8-compressed) form of a training checkpoint.

    Parameters
    ----------
    src : path
        ``best.pt`` of a training run (DESIGN.md checkpoint format).
    dst : path
        Output file (written atomically).
    name : str
        Name of the embedding (``load_pretrained(name)``).
    group, min_int8_elements : int
        Quantisation group size and the smallest matrix that is quantised.
    provenance : dict, optional
        Stored with the weights (training command, data, seed, source checkpoint hash).

    Returns
    -------
    dict
        ``bytes`` of the output, ``source_hash``, ``max_abs_error`` of the dequantised weights.
    """
    data = Path(os.fspath(src)).read_bytes()
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{src}: format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    tensors, max_err = {}, 0.0
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and value.ndim == 2 and value.numel() >= min_int8_elements:
            entry = _quantise(value, group)
            max_err = max(max_err, float((_dequantise(entry) - value.float()).abs().max()))
            tensors[key] = entry
        else:
            tensors[key] = value.clone()
    meta = ckpt.get("training") or {}
    out = {"format": PRETRAINED_FORMAT, "name": name, "model": ckpt["model"],
           "preprocessing": ckpt["preprocessing"], "tensors": tensors,
           "provenance": {**{k: meta[k] for k in ("epoch", "step", "best_metric", "config") if k in meta},
                          **(provenance or {}), "source_hash": hashlib.sha256(data).hexdigest()[:16]}}
    buf = io.BytesIO()
    torch.save(out, buf)
    write_bytes_atomically(buf.getvalue(), Path(os.fspath(dst)))
    return {"bytes": len(buf.getvalue()), "source_hash": out["provenance"]["source_hash"],
            "max_abs_error": max_err}


def expand_checkpoint(ckpt: dict, path: Any = "<memory>") -> dict:
    """A compressed checkpoint dict -> the regular checkpoint dict (float32 ``state_dict``)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != PRETRAINED_FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: format {fmt!r}, expected {PRETRAINED_FORMAT!r}")
    try:
        state = {k: _dequantise(v) if isinstance(v, dict) else v for k, v in ckpt["tensors"].items()}
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt compressed weights: {exc}") from exc
    return {"format": CHECKPOINT_FORMAT, "model": ckpt["model"], "state_dict": state,
            "preprocessing": ckpt["preprocessing"],
            "training": {"pretrained": ckpt.get("name"), **dict(ckpt.get("provenance") or {})}}


def pretrained_checkpoint(name: str = DEFAULT_PRETRAINED) -> dict:
    """The shipped embedding ``name`` as a regular (float32) checkpoint dict.

    What ``init_checkpoint=pretrained`` (or ``pretrained:<name>``) of the trainer starts from:
    architecture, preprocessing and dequantised weights of ``weights/<name>.pt``.
    """
    file = WEIGHTS_DIR / f"{name}.pt"
    if not file.is_file():
        raise FileNotFoundError(f"no pretrained embedding {name!r} at {file}; available: "
                                f"{available_pretrained() or 'none'}")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - name the file in any unpickling error
        raise CheckpointError(f"cannot load {file}: {exc}") from exc
    return expand_checkpoint(ckpt, file)


def available_pretrained() -> list[str]:
    """Names of the embeddings shipped in this installation."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def load_pretrained(name: str = DEFAULT_PRETRAINED, *, device: str | torch.device = "auto",
                    path: str | os.PathLike | None = None, **kwargs) -> SpeckleEmbedder:
    """The shipped embedding as a :class:`SpeckleEmbedder` (works offline).

    Parameters
    ----------
    name : str
        One of :func:`available_pretrained` (default :data:`DEFAULT_PRETRAINED`).
    device : {"auto", "cpu", "cuda"} or torch.device
    path : path, optional
        Load a compressed file from elsewhere instead of the package's ``weights/`` folder.
    **kwargs
        Other :class:`SpeckleEmbedder` arguments (``batch_size``, ``precision``...).

    Raises
    ------
    FileNotFoundError
        No shipped embedding of that name (the message lists those available).
    CheckpointError
        The file is damaged.
    """
    file = Path(os.fspath(path)) if path is not None else WEIGHTS_DIR / f"{name}.pt"
    if not file.is_file():
        raise FileNotFoundError(f"no pretrained embedding {name!r} at {file}; available: "
                                f"{available_pretrained() or 'none (was the package installed without its weights?)'}")
    return SpeckleEmbedder.from_checkpoint(file, device=device, weights_only=True, **kwargs)
