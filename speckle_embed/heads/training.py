"""The training loop of a supervised head (Assalauova et al. 2022's recipe) and its metrics.

Adam, one batch per iteration from a sampler, random horizontal mirroring, polynomial
learning-rate decay ``lr * (1 - t/T)**power`` (:class:`torch.optim.lr_scheduler.PolynomialLR`,
stepped once per iteration), and at the end of every "epoch" of ``iterations_per_epoch``
iterations an optional validation that keeps the best weights.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["TrainingResult", "train_classifier", "two_class_logits", "head_metrics", "poly_lr_lambda"]


def two_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1) sigmoid logits -> (N, 2) softmax logits ``[0, z]``; (N, C) unchanged.

    Softmax of ``[0, z]`` is ``[1 - sigmoid(z), sigmoid(z)]``, so a one-logit model (Shi et al.
    2019) trains and predicts like a two-class one.
    """
    if logits.ndim != 2:
        raise ValueError(f"model output must have shape (N, C); got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], 1)
    return logits


def poly_lr_lambda(total_iterations: int, power: float = 0.9):
    """Multiplier of the base learning rate at iteration ``t``: ``(1 - t / T) ** power``.

    The closed form of :class:`torch.optim.lr_scheduler.PolynomialLR` (which
    :func:`train_classifier` uses), kept as the reference the tests compare it with.

    Examples
    --------
    >>> f = poly_lr_lambda(100, 0.9)
    >>> f(0), round(f(50), 4), f(100)
    (1.0, 0.5359, 0.0)
    """
    total = max(int(total_iterations), 1)

    def factor(t: int) -> float:
        return max(1.0 - t / total, 0.0) ** power

    return factor


def head_metrics(proba: np.ndarray, codes: np.ndarray, binary: bool, threshold: float) -> dict:
    """NLL, accuracy and (binary) precision/recall/F1 of the positive class.

    Parameters
    ----------
    proba : ndarray, shape (N, n_classes)
        Class probabilities.
    codes : ndarray of int, shape (N,)
        True classes (positions in ``classes_``; 1 = positive in binary mode).
    binary : bool
        Binary mode: positive where ``proba[:, 1] >= threshold``; else argmax.
    threshold : float

    Returns
    -------
    dict
        ``loss``, ``accuracy`` and, in binary mode, ``precision``, ``recall``, ``f1``
        (0.0 where undefined).
    """
    p = np.clip(proba[np.arange(codes.size), codes], 1e-12, 1.0)
    pred = (proba[:, 1] >= threshold).astype(np.int64) if binary else proba.argmax(1)
    out = {"loss": float(-np.log(p).mean()), "accuracy": float((pred == codes).mean())}
    if binary:
        tp = int(((pred == 1) & (codes == 1)).sum())
        fp = int(((pred == 1) & (codes == 0)).sum())
        fn = int(((pred == 0) & (codes == 1)).sum())
        out["precision"] = tp / (tp + fp) if tp + fp else 0.0
        out["recall"] = tp / (tp + fn) if tp + fn else 0.0
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return out


@dataclass
class TrainingResult:
    """What :func:`train_classifier` returns.

    Attributes
    ----------
    history : list of dict
        One entry per epoch: ``epoch``, ``iteration``, ``lr`` (used at the epoch's last
        iteration), ``train_loss`` (mean over the epoch) and ``val_<metric>`` when validated.
    best_state : dict or None
        State dict (copies) of the best epoch by the validation metric; None without validation.
    best_epoch : int or None
    """

    history: list = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int | None = None


def train_classifier(model: nn.Module, inputs: torch.Tensor, codes: np.ndarray, sampler,
                     criterion: nn.Module, *, device: torch.device, lr: float, weight_decay: float,
                     total_iterations: int, iterations_per_epoch: int, lr_power: float,
                     augment_mirror: bool, seed: int,
                     validate: Callable[[nn.Module], dict] | None = None, metric: str = "accuracy",
                     progress: bool = True, desc: str = "train") -> TrainingResult:
    """Train ``model`` in place on preprocessed patches.

    Parameters
    ----------
    model : nn.Module
        On ``device``; maps ``(B, 1, h, w)`` to logits ``(B, C)`` or ``(B, 1)``.
    inputs : Tensor, shape (N, 1, h, w)
        Model inputs (moved to ``device`` whole when under 1 GiB).
    codes : ndarray of int, shape (N,)
        Target class of each input.
    sampler
        Has ``next_batch() -> ndarray of int`` (e.g. :class:`~speckle_embed.heads.ClassFractionSampler`).
    criterion : nn.Module
        Loss of (logits ``(B, C)``, targets ``(B,)``).
    device : torch.device
    lr, weight_decay : float
        Adam's.
    total_iterations, iterations_per_epoch : int
    lr_power : float
        Exponent of the polynomial decay.
    augment_mirror : bool
        Flip each patch horizontally with probability 1/2 (own generator seeded ``seed + 1``).
    seed : int
    validate : callable, optional
        ``validate(model) -> metrics dict`` (:func:`head_metrics`) at every epoch end.
    metric : {"f1", "accuracy", "loss"}
        Which validation metric picks the best epoch (higher is better; ``loss`` is negated).
    progress : bool
    desc : str
        Progress-bar label.

    Returns
    -------
    TrainingResult
    """
    total, per_epoch = int(total_iterations), int(iterations_per_epoch)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
    data = inputs.to(device) if inputs.numel() * 4 < (1 << 30) else inputs
    targets = torch.as_tensor(codes, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(lr), weight_decay=float(weight_decay))
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(total, 1), power=float(lr_power))
    result = TrainingResult()
    best_score = None
    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc=desc, unit="it", disable=not progress, leave=False)
    try:
        for it in range(1, total + 1):
            idx = torch.as_tensor(sampler.next_batch())
            xb = data[idx.to(data.device)].to(device, non_blocking=True)
            yb = targets[idx].to(device, non_blocking=True)
            if augment_mirror:
                flip = (torch.rand(xb.shape[0], generator=gen) < 0.5).to(device)
                xb = torch.where(flip[:, None, None, None], torch.flip(xb, (-1,)), xb)
            loss = criterion(two_class_logits(model(xb)), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_now = optimizer.param_groups[0]["lr"]
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            if it % per_epoch == 0 or it == total:
                entry = {"epoch": (it - 1) // per_epoch + 1, "iteration": it, "lr": lr_now,
                         "train_loss": float(np.mean(losses))}
                losses = []
                if validate is not None:
                    m = validate(model)
                    entry.update({f"val_{k}": v for k, v in m.items()})
                    score = -m["loss"] if metric == "loss" else m[metric]
                    if best_score is None or score > best_score:
                        best_score, result.best_epoch = score, entry["epoch"]
                        result.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    bar.set_postfix(loss=f"{entry['train_loss']:.3g}", **{f"val_{metric}": f"{m[metric]:.3g}"})
                else:
                    bar.set_postfix(loss=f"{entry['train_loss']:.3g}")
                result.history.append(entry)
    finally:
        bar.close()
    return result
