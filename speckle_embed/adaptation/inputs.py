"""Model inputs of an embedder's preprocessing, and a new embedder around an adapted network copy."""
from __future__ import annotations

import numpy as np
import torch

from speckle_embed.preprocess import preprocess

__all__ = ["model_inputs", "new_embedder", "resolve_geometry"]


def resolve_geometry(embedder, frames, mask, center, scale):
    """``center``/``scale`` with ``"auto"`` resolved once on ``frames`` (as ``embed`` does)."""
    if isinstance(center, str) and center == "auto":
        from speckle_embed.scale import (
            estimate_center,  # numpy/scipy work only needed for "auto"
        )

        center = estimate_center(np.asarray(frames)[:64], None if mask is None else np.asarray(mask))
    if isinstance(scale, str) and scale == "auto":
        scale = embedder.estimate_scale(frames, mask, center=center)
    return center, scale


def model_inputs(embedder, frames, mask=None, *, center=None, scale=None) -> torch.Tensor:
    """``(N, 1, S, S)`` float32 inputs on the embedder's device (``preprocess`` with its preprocessing)."""
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32)) if not torch.is_tensor(frames) else frames.float()
    return preprocess(x, embedder.preprocessing, mask=mask, center=center, scale=scale,
                      device=embedder.device)


def new_embedder(embedder, model):
    """A :class:`SpeckleEmbedder` around ``model`` with ``embedder``'s preprocessing and settings."""
    from speckle_embed.inference.embedder import SpeckleEmbedder

    return SpeckleEmbedder(model, embedder.preprocessing, device=embedder.device,
                           batch_size=embedder.batch_size, checkpoint_hash=None,
                           reference_speckle_px=embedder.reference_speckle_px,
                           nan_policy=embedder.nan_policy, metadata=dict(embedder.metadata))
