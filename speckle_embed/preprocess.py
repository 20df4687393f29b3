"""Frame preprocessing shared by training and inference (stored in every checkpoint).

A detector frame (photons, any size) becomes a model input in four steps, all in torch so
they run on the model's device:

0. (optional) **ADU -> photons**: frames in calibrated, pedestal-subtracted ADU are converted with
   ``adu_per_photon`` and a ``threshold`` (:func:`speckle_embed.realism.adu_to_photons`);
1. **mask**: pixels flagged in the mask (non-zero CXI bits, or ``True``) and non-finite
   pixels are treated as missing;
2. **geometry**: the frame is resampled about its beam centre by ``scale`` (output pixel =
   ``scale`` input pixels) and the central ``input_size x input_size`` window is kept. With
   ``scale = crop / input_size`` this is the plain central crop (``crop = input_size``) or a
   crop followed by binning. A frame smaller than the window (e.g. a 128x128 frame at
   ``scale=2`` for a 96-pixel input, whose window covers 192 input pixels) is padded: the
   pixels outside the frame count as missing, like masked ones;
3. **intensity**: ``log1p`` of the photon counts (negative read noise clipped at 0), then
   standardised per frame over its valid pixels (zero mean, unit variance), which makes the
   embedding insensitive to the shot-to-shot fluence;
4. missing pixels are set to 0 (the mean) after standardisation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from speckle_embed.realism import adu_to_photons


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of :func:`preprocess`; JSON-serialisable through :meth:`to_dict`.

    Attributes
    ----------
    input_size : int
        Side of the square model input (pixels).
    crop : int
        Side of the central window of the *training* detector that the input covers
        (pixels); ``crop / input_size`` is the default resampling scale.
    log : bool
        Apply ``log1p`` to photon counts before standardising.
    eps : float
        Floor of the per-frame standard deviation.
    """

    input_size: int = 96
    crop: int = 96
    log: bool = True
    eps: float = 1e-3

    def __post_init__(self):
        if self.input_size < 8 or self.crop < 8:
            raise ValueError(f"input_size and crop must be >= 8, got {self.input_size}, {self.crop}")

    @property
    def scale(self) -> float:
        """Training-detector pixels per input pixel."""
        return self.crop / self.input_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _valid_mask(frames: torch.Tensor, mask) -> torch.Tensor:
    """Boolean (N, H, W): True where the pixel is usable."""
    valid = torch.isfinite(frames)
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask, device=frames.device)
        if m.shape[-2:] != frames.shape[-2:]:
            raise ValueError(f"mask shape {tuple(m.shape)} does not match frame shape {tuple(frames.shape[-2:])}")
        valid = valid & (m == 0)
    return valid


