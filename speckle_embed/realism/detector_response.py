"""Detector response: photons -> ADU (gain, noise, common mode, saturation, bad pixels, charge
sharing) and the usual ADU -> photon conversion with a threshold.

A charge-integrating detector (pnCCD, AGIPD, Jungfrau) reads each pixel as ADU after pedestal
subtraction: ``adu = g_i * a * s_i + cm_row + N(0, sigma^2)`` where ``a`` is ``adu_per_photon``,
``g_i ~ N(1, gain_spread^2)`` the per-pixel relative gain (flat-field error), ``s_i`` the photon
charge collected by the pixel after **charge sharing** (a fraction ``f`` of each photon's charge
spills equally to the 4 nearest neighbours), ``cm`` the **common-mode** offset of the pixel's row
(or panel), ``sigma`` the dark noise. Values are clipped at the **saturation** level; **dead**
pixels read 0 ADU and **hot** pixels add ``Poisson(rate)`` photons each frame.

The photon conversion (what beamline software such as psana does) optionally subtracts the
common mode (per-row median of the empty pixels, :func:`common_mode_correct`), divides by ``a`` and rounds with
a ``threshold``: ``photons = floor(adu / a + 1 - threshold)`` above ``threshold``, else 0. At zero
noise and unit gain this recovers integer photon counts exactly; with dark noise ``sigma`` (in
photons) a zero-photon pixel reads >= 1 photon with probability ``Q(threshold / sigma)`` (the
Gaussian tail).

Dark noise and common mode are configured in **photons** (``sigma_ADU / a``): the ratio is what
sets the error rates, and it is comparable across detectors with different ``a``.

Example
-------
>>> g = torch.Generator().manual_seed(0)
>>> x, bad = detector_round_trip(torch.ones(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool),
...                              DetectorResponseConfig(), generator=g)
>>> x.shape
torch.Size([1, 8, 8])
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .ranges import bernoulli, check_range, log_uniform, uniform

__all__ = ["DetectorResponseConfig", "DetectorParams", "sample_detector", "photons_to_adu",
           "adu_to_photons", "common_mode_correct", "share_charge", "detector_round_trip"]


@dataclass
class DetectorResponseConfig:
    """Ranges of the detector response, each drawn per frame (uniform unless said).

    Attributes
    ----------
    p : float
        Probability per frame that the round trip is applied at all.
    adu_per_photon : [low, high]
        Gain ``a``, ADU per photon (log-uniform). pnCCD at 1.7 keV: ~20-150 depending on gain mode.
    gain_spread : [low, high]
        Relative per-pixel gain standard deviation (0.02 = 2 %), a new flat field per frame.
    dark_noise_photons : [low, high]
        Dark (read) noise sigma in photons (``sigma_ADU / a``); pnCCD ~0.05-0.15.
    common_mode_photons : [low, high]
        Standard deviation of the common-mode offsets, photons (``/ a`` of the ADU offsets).
    common_mode : str
        ``"row"`` (one offset per row, as pnCCD read-out channels), ``"panel"`` (one per panel of
        a ``panels x panels`` grid, as AGIPD/Jungfrau ASICs) or ``"either"`` (per frame).
    panels : int
        Panel grid for ``common_mode="panel"``.
    correct_common_mode_p : float
        Probability per frame that the conversion subtracts the estimated common mode.
    saturation_p : float
        Probability per frame of a finite saturation level.
    saturation_photons : [low, high]
        Saturation level, photons per pixel (log-uniform; ADU level = this x ``a``).
    dead_fraction : [low, high]
        Fraction of pixels that read 0.
    hot_fraction : [low, high]
        Fraction of pixels that are hot.
    hot_photons : [low, high]
        Mean extra photons per frame of a hot pixel (Poisson, log-uniform).
    flag_bad_p : float
        Probability that a dead/hot pixel is in the bad-pixel mask (known to the user).
    charge_sharing : [low, high]
        Fraction ``f`` of each photon's charge that spills to the 4 neighbours.
    threshold : [low, high]
        Photon-conversion threshold, photons (0.5 is the usual rounding).
    """
    p: float = 1.0
    adu_per_photon: list = field(default_factory=lambda: [20.0, 150.0])
    gain_spread: list = field(default_factory=lambda: [0.0, 0.05])
    dark_noise_photons: list = field(default_factory=lambda: [0.03, 0.2])
    common_mode_photons: list = field(default_factory=lambda: [0.0, 0.3])
    common_mode: str = "either"
    panels: int = 4
    correct_common_mode_p: float = 0.8
    saturation_p: float = 0.2
    saturation_photons: list = field(default_factory=lambda: [20.0, 1000.0])
    dead_fraction: list = field(default_factory=lambda: [0.0, 0.002])
    hot_fraction: list = field(default_factory=lambda: [0.0, 0.001])
    hot_photons: list = field(default_factory=lambda: [1.0, 30.0])
    flag_bad_p: float = 0.5
    charge_sharing: list = field(default_factory=lambda: [0.0, 0.1])
    threshold: list = field(default_factory=lambda: [0.4, 0.7])

    def __post_init__(self):
        for name in ("p", "correct_common_mode_p", "saturation_p", "flag_bad_p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"detector.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.common_mode not in ("row", "panel", "either"):
            raise ValueError(f"detector.common_mode must be row, panel or either, got {self.common_mode!r}")
        if int(self.panels) < 1:
            raise ValueError(f"detector.panels must be >= 1, got {self.panels}")
        for name in ("adu_per_photon", "saturation_photons", "hot_photons"):
            setattr(self, name, list(check_range(getattr(self, name), f"detector.{name}", positive=True)))
        for name in ("gain_spread", "dark_noise_photons", "common_mode_photons"):
            setattr(self, name, list(check_range(getattr(self, name), f"detector.{name}", low=0.0)))
        for name in ("dead_fraction", "hot_fraction", "charge_sharing"):
            setattr(self, name, list(check_range(getattr(self, name), f"detector.{name}", low=0.0, high=1.0)))
        self.threshold = list(check_range(self.threshold, "detector.threshold", low=0.0, high=1.0, positive=True))
        if self.threshold[1] >= 1.0:  # floor(x) of a noiseless n photons may give n - 1 in float
            raise ValueError(f"detector.threshold must be below 1 photon, got {self.threshold}")


@dataclass
class DetectorParams:
    """Per-frame detector parameters, float32 ``(N,)`` tensors (bool for the switches)."""
    use: torch.Tensor
    adu_per_photon: torch.Tensor
    gain_spread: torch.Tensor
    dark_noise_adu: torch.Tensor
    common_mode_adu: torch.Tensor
    panel_mode: torch.Tensor
    correct: torch.Tensor
    saturation_adu: torch.Tensor
    dead_fraction: torch.Tensor
    hot_fraction: torch.Tensor
    hot_photons: torch.Tensor
    charge_sharing: torch.Tensor
    threshold: torch.Tensor


def sample_detector(n: int, config: DetectorResponseConfig, *, generator=None, device=None) -> DetectorParams:
    """Draw the per-frame parameters (a fixed number of draws per frame, whatever ``p``)."""
    c = config
    use = bernoulli(c.p, n, generator, device)
    a = log_uniform(c.adu_per_photon, n, generator, device)
    mode = bernoulli(0.5, n, generator, device)
    panel = {"row": torch.zeros_like(mode), "panel": torch.ones_like(mode), "either": mode}[c.common_mode]
    sat_on = bernoulli(c.saturation_p, n, generator, device)
    sat = log_uniform(c.saturation_photons, n, generator, device) * a
    return DetectorParams(
        use=use, adu_per_photon=a,
        gain_spread=uniform(c.gain_spread, n, generator, device),
        dark_noise_adu=uniform(c.dark_noise_photons, n, generator, device) * a,
        common_mode_adu=uniform(c.common_mode_photons, n, generator, device) * a,
        panel_mode=panel,
        correct=bernoulli(c.correct_common_mode_p, n, generator, device),
        saturation_adu=torch.where(sat_on, sat, torch.full_like(sat, float("inf"))),
        dead_fraction=uniform(c.dead_fraction, n, generator, device),
        hot_fraction=uniform(c.hot_fraction, n, generator, device),
        hot_photons=log_uniform(c.hot_photons, n, generator, device),
        charge_sharing=uniform(c.charge_sharing, n, generator, device),
        threshold=uniform(c.threshold, n, generator, device),
    )


def _col(t, like: torch.Tensor) -> torch.Tensor:
    """Per-frame values as ``(N, 1, 1)`` on ``like``'s device and dtype (scalars broadcast)."""
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    return t.reshape(-1, 1, 1) if t.ndim else t


