"""Symmetry views of a frame about its beam centre: the eight symmetries of the detector plane (D4).

A diffraction pattern rotated in the detector plane is the pattern of the same particle rotated
about the beam axis; a mirrored pattern is, in the small-angle (projection) limit where
Friedel's law ``I(q) = I(-q)`` holds, that of the particle turned by 180 degrees about an axis
in the detector plane. So every view of a single hit is another single hit of the same
particle, and every view of a multi hit another multi hit: the views are free, physically valid
extra supports for a few-shot classifier (:class:`~speckle_embed.fewshot.FewShotClassifier`,
``support_views="d4"``).

Views act on the **model input** (the window resampled about the beam centre, shape
``(n, 1, S, S)``), so the rotation is about the beam centre whatever its position on the
detector, and the detector's mask (gaps, beam stop) turns with the frame, as the model expects
of any detector layout. The window's centre pixel ``(S - 1) / 2`` is the beam centre exactly
(:func:`speckle_embed.inference.frames.window`), so the views are exact permutations of pixels.

View ``k`` (0-7): rotation by ``90 * (k % 4)`` degrees counter-clockwise (``torch.rot90`` over
the last two axes), then, for ``k >= 4``, a mirror of the columns. View 0 is the identity.

Examples
--------
>>> import numpy as np
import torch
>>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
>>> detector_view(x, 1)[0, 0].tolist()
[[1.0, 3.0], [0.0, 2.0]]
>>> sorted(VIEW_GROUPS)
['d4', 'none']
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["VIEW_GROUPS", "N_D4_VIEWS", "detector_view", "view_indices", "embed_views"]

#: Number of symmetries of the square (4 rotations x optional mirror).
N_D4_VIEWS = 8

#: Named sets of views: ``"none"`` (the frame itself), ``"d4"`` (all eight symmetries).
VIEW_GROUPS: dict[str, tuple[int, ...]] = {"none": (0,), "d4": tuple(range(N_D4_VIEWS))}


def view_indices(group: str) -> tuple[int, ...]:
    """The views of a named group (:data:`VIEW_GROUPS`).

    Raises
    ------
    ValueError
        Unknown group name (the message lists the known ones).
    """
    if not isinstance(group, str) or group not in VIEW_GROUPS:
        raise ValueError(f"support_views must be one of {sorted(VIEW_GROUPS)}; got {group!r}")
    return VIEW_GROUPS[group]


def detector_view(inputs: torch.Tensor, k: int) -> torch.Tensor:
    """View ``k`` of model inputs ``(..., S, S)`` (see the module docstring); ``k = 0`` returns
    ``inputs`` itself.

    Raises
    ------
    ValueError
        ``k`` is not an integer in ``0 .. 7`` or the last two axes are not square.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < N_D4_VIEWS:
        raise ValueError(f"view must be an integer in 0..{N_D4_VIEWS - 1}; got {k!r}")
    if inputs.shape[-1] != inputs.shape[-2]:
        raise ValueError(f"views need a square model input; got {tuple(inputs.shape[-2:])}")
    if k == 0:
        return inputs
    out = torch.rot90(inputs, k % 4, dims=(-2, -1))
    return out.flip(-1) if k >= 4 else out


def embed_views(embedder, frames, mask=None, *, group: str = "d4", return_empty: bool = False,
                **embed_kwargs):
    """Embeddings of every view of ``group`` of every frame.

    Parameters
    ----------
    embedder : SpeckleEmbedder
    frames, mask
        As :meth:`SpeckleEmbedder.embed`.
    group : {"d4", "none"}, default "d4"
    return_empty : bool, default False
        Also return the empty-frame flags of :meth:`SpeckleEmbedder.embed` (taken from view 0:
        a view of a flat input is flat).
    **embed_kwargs
        Passed to :meth:`SpeckleEmbedder.embed` (``center``, ``scale``, ``batch_size``...).

    Returns
    -------
    ndarray of float32, shape (N, n_views, d)
        ``[:, v]`` = ``embedder.embed(frames, mask, view=v)``; view 0 first.
    empty : ndarray of bool, shape (N,)
        Only with ``return_empty=True``.
    """
    indices = view_indices(group)
    first = embedder.embed(frames, mask, **embed_kwargs, **({"return_empty": True} if return_empty else {}))
    first, empty = first if return_empty else (first, None)
    views = [first] + [embedder.embed(frames, mask, **embed_kwargs, view=v) for v in indices[1:]]
    stacked = np.stack([np.asarray(z, dtype=np.float32) for z in views], axis=1)
    return (stacked, empty) if return_empty else stacked
