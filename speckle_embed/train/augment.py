"""On-the-fly augmentation of raw photon frames, batched, on the model's device.

:class:`SpeckleAugment` takes a batch of detector frames in photons ``(N, H, W)`` and a bad-pixel
mask, and returns augmented frames and mask (``True`` = bad pixel) that go straight into
:func:`speckle_embed.preprocess.preprocess`; nothing is cached, every call draws new random
parameters from the :class:`torch.Generator` it is given (same generator state -> same output).

Operations, in the order they are applied (each on a frame with its own probability ``p``):

1. **fluence** jitter: a lognormal factor ``f = exp(N(0, sigma))`` per frame. The frames are
   noisy photon counts, so the expected counts needed to redraw Poisson noise at the new
   fluence are unknown. For ``f < 1`` the photons are **binomially thinned** instead: each of
   the ``n = round(x)`` photons of a pixel survives with probability ``f``, which is exact (a
   thinned Poisson variable is Poisson with rate ``f * lambda``); the residual ``x - n`` (read
   noise) is kept as is. For ``f > 1`` no exact operation exists; the photon part is scaled
   (``n * f``: the mean is right, the variance ``f^2 n`` is too large). ``thin_only=True``
   folds factors into ``f <= 1`` (``min(f, 1/f)``) so that only the exact branch is used.
2. **geometry**, one resampling for all three: in-plane **rotation** by a random angle about
   the beam centre (a rotation of the particle about the beam axis), **zoom** by a factor in
   ``[1 - range, 1 + range]``, or log-uniform in ``[min, max]`` when both are set (a change of
   detector distance, pixel size, binning or particle size: real setups put ~2 to 12+ pixels
   across a speckle; ``min=0.5, max=2.5`` covers that from frames with ~4-5 pixel speckles;
   below ``zoom = 2/3`` the input is box-filtered over ``round(1/zoom)`` pixels first, as a
   binned detector integrates, instead of aliasing the speckles) and **shift**
   of the beam centre by up to ``fraction`` of the frame side. The output is the
   ``out_size`` window around the beam centre (usually the preprocessing crop, which saves
   work); pixels that come from outside the detector or from bad pixels are bad.
   Interpolation is bilinear over good pixels only (or nearest).
   Then **realism** (off by default, ``p = 0``): real-detector effects of
   :mod:`speckle_embed.realism` drawn per frame from the ranges of a
   :class:`~speckle_embed.realism.RealismConfig` (background photons from gas/aerosol,
   streaks, halo and stray light about the beam centre; the detector round trip photons -> ADU ->
   photons with gain spread, dark noise, common mode (+ correction), saturation, dead/hot pixels,
   charge sharing and a conversion threshold; random layouts: gaps, beam stops with holder
   arms, missing panels). Its ``beam`` section must be null: bandwidth and coherence act on
   expected intensities, so they belong to the simulator (``docs/realism.md``).
3. **Poisson** background: ``Poisson(lambda)`` photons per pixel, ``lambda ~ U(0, max_rate)``.
4. **Gaussian** read noise: ``N(0, sigma^2)`` photons, ``sigma ~ U(0, max_sigma)``.
5. **patches**: 1 .. ``max_count`` random rectangles (sides ``min_size .. max_size`` of the
   frame side) are masked.
6. **dropout** of detector area: only ``keep_fraction`` of the detector stays, as random
   **quadrants** (about the beam centre) or random **panels** of a ``panels x panels`` grid
   (``mode="either"`` picks one of the two per frame), so the model learns to work with e.g.
   25 % of the detector.

Examples
--------
>>> aug = SpeckleAugment(AugmentConfig.disabled().replace(rotation={"p": 1.0}), out_size=24)
>>> g = torch.Generator().manual_seed(0)
>>> x, bad = aug(torch.rand(4, 32, 32), generator=g)
>>> x.shape, bad.shape, bad.dtype
(torch.Size([4, 24, 24]), torch.Size([4, 24, 24]), torch.bool)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speckle_embed.config_sections import section_from_mapping
from speckle_embed.realism import RealismConfig, apply_detector_realism

__all__ = [
    "AugmentConfig",
    "RotationConfig",
    "ZoomConfig",
    "ShiftConfig",
    "FluenceConfig",
    "PoissonConfig",
    "GaussianConfig",
    "PatchesConfig",
    "DropoutConfig",
    "SpeckleAugment",
]


@dataclass
class RotationConfig:
    """In-plane rotation by ``U(-max_deg, max_deg)`` degrees about the beam centre."""
    p: float = 0.8
    max_deg: float = 180.0


@dataclass
class ZoomConfig:
    """Magnification ``U(1 - range, 1 + range)`` about the beam centre, or log-uniform in
    ``[min, max]`` when both are set (they then replace ``range``)."""
    p: float = 0.5
    range: float = 0.1
    min: float | None = None
    max: float | None = None


@dataclass
class ShiftConfig:
    """Beam-centre shift ``U(-fraction, fraction)`` of the frame side, per axis."""
    p: float = 0.5
    fraction: float = 0.05


@dataclass
class FluenceConfig:
    """Lognormal fluence factor ``exp(N(0, sigma))``: binomial thinning below 1."""
    p: float = 0.5
    sigma: float = 0.3
    thin_only: bool = False


@dataclass
class PoissonConfig:
    """Extra background photons ``Poisson(U(0, max_rate))`` per pixel."""
    p: float = 0.3
    max_rate: float = 0.02


@dataclass
class GaussianConfig:
    """Extra read noise ``N(0, U(0, max_sigma)^2)`` photons per pixel."""
    p: float = 0.3
    max_sigma: float = 0.2


@dataclass
class PatchesConfig:
    """1 .. max_count masked rectangles, sides in [min_size, max_size] x frame side."""
    p: float = 0.3
    max_count: int = 3
    min_size: float = 0.05
    max_size: float = 0.2


@dataclass
class DropoutConfig:
    """Keep only ``keep_fraction`` of the detector: quadrants, panels or either."""
    p: float = 0.1
    mode: str = "either"
    keep_fraction: float = 0.25
    panels: int = 4


_SECTIONS = {
    "rotation": RotationConfig, "zoom": ZoomConfig, "shift": ShiftConfig,
    "fluence": FluenceConfig, "poisson": PoissonConfig, "gaussian": GaussianConfig,
    "patches": PatchesConfig, "dropout": DropoutConfig, "realism": RealismConfig,
}


@dataclass
class AugmentConfig:
    """All augmentation parameters (plain data, stored in checkpoints' training metadata).

    ``enabled=False`` turns the module into a crop (no randomness used).
    ``interpolation`` is ``"bilinear"`` (over good pixels) or ``"nearest"``.
    """
    enabled: bool = True
    interpolation: str = "bilinear"
    rotation: RotationConfig = field(default_factory=RotationConfig)
    zoom: ZoomConfig = field(default_factory=ZoomConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    fluence: FluenceConfig = field(default_factory=FluenceConfig)
    poisson: PoissonConfig = field(default_factory=PoissonConfig)
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    realism: RealismConfig = field(default_factory=lambda: RealismConfig(p=0.0))

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            setattr(self, name, section_from_mapping(cls, getattr(self, name), f"augment.{name}"))
            sec = getattr(self, name)
            if not 0.0 <= float(sec.p) <= 1.0:
                raise ValueError(f"augment.{name}.p must be in [0, 1], got {sec.p}")
        if self.interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"augment.interpolation must be bilinear or nearest, got {self.interpolation!r}")
        if not 0.0 <= self.zoom.range < 1.0:
            raise ValueError(f"augment.zoom.range must be in [0, 1), got {self.zoom.range}")
        if (self.zoom.min is None) != (self.zoom.max is None):
            raise ValueError("augment.zoom.min and augment.zoom.max must be set together (or both null)")
        if self.zoom.min is not None and not 0.0 < float(self.zoom.min) <= float(self.zoom.max):
            raise ValueError(f"augment.zoom needs 0 < min <= max, got min={self.zoom.min}, max={self.zoom.max}")
        if self.realism.beam is not None:
            raise ValueError("augment.realism.beam must be null: bandwidth and coherence act on expected "
                             "intensities; set them in the dataset config's realism section")
        if self.dropout.mode not in ("quadrants", "panels", "either"):
            raise ValueError(f"augment.dropout.mode must be quadrants, panels or either, got {self.dropout.mode!r}")
        if not 0.0 < self.dropout.keep_fraction <= 1.0:
            raise ValueError(f"augment.dropout.keep_fraction must be in (0, 1], got {self.dropout.keep_fraction}")
        if int(self.dropout.panels) < 1 or int(self.patches.max_count) < 1:
            raise ValueError("augment.dropout.panels and augment.patches.max_count must be >= 1")
        if not 0.0 < self.patches.min_size <= self.patches.max_size <= 1.0:
            raise ValueError("augment.patches needs 0 < min_size <= max_size <= 1")
        for name, value in (("fluence.sigma", self.fluence.sigma), ("poisson.max_rate", self.poisson.max_rate),
                            ("gaussian.max_sigma", self.gaussian.max_sigma), ("shift.fraction", self.shift.fraction),
                            ("rotation.max_deg", self.rotation.max_deg)):
            if not float(value) >= 0:
                raise ValueError(f"augment.{name} must be >= 0, got {value}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "AugmentConfig" | None) -> "AugmentConfig":
        """Build from a (possibly partial) nested mapping; unknown keys raise ``ValueError``."""
        return cls() if d is None else section_from_mapping(cls, d, "augment")  # an instance is returned as is

    @classmethod
    def disabled(cls) -> "AugmentConfig":
        """Every operation at ``p = 0`` (switch single ones on with :meth:`replace`)."""
        return cls(**{name: sec(p=0.0) for name, sec in _SECTIONS.items()})

    def replace(self, **sections) -> "AugmentConfig":
        """Copy with some sections (mappings of fields, or dataclasses) replaced/updated."""
        d = self.to_dict()
        for name, value in sections.items():
            if name in _SECTIONS and isinstance(value, Mapping):
                d[name].update(value)
            else:
                d[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return self.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_bad_mask(mask, frames: torch.Tensor) -> torch.Tensor:
    """Bool (N, H, W), True = bad: the given mask (nonzero/True = bad) or non-finite pixels."""
    bad = ~torch.isfinite(frames)
    if mask is not None:
        m = mask if torch.is_tensor(mask) else torch.as_tensor(np.asarray(mask))
        m = m.to(frames.device)
        if m.shape[-2:] != frames.shape[-2:] or m.ndim not in (2, 3):
            raise ValueError(f"mask shape {tuple(m.shape)} does not match frames {tuple(frames.shape)}")
        bad = bad | (m != 0)
    return bad


class SpeckleAugment(nn.Module):
    """Random, batched augmentation of raw photon frames (see the module notes).

    Parameters
    ----------
    config : AugmentConfig or mapping, optional
        Default: :class:`AugmentConfig` defaults.
    out_size : int or (int, int), optional
        Size of the output window around the beam centre (default: the input size). Use
        the preprocessing ``crop`` so that only the pixels the model sees are processed.

    Notes
    -----
    All random numbers come from the ``generator`` passed to :meth:`forward` (on the frames'
    device), drawn in a fixed order and for every frame whatever its ``p`` draw, so the
    output is a function of the generator state, the inputs and the configuration.
    """

    def __init__(self, config: AugmentConfig | Mapping | None = None, out_size=None) -> None:
        super().__init__()
        self.config = AugmentConfig.from_dict(config)
        if out_size is not None and isinstance(out_size, int):
            out_size = (out_size, out_size)
        self.out_size = None if out_size is None else (int(out_size[0]), int(out_size[1]))

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, enabled={self.config.enabled}"

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _rand(n: int, generator, device, *shape) -> torch.Tensor:
        return torch.rand((n, *shape), generator=generator, device=device)

    def forward(self, frames: torch.Tensor, mask=None, *, generator: torch.Generator | None = None,
                center=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch.

        Parameters
        ----------
        frames : Tensor (N, H, W)
            Photons (float; other dtypes are converted to float32).
        mask : array_like or Tensor (H, W) or (N, H, W), optional
            Bad pixels (nonzero / True), e.g. the CXI mask of the shard. Non-finite pixels
            are bad too.
        generator : torch.Generator, optional
            On the frames' device; the global RNG when omitted.
        center : (row, col), optional
            Beam centre in input pixels (default the geometric centre).

        Returns
        -------
        frames : Tensor (N, *out_size), float32
            Augmented photons, 0 at bad pixels.
        mask : BoolTensor (N, *out_size)
            True = bad pixel; pass it as ``mask=`` to :func:`preprocess`.
        """
        if frames.ndim != 3:
            raise ValueError(f"frames must have shape (N, H, W), got {tuple(frames.shape)}")
        x = frames if frames.is_floating_point() else frames.float()
        bad = _as_bad_mask(mask, x)
        x = torch.where(bad, torch.zeros_like(x), x)
        n, h, w = x.shape
        out = self.out_size or (h, w)
        c = self.config
        dev = x.device
        if n == 0:
            return x.new_zeros((0, *out)), torch.zeros((0, *out), dtype=torch.bool, device=dev)
        if not c.enabled:
            return self.geometry(x, bad, out_size=out, center=center)
        # 1. geometry (rotation, zoom, shift), one resampling into the output window
        u = self._rand(n, generator, dev, 8)  # fixed draws: p x3, angle, zoom, dy, dx, spare
        angle = torch.where(u[:, 0] < c.rotation.p, (2 * u[:, 3] - 1) * math.radians(c.rotation.max_deg),
                            torch.zeros_like(u[:, 3]))
        if c.zoom.min is None:
            factor = 1 + (2 * u[:, 4] - 1) * c.zoom.range
        else:  # log-uniform in [min, max]
            lo, hi = math.log(float(c.zoom.min)), math.log(float(c.zoom.max))
            factor = torch.exp(lo + u[:, 4] * (hi - lo))
        zoom = torch.where(u[:, 1] < c.zoom.p, factor, torch.ones_like(u[:, 4]))
        shift = torch.where((u[:, 2] < c.shift.p)[:, None],
                            (2 * u[:, 5:7] - 1) * c.shift.fraction * torch.tensor([h, w], device=dev, dtype=u.dtype),
                            torch.zeros_like(u[:, 5:7]))
        x, bad = self.geometry(x, bad, out_size=out, angle=angle, zoom=zoom, shift=shift, center=center)
        # 2. fluence (on the window: only the pixels the model sees)
        x = self.fluence(x, generator=generator)
        # realism (no random numbers drawn at p = 0: older configs give the same frames)
        if c.realism.p > 0:
            beam = self.beam_center_in_window(x.shape, angle, zoom, shift)
            x, bad = apply_detector_realism(x, bad, c.realism, generator=generator, center=beam)
        # 3-4. additive noise
        x = self.add_noise(x, generator=generator)
        # 5-6. masking
        bad = bad | self.patch_mask(x.shape, generator=generator, device=dev)
        bad = bad | self.dropout_mask(x.shape, generator=generator, device=dev)
        return torch.where(bad, torch.zeros_like(x), x), bad

    # ------------------------------------------------------------------ operations
    @staticmethod
    def beam_center_in_window(shape, angle, zoom, shift) -> torch.Tensor:
        """(N, 2) beam centre (row, col) in the output window of :meth:`geometry`.

        The window pixel at offset ``d`` from its centre shows the input at
        ``center + shift + M d / zoom``, so the beam centre sits at ``d = -zoom M^T shift``.
        """
        _, ho, wo = shape
        cos, sin = torch.cos(angle), torch.sin(angle)
        sy, sx = shift[:, 0], shift[:, 1]
        dy = -zoom * (cos * sy - sin * sx)
        dx = -zoom * (sin * sy + cos * sx)
        return torch.stack([(ho - 1) / 2 + dy, (wo - 1) / 2 + dx], 1).float()

    def fluence(self, x: torch.Tensor, *, generator=None) -> torch.Tensor:
        """Fluence jitter (binomial thinning for factors < 1); see the module notes."""
        c = self.config.fluence
        n = x.shape[0]
        u = self._rand(n, generator, x.device, 1)[:, 0]
        z = torch.randn(n, generator=generator, device=x.device)
        factor = torch.exp(z * c.sigma)
        if c.thin_only:
            factor = torch.minimum(factor, 1.0 / factor)
        factor = torch.where(u < c.p, factor, torch.ones_like(factor))
        return thin_photons(x, factor, generator=generator)

    def geometry(self, x: torch.Tensor, bad: torch.Tensor, *, out_size, angle=None, zoom=None, shift=None,
                 center=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample the ``out_size`` window about the (shifted) beam centre.

        ``x`` must be 0 at the ``bad`` pixels (as :meth:`forward` makes it).

        Output pixel at offset ``d`` (row, col) from the window centre takes the input at
        ``center + shift + M(angle) d / zoom`` with ``M = [[cos, sin], [-sin, cos]]``; an
        angle of +90 degrees equals ``torch.rot90(x, 1, (-2, -1))`` on a square frame.
        """
        n, h, w = x.shape
        ho, wo = out_size
        cy, cx = ((h - 1) / 2, (w - 1) / 2) if center is None else (float(center[0]), float(center[1]))
        identity = angle is None and zoom is None and shift is None
        if identity:
            r0, c0 = cy - (ho - 1) / 2, cx - (wo - 1) / 2
            if (float(r0).is_integer() and float(c0).is_integer() and r0 >= 0 and c0 >= 0
                    and r0 + ho <= h and c0 + wo <= w):  # plain crop
                sl = (slice(None), slice(int(r0), int(r0) + ho), slice(int(c0), int(c0) + wo))
                return x[sl], bad[sl]
        dev = x.device
        fdt = x.dtype
        angle = torch.zeros(n, device=dev, dtype=fdt) if angle is None else angle.to(fdt)
        zoom = torch.ones(n, device=dev, dtype=fdt) if zoom is None else zoom.to(fdt)
        shift = torch.zeros(n, 2, device=dev, dtype=fdt) if shift is None else shift.to(fdt)
        dy = (torch.arange(ho, device=dev, dtype=fdt) - (ho - 1) / 2)[None, :, None]
        dx = (torch.arange(wo, device=dev, dtype=fdt) - (wo - 1) / 2)[None, None, :]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        inv = (1.0 / zoom)[:, None, None]
        # zoom-out by >= 1.5x box-filters over k = round(1/zoom) pixels below; an even k puts
        # the filtered pixel j at input j - 1/2, hence the half-pixel offset
        k = torch.round(1.0 / zoom.clamp_min(1e-3)).long()
        half = torch.where((k >= 2) & (k % 2 == 0), 0.5, 0.0).to(fdt)[:, None, None]
        rows = cy + shift[:, 0, None, None] + (cos * dy + sin * dx) * inv + half
        cols = cx + shift[:, 1, None, None] + (-sin * dy + cos * dx) * inv + half
        grid = torch.stack([cols / max(w - 1, 1) * 2 - 1, rows / max(h - 1, 1) * 2 - 1], -1).to(x.dtype)
        data = torch.empty((n, 2, h, w), device=dev, dtype=x.dtype)
        data[:, 0] = x  # already 0 at bad pixels
        data[:, 1] = ~bad
        # zoom-out by >= 1.5x: box-filter over k pixels first (area integration as a coarser /
        # farther detector does, and no aliasing of the speckles); the weights follow
        for size in sorted({int(v) for v in k.unique().tolist() if v >= 2}):
            sel = torch.nonzero(k == size)[:, 0]
            pooled = F.avg_pool2d(data[sel], kernel_size=size, stride=1, padding=size // 2,
                                  count_include_pad=False)[..., :h, :w]
            data[sel] = pooled
        mode = self.config.interpolation
        res = F.grid_sample(data, grid, mode=mode, padding_mode="zeros", align_corners=True)
        weight = res[:, 1]
        ok = weight > 0.5
        values = torch.where(ok, res[:, 0] / weight.clamp_min(0.5), torch.zeros_like(weight))
        return values, ~ok

    def add_noise(self, x: torch.Tensor, *, generator=None) -> torch.Tensor:
        """Poisson background photons and Gaussian read noise (each with its ``p``)."""
        cp, cg = self.config.poisson, self.config.gaussian
        n = x.shape[0]
        u = self._rand(n, generator, x.device, 4)
        if cp.p > 0 and cp.max_rate > 0:
            sel = torch.nonzero(u[:, 0] < cp.p)[:, 0]
            if sel.numel():
                rate = (u[sel, 1] * cp.max_rate).to(x.dtype)
                x = x.index_add(0, sel, poisson_background(rate, x.shape[1:], generator=generator))
        if cg.p > 0 and cg.max_sigma > 0:
            sel = torch.nonzero(u[:, 2] < cg.p)[:, 0]
            if sel.numel():
                sigma = (u[sel, 3] * cg.max_sigma).to(x.dtype)
                noise = sigma[:, None, None] * torch.randn((sel.numel(), *x.shape[1:]), generator=generator,
                                                           device=x.device, dtype=x.dtype)
                x = x.index_add(0, sel, noise)
        return x

    def patch_mask(self, shape, *, generator=None, device=None) -> torch.Tensor:
        """Bool (N, H, W): 1 .. max_count random rectangles per selected frame."""
        c = self.config.patches
        n, h, w = shape
        m = int(c.max_count)
        u = self._rand(n, generator, device, 1 + m * 5)
        if c.p <= 0:
            return torch.zeros(shape, dtype=torch.bool, device=device)
        use = u[:, 0] < c.p
        r = u[:, 1:].reshape(n, m, 5)
        count = 1 + (r[:, 0, 4] * m).long().clamp_max(m - 1)  # 1..m
        active = (torch.arange(m, device=device)[None] < count[:, None]) & use[:, None]
        ph = (c.min_size + r[..., 0] * (c.max_size - c.min_size)) * h
        pw = (c.min_size + r[..., 1] * (c.max_size - c.min_size)) * w
        y0 = r[..., 2] * (h - ph)
        x0 = r[..., 3] * (w - pw)
        rows = torch.arange(h, device=device, dtype=u.dtype)[None, None, :]
        cols = torch.arange(w, device=device, dtype=u.dtype)[None, None, :]
        in_r = (rows >= y0[..., None]) & (rows < (y0 + ph)[..., None])  # (N, m, H)
        in_c = (cols >= x0[..., None]) & (cols < (x0 + pw)[..., None])  # (N, m, W)
        hit = (in_r & active[..., None]).to(u.dtype)
        return torch.einsum("nmh,nmw->nhw", hit, in_c.to(u.dtype)) > 0

    def dropout_mask(self, shape, *, generator=None, device=None) -> torch.Tensor:
        """Bool (N, H, W): detector area dropped so that ``keep_fraction`` remains."""
        c = self.config.dropout
        n, h, w = shape
        g = int(c.panels)
        u = self._rand(n, generator, device, 2)
        score_q = self._rand(n, generator, device, 4)
        score_p = self._rand(n, generator, device, g * g)
        if c.p <= 0:
            return torch.zeros(shape, dtype=torch.bool, device=device)
        use = u[:, 0] < c.p
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        # quadrants about the window centre: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
        quad = (2 * (rows[:, None] >= h / 2) + (cols[None, :] >= w / 2)).reshape(-1)
        panel = ((rows[:, None] * g // h) * g + (cols[None, :] * g // w)).reshape(-1)
        k_q = max(1, int(round(c.keep_fraction * 4)))
        k_p = max(1, int(round(c.keep_fraction * g * g)))
        keep_q = torch.zeros(n, 4, dtype=torch.bool, device=device).scatter_(
            1, score_q.argsort(1)[:, :k_q], True)
        keep_p = torch.zeros(n, g * g, dtype=torch.bool, device=device).scatter_(
            1, score_p.argsort(1)[:, :k_p], True)
        drop_q = ~keep_q[:, quad]
        drop_p = ~keep_p[:, panel]
        if c.mode == "quadrants":
            drop = drop_q
        elif c.mode == "panels":
            drop = drop_p
        else:
            drop = torch.where((u[:, 1] < 0.5)[:, None], drop_q, drop_p)
        return (drop & use[:, None]).reshape(n, h, w)


def thin_photons(x: torch.Tensor, factor: torch.Tensor, *, generator=None) -> torch.Tensor:
    """Scale the photon content of each frame by ``factor`` (N,): binomial thinning below 1.

    ``x = n + r`` with ``n = round(max(x, 0))`` photons and ``r`` the read-noise residual;
    the result is ``Binomial(n, f) + r`` for ``f < 1`` (exact for Poisson counts), ``n f + r``
    for ``f > 1``, ``x`` unchanged for ``f == 1``. Only the changed frames are processed, and
    only their non-zero pixels sampled (frames are sparse).
    """
    sel = torch.nonzero(factor != 1)[:, 0]
    if sel.numel() == 0:
        return x
    xs = x.index_select(0, sel)
    f = factor.to(x.dtype)[sel][:, None, None].expand_as(xs)
    photons = torch.round(xs.clamp_min(0))
    resid = xs - photons
    out = torch.where(f > 1, photons * f, photons)
    thin = (f < 1) & (photons > 0)
    if bool(thin.any()):
        out[thin] = binomial(photons[thin], f[thin], generator=generator)
    return x.index_copy(0, sel, out + resid)


_SMALL_COUNT = 64


def _inverse_cdf_count(u: torch.Tensor, pmf: torch.Tensor, step, aux: dict, max_k: int,
                       limit: str | None = None) -> torch.Tensor:
    """Smallest ``k`` with ``u <= P(X <= k)`` for 1-D tensors, walking the pmf.

    ``pmf`` is ``P(X = 0)``; ``pmf_{k+1} = pmf_k * step(k, aux)`` where ``aux`` holds per-element
    parameters; ``aux[limit]`` (if given) caps ``X``. Elements drop out as soon as their ``k`` is
    found (most pixels hold 0-3 photons), so the work is about ``E[X]`` passes over the data
    instead of ``max_k``.
    """
    out = torch.zeros_like(u)
    idx = torch.arange(u.numel(), device=u.device)
    cdf = pmf.clone()
    for k in range(max_k):
        more = u > cdf
        if limit is not None:
            more &= aux[limit] > k
        keep = torch.nonzero(more)[:, 0]
        if keep.numel() == 0:
            break
        if keep.numel() < idx.numel():
            idx, u, pmf, cdf = idx[keep], u[keep], pmf[keep], cdf[keep]
            aux = {key: v[keep] for key, v in aux.items()}
        out.index_add_(0, idx, torch.ones_like(u))
        pmf = pmf * step(k, aux)
        cdf = cdf + pmf
    return out


def binomial(counts: torch.Tensor, probs: torch.Tensor, *, generator=None) -> torch.Tensor:
    """``Binomial(counts, probs)`` samples (float tensors of one shape, ``0 <= probs < 1``).

    Counts up to 64 (almost every pixel of a diffraction frame) use the inverse CDF with one
    uniform number each, vectorised (for ``p > 1/2`` the failures are sampled); larger counts
    use :func:`torch.binomial`. Exact in both branches; much faster than
    :func:`torch.binomial` alone on CPU.
    """
    out = torch.zeros_like(counts)
    small = counts <= _SMALL_COUNT
    if bool(small.any()):
        n, p = counts[small], probs[small]
        u = torch.rand(n.shape, generator=generator, device=n.device, dtype=n.dtype)
        flip = p > 0.5  # sample the failures instead: keeps q**n far from underflow
        p = torch.where(flip, 1.0 - p, p)
        q = 1.0 - p
        ratio = p / q
        k_out = _inverse_cdf_count(u, q.pow(n), lambda k, a: (a["n"] - k) / (k + 1) * a["ratio"],
                                   {"n": n, "ratio": ratio}, int(n.max()), limit="n")
        out[small] = torch.where(flip, n - k_out, k_out)
    large = ~small
    if bool(large.any()):
        out[large] = torch.binomial(counts[large], probs[large], generator=generator)
    return out


def poisson_background(rate: torch.Tensor, shape, *, generator=None) -> torch.Tensor:
    """``Poisson(rate[i])`` photons in every pixel of ``len(rate)`` frames of ``shape``.

    Rates up to 1 use the inverse CDF (at most 16 terms, truncation error < 1e-13), others
    :func:`torch.poisson`.
    """
    m = rate.shape[0]
    full = (m, *shape)
    if bool((rate > 1).any()):
        return torch.poisson(rate[:, None, None].expand(full).contiguous(), generator=generator)
    u = torch.rand(full, generator=generator, device=rate.device, dtype=rate.dtype).reshape(-1)
    lam = rate[:, None, None].expand(full).reshape(-1)
    out = _inverse_cdf_count(u, torch.exp(-lam), lambda k, a: a["lam"] / (k + 1), {"lam": lam}, 16)
    return out.reshape(full)
