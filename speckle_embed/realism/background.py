"""Background photons that real XFEL frames hold and a particle's pattern does not.

Sources (all in **expected photons per pixel**, added as Poisson photons, which is exact for
photon-counted frames: a sum of independent Poisson counts is Poisson):

- **gas / injector / aerosol scattering**: smooth and radially decaying about the beam centre,
  ``A (1 + (r / r0)^2)^(-alpha / 2)`` (a Lorentzian-like profile; ``alpha`` 2-4: ``alpha = 2``
  is Ornstein-Zernike-like scattering of gas density fluctuations, ``alpha = 4`` Porod-like
  scattering of droplets/aerosol). ``A`` (photons per pixel at the beam centre) varies from shot
  to shot: a lognormal factor ``exp(N(0, amplitude_spread))`` about the frame's median.
- **parasitic streaks**: scattering off slits and apertures upstream, a thin line through (or
  a few pixels beside) the beam stop at a random angle, falling off exponentially along its length
  ``S exp(-|t| / L) exp(-d^2 / (2 w^2))`` (``t`` along, ``d`` across the streak).
- **halo**: a ring of scattering off the beam stop edge, ``H exp(-(r - R)^2 / (2 sigma^2))``.
- **stray light**: uniform ``B`` photons per pixel (visible light leaks, fluorescence).

Example
-------
>>> g = torch.Generator().manual_seed(0)
>>> x = add_background(torch.zeros(2, 32, 32), BackgroundConfig(), generator=g)
>>> x.shape
torch.Size([2, 32, 32])
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .ranges import bernoulli, check_range, log_uniform, uniform

__all__ = ["BackgroundConfig", "BackgroundParams", "sample_background", "background_rate", "add_background",
           "radial_distance"]


@dataclass
class BackgroundConfig:
    """Ranges of the background of a frame (each drawn per frame, see the module notes).

    Attributes
    ----------
    p : float
        Probability per frame that any background is added.
    gas_photons : [low, high]
        Median gas/aerosol scattering at the beam centre ``A``, photons per pixel (log-uniform).
    amplitude_spread : float
        Shot-to-shot lognormal sigma of ``A`` (dimensionless; 0 = constant).
    gas_r0_px : [low, high]
        Core radius ``r0`` of the gas profile, pixels.
    gas_alpha : [low, high]
        Power-law exponent ``alpha`` of the gas profile's tail (dimensionless).
    streak_p : float
        Probability per frame of a parasitic streak.
    streak_photons : [low, high]
        Streak peak ``S``, photons per pixel (log-uniform).
    streak_length_px : [low, high]
        Exponential decay length ``L`` along the streak, pixels.
    streak_width_px : [low, high]
        Gaussian sigma ``w`` across the streak, pixels.
    streak_offset_px : [low, high]
        Distance of the streak line from the beam centre, pixels (random side).
    halo_p : float
        Probability per frame of a halo ring.
    halo_photons : [low, high]
        Halo peak ``H``, photons per pixel (log-uniform).
    halo_radius_px : [low, high]
        Ring radius ``R``, pixels (about the beam-stop half-size).
    halo_width_px : [low, high]
        Ring Gaussian sigma, pixels.
    stray_photons : [low, high]
        Uniform stray light ``B``, photons per pixel (uniform).
    """
    p: float = 1.0
    gas_photons: list = field(default_factory=lambda: [0.001, 0.1])
    amplitude_spread: float = 0.5
    gas_r0_px: list = field(default_factory=lambda: [3.0, 30.0])
    gas_alpha: list = field(default_factory=lambda: [2.0, 4.0])
    streak_p: float = 0.3
    streak_photons: list = field(default_factory=lambda: [0.05, 1.0])
    streak_length_px: list = field(default_factory=lambda: [5.0, 40.0])
    streak_width_px: list = field(default_factory=lambda: [0.5, 2.0])
    streak_offset_px: list = field(default_factory=lambda: [0.0, 3.0])
    halo_p: float = 0.3
    halo_photons: list = field(default_factory=lambda: [0.05, 0.5])
    halo_radius_px: list = field(default_factory=lambda: [3.0, 12.0])
    halo_width_px: list = field(default_factory=lambda: [0.7, 3.0])
    stray_photons: list = field(default_factory=lambda: [0.0, 0.005])

    def __post_init__(self):
        for name in ("p", "streak_p", "halo_p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"background.{name} must be in [0, 1], got {getattr(self, name)}")
        if not float(self.amplitude_spread) >= 0:
            raise ValueError(f"background.amplitude_spread must be >= 0, got {self.amplitude_spread}")
        for name in ("gas_photons", "gas_r0_px", "gas_alpha", "streak_photons", "streak_length_px",
                     "streak_width_px", "halo_photons", "halo_width_px"):
            setattr(self, name, list(check_range(getattr(self, name), f"background.{name}", positive=True)))
        for name in ("streak_offset_px", "halo_radius_px", "stray_photons"):
            setattr(self, name, list(check_range(getattr(self, name), f"background.{name}", low=0.0)))


@dataclass
class BackgroundParams:
    """Per-frame background parameters, each a float32 tensor ``(N,)`` (units as the config)."""
    gas: torch.Tensor
    r0: torch.Tensor
    alpha: torch.Tensor
    streak: torch.Tensor
    streak_angle: torch.Tensor
    streak_length: torch.Tensor
    streak_width: torch.Tensor
    streak_offset: torch.Tensor
    halo: torch.Tensor
    halo_radius: torch.Tensor
    halo_width: torch.Tensor
    stray: torch.Tensor


def sample_background(n: int, config: BackgroundConfig, *, generator=None, device=None) -> BackgroundParams:
    """Draw the per-frame parameters (a fixed number of draws per frame, whatever ``p``)."""
    c = config
    use = bernoulli(c.p, n, generator, device).float()
    spread = torch.exp(c.amplitude_spread * torch.randn(n, generator=generator, device=device))
    gas = log_uniform(c.gas_photons, n, generator, device) * spread * use
    streak_on = bernoulli(c.streak_p, n, generator, device).float() * use
    side = torch.where(bernoulli(0.5, n, generator, device), 1.0, -1.0)
    halo_on = bernoulli(c.halo_p, n, generator, device).float() * use
    return BackgroundParams(
        gas=gas,
        r0=uniform(c.gas_r0_px, n, generator, device),
        alpha=uniform(c.gas_alpha, n, generator, device),
        streak=log_uniform(c.streak_photons, n, generator, device) * streak_on,
        streak_angle=uniform([0.0, torch.pi], n, generator, device),
        streak_length=uniform(c.streak_length_px, n, generator, device),
        streak_width=uniform(c.streak_width_px, n, generator, device),
        streak_offset=uniform(c.streak_offset_px, n, generator, device) * side,
        halo=log_uniform(c.halo_photons, n, generator, device) * halo_on,
        halo_radius=uniform(c.halo_radius_px, n, generator, device),
        halo_width=uniform(c.halo_width_px, n, generator, device),
        stray=uniform(c.stray_photons, n, generator, device) * use,
    )


def radial_distance(n: int, h: int, w: int, center=None, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets of the pixels from the beam centre, pixels: ``dy (N, H, 1)``, ``dx (N, 1, W)`` float32
    (broadcast them; expanded views would make every later op slow).

    ``center``: None (frame centre ``((H-1)/2, (W-1)/2)``), ``(cy, cx)`` or an ``(N, 2)`` tensor.
    """
    if center is None:
        c = torch.tensor([[(h - 1) / 2, (w - 1) / 2]], device=device).expand(n, 2)
    else:
        c = torch.as_tensor(center, dtype=torch.float32, device=device)
        c = c.reshape(1, 2).expand(n, 2) if c.numel() == 2 else c.reshape(n, 2)
    dy = torch.arange(h, device=device, dtype=torch.float32)[None, :, None] - c[:, 0, None, None]
    dx = torch.arange(w, device=device, dtype=torch.float32)[None, None, :] - c[:, 1, None, None]
    return dy, dx


