"""The embedding shipped inside the package, and the compression that makes it fit.

``se.load_pretrained()`` returns a :class:`~speckle_embed.inference.SpeckleEmbedder` built from
``speckle_embed/weights/<name>.pt`` (no network access; ``SpeckleEmbedder.from_checkpoint`` reads
the compressed format through :func:`speckle_embed.checkpoint.expand_checkpoint`). The model card is
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

import os
from pathlib import Path

import torch

from speckle_embed.checkpoint import (  # noqa: F401 - _quantise/_dequantise re-exported for tests and scripts
    DEFAULT_PRETRAINED,
    GROUP_SIZE,
    MIN_INT8_ELEMENTS,
    PRETRAINED_FORMAT,
    WEIGHTS_DIR,
    _dequantise,
    _quantise,
    available_pretrained,
    compress_checkpoint,
    expand_checkpoint,
    load_checkpoint_file,
    resolve_checkpoint_spec,
)
from speckle_embed.inference.embedder import SpeckleEmbedder

__all__ = ["load_pretrained", "available_pretrained", "pretrained_checkpoint", "compress_checkpoint", "expand_checkpoint",
           "WEIGHTS_DIR", "DEFAULT_PRETRAINED", "PRETRAINED_FORMAT", "GROUP_SIZE", "MIN_INT8_ELEMENTS"]


def pretrained_checkpoint(name: str = DEFAULT_PRETRAINED) -> dict:
    """The shipped embedding ``name`` as a regular (float32) checkpoint dict.

    What ``init_checkpoint=pretrained`` (or ``pretrained:<name>``) of the trainer starts from:
    architecture, preprocessing and dequantised weights of ``weights/<name>.pt``.
    """
    return load_checkpoint_file(resolve_checkpoint_spec(f"pretrained:{name}")).checkpoint


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
        The file is damaged, or needs more than plain data to load (never unpickled in full).
    """
    if path is None:
        file = resolve_checkpoint_spec(f"pretrained:{name}")
    else:
        file = Path(os.fspath(path)).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"no pretrained embedding at {file}; shipped: {available_pretrained() or 'none'}")
    return SpeckleEmbedder.from_checkpoint(file, device=device, **kwargs)