def share_charge(photons: torch.Tensor, fraction) -> torch.Tensor:
    """Charge after sharing: each pixel keeps ``1 - f`` of its charge, each of its 4 neighbours
    gets ``f / 4`` (charge leaving the frame edge is lost). ``fraction``: scalar or ``(N,)``."""
    f = _col(fraction, photons)
    p = F.pad(photons, (1, 1, 1, 1))  # shifted sums: much faster than conv2d for one channel on CPU
    nb = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    return (1 - f) * photons + f / 4 * nb


def _offsets(shape, sigma_adu: torch.Tensor, panel_mode: torch.Tensor, panels: int, *, generator, device):
    """Common-mode offsets ``(N, H, W)`` ADU: one ``N(0, sigma^2)`` per row or per panel."""
    n, h, w = shape
    rows = torch.randn((n, h, 1), generator=generator, device=device)
    pan = torch.randn((n, panels, panels), generator=generator, device=device)
    ri = torch.arange(h, device=device) * panels // h
    ci = torch.arange(w, device=device) * panels // w
    per_panel = pan[:, ri][:, :, ci]
    off = torch.where(panel_mode.reshape(-1, 1, 1), per_panel, rows.expand(n, h, w))
    return off * sigma_adu.reshape(-1, 1, 1)


def photons_to_adu(photons: torch.Tensor, params: DetectorParams, *, panels: int = 4, generator=None) -> torch.Tensor:
    """Raw (pedestal-subtracted) ADU ``(N, H, W)`` from photons: sharing, gain, common mode, noise,
    saturation (dead/hot pixels are :func:`detector_round_trip`'s business)."""
    x = photons.clamp_min(0)
    n = x.shape[0]
    dev = x.device
    gain = 1 + params.gain_spread.reshape(-1, 1, 1) * torch.randn(x.shape, generator=generator, device=dev)
    noise = torch.randn(x.shape, generator=generator, device=dev)
    cm = _offsets(x.shape, params.common_mode_adu, params.panel_mode, panels, generator=generator, device=dev)
    if bool((params.charge_sharing > 0).any()):
        x = share_charge(x, params.charge_sharing)
    a = params.adu_per_photon.reshape(n, 1, 1)
    adu = gain * a * x + cm + params.dark_noise_adu.reshape(n, 1, 1) * noise
    return torch.minimum(adu, params.saturation_adu.reshape(n, 1, 1))