def background_rate(shape, params: BackgroundParams, center=None, *, device=None) -> torch.Tensor:
    """Expected background photons per pixel, ``(N, H, W)`` float32 (formulas in the module notes)."""
    n, h, w = shape
    dy, dx = radial_distance(n, h, w, center, device=device)
    r2 = dy * dy + dx * dx
    col = lambda t: t.to(device=dy.device, dtype=torch.float32)[:, None, None]  # noqa: E731
    # A (1 + r^2/r0^2)^(-alpha/2) + B, as exp/log1p (faster than a tensor power on CPU)
    rate = torch.exp(torch.log1p(r2 / col(params.r0) ** 2) * (-col(params.alpha) / 2)) * col(params.gas)
    rate = rate + col(params.stray)
    streak = torch.nonzero(params.streak > 0)[:, 0]
    if streak.numel():  # only the frames with a streak
        ang = col(params.streak_angle[streak])
        sy, sx = dy[streak], dx[streak]
        along = sy * torch.sin(ang) + sx * torch.cos(ang)
        across = -sy * torch.cos(ang) + sx * torch.sin(ang) - col(params.streak_offset[streak])
        term = col(params.streak[streak]) * torch.exp(-along.abs() / col(params.streak_length[streak])
                                                     - across ** 2 / (2 * col(params.streak_width[streak]) ** 2))
        rate[streak] = rate[streak] + term
    halo = torch.nonzero(params.halo > 0)[:, 0]
    if halo.numel():
        r = r2[halo].sqrt()
        term = col(params.halo[halo]) * torch.exp(-(r - col(params.halo_radius[halo])) ** 2
                                                 / (2 * col(params.halo_width[halo]) ** 2))
        rate[halo] = rate[halo] + term
    return rate


def add_background(frames: torch.Tensor, config: BackgroundConfig, *, generator=None, center=None,
                   params: BackgroundParams | None = None) -> torch.Tensor:
    """Frames ``(N, H, W)`` photons + ``Poisson(background_rate)`` photons (new tensor).

    ``params`` (optional) fixes the per-frame parameters; otherwise they are drawn from ``config``.
    """
    n, h, w = frames.shape
    if params is None:
        params = sample_background(n, config, generator=generator, device=frames.device)
    rate = background_rate(frames.shape, params, center, device=frames.device)
    return frames + torch.poisson(rate, generator=generator).to(frames.dtype)
