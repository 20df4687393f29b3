"""Triplet miners for SpeckleNN's multi-label rule.

A batch carries, for each sample, a ``structure`` id and a ``hit`` label (``0 = no_hit``,
``1 = single``, ``2 = multi``, ``3 = non_sample``; see ``DESIGN.md``). SpeckleNN's rule
(:func:`valid_pair_masks`):

* anchor ``a`` and positive ``p`` share **both** the structure and the hit label, ``a != p``;
* a negative ``n`` is any sample (of any structure) whose hit label differs from the anchor's.

With ``structure=None`` the usual single-label rule on ``hit`` applies.

As in pytorch-metric-learning, :class:`BaseTripletMiner` does the plumbing (input checks,
``torch.no_grad()``, output checks) and a subclass fills :meth:`BaseTripletMiner.mine`,
which returns index tensors ``(anchors, positives, negatives)`` for :class:`TripletLoss`.
Distances are squared L2 (:func:`pairwise_squared_l2`) on the embeddings as given (the
SpeckleNN model already L2-normalises its output). Everything is vectorised; large batches
are processed in chunks so memory stays bounded (O(chunk * N)), never a Python loop per
triplet.
"""
from __future__ import annotations

import torch
from torch import nn

from .distances import pairwise_squared_l2

__all__ = [
    "valid_pair_masks",
    "BaseTripletMiner",
    "SemiHardMiner",
    "BatchHardMiner",
    "BatchAllMiner",
]

# Upper bound on the number of elements of the (rows x N) or (rows x N x N) work arrays
# built at once; keeps peak memory at a few tens of MB whatever the batch size.
_CHUNK_ELEMENTS = 1 << 22


def _check_labels(name: str, labels: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}")
    return labels.long()


