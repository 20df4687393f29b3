"""Few-label fine-tuning of the embedding from the K labelled supports, within a time budget.

Each step draws two augmented views of every support (:class:`~speckle_embed.train.augment.
SpeckleAugment`, the training augmentation: rotation, zoom, shift, fluence, noise, patches),
takes the class means of the first view as prototypes and minimises the prototypical loss
(Snell et al. 2017) of the second: cross-entropy of ``softmax(-||z - p_c||^2 / T)``. BatchNorm
layers stay in evaluation mode (10 frames are too few for batch statistics). The network is a
copy; the embedder passed in is untouched.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from speckle_embed.adaptation.inputs import new_embedder
from speckle_embed.preprocess import preprocess

__all__ = ["finetune_on_supports"]


def finetune_on_supports(embedder, frames, codes, mask=None, *, center=None, budget_s: float = 60.0,
                         max_steps: int = 200, lr: float = 1e-4, temperature: float = 0.1, seed: int = 0,
                         augment: dict | None = None) -> tuple[object, dict]:
    """A copy of ``embedder`` fine-tuned on the supports.

    Parameters
    ----------
    embedder : SpeckleEmbedder
    frames : array_like, shape (n, H, W)
        Support frames (photons).
    codes : ndarray of int, shape (n,)
        Class codes ``0 .. C-1`` (at least 2 classes).
    mask : array_like (H, W), optional
    center : (row, col), optional
        Beam centre (default the frame centre). The training pixel scale is used.
    budget_s : float
        Wall-clock budget in seconds (default 60: one minute on 2 CPU cores); steps stop once
        it is spent.
    max_steps : int
    lr : float
        Adam learning rate.
    temperature : float
        Of the prototypical softmax (squared distances of unit vectors).
    seed : int
        Augmentation generator seed.
    augment : dict, optional
        :class:`AugmentConfig` overrides (default: the training defaults).

    Returns
    -------
    embedder : SpeckleEmbedder
        The fine-tuned copy (``checkpoint_hash`` None).
    log : dict
        ``steps``, ``seconds``, ``loss_first``, ``loss_last``.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if np.unique(codes).size < 2:
        raise ValueError("adapt='finetune' needs supports of at least 2 classes")
    if budget_s <= 0 or max_steps < 1:
        raise ValueError(f"need budget_s > 0 and max_steps >= 1; got {budget_s}, {max_steps}")
    # The training augmentation (a torch-only leaf module) imported here, so that the few-shot layer
    # does not load the training package (speckle_embed.train) unless fine-tuning is asked for.
    from speckle_embed.train.augment import AugmentConfig, SpeckleAugment

    dev = embedder.device
    model = copy.deepcopy(embedder.model).to(dev)
    model.eval()  # BatchNorm statistics frozen; gradients still flow
    prep = embedder.preprocessing
    aug = SpeckleAugment(AugmentConfig.from_dict(augment), out_size=prep.crop).to(dev)
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32), device=dev)
    bad = None if mask is None else torch.as_tensor(np.asarray(mask) != 0, device=dev)
    y = torch.as_tensor(codes, device=dev)
    n_classes = int(codes.max()) + 1
    onehot = F.one_hot(y, n_classes).float()
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    t0 = time.perf_counter()
    for _ in range(int(max_steps)):
        views = []
        for _v in range(2):
            with torch.no_grad():
                xa, ba = aug(x, bad, generator=gen, center=center)
                inputs = preprocess(xa, prep, mask=ba)
            views.append(F.normalize(model(inputs), dim=1))
        protos = (onehot.T @ views[0]) / onehot.sum(0)[:, None]
        loss = F.cross_entropy(-torch.cdist(views[1], protos).pow(2) / temperature, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if time.perf_counter() - t0 > budget_s:
            break
    model.eval()
    log = {"steps": len(losses), "seconds": time.perf_counter() - t0,
           "loss_first": losses[0], "loss_last": losses[-1]}
    return new_embedder(embedder, model), log
