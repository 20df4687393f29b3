"""Detector layouts as bad-pixel masks: random gaps, beam stops and missing panels (augmentation,
held-out domains) and presets of real instruments.

Masks are bool, ``True`` = bad (no data). Random layouts are drawn per frame from a
:class:`LayoutConfig`; a :class:`DetectorPreset` holds an instrument's geometry numbers and a
function building its mask.

Example
-------
>>> m = random_layout(torch.Size([2, 64, 64]), LayoutConfig(), generator=torch.Generator().manual_seed(0))
>>> m.shape, m.dtype
(torch.Size([2, 64, 64]), torch.bool)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .background import radial_distance
from .ranges import bernoulli, check_range, uniform

__all__ = ["LayoutConfig", "random_layout", "gap_mask", "beamstop_mask", "DetectorPreset", "PRESETS",
           "get_preset"]


@dataclass
class LayoutConfig:
    """Ranges of random detector layouts, drawn per frame.

    Attributes
    ----------
    p : float
        Probability per frame that a random layout is applied.
    gap_p : float
        Probability of a straight gap through (or near) the beam centre.
    gap_width_px : [low, high]
        Gap width, pixels.
    gap_offset_px : [low, high]
        Offset of the gap's centre line from the beam centre, pixels.
    cross_p : float
        Probability of a second, perpendicular gap (quadrant detectors: CSPAD, AGIPD, Jungfrau).
    beamstop_p : float
        Probability of a beam stop.
    beamstop_half_px : [low, high]
        Disc radius / half side of a rectangular stop, pixels.
    disc_p : float
        Probability that the stop is a disc (else a rectangle with aspect ratio 0.6-1.6).
    arm_p : float
        Probability that the stop has a holder arm to the frame edge at a random angle.
    arm_width_px : [low, high]
        Holder arm width, pixels.
    panel_p : float
        Probability of missing panels.
    panels : int
        Panel grid ``panels x panels`` for missing panels.
    missing_panels : [low, high]
        Number of missing panels (integers, inclusive).
    """
    p: float = 1.0
    gap_p: float = 0.7
    gap_width_px: list = field(default_factory=lambda: [1.0, 8.0])
    gap_offset_px: list = field(default_factory=lambda: [-3.0, 3.0])
    cross_p: float = 0.2
    beamstop_p: float = 0.8
    beamstop_half_px: list = field(default_factory=lambda: [1.0, 8.0])
    disc_p: float = 0.5
    arm_p: float = 0.3
    arm_width_px: list = field(default_factory=lambda: [1.0, 4.0])
    panel_p: float = 0.15
    panels: int = 4
    missing_panels: list = field(default_factory=lambda: [1, 3])

    def __post_init__(self):
        for name in ("p", "gap_p", "cross_p", "beamstop_p", "disc_p", "arm_p", "panel_p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"layout.{name} must be in [0, 1], got {getattr(self, name)}")
        if int(self.panels) < 1:
            raise ValueError(f"layout.panels must be >= 1, got {self.panels}")
        self.gap_width_px = list(check_range(self.gap_width_px, "layout.gap_width_px", positive=True))
        self.gap_offset_px = list(check_range(self.gap_offset_px, "layout.gap_offset_px"))
        self.beamstop_half_px = list(check_range(self.beamstop_half_px, "layout.beamstop_half_px", positive=True))
        self.arm_width_px = list(check_range(self.arm_width_px, "layout.arm_width_px", positive=True))
        self.missing_panels = [int(v) for v in check_range(self.missing_panels, "layout.missing_panels", low=0,
                                                          high=int(self.panels) ** 2)]


def gap_mask(dy: torch.Tensor, dx: torch.Tensor, width, offset=0.0, vertical=True) -> torch.Tensor:
    """Straight gap of ``width`` pixels whose centre line is ``offset`` pixels from the beam
    centre: columns (``vertical``) or rows. ``dy, dx``: pixel offsets from the beam centre
    (broadcastable to (N, H, W), as :func:`~speckle_embed.realism.background.radial_distance` gives);
    other arguments scalars or ``(N,)``. A pixel is in the gap if its centre is."""
    col = lambda t: torch.as_tensor(t, device=dy.device).reshape(-1, 1, 1)  # noqa: E731
    d = torch.where(col(vertical), dx, dy) - col(offset)
    return d.abs() < col(width) / 2


def beamstop_mask(dy, dx, half, *, disc=True, aspect=1.0) -> torch.Tensor:
    """Beam stop about the beam centre: a disc of radius ``half`` or a ``2 half x 2 half aspect``
    rectangle (rows x cols), pixels; arguments scalars or ``(N,)``."""
    col = lambda t: torch.as_tensor(t, device=dy.device).reshape(-1, 1, 1)  # noqa: E731
    h = col(half)
    in_disc = dy ** 2 + dx ** 2 <= h ** 2
    in_rect = (dy.abs() <= h) & (dx.abs() <= h * col(aspect))
    return torch.where(col(disc), in_disc, in_rect)


def random_layout(shape, config: LayoutConfig, *, generator=None, center=None, device=None) -> torch.Tensor:
    """Bool ``(N, H, W)`` mask of a random layout per frame (fixed draws per frame)."""
    n, h, w = shape
    c = config
    g = generator
    use = bernoulli(c.p, n, g, device)
    dy, dx = radial_distance(n, h, w, center, device=device)
    gap_on = bernoulli(c.gap_p, n, g, device) & use
    vertical = bernoulli(0.5, n, g, device)
    width = uniform(c.gap_width_px, n, g, device)
    offset = uniform(c.gap_offset_px, n, g, device)
    cross_on = bernoulli(c.cross_p, n, g, device) & gap_on
    width2 = uniform(c.gap_width_px, n, g, device)
    offset2 = uniform(c.gap_offset_px, n, g, device)
    stop_on = bernoulli(c.beamstop_p, n, g, device) & use
    half = uniform(c.beamstop_half_px, n, g, device)
    disc = bernoulli(c.disc_p, n, g, device)
    aspect = uniform([0.6, 1.6], n, g, device)
    arm_on = bernoulli(c.arm_p, n, g, device) & stop_on
    arm_angle = uniform([0.0, 2 * math.pi], n, g, device)
    arm_width = uniform(c.arm_width_px, n, g, device)
    panel_on = bernoulli(c.panel_p, n, g, device) & use
    k = int(c.panels)
    scores = torch.rand((n, k * k), generator=g, device=device)
    count = torch.randint(c.missing_panels[0], c.missing_panels[1] + 1, (n,), generator=g, device=device)

    on = lambda b: b.reshape(-1, 1, 1)  # noqa: E731
    col = lambda t: t.reshape(-1, 1, 1)  # noqa: E731
    # gaps are separable: a row profile (N, H, 1) or a column profile (N, 1, W), broadcast once
    def lines(wid, off, vert, active):
        in_rows = ((dy - col(off)).abs() < col(wid) / 2) & on(active & ~vert)
        in_cols = ((dx - col(off)).abs() < col(wid) / 2) & on(active & vert)
        return in_rows | in_cols

    mask = lines(width, offset, vertical, gap_on) | lines(width2, offset2, ~vertical, cross_on)
    mask = mask | (beamstop_mask(dy, dx, half, disc=disc, aspect=aspect) & on(stop_on))
    arm = torch.nonzero(arm_on)[:, 0]
    if arm.numel():
        ang = col(arm_angle[arm])
        along = dy[arm] * torch.sin(ang) + dx[arm] * torch.cos(ang)
        across = -dy[arm] * torch.cos(ang) + dx[arm] * torch.sin(ang)
        mask[arm] |= (along >= 0) & (across.abs() < col(arm_width[arm]) / 2)
    pan = torch.nonzero(panel_on)[:, 0]
    if pan.numel():
        rank = scores[pan].argsort(1).argsort(1)  # random order of the panels
        missing = (rank < count[pan, None]).reshape(-1, k, k)
        rows = torch.arange(h, device=device) * k // h
        cols = torch.arange(w, device=device) * k // w
        mask[pan] |= missing[:, rows][:, :, cols]
    return mask


# ---------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class DetectorPreset:
    """An instrument's detector: geometry numbers and its mask.

    Attributes
    ----------
    name : str
    distance_m : float
        Sample-detector distance, metres.
    pixel_m : float
        Native pixel side, metres.
    binning : int
        Binning factor of the frames (pixel side in the frames = ``binning * pixel_m``).
    n_pixels : int
        Side of the (binned, square) frame, pixels.
    photon_energy_ev : float
    mask : callable () -> ndarray (n_pixels, n_pixels) bool
        True = bad (gaps, beam stop, missing area).
    note : str
        Where the numbers come from and what is approximate.
    """
    name: str
    distance_m: float
    pixel_m: float
    binning: int
    n_pixels: int
    photon_energy_ev: float
    mask: Callable[[], np.ndarray]
    note: str = ""

    @property
    def detector_side_m(self) -> float:
        return self.n_pixels * self.binning * self.pixel_m

    def geometry_dict(self) -> dict:
        """Fields for ``simulate.geometry.Geometry`` (metres, eV), without the beam settings."""
        return {"n_pixels": self.n_pixels, "detector_side_m": self.detector_side_m,
                "distance_m": self.distance_m, "photon_energy_ev": self.photon_energy_ev}


def _grid(n):
    r = np.arange(n) - (n - 1) / 2
    return r[:, None] + 0 * r[None, :], r[None, :] + 0 * r[:, None]


def _two_halves(n: int, gap_px: int, stop_px: int, *, vertical: bool = False) -> np.ndarray:
    """pnCCD: two halves split by a central gap of ``gap_px`` rows (or columns if ``vertical``)
    and a square central stop/hole of ``stop_px``; integer placement as
    ``simulate.geometry.detector_mask`` (start at ``(n - size) // 2``)."""
    m = np.zeros((n, n), dtype=bool)
    g0 = (n - gap_px) // 2
    if vertical:
        m[:, g0:g0 + gap_px] = True
    else:
        m[g0:g0 + gap_px, :] = True
    s0 = (n - stop_px) // 2
    m[s0:s0 + stop_px, s0:s0 + stop_px] = True
    return m


def _modules(n_mod_rows: int, n_mod_cols: int, mod_shape, gap_px: int, quad_gap_px: int, hole_px: int,
             binning: int) -> np.ndarray:
    """Tiled modules with gaps (native pixels), a central hole, binned by ``binning`` (a binned
    pixel is bad if any native pixel under it is), cropped/padded to a square frame."""
    mh, mw = mod_shape
    hh = n_mod_rows * mh + (n_mod_rows - 1) * gap_px + quad_gap_px
    ww = n_mod_cols * mw + (n_mod_cols - 1) * gap_px + quad_gap_px
    side = max(hh, ww)
    side += (-side) % binning
    m = np.ones((side, side), dtype=bool)
    r0 = (side - hh) // 2
    c0 = (side - ww) // 2
    for i in range(n_mod_rows):
        extra_r = quad_gap_px if i >= n_mod_rows // 2 else 0
        for j in range(n_mod_cols):
            extra_c = quad_gap_px if j >= n_mod_cols // 2 else 0
            r = r0 + i * (mh + gap_px) + extra_r
            c = c0 + j * (mw + gap_px) + extra_c
            m[r:r + mh, c:c + mw] = False
    cy = cx = (side - 1) / 2
    yy, xx = np.ogrid[:side, :side]
    m |= (np.abs(yy - cy) <= hole_px / 2) & (np.abs(xx - cx) <= hole_px / 2)
    b = binning
    return m.reshape(side // b, b, side // b, b).any(axis=(1, 3))


PRESETS: dict[str, DetectorPreset] = {
    "amo_pnccd_front_bin4": DetectorPreset(
        "amo_pnccd_front_bin4", 0.586, 75e-6, 4, 256, 1600.0, lambda: _two_halves(256, 2, 8),
        "LCLS AMO front pnCCD as in CXIDB entry 58 (PR772): 1024x1024 pixels of 75 um at 0.586 m, binned 4; "
        "two halves split by a horizontal central gap (modelled as 8 native = 2 binned pixels) and an 8x8 "
        "binned-pixel central hole. Gap and hole sizes are APPROXIMATE (the halves move between runs); "
        "np.rot90 the mask if your assembled frames have the gap vertical."),
    "amo_pnccd_front_bin8": DetectorPreset(
        "amo_pnccd_front_bin8", 0.586, 75e-6, 8, 128, 1600.0, lambda: _two_halves(128, 1, 4),
        "As amo_pnccd_front_bin4, binned 8: 128x128 pixels of 600 um; gap 1, hole 4x4 binned pixels (approx.)."),
    "amo_pnccd_back_bin4": DetectorPreset(
        "amo_pnccd_back_bin4", 2.4, 75e-6, 4, 256, 1600.0, lambda: _two_halves(256, 2, 4),
        "LCLS AMO/CAMP back pnCCD: same 1024x1024 x 75 um sensor further downstream. The distance 2.4 m is an "
        "APPROXIMATE placeholder (not taken from CXIDB 58): set distance_m from your run's metadata."),
    "pr772_pnccd": DetectorPreset(
        "pr772_pnccd", 0.13, 75e-6, 8, 128, 1700.0, lambda: _two_halves(128, 1, 2, vertical=True),
        "Our PR772-like pnCCD (simulate.geometry.pnccd_geometry(binning=8), conf/simulate/geometry/pnccd.yaml)."),
    "spb_agipd1m_bin4": DetectorPreset(
        "spb_agipd1m_bin4", 0.7, 200e-6, 4, 268, 6000.0,
        lambda: _modules(8, 2, (128, 512), gap_px=4, quad_gap_px=20, hole_px=24, binning=4),
        "EuXFEL SPB/SFX AGIPD 1M: 16 modules of 128x512 pixels of 200 um. APPROXIMATE layout: modules on a "
        "regular 8x2 grid with 4-px gaps, a 20-px cross between quadrants and a central hole (the real "
        "quadrants are staggered and movable); distance and energy typical, set them for your run."),
    "jungfrau4m_bin8": DetectorPreset(
        "jungfrau4m_bin8", 1.0, 75e-6, 8, 259, 6000.0,
        lambda: _modules(8, 4, (256, 512), gap_px=2, quad_gap_px=10, hole_px=16, binning=8),
        "Jungfrau 4M: 8 modules of 512x1024 pixels of 75 um (each 2x4 chips of 256x256). APPROXIMATE layout: "
        "modules as a regular grid of 256x512 half-modules with 2-px gaps and a 10-px central cross; "
        "inter-chip double pixels are not modelled; distance and energy typical."),
    "epix10k2m_bin8": DetectorPreset(
        "epix10k2m_bin8", 0.6, 100e-6, 8, 196, 4000.0,
        lambda: _modules(4, 4, (352, 384), gap_px=4, quad_gap_px=20, hole_px=24, binning=8),
        "LCLS ePix10k2M: 16 modules of 352x384 pixels of 100 um (each 2x2 ASICs of 176x192). APPROXIMATE "
        "layout: modules on a regular 4x4 grid with 4-px gaps, a 20-px cross between quadrants and a central "
        "hole (the real quadrants are rotated and movable); distance and energy typical, set them for your "
        "run. PR772 speckles span ~6 binned pixels. The second validation domain of docs/domains.md."),
    "cspad_bin6": DetectorPreset(
        "cspad_bin6", 0.6, 110e-6, 6, 264, 6000.0,
        lambda: _modules(8, 4, (185, 388), gap_px=4, quad_gap_px=20, hole_px=24, binning=6),
        "LCLS CXI CSPAD 2.3M: 32 sensors ('2x1') of 185x388 pixels of 110 um. APPROXIMATE layout: the sensors "
        "on a regular 8x4 grid with 4-px gaps, a 20-px cross between quadrants and a central hole (the real "
        "sensors sit in four pinwheel quadrants, half of them rotated 90 degrees); distance and energy "
        "typical, set them for your run. PR772 speckles span ~2.7 binned pixels, like the blind pnCCD frames "
        "(~2.3). The third validation domain of docs/domains.md."),
}


def get_preset(name: str) -> DetectorPreset:
    """The preset called ``name`` (``ValueError`` listing the known names otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown detector preset {name!r}; known: {sorted(PRESETS)}") from None
