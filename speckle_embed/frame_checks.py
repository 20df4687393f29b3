"""Checks that frames can be diffraction patterns for a model: big enough, and not blank.

Two failure modes give confident but meaningless answers, so they are caught before (or while)
embedding:

* **too small**: a frame narrower than half the model's field of view (``input_size * scale``
  input pixels, the window :func:`speckle_embed.preprocess.preprocess` resamples) is mostly
  padding (a 4 x 4 array of quaternions, a 1 x 1 scalar per shot). :func:`check_frame_size`
  refuses it with a ``ValueError`` that gives both sizes. Frames between half and the whole
  field of view are embedded, the part of the window outside the frame counting as masked
  pixels: real setups with large speckles (a cropped or binned detector, or ``scale=`` > 1 on
  coarse speckles) give such frames, and the model is trained with masked areas
  (:data:`MIN_FIELD_OF_VIEW_FRACTION`).
* **empty**: a frame whose field of view holds no photons, or no contrast (all zero, constant),
  becomes a flat model input after the per-frame standardisation, so its embedding says nothing
  about the frame. :func:`flat_inputs` flags such frames from the model inputs;
  :func:`warn_empty` reports them as an :class:`EmptyFrameWarning` (a ``UserWarning``).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from speckle_embed.preprocess import Preprocessing

__all__ = ["EmptyFrameWarning", "field_of_view_px", "check_frame_size", "flat_inputs", "warn_empty",
           "FLAT_INPUT_MAX", "MIN_FIELD_OF_VIEW_FRACTION",
           "min_frame_side_px"]

#: A model input whose largest absolute value is below this is flat (an empty frame). A frame with
#: any contrast is standardised to unit RMS over its valid pixels, so its largest value is >= ~1;
#: an all-zero frame gives exactly 0, a constant one float rounding (~1e-4).
FLAT_INPUT_MAX = 0.5

_MAX_LISTED = 20  # indices named in a warning

#: Smallest frame side accepted, as a fraction of the model's field of view: a smaller frame
#: would leave more than three quarters of the model's window masked.
MIN_FIELD_OF_VIEW_FRACTION = 0.5


class EmptyFrameWarning(UserWarning):
    """Frames with no photons (or no contrast) in the model's field of view were embedded.

    Attributes
    ----------
    indices : ndarray of int64
        Indices of the empty frames in the call's input.
    """

    def __init__(self, message: str, indices=()):
        super().__init__(message)
        self.indices = np.asarray(indices, dtype=np.int64)


def field_of_view_px(prep: Preprocessing, scale: float | None = None) -> int:
    """Side of the square window the model sees, in input (detector) pixels.

    Parameters
    ----------
    prep : Preprocessing
    scale : float, optional
        Input pixels per model pixel; default ``prep.scale`` (the training crop).

    Returns
    -------
    int
        ``round(input_size * scale)``.
    """
    s = prep.scale if scale is None else float(scale)
    return int(round(prep.input_size * s))


def min_frame_side_px(prep: Preprocessing, scale: float | None = None) -> int:
    """Smallest frame side (input pixels) a model takes: half its field of view, rounded up."""
    return int(np.ceil(MIN_FIELD_OF_VIEW_FRACTION * field_of_view_px(prep, scale)))


def check_frame_size(height: int, width: int, prep: Preprocessing, scale: float | None = None) -> None:
    """Refuse frames smaller than half the model's field of view.

    A frame at least ``MIN_FIELD_OF_VIEW_FRACTION *`` :func:`field_of_view_px` pixels across
    (rows and columns) passes; where the window overhangs the frame (a small frame, an
    off-centre beam) the missing pixels count as masked.

    Raises
    ------
    ValueError
        ``height`` or ``width`` is below half the field of view; the message gives both sizes.
    """
    fov = field_of_view_px(prep, scale)
    min_side = min_frame_side_px(prep, scale)
    if height < min_side or width < min_side:
        s = prep.scale if scale is None else float(scale)
        raise ValueError(
            f"frames of {height}x{width} pixels are smaller than half the model's field of view of "
            f"{fov}x{fov} pixels (input_size {prep.input_size} x scale {s:g}; at least {min_side}x{min_side} "
            "needed), so they cannot be diffraction patterns "
            "for this model: give whole detector frames (check data_path), or a smaller scale if the "
            "detector's pixels are coarser than the training detector's")


def flat_inputs(inputs: torch.Tensor) -> torch.Tensor:
    """Which preprocessed model inputs are flat (their frame had no photons or no contrast).

    Parameters
    ----------
    inputs : Tensor, shape (n, 1, S, S)
        Output of :func:`speckle_embed.preprocess.preprocess` (standardised per frame).

    Returns
    -------
    Tensor of bool, shape (n,), on the inputs' device
        ``max |input| < FLAT_INPUT_MAX``.
    """
    return inputs.flatten(1).abs().amax(1) < FLAT_INPUT_MAX


def warn_empty(empty: np.ndarray, *, stacklevel: int = 3) -> None:
    """Issue an :class:`EmptyFrameWarning` naming how many frames are empty and which (if any)."""
    idx = np.flatnonzero(np.asarray(empty, dtype=bool))
    if idx.size == 0:
        return
    listed = ", ".join(str(int(i)) for i in idx[:_MAX_LISTED]) + (", ..." if idx.size > _MAX_LISTED else "")
    warnings.warn(EmptyFrameWarning(
        f"{idx.size} of {len(empty)} frames have no photons (or no contrast) in the model's field of "
        f"view: indices [{listed}]; their embeddings and predictions are meaningless (all-zero or "
        "constant frames, or the wrong dataset)", idx), stacklevel=stacklevel)