def bilinear_rows(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear interpolation along one axis as a matrix.

    Parameters
    ----------
    positions : Tensor (M,) float
        Sample positions in pixels (pixel ``i`` at ``i``; ``align_corners=True`` convention).
    size : int
        Pixels along the axis.

    Returns
    -------
    Tensor (M, size)
        Row ``m`` holds the weights ``1 - f`` and ``f`` of the two pixels around ``positions[m]``
        (``f`` its fractional part); pixels outside ``[0, size)`` count as zero, so
        ``A @ image @ B.T`` equals ``grid_sample(..., mode="bilinear", padding_mode="zeros",
        align_corners=True)`` on the grid ``positions_y x positions_x``.
    """
    low = torch.floor(positions)
    frac = (positions - low)[:, None]
    # columns 0 and size + 1 collect the weights of pixels outside the image and are dropped
    i0 = (low.long() + 1).clamp(0, size + 1)[:, None]
    i1 = (low.long() + 2).clamp(0, size + 1)[:, None]
    rows = torch.zeros((positions.shape[0], size + 2), dtype=positions.dtype, device=positions.device)
    rows.scatter_add_(1, i0, 1 - frac).scatter_add_(1, i1, frac)
    return rows[:, 1:size + 1]


def resample_center(frames: torch.Tensor, valid: torch.Tensor, out_size: int, scale: float,
                    center=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``out_size x out_size`` pixels around ``center`` with ``scale`` input pixels each.

    Parameters
    ----------
    frames : Tensor (N, H, W) float
    valid : Tensor (N, H, W) or (H, W) bool
        Usable pixels, per frame or one mask for all.
    out_size : int
    scale : float
        Input pixels per output pixel (>1 bins/zooms out, <1 zooms in).
    center : (row, col) in input pixels, optional
        Beam centre; default the geometric centre ``((H-1)/2, (W-1)/2)``.

    Returns
    -------
    frames, valid : Tensors (N, out_size, out_size)
        Area-averaged values over valid pixels; an output pixel is valid if any input
        pixel under it was.
    """
    n, h, w = frames.shape
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if center is None else center
    if scale == 1.0 and float(cy - (out_size - 1) / 2).is_integer() and float(cx - (out_size - 1) / 2).is_integer():
        r0, c0 = int(cy - (out_size - 1) / 2), int(cx - (out_size - 1) / 2)
        if r0 >= 0 and c0 >= 0 and r0 + out_size <= h and c0 + out_size <= w:  # plain crop
            sl = (slice(r0, r0 + out_size), slice(c0, c0 + out_size))
            return frames[(slice(None), *sl)], valid[(..., *sl)].expand(n, out_size, out_size)
    # General case: area-weighted sampling with a box filter of width `scale`, applied to the
    # masked values and to the valid-pixel weights alike; their ratio is the area average.
    k = max(int(round(scale)), 1)
    offs = (torch.arange(out_size, device=frames.device, dtype=frames.dtype) - (out_size - 1) / 2) * scale
    # bilinear sampling at (cy + offs, cx + offs) is separable: two small matrix products. The
    # outside of the frame is missing data, exactly like masked pixels: k zero-weight pixels are
    # padded so that the box filter near the frame edge sees them as such (a window that
    # overhangs the frame then gives what a larger, masked canvas would).
    rows = bilinear_rows(cy + k + offs, h + 2 * k)
    cols = bilinear_rows(cx + k + offs, w + 2 * k).T

    def sample(t: torch.Tensor) -> torch.Tensor:  # (M, H, W) -> (M, out_size, out_size)
        t = F.pad(t, (k, k, k, k))
        if k > 1:  # pre-filter by average pooling so each output pixel averages ~scale^2 inputs
            t = F.avg_pool2d(t[:, None], kernel_size=k, stride=1, padding=k // 2,
                             count_include_pad=False)[:, 0, :h + 2 * k, :w + 2 * k]
        return rows @ t @ cols

    vf = valid.to(frames.dtype)
    if valid.ndim == 2:  # one mask for every frame (the usual case): its weights are sampled once
        weight = sample(vf[None])
        total = sample(frames if bool(valid.all()) else torch.where(valid, frames, torch.zeros_like(frames)))
    else:
        weight = sample(vf)
        total = sample(torch.where(valid, frames, torch.zeros_like(frames)))
    good = weight > 1e-3
    values = total.div_(weight.clamp_min(1e-3)).mul_(good)
    good = good.expand(n, out_size, out_size)
    return values, good


def normalise(frames: torch.Tensor, valid: torch.Tensor | None, *, log: bool = True,
              eps: float = 1e-3) -> torch.Tensor:
    """``log1p`` (optional) and per-frame standardisation over valid pixels; invalid -> 0.

    Parameters
    ----------
    frames : Tensor (N, H, W) float
    valid : Tensor (H, W) or (N, H, W) bool, or None (every pixel valid)
    log, eps
        As :class:`Preprocessing`.

    Returns
    -------
    Tensor (N, H, W)
        A new tensor (``frames`` is not modified), built with one allocation and in-place
        passes: this is the hot path of :meth:`~speckle_embed.inference.SpeckleEmbedder.embed`.
    """
    y = frames.clamp_min(0.0)  # new, contiguous
    n = y.shape[0]
    # results are taken from the in-place calls (not from `y`) so that a traced graph (ONNX,
    # TorchScript export) follows the writes through the flat view
    if valid is not None:
        y = y.masked_fill_(~valid, 0.0)
    if log:
        y = y.log1p_()  # log1p(0) = 0 keeps invalid pixels at 0
    flat = y.view(n, -1)
    if valid is None:
        var, mean = torch.var_mean(flat, dim=1, correction=0, keepdim=True)
        return flat.sub_(mean).div_(var.sqrt_().add_(eps)).view(y.shape)
    vf = (valid.reshape(1, -1) if valid.ndim == 2 else valid.reshape(n, -1)).to(y.dtype)
    count = vf.sum(1, keepdim=True).clamp_min(1.0)
    mean = flat.sum(1, keepdim=True) / count
    flat = flat.sub_(mean).mul_(vf)  # invalid pixels back to 0
    std = torch.linalg.vector_norm(flat, dim=1, keepdim=True).div_(count.sqrt())
    return flat.div_(std.add_(eps)).view(y.shape)


def model_inputs(window: torch.Tensor, valid: torch.Tensor | None, prep: Preprocessing, center,
                 scale: float) -> torch.Tensor:
    """Model inputs of float32 frames (or windows cut from them): steps 2-4 of the module docstring.

    The one implementation of the geometry and intensity steps, used by :func:`preprocess`
    (training) and by :meth:`~speckle_embed.inference.SpeckleEmbedder.embed` (which first cuts
    the window the model sees out of larger frames).

    Parameters
    ----------
    window : Tensor (N, H, W) float32
        Photons; non-finite pixels must be marked invalid in ``valid``.
    valid : Tensor (H, W) or (N, H, W) bool, or None
        Usable pixels (None: every pixel).
    prep : Preprocessing
    center : (row, col)
        Beam centre in pixels of ``window``.
    scale : float
        Input pixels per model pixel.

    Returns
    -------
    Tensor (N, 1, input_size, input_size) float32
    """
    size = prep.input_size
    n, h, w = window.shape
    cy, cx = center
    r0, c0 = cy - (size - 1) / 2, cx - (size - 1) / 2
    if scale == 1.0 and float(r0).is_integer() and float(c0).is_integer() and r0 >= 0 and c0 >= 0 \
            and r0 + size <= h and c0 + size <= w:  # plain crop (the case of resample_center)
        r0, c0 = int(r0), int(c0)
        x = window[:, r0:r0 + size, c0:c0 + size]
        good = None if valid is None else valid[..., r0:r0 + size, c0:c0 + size]
    else:
        g = torch.ones((h, w), dtype=torch.bool, device=window.device) if valid is None else valid
        x, good = resample_center(window, g, size, scale, (cy, cx))
    return normalise(x, good, log=prep.log, eps=prep.eps)[:, None]


def preprocess(frames, prep: Preprocessing, *, mask=None, center=None, scale=None,
               device=None, adu_per_photon=None, threshold: float = 0.5) -> torch.Tensor:
    """Frames (photons) -> model input.

    Parameters
    ----------
    frames : array_like or Tensor, shape (N, H, W) or (H, W), any numeric dtype
    prep : Preprocessing
    mask : array_like (H, W), optional
        Non-zero (or True) = bad pixel, as CXI masks.
    center : (row, col), optional
        Beam centre in input pixels (default: geometric centre).
    scale : float, optional
        Input pixels per model pixel (default ``prep.scale``: the training crop).
    device : torch.device, optional
    adu_per_photon : float, optional
        Frames are calibrated ADU (pedestal-subtracted), not photons: convert them first with
        this gain (ADU of one photon at the beam energy) and ``threshold``.
    threshold : float
        Photon-conversion threshold in photons, in (0, 1) (used with ``adu_per_photon`` only).

    Returns
    -------
    Tensor, shape (N, 1, input_size, input_size), float32
    """
    x = frames if torch.is_tensor(frames) else torch.as_tensor(np.asarray(frames))
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"frames must have shape (N, H, W) or (H, W), got {tuple(x.shape)}")
    x = x.to(device=device or x.device, dtype=torch.float32)
    if adu_per_photon is not None:
        if not float(adu_per_photon) > 0 or not 0 < float(threshold) < 1:
            raise ValueError(f"preprocess: need adu_per_photon > 0 and 0 < threshold < 1, got "
                             f"{adu_per_photon!r}, {threshold!r}")
        x = torch.where(torch.isfinite(x), adu_to_photons(x, float(adu_per_photon), float(threshold)), x)
    valid = _valid_mask(x, mask)
    h, w = x.shape[-2:]
    center = ((h - 1) / 2, (w - 1) / 2) if center is None else center
    return model_inputs(x, valid, prep, center, prep.scale if scale is None else float(scale))