def valid_pair_masks(
    structure: torch.Tensor | None, hit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples may serve as positive / negative for each anchor.

    Parameters
    ----------
    structure : LongTensor, shape (N,), or None
        Structure id of each sample. ``None`` gives the single-label rule on ``hit``.
    hit : LongTensor, shape (N,)
        Hit label of each sample.

    Returns
    -------
    pos_mask : BoolTensor, shape (N, N)
        ``pos_mask[a, p]``: ``a != p`` and they share the hit label (and the structure,
        unless ``structure`` is None).
    neg_mask : BoolTensor, shape (N, N)
        ``neg_mask[a, n]``: ``hit[n] != hit[a]`` (any structure).

    Examples
    --------
    >>> s = torch.tensor([0, 0, 1, 1]); h = torch.tensor([1, 1, 1, 0])
    >>> pos, neg = valid_pair_masks(s, h)
    >>> pos.nonzero().tolist(), neg[0].tolist()
    ([[0, 1], [1, 0]], [False, False, False, True])
    """
    if hit.ndim != 1:
        raise ValueError(f"hit must have shape (N,), got {tuple(hit.shape)}")
    same_hit = hit.unsqueeze(1) == hit.unsqueeze(0)
    neg_mask = ~same_hit
    pos_mask = same_hit
    if structure is not None:
        if structure.shape != hit.shape:
            raise ValueError(
                f"structure and hit must have the same shape, got {tuple(structure.shape)} "
                f"and {tuple(hit.shape)}"
            )
        pos_mask = pos_mask & (structure.unsqueeze(1) == structure.unsqueeze(0))
    eye = torch.eye(hit.shape[0], dtype=torch.bool, device=hit.device)
    return pos_mask & ~eye, neg_mask


def _empty_indices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    empty = torch.empty(0, dtype=torch.long, device=device)
    return empty, empty.clone(), empty.clone()


class BaseTripletMiner(nn.Module):
    """Base class: checks inputs, mines under ``torch.no_grad()``, checks the output.

    Subclasses implement :meth:`mine`. After each call, :attr:`stats` holds plain-Python
    counts about the last batch (at least ``n_triplets``).

    Call as ``anchors, positives, negatives = miner(embeddings, structure, hit)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, int] = {}

    def forward(
        self,
        embeddings: torch.Tensor,
        structure: torch.Tensor | None,
        hit: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mine triplets from one batch.

        Parameters
        ----------
        embeddings : Tensor, shape (N, d), floating point
        structure : integer Tensor, shape (N,), or None
            Structure id per sample, on the embeddings' device; ``None`` for the
            single-label rule.
        hit : integer Tensor, shape (N,)
            Hit label per sample, on the embeddings' device.

        Returns
        -------
        anchors, positives, negatives : LongTensor, shape (T,)
            Row indices into ``embeddings`` of the ``T`` mined triplets.
        """
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (N, d), got {tuple(embeddings.shape)}")
        if not embeddings.is_floating_point():
            raise TypeError(f"embeddings must be floating point, got {embeddings.dtype}")
        n, device = embeddings.shape[0], embeddings.device
        hit = _check_labels("hit", hit, n, device)
        if structure is not None:
            structure = _check_labels("structure", structure, n, device)
        if n == 0:
            self.stats = {}
            out = _empty_indices(device)
        else:
            with torch.no_grad():
                out = self.mine(embeddings.detach(), structure, hit)
        self._check_output(out, device)
        self.stats["n_triplets"] = int(out[0].shape[0])
        return out

    def mine(
        self, embeddings: torch.Tensor, structure: torch.Tensor | None, hit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(anchors, positives, negatives)``; inputs are already validated.

        Parameters
        ----------
        embeddings : Tensor, shape (N, d), detached
        structure : LongTensor, shape (N,), or None
        hit : LongTensor, shape (N,)
        """
        raise NotImplementedError

    @staticmethod
    def _check_output(out, device: torch.device) -> None:
        if not (isinstance(out, tuple) and len(out) == 3):
            raise RuntimeError("mine() must return a tuple (anchors, positives, negatives)")
        for t in out:
            if t.dtype != torch.long or t.ndim != 1 or t.device != device:
                raise RuntimeError("mine() must return 1-D LongTensors on the embeddings' device")
        if not out[0].shape == out[1].shape == out[2].shape:
            raise RuntimeError("mine() returned index tensors of different lengths")


def _pick(
    mask: torch.Tensor,
    dist: torch.Tensor,
    how: str,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one column per row among the True entries of ``mask``.

    ``how="hardest"``: smallest ``dist`` (first index on ties); ``"random"``: uniform.
    Returns ``(index, found)``, both shape (rows,); ``index`` is meaningless where not found.
    """
    found = mask.any(dim=1)
    if how == "hardest":
        score = dist.masked_fill(~mask, float("inf"))
        return score.argmin(dim=1), found
    gen_device = generator.device if generator is not None else mask.device
    score = torch.rand(mask.shape, generator=generator, device=gen_device).to(mask.device)
    return score.masked_fill(~mask, -1.0).argmax(dim=1), found


class SemiHardMiner(BaseTripletMiner):
    """One negative per (anchor, positive) pair, semi-hard when possible (SpeckleNN/FaceNet).

    For every valid pair ``(a, p)`` (see :func:`valid_pair_masks`) a negative is chosen among
    the *semi-hard* ones, ``d(a,p) < d(a,n) < d(a,p) + margin`` (squared L2, strict
    inequalities). If the pair has no semi-hard negative, ``fallback`` decides:

    * ``"hardest"``: the valid negative with the smallest ``d(a, n)``;
    * ``"random"``: a uniformly random valid negative;
    * ``"none"``: the pair is dropped.

    Pairs whose anchor has no valid negative at all are always dropped.

    Parameters
    ----------
    margin : float
        Triplet margin (> 0), the same as the loss's.
    select : {"random", "hardest"}
        Among semi-hard negatives, take a uniformly random one (default, SpeckleNN) or the
        one with the smallest ``d(a, n)``.
    fallback : {"hardest", "random", "none"}
    generator : torch.Generator, optional
        Source of randomness for ``select="random"`` / ``fallback="random"`` (for
        reproducible mining); the global RNG when omitted.

    Notes
    -----
    Triplets are returned ordered by (anchor, positive). Work memory is O(chunk * N).
    :attr:`stats` after a call: ``n_pairs`` (valid pairs), ``n_semihard`` (pairs that got a
    semi-hard negative), ``n_fallback`` (pairs that got a fallback negative), ``n_triplets``.

    Examples
    --------
    >>> miner = SemiHardMiner(margin=0.5, generator=torch.Generator().manual_seed(0))
    >>> emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    >>> a, p, n = miner(emb, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
    ...                 torch.tensor([1, 1, 0, 0, 1, 1, 0, 0]))
    >>> a.shape == p.shape == n.shape
    True
    """

    _SELECT = ("random", "hardest")
    _FALLBACK = ("hardest", "random", "none")

    def __init__(
        self,
        margin: float,
        select: str = "random",
        fallback: str = "hardest",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if select not in self._SELECT:
            raise ValueError(f"select must be one of {self._SELECT}, got {select!r}")
        if fallback not in self._FALLBACK:
            raise ValueError(f"fallback must be one of {self._FALLBACK}, got {fallback!r}")
        self.margin = float(margin)
        self.select = select
        self.fallback = fallback
        self.generator = generator

    def extra_repr(self) -> str:
        return f"margin={self.margin}, select={self.select!r}, fallback={self.fallback!r}"

    def mine(self, embeddings, structure, hit):
        dist = pairwise_squared_l2(embeddings)
        pos_mask, neg_mask = valid_pair_masks(structure, hit)
        anc, pos = pos_mask.nonzero(as_tuple=True)
        n = embeddings.shape[0]
        chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
        out_a, out_p, out_n = [], [], []
        n_semi = n_fb = 0
        for start in range(0, anc.shape[0], chunk):
            a_c, p_c = anc[start : start + chunk], pos[start : start + chunk]
            d_ap = dist[a_c, p_c].unsqueeze(1)  # (C, 1)
            d_an = dist[a_c]  # (C, N)
            negs = neg_mask[a_c]  # (C, N)
            semi = negs & (d_an > d_ap) & (d_an < d_ap + self.margin)
            idx, has_semi = _pick(semi, d_an, self.select, self.generator)
            if self.fallback == "none":
                keep = has_semi
            else:
                idx_fb, has_neg = _pick(negs, d_an, self.fallback, self.generator)
                idx = torch.where(has_semi, idx, idx_fb)
                keep = has_neg  # has_semi implies has_neg
                n_fb += int((has_neg & ~has_semi).sum())
            n_semi += int(has_semi.sum())
            out_a.append(a_c[keep])
            out_p.append(p_c[keep])
            out_n.append(idx[keep])
        self.stats = {"n_pairs": int(anc.shape[0]), "n_semihard": n_semi, "n_fallback": n_fb}
        if not out_a:
            return _empty_indices(embeddings.device)
        return torch.cat(out_a), torch.cat(out_p), torch.cat(out_n)


class BatchHardMiner(BaseTripletMiner):
    """Batch-hard mining (Hermans et al. 2017): one triplet per anchor.

    For every anchor with at least one valid positive and one valid negative
    (:func:`valid_pair_masks`): the hardest positive ``argmax_p d(a, p)`` and the hardest
    negative ``argmin_n d(a, n)`` (squared L2; the first index on ties).

    Notes
    -----
    Triplets are returned ordered by anchor. :attr:`stats` after a call: ``n_anchors``
    (anchors with a positive and a negative), ``n_triplets``.
    """

    def mine(self, embeddings, structure, hit):
        dist = pairwise_squared_l2(embeddings)
        pos_mask, neg_mask = valid_pair_masks(structure, hit)
        keep = pos_mask.any(dim=1) & neg_mask.any(dim=1)
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).argmax(dim=1)
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).argmin(dim=1)
        anchors = keep.nonzero(as_tuple=True)[0]
        self.stats = {"n_anchors": int(anchors.shape[0])}
        return anchors, hardest_pos[anchors], hardest_neg[anchors]


class BatchAllMiner(BaseTripletMiner):
    """Every valid triplet of the batch (batch-all mining).

    Parameters
    ----------
    margin : float
        Triplet margin (>= 0), the same as the loss's; used by ``active_only``.
    active_only : bool
        Keep only triplets with a positive loss, ``d(a,p) - d(a,n) + margin > 0``.

    Notes
    -----
    Triplets are returned in lexicographic (anchor, positive, negative) order. The number
    of triplets grows as O(N^3); work memory is bounded by chunking over anchors.
    :attr:`stats` after a call: ``n_valid`` (all valid triplets), ``n_triplets``.
    """

    def __init__(self, margin: float, active_only: bool = False) -> None:
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.active_only = bool(active_only)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, active_only={self.active_only}"

    def mine(self, embeddings, structure, hit):
        dist = pairwise_squared_l2(embeddings)
        pos_mask, neg_mask = valid_pair_masks(structure, hit)
        n = embeddings.shape[0]
        chunk = max(1, _CHUNK_ELEMENTS // max(n * n, 1))
        out_a, out_p, out_n = [], [], []
        n_valid = 0
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            trip = pos_mask[rows].unsqueeze(2) & neg_mask[rows].unsqueeze(1)  # (C, N, N)
            n_valid += int(trip.sum())
            if self.active_only:
                d = dist[rows]
                trip &= (d.unsqueeze(2) - d.unsqueeze(1) + self.margin) > 0
            a, p, ng = trip.nonzero(as_tuple=True)
            out_a.append(a + start)
            out_p.append(p)
            out_n.append(ng)
        self.stats = {"n_valid": n_valid}
        if not out_a:
            return _empty_indices(embeddings.device)
        return torch.cat(out_a), torch.cat(out_p), torch.cat(out_n)
