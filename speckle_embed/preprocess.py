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


def resample_center(frames: torch.Tensor, valid: torch.Tensor, out_size: int, scale: float,
                    center=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``out_size x out_size`` pixels around ``center`` with ``scale`` input pixels each.

    Parameters
    ----------
    frames : Tensor (N, H, W) float
    valid : Tensor (N, H, W) bool
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
            sl = (slice(None), slice(r0, r0 + out_size), slice(c0, c0 + out_size))
            return frames[sl], valid[sl]
    # General case: area-weighted sampling with a box filter of width `scale`.
    vf = valid.to(frames.dtype)
    data = torch.stack([torch.where(valid, frames, torch.zeros_like(frames)), vf], 1)  # (N,2,H,W)
    k = max(int(round(scale)), 1)
    # The outside of the frame is missing data, exactly like masked pixels: pad k zero-weight
    # pixels so that the box filter near the frame edge sees them as such (a window that
    # overhangs the frame then gives what a larger, masked canvas would).
    data = F.pad(data, (k, k, k, k))
    h, w, cy, cx = h + 2 * k, w + 2 * k, cy + k, cx + k
    if k > 1:  # pre-filter by average pooling so each output pixel averages ~scale^2 inputs
        data = F.avg_pool2d(data, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
        data = data[..., :h, :w]
    offs = (torch.arange(out_size, device=frames.device, dtype=frames.dtype) - (out_size - 1) / 2) * scale
    ys = (cy + offs) / (h - 1) * 2 - 1
    xs = (cx + offs) / (w - 1) * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(n, out_size, out_size, 2)
    out = F.grid_sample(data, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    weight = out[:, 1]
    good = weight > 1e-3
    values = torch.where(good, out[:, 0] / weight.clamp_min(1e-3), torch.zeros_like(weight))
    return values, good


def normalise(frames: torch.Tensor, valid: torch.Tensor, *, log: bool = True, eps: float = 1e-3) -> torch.Tensor:
    """``log1p`` (optional) and per-frame standardisation over valid pixels; invalid -> 0."""
    x = torch.where(valid, frames.clamp_min(0.0), torch.zeros_like(frames))
    if log:
        x = torch.log1p(x)
    v = valid.to(x.dtype)
    count = v.sum((-2, -1), keepdim=True).clamp_min(1.0)
    mean = (x * v).sum((-2, -1), keepdim=True) / count
    var = (((x - mean) * v) ** 2).sum((-2, -1), keepdim=True) / count
    x = (x - mean) / (var.sqrt() + eps)
    return torch.where(valid, x, torch.zeros_like(x))


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
    x, valid = resample_center(x, valid, prep.input_size, prep.scale if scale is None else float(scale), center)
    return normalise(x, valid, log=prep.log, eps=prep.eps)[:, None]
