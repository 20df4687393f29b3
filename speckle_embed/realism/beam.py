"""Beam and sampling effects on the **expected** intensity (before Poisson) and pixel binning.

- **Finite bandwidth** (SASE ``Delta lambda / lambda`` ~0.1-1 %): each wavelength gives the same
  pattern scaled radially about the beam centre (small-angle: ``q ~ r / lambda``), so the pattern is
  the spectrum-weighted mean of radially rescaled copies ``I(r / s) / s^2`` with ``s = 1 + b xi``,
  ``xi`` the quadrature nodes of a Gaussian spectrum of FWHM ``b``. A speckle at radius ``r`` is
  smeared radially over ``~ r b`` pixels; ``/ s^2`` conserves the photons of each copy.
- **Partial coherence**: the speckle visibility falls; modelled as a Gaussian blur of the expected
  intensity with ``sigma`` pixels (the transverse coherence length ``~ lambda D / (2 pi sigma
  pixel)`` ...), renormalised at the frame edge so the total is conserved.
- **Pixel-area integration / binning**: :func:`bin_pixels` sums ``b x b`` photon counts, exact
  for Poisson counts (a sum of Poisson variables is Poisson).

Example
-------
>>> x = torch.rand(1, 32, 32)
>>> y = bandwidth_smear(x, 0.01)
>>> bool(torch.isclose(y.sum(), x.sum(), rtol=0.05))
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .ranges import bernoulli, check_range, uniform

__all__ = ["BeamConfig", "bandwidth_smear", "coherence_blur", "bin_pixels", "apply_beam"]

_NODES = 9  # Gauss-Hermite nodes of the spectrum: copies < 0.5 px apart for r * bandwidth < 100 px


@dataclass
class BeamConfig:
    """Ranges of the beam effects on the expected intensity, drawn per frame.

    Attributes
    ----------
    p : float
        Probability per frame that the beam effects are applied.
    bandwidth : [low, high]
        Relative bandwidth ``Delta lambda / lambda`` (FWHM of a Gaussian spectrum); SASE 0.001-0.01.
    coherence_p : float
        Probability per frame of a partial-coherence blur.
    coherence_sigma_px : [low, high]
        Gaussian blur sigma of the expected intensity, pixels.
    """
    p: float = 1.0
    bandwidth: list = field(default_factory=lambda: [0.001, 0.01])
    coherence_p: float = 0.5
    coherence_sigma_px: list = field(default_factory=lambda: [0.0, 0.7])

    def __post_init__(self):
        for name in ("p", "coherence_p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"beam.{name} must be in [0, 1], got {getattr(self, name)}")
        self.bandwidth = list(check_range(self.bandwidth, "beam.bandwidth", low=0.0, high=0.2))
        self.coherence_sigma_px = list(check_range(self.coherence_sigma_px, "beam.coherence_sigma_px", low=0.0))


def _center(n, h, w, center, device):
    if center is None:
        return torch.tensor([[(h - 1) / 2, (w - 1) / 2]], device=device).expand(n, 2)
    c = torch.as_tensor(center, dtype=torch.float32, device=device)
    return c.reshape(1, 2).expand(n, 2) if c.numel() == 2 else c.reshape(n, 2)


def bandwidth_smear(expected: torch.Tensor, bandwidth, *, center=None) -> torch.Tensor:
    """Radial smearing by a Gaussian spectrum of relative FWHM ``bandwidth`` (scalar or ``(N,)``).

    ``expected``: (N, H, W) expected photons per pixel -> same shape; the total is conserved up
    to photons moved across the frame edge.
    """
    n, h, w = expected.shape
    dev = expected.device
    b = torch.as_tensor(bandwidth, dtype=torch.float32, device=dev).reshape(-1).expand(n)
    sel = torch.nonzero(b > 0)[:, 0]
    if sel.numel() < n:  # frames without bandwidth stay exactly as they are
        if sel.numel() == 0:
            return expected
        c = None if center is None else _center(n, h, w, center, dev)[sel]
        return expected.index_copy(0, sel, bandwidth_smear(expected[sel], b[sel], center=c))
    nodes, weights = np.polynomial.hermite_e.hermegauss(_NODES)  # weight exp(-x^2 / 2)
    weights = weights / weights.sum()
    sigma = b / (2 * math.sqrt(2 * math.log(2)))  # FWHM -> sigma of the relative wavelength
    c = _center(n, h, w, center, dev)
    yy = torch.arange(h, device=dev, dtype=torch.float32)[None, :, None] - c[:, 0, None, None]
    xx = torch.arange(w, device=dev, dtype=torch.float32)[None, None, :] - c[:, 1, None, None]
    out = torch.zeros_like(expected)
    data = expected[:, None].float()
    for xi, wt in zip(nodes, weights):
        s = (1 + sigma * float(xi)).clamp_min(0.5)[:, None, None]
        rows, cols = torch.broadcast_tensors(c[:, 0, None, None] + yy / s, c[:, 1, None, None] + xx / s)
        grid = torch.stack([cols / max(w - 1, 1) * 2 - 1, rows / max(h - 1, 1) * 2 - 1], -1)
        copy = F.grid_sample(data, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
        out = out + float(wt) * copy / s ** 2
    return out.to(expected.dtype)


def coherence_blur(expected: torch.Tensor, sigma_px) -> torch.Tensor:
    """Gaussian blur with ``sigma_px`` (scalar or ``(N,)``; 0 = none) pixels, total conserved.

    Separable convolution; the kernel weight falling outside the frame is renormalised away so a
    uniform frame stays uniform.
    """
    n, h, w = expected.shape
    s = torch.as_tensor(sigma_px, dtype=torch.float32, device=expected.device).reshape(-1).expand(n)
    smax = float(s.max())
    if smax <= 0:
        return expected
    rad = max(1, int(math.ceil(3 * smax)))
    t = torch.arange(-rad, rad + 1, device=expected.device, dtype=torch.float32)
    k = torch.exp(-t[None] ** 2 / (2 * s[:, None].clamp_min(1e-6) ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, K); sigma -> 0 gives a delta
    x = expected[None].float()  # (1, N, H, W): one group per frame
    ones = torch.ones_like(x)
    out = F.conv2d(x, k[:, None, :, None], padding=(rad, 0), groups=n)
    out = F.conv2d(out, k[:, None, None, :], padding=(0, rad), groups=n)
    norm = F.conv2d(F.conv2d(ones, k[:, None, :, None], padding=(rad, 0), groups=n),
                    k[:, None, None, :], padding=(0, rad), groups=n)
    return (out / norm)[0].to(expected.dtype)


def bin_pixels(frames: torch.Tensor, bad: torch.Tensor | None, factor: int, *,
               rule: str = "any") -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``factor x factor`` pixels (the detector's or software binning).

    Parameters
    ----------
    frames : Tensor (N, H, W) photons; H and W are cropped to multiples of ``factor``.
    bad : BoolTensor (N, H, W) or (H, W) or None
    factor : int >= 1
    rule : ``"any"`` (a binned pixel is bad if any sub-pixel is: counts stay exact Poisson sums)
        or ``"all"`` (bad only if all are; the sum over the good sub-pixels is scaled by
        ``factor^2 / n_good``: unbiased mean but no longer Poisson).

    Returns
    -------
    frames (N, H // factor, W // factor) float32, bad (same shape) bool
    """
    b = int(factor)
    if b < 1:
        raise ValueError(f"bin_pixels: factor must be >= 1, got {factor}")
    if rule not in ("any", "all"):
        raise ValueError(f"bin_pixels: rule must be 'any' or 'all', got {rule!r}")
    n, h, w = frames.shape
    hb, wb = h // b, w // b
    x = frames[:, :hb * b, :wb * b].float()
    if bad is None:
        bad = torch.zeros_like(x, dtype=torch.bool)
    bad = torch.as_tensor(bad, device=x.device).bool()
    bad = (bad.expand(n, h, w) if bad.ndim == 2 else bad)[:, :hb * b, :wb * b]
    good = (~bad).float()
    s = (x * good).reshape(n, hb, b, wb, b).sum((2, 4))
    n_good = good.reshape(n, hb, b, wb, b).sum((2, 4))
    if rule == "any":
        out_bad = n_good < b * b
        out = s
    else:
        out_bad = n_good == 0
        out = s * (b * b) / n_good.clamp_min(1)
    return torch.where(out_bad, torch.zeros_like(out), out), out_bad


def apply_beam(expected: torch.Tensor, config: BeamConfig, *, generator=None, center=None) -> torch.Tensor:
    """Per-frame random bandwidth smearing and coherence blur of expected intensities ``(N, H, W)``."""
    n = expected.shape[0]
    dev = expected.device
    use = bernoulli(config.p, n, generator, dev)
    bw = uniform(config.bandwidth, n, generator, dev) * use
    coh = bernoulli(config.coherence_p, n, generator, dev) & use
    sig = uniform(config.coherence_sigma_px, n, generator, dev) * coh
    x = expected
    if bool((bw > 0).any()):
        x = bandwidth_smear(x, bw, center=center)
    if bool((sig > 0).any()):
        x = coherence_blur(x, sig)
    return x
