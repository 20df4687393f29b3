"""Re-estimate the BatchNorm statistics of an embedding network on a run's unlabelled frames.

Feature-statistics adaptation (Li et al. 2016, "Revisiting batch normalization for practical
domain adaptation", AdaBN): the running means and variances of every BatchNorm layer are
replaced by those of the new detector's frames; no weight changes, no labels. The model is a
copy; the original embedder is untouched.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from speckle_embed.adaptation.inputs import model_inputs, new_embedder

__all__ = ["reestimate_batchnorm"]


def reestimate_batchnorm(embedder, frames, mask=None, *, center=None, scale=None, max_frames: int = 2048,
                         batch_size: int = 128, budget_s: float = 60.0, seed: int = 0):
    """A copy of ``embedder`` whose BatchNorm statistics are those of ``frames``.

    Parameters
    ----------
    embedder : SpeckleEmbedder
    frames : array_like, shape (N, H, W)
        Unlabelled frames of the run (photons).
    mask : array_like, optional
        Bad pixels (non-zero).
    center, scale : optional
        As :meth:`SpeckleEmbedder.embed`.
    max_frames : int
        At most this many frames (a random subset, ``seed``) enter the statistics.
    batch_size : int
    budget_s : float
        Wall-clock budget (seconds): batches stop once it is spent (at least one is used).

    Returns
    -------
    SpeckleEmbedder
        The copy (``checkpoint_hash`` None: these weights exist in no file).

    Raises
    ------
    ValueError
        The network has no BatchNorm layer.
    """
    model = copy.deepcopy(embedder.model).to(embedder.device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("adapt='batchnorm' needs a network with BatchNorm layers; this one has none")
    n = int(np.shape(frames)[0])
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:max_frames])
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.eval()
    for m in norms:
        m.train()
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, pick.size, batch_size):
            idx = pick[start:start + batch_size]
            sub = np.asarray(frames[idx]) if not torch.is_tensor(frames) else frames[idx]
            m_sub = mask if mask is None or np.ndim(mask) == 2 else np.asarray(mask)[idx]
            model(model_inputs(embedder, sub, m_sub, center=center, scale=scale))
            if time.perf_counter() - t0 > budget_s:
                break
    model.eval()
    return new_embedder(embedder, model)
