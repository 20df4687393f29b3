"""A realistic detector domain: the realism effects combined, for the simulator and augmentation.

:class:`RealismConfig` groups the sections (each optional, ``None`` = off):
``background`` (:class:`BackgroundConfig`), ``detector`` (:class:`DetectorResponseConfig`),
``layout`` (:class:`LayoutConfig`) act on **photon** frames (:func:`apply_detector_realism`, in
this order: background photons, detector round trip, layout mask); ``beam``
(:class:`~speckle_embed.realism.beam.BeamConfig`) acts on **expected** intensities before
Poisson sampling (:func:`apply_beam_realism`, simulator only: a blur of noisy counts would not be
photon statistics).

Example
-------
>>> cfg = RealismConfig.from_dict({"p": 1.0, "layout": None})
>>> x, bad = apply_detector_realism(torch.zeros(2, 16, 16), None, cfg, generator=torch.Generator().manual_seed(0))
>>> x.shape, bad.dtype
(torch.Size([2, 16, 16]), torch.bool)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from speckle_embed.config_sections import section_from_mapping

from .background import BackgroundConfig, add_background
from .beam import BeamConfig, apply_beam
from .detector_response import DetectorResponseConfig, detector_round_trip
from .layouts import LayoutConfig, random_layout

__all__ = ["RealismConfig", "apply_detector_realism", "apply_beam_realism"]

_SECTIONS = {"background": BackgroundConfig, "detector": DetectorResponseConfig, "layout": LayoutConfig,
             "beam": BeamConfig}


@dataclass
class RealismConfig:
    """Realism effects of a domain (plain data: :meth:`to_dict` / :meth:`from_dict`).

    Attributes
    ----------
    p : float
        Probability per frame that the photon-level effects are applied at all (the sections
        have their own ``p`` within).
    background, detector, layout : section config or None
        Photon-level effects (None = off).
    beam : BeamConfig or None
        Expected-intensity effects (simulator only; None = off).
    """
    p: float = 1.0
    background: Any = field(default_factory=BackgroundConfig)
    detector: Any = field(default_factory=DetectorResponseConfig)
    layout: Any = field(default_factory=LayoutConfig)
    beam: Any = None

    def __post_init__(self):
        if not 0.0 <= float(self.p) <= 1.0:
            raise ValueError(f"realism.p must be in [0, 1], got {self.p}")
        for name, cls in _SECTIONS.items():
            setattr(self, name, section_from_mapping(cls, getattr(self, name), f"realism.{name}", nullable=True))

    @classmethod
    def from_dict(cls, d: Mapping | "RealismConfig" | None) -> "RealismConfig":
        """From a (partial) mapping; missing sections take their defaults, ``null`` turns one off."""
        return cls() if d is None else section_from_mapping(cls, d, "realism")  # an instance is returned as is

    @classmethod
    def off(cls) -> "RealismConfig":
        """Every section off."""
        return cls(p=0.0, background=None, detector=None, layout=None, beam=None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_detector_realism(frames: torch.Tensor, bad, config: RealismConfig, *, generator=None,
                           center=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Photon-level effects on a batch: background photons, detector round trip, layout mask.

    Parameters
    ----------
    frames : Tensor (N, H, W) float32
        Photons (0 at bad pixels or not: bad pixels are zeroed on output).
    bad : BoolTensor (N, H, W) or (H, W) or None
        True = bad pixel.
    config : RealismConfig
    generator : torch.Generator, optional
    center : (cy, cx) or Tensor (N, 2), optional
        Beam centre in pixels (default the frame centre).

    Returns
    -------
    frames : Tensor (N, H, W) float32, 0 at bad pixels
    bad : BoolTensor (N, H, W)

    Notes
    -----
    One uniform per frame decides ``p``; the selected frames are processed together, so the
    random numbers used depend only on the generator state and the inputs.
    """
    x = frames.to(torch.float32)
    n, h, w = x.shape
    dev = x.device
    bad = torch.zeros_like(x, dtype=torch.bool) if bad is None else torch.as_tensor(bad, device=dev).bool()
    bad = bad.expand(n, h, w).clone() if bad.ndim == 2 else bad.clone()
    use = torch.rand(n, generator=generator, device=dev) < float(config.p)
    sel = torch.nonzero(use)[:, 0]
    if sel.numel() == 0:
        return torch.where(bad, torch.zeros_like(x), x), bad
    xs, bs = x[sel], bad[sel]
    cs = None
    if center is not None:
        c = torch.as_tensor(center, dtype=torch.float32, device=dev)
        cs = c if c.numel() == 2 else c.reshape(n, 2)[sel]
    if config.background is not None:
        xs = add_background(xs, config.background, generator=generator, center=cs)
    if config.detector is not None:
        xs, bs = detector_round_trip(xs, bs, config.detector, generator=generator)
    if config.layout is not None:
        bs = bs | random_layout(xs.shape, config.layout, generator=generator, center=cs, device=dev)
    x = x.index_copy(0, sel, xs)
    bad = bad.index_copy(0, sel, bs)
    return torch.where(bad, torch.zeros_like(x), x), bad


def apply_beam_realism(expected: torch.Tensor, config: RealismConfig, *, generator=None,
                       center=None) -> torch.Tensor:
    """Expected-intensity effects (bandwidth, partial coherence) of ``config.beam``, before Poisson.

    ``expected``: (N, H, W) expected photons per pixel; returned with the same shape and total
    (up to the frame edge). Identity when ``config.beam`` is None.
    """
    if config.beam is None:
        return expected
    return apply_beam(expected, config.beam, generator=generator, center=center)