def common_mode_correct(adu: torch.Tensor, adu_per_photon, *, bad: torch.Tensor | None = None,
                        cut: float = 0.5, quantile: float = 0.05, segments: int = 1) -> torch.Tensor:
    """Subtract the common mode of each row (or of each row segment of a panel), estimated from
    its empty (zero-photon) pixels.

    The zero-photon peak is the lowest peak of a row's values: start from the row's ``quantile``
    (which lies in that peak when at least that fraction of the row is empty, true of any SPI
    frame however bright its centre, and whatever the offset), then twice take the median of the
    good pixels within ``cut`` photons of the current estimate; the result is subtracted.
    ``segments > 1`` splits each row into that many column blocks (columns ``c`` with
    ``c * segments // W == j``, the panels of :func:`photons_to_adu`) corrected separately, as
    per-ASIC software does. A row (segment) without good pixels is left as is.
    ``adu_per_photon``: scalar or ``(N,)``.
    """
    w = adu.shape[-1]
    if int(segments) > 1:
        out = torch.empty_like(adu)
        cols = torch.arange(w) * int(segments) // w
        for j in range(int(segments)):
            idx = torch.nonzero(cols == j)[:, 0]
            if idx.numel():
                sl = slice(int(idx[0]), int(idx[-1]) + 1)
                out[..., sl] = common_mode_correct(adu[..., sl], adu_per_photon,
                                                   bad=None if bad is None else bad[..., sl],
                                                   cut=cut, quantile=quantile)
        return out
    a = _col(adu_per_photon, adu)
    nan = torch.full_like(adu, float("nan"))
    good = torch.ones_like(adu, dtype=torch.bool) if bad is None else ~bad
    est = torch.nanquantile(torch.where(good, adu, nan), quantile, dim=-1, keepdim=True)
    for _ in range(2):
        near = good & ((adu - est).abs() < cut * a)
        est = torch.nanmedian(torch.where(near, adu, nan), dim=-1, keepdim=True).values
    return adu - torch.nan_to_num(est, nan=0.0)


