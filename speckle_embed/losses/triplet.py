"""Triplet margin loss on squared L2 distances, fed by a miner's index tensors."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TripletLoss"]


class TripletLoss(nn.Module):
    """Mean triplet margin loss ``relu(d(a,p) - d(a,n) + margin)``, ``d`` = squared L2.

    Works on index tensors from a miner (:class:`SemiHardMiner`, :class:`BatchHardMiner`,
    :class:`BatchAllMiner`), so mining and loss compose::

        loss, stats = TripletLoss(margin)(emb, *miner(emb, structure, hit))

    Parameters
    ----------
    margin : float
        Margin (>= 0) in squared-L2 units; with L2-normalised embeddings distances lie in
        [0, 4].

    Examples
    --------
    >>> emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    >>> loss, stats = TripletLoss(margin=1.0)(emb, torch.tensor([0]), torch.tensor([1]),
    ...                                        torch.tensor([2]))
    >>> loss.item(), stats["n_triplets"], stats["active_fraction"]
    (0.0, 1, 0.0)
    """

    def __init__(self, margin: float) -> None:
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

    def forward(
        self,
        embeddings: torch.Tensor,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
    ) -> tuple[torch.Tensor, dict]:
        """Loss over the given triplets.

        Parameters
        ----------
        embeddings : Tensor, shape (N, d), floating point
        anchors, positives, negatives : integer Tensor, shape (T,)
            Row indices into ``embeddings``; ``T`` may be 0.

        Returns
        -------
        loss : Tensor, shape ()
            Mean over the ``T`` triplets. With ``T = 0`` it is a zero that is still part of
            the graph of ``embeddings`` (``loss.backward()`` works and gives zero gradients).
        stats : dict
            Plain Python numbers: ``n_triplets`` (int), ``n_active`` (int, triplets with a
            non-zero loss), ``active_fraction`` (float, 0.0 when ``T = 0``), ``mean_d_ap`` and
            ``mean_d_an`` (float, NaN when ``T = 0``).
        """
        if embeddings.ndim != 2 or not embeddings.is_floating_point():
            raise ValueError(
                f"embeddings must be a floating-point (N, d) tensor, got {embeddings.dtype} "
                f"{tuple(embeddings.shape)}"
            )
        for name, idx in (("anchors", anchors), ("positives", positives), ("negatives", negatives)):
            if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
                raise ValueError(f"{name} must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}")
        if not anchors.shape == positives.shape == negatives.shape:
            raise ValueError(
                "anchors, positives and negatives must have the same length, got "
                f"{anchors.shape[0]}, {positives.shape[0]}, {negatives.shape[0]}"
            )
        n_triplets = int(anchors.shape[0])
        if n_triplets == 0:
            # Sum of an empty slice: exactly 0 (even if embeddings hold NaN/inf) yet connected
            # to the graph of ``embeddings``.
            loss = embeddings[:0].sum()
            stats = {"n_triplets": 0, "n_active": 0, "active_fraction": 0.0,
                     "mean_d_ap": float("nan"), "mean_d_an": float("nan")}
            return loss, stats

        emb_a = embeddings[anchors]
        d_ap = (emb_a - embeddings[positives]).pow(2).sum(dim=1)
        d_an = (emb_a - embeddings[negatives]).pow(2).sum(dim=1)
        losses = F.relu(d_ap - d_an + self.margin)
        loss = losses.mean()
        with torch.no_grad():
            n_active = int((losses > 0).sum())
            stats = {
                "n_triplets": n_triplets,
                "n_active": n_active,
                "active_fraction": n_active / n_triplets,
                "mean_d_ap": float(d_ap.mean()),
                "mean_d_an": float(d_an.mean()),
            }
        return loss, stats