def adu_to_photons(adu, adu_per_photon, threshold=0.5, *, common_mode: bool = False, bad=None,
                   cut: float = 0.5) -> torch.Tensor:
    """Photon counts from calibrated (pedestal-subtracted) ADU frames.

    Parameters
    ----------
    adu : array_like or Tensor (N, H, W) or (H, W)
        Pedestal-subtracted detector values, ADU.
    adu_per_photon : float or (N,)
        ADU of one photon at the beam energy (detector gain x photon energy).
    threshold : float or (N,)
        In photons, in (0, 1): values below it read 0, above ``floor(x + 1 - threshold)``.
    common_mode : bool
        First subtract per-row common mode (:func:`common_mode_correct`).
    bad : bool array like ``adu``, optional
        Pixels excluded from the common-mode estimate.
    cut : float
        Half-width, photons, of the window about the row median whose pixels count as empty
        for the common-mode estimate.

    Returns
    -------
    Tensor, same shape, float32: integer photon counts.
    """
    x = adu if torch.is_tensor(adu) else torch.as_tensor(adu)
    x = x.to(torch.float32)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    if bad is not None:
        bad = torch.as_tensor(bad, device=x.device).bool()
        bad = bad[None] if bad.ndim == 2 else bad
    if common_mode:
        x = common_mode_correct(x, adu_per_photon, bad=bad, cut=cut)
    ph = x / _col(adu_per_photon, x)
    t = _col(threshold, x)
    out = torch.floor(ph + 1 - t).clamp_min(0)  # = 0 below the threshold, floor(ph + 1 - t) above
    return out[0] if squeeze else out


def detector_round_trip(photons: torch.Tensor, bad: torch.Tensor, config: DetectorResponseConfig, *,
                        generator=None, params: DetectorParams | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Photon frames -> ADU -> photon-converted frames, as a real detector and its software would.

    Parameters
    ----------
    photons : Tensor (N, H, W) float32
    bad : BoolTensor (N, H, W)
        Known bad pixels (True); flagged dead/hot pixels are added.
    config : DetectorResponseConfig
    generator : torch.Generator, optional
    params : DetectorParams, optional
        Fixed per-frame parameters (otherwise drawn from ``config``).

    Returns
    -------
    photons : Tensor (N, H, W) float32 (frames with ``use`` False unchanged), bad : BoolTensor.
    """
    n = photons.shape[0]
    dev = photons.device
    if params is None:
        params = sample_detector(n, config, generator=generator, device=dev)
    # one uniform per pixel: dead if u < fd, hot if fd <= u < fd + fh; flagged (in the mask) if
    # u falls in the first flag_bad_p part of its interval (given dead/hot, u is uniform in it)
    u = torch.rand(photons.shape, generator=generator, device=dev)
    fd = params.dead_fraction.reshape(-1, 1, 1)
    fh = params.hot_fraction.reshape(-1, 1, 1)
    fp = float(config.flag_bad_p)
    dead = u < fd
    hot = (u >= fd) & (u < fd + fh)
    flagged = (u < fd * fp) | (hot & (u < fd + fh * fp))
    x = photons
    where = torch.nonzero(hot, as_tuple=True)
    if where[0].numel():  # sparse: sample only the hot pixels
        x = photons.clone()
        x[where] += torch.poisson(params.hot_photons.to(x.dtype)[where[0]], generator=generator)
    adu = photons_to_adu(x, params, panels=int(config.panels), generator=generator)
    adu = adu.masked_fill(dead, 0.0)
    new_bad = bad | flagged
    for panel in (False, True):  # correction only on the frames whose software does it, per row / per panel
        fix = torch.nonzero(params.correct & (params.panel_mode == panel))[:, 0]
        if fix.numel():
            adu[fix] = common_mode_correct(adu[fix], params.adu_per_photon[fix], bad=new_bad[fix],
                                           segments=int(config.panels) if panel else 1)
    out = adu_to_photons(adu, params.adu_per_photon, params.threshold)
    use = params.use.reshape(-1, 1, 1)
    out = torch.where(use, out, photons)
    new_bad = torch.where(use, new_bad, bad)
    return torch.where(new_bad, torch.zeros_like(out), out), new_bad
