"""Detector frames of whole XFEL shots: hit classes, particle aggregates, fluence and noise.

A shot is one of (see :data:`simulate.labels.HIT_CLASSES`):

* ``single``: one particle, uniformly random orientation;
* ``multi``: 2-4 particles in contact (ballistic aggregate of spheres of the particle's
  radius, as skopi's ``build_bpca``), each with its own random orientation, fields summed
  coherently with their position phases;
* ``no_hit``: background only;
* ``non_sample``: parasitic scattering unlike the sample (a large droplet, possibly
  ellipsoidal, with an optional streak from a rod-like object; :mod:`simulate.parasitic`).

Sample variety (``dataset.sample``, :mod:`simulate.sample_variety`; off by default): per-particle
size polydispersity, aggregates of unequal members with small gaps, and debris and capsid
fragments among the non-sample hits. With it, the truth gains ``size_scale`` (per particle,
NaN-padded) and ``non_sample_kind``.

Noise, in order: fluence multiplier (shot-to-shot), optional beam-centre jitter, optional
beam realism on the expected intensity (bandwidth, partial coherence), Poisson photon counting,
additive Gaussian read noise (photons), optional detector realism (background photons, the
detector's ADU round trip); see :mod:`speckle_embed.realism` and ``docs/realism.md``. Masked
pixels (gap, beam stop, layout preset, flagged dead/hot pixels) read 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from speckle_embed.realism import RealismConfig, apply_beam_realism, apply_detector_realism, get_preset

from .aggregates import contact_positions
from .continuum import WATER_DENSITY  # noqa: F401 - re-exported (was defined here)
from .geometry import MASK_INVALID, detector_mask, intensity_scale, reciprocal_vectors
from .labels import HIT_CLASSES
from .parasitic import parasitic_intensity
from .rotations import quaternion_to_matrix, random_quaternions
from .sample_variety import SampleConfig

__all__ = ["MAX_PARTICLES", "FluenceConfig", "NoiseConfig", "HitMix", "ShotBatch", "ShotGenerator",
           "contact_positions"]

MAX_PARTICLES = 4


@dataclass
class FluenceConfig:
    """Shot-to-shot multiplier of the nominal fluence.

    ``kind``:

    * ``"constant"``: always 1;
    * ``"loguniform"`` (default): ``log m`` uniform on ``[log low, log high]``. This is the
      spread produced by particles crossing a Gaussian focus at uniformly random transverse
      positions (``m = exp(-r^2 / 2 sigma^2)`` with ``r^2`` uniform), the shape of the PR772
      photon-count histograms; the default decade ``[0.316, 3.16]`` is centred (geometric
      mean) on the nominal fluence;
    * ``"lognormal"``: ``m = exp(N(0, sigma))``.

    ``pulse_sigma`` adds a lognormal pulse-energy jitter on top (SASE fluctuations).
    """

    kind: str = "loguniform"
    low: float = 10 ** -0.5
    high: float = 10 ** 0.5
    sigma: float = 0.5
    pulse_sigma: float = 0.1

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "constant":
            m = np.ones(n)
        elif self.kind == "loguniform":
            if not 0 < self.low <= self.high:
                raise ValueError(f"fluence.low/high must satisfy 0 < low <= high, got {self.low}, {self.high}")
            m = np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))
        elif self.kind == "lognormal":
            m = np.exp(rng.normal(0.0, self.sigma, n))
        else:
            raise ValueError(f"fluence.kind must be constant, loguniform or lognormal, got {self.kind!r}")
        if self.pulse_sigma:
            m = m * np.exp(rng.normal(0.0, self.pulse_sigma, n))
        return m


@dataclass
class NoiseConfig:
    """Detector and beam noise.

    Attributes
    ----------
    poisson : bool
        Photon counting noise.
    gaussian_sigma : float
        Additive Gaussian read noise, photons (SpeckleNN: 0.15).
    beam_center_jitter_px : float
        Standard deviation of the beam-centre position per shot, pixels (0 = off).
    background_photons : float
        Mean diffuse background per pixel (gas/jet scattering), photons, before Poisson.
    realism : dict, optional
        Real-detector effects (:class:`speckle_embed.realism.RealismConfig` fields): ``beam``
        acts on the expected intensity before Poisson, ``background`` and ``detector`` on the
        photon frame after it. A section is on only if given (``{}`` = its default ranges);
        ``layout`` (random per-frame layouts) must stay null: a shard has one mask, use
        ``layout_preset``.
    layout_preset : str, optional
        Name of a :data:`speckle_embed.realism.PRESETS` detector whose mask is added to the
        geometry's (``MASK_INVALID``); its ``n_pixels`` must equal the geometry's.
    """

    poisson: bool = True
    gaussian_sigma: float = 0.15
    beam_center_jitter_px: float = 0.0
    background_photons: float = 0.0
    realism: dict | None = None
    layout_preset: str | None = None

    def realism_config(self) -> RealismConfig | None:
        """The :class:`RealismConfig` of ``realism`` (sections not given are off), or None."""
        if self.realism is None:
            return None
        if not isinstance(self.realism, dict):
            raise ValueError(f"noise.realism must be a mapping of RealismConfig fields, got {self.realism!r}")
        cfg = RealismConfig.from_dict({"background": None, "detector": None, "layout": None, "beam": None,
                                       **self.realism})
        if cfg.layout is not None:
            raise ValueError("noise.realism.layout must be null in a dataset config (a shard holds one "
                             "mask): use noise.layout_preset or geometry.gap_px / beamstop_px")
        return cfg


@dataclass
class HitMix:
    """Probabilities of each hit class and of the particle counts of multi hits."""

    single: float = 0.5
    multi: float = 0.5
    no_hit: float = 0.0
    non_sample: float = 0.0
    multi_counts: tuple = (2, 3, 4)

    def probabilities(self) -> np.ndarray:
        p = np.array([getattr(self, name) for name in HIT_CLASSES], dtype=np.float64)
        if np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"hit mix probabilities must be >= 0 and not all 0, got {p.tolist()}")
        bad = [c for c in self.multi_counts if not 2 <= int(c) <= MAX_PARTICLES]
        if bad:
            raise ValueError(f"multi_counts must lie in 2..{MAX_PARTICLES}, got {bad}")
        return p / p.sum()


@dataclass
class ShotBatch:
    """Frames and per-frame truth of ``n`` shots (layout of DESIGN.md)."""

    frames: np.ndarray                       # (n, H, W) float32 photons
    truth: dict = field(default_factory=dict)  # name -> (n, ...) arrays


class ShotGenerator:
    """Makes noisy frames of one structure on one detector.

    Parameters
    ----------
    engine : simulate.engine.PatternEngine
        Engine of the structure (fast or direct).
    noise : NoiseConfig
    fluence : FluenceConfig
    mix : HitMix
    seed : int
        Seeds both numpy (orientations, classes, positions) and torch (photon noise) so
        that the same seed gives the same frames.
    sample : SampleConfig or dict, optional
        Sample variety (:mod:`simulate.sample_variety`); None (default) leaves the frames as
        without it and adds no truth key. With polydispersity the engine must have been built
        with ``max_size_scale >= sample.max_size_scale``.
    """

    def __init__(self, engine, *, noise: NoiseConfig | None = None,
                 fluence: FluenceConfig | None = None, mix: HitMix | None = None, seed: int = 0,
                 sample: SampleConfig | dict | None = None):
        self.engine = engine
        self.geometry = engine.geometry
        self.noise = noise or NoiseConfig()
        self.fluence = fluence or FluenceConfig()
        self.mix = mix or HitMix()
        self.sample = sample if sample is None or isinstance(sample, SampleConfig) else SampleConfig.from_dict(sample)
        self._non_sample = (self.sample or SampleConfig()).non_sample_or_default
        if self.sample is not None and self.sample.max_size_scale > getattr(engine, "max_size_scale", 1.0) + 1e-9:
            raise ValueError(f"dataset.sample.polydispersity draws sizes up to {self.sample.max_size_scale:g} "
                             f"but the engine covers {getattr(engine, 'max_size_scale', 1.0):g}: build it with "
                             f"PatternEngine(..., max_size_scale={self.sample.max_size_scale:g})")
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator(device=engine.device).manual_seed(int(seed))
        self.mask = detector_mask(self.geometry)
        self.realism = self.noise.realism_config()
        if self.noise.layout_preset:
            preset = get_preset(self.noise.layout_preset).mask()
            if preset.shape != self.mask.shape:
                raise ValueError(f"noise.layout_preset={self.noise.layout_preset!r} has a {preset.shape} mask, "
                                 f"the geometry {self.mask.shape}: set geometry.n_pixels={preset.shape[0]}")
            self.mask = self.mask | np.where(preset, MASK_INVALID, 0).astype(self.mask.dtype)
        self._dead = torch.as_tensor(self.mask != 0, device=engine.device)
        self._scale32 = engine.scale.to(torch.float32)

    # ------------------------------------------------------------------ public
    def generate(self, n: int) -> ShotBatch:
        """Simulate ``n`` shots; returns frames (n, H, W) float32 photons and truth arrays."""
        rng, probs = self.rng, self.mix.probabilities()
        classes = rng.choice(len(HIT_CLASSES), size=n, p=probs)
        n_part = np.zeros(n, dtype=np.int8)
        quats = np.full((n, MAX_PARTICLES, 4), np.nan, dtype=np.float32)
        positions = np.full((n, MAX_PARTICLES, 3), np.nan, dtype=np.float32)
        fluence = self.fluence.sample(n, rng).astype(np.float32)
        offsets = (rng.normal(0.0, self.noise.beam_center_jitter_px, (n, 2))
                   if self.noise.beam_center_jitter_px > 0 else np.zeros((n, 2))).astype(np.float32)
        H = W = self.geometry.n_pixels
        frames = np.empty((n, H, W), dtype=np.float32)
        sizes = np.full((n, MAX_PARTICLES), np.nan, dtype=np.float32)
        kinds = np.full(n, "", dtype=object)
        radius = self.engine.structure.radius
        for i in range(n):
            name = HIT_CLASSES[classes[i]]
            q, scale = self._detector(offsets[i])
            if name in ("single", "multi"):
                m = 1 if name == "single" else int(rng.choice(self.mix.multi_counts))
                qt = random_quaternions(m, rng)
                s = None if self.sample is None else self.sample.member_sizes(m, rng)
                gap = (0.0, 0.0) if self.sample is None else self.sample.gap_rel
                pos = (contact_positions(m, radius if s is None else radius * s, rng, gap_rel=gap)
                       if m > 1 else np.zeros((1, 3)))
                n_part[i], quats[i, :m], positions[i, :m] = m, qt, pos * 1e-10
                sizes[i, :m] = 1.0 if s is None else s
                expected = self._particle_intensity(qt, pos, q, scale, s)
            elif name == "non_sample":
                expected, kinds[i] = self._parasitic_intensity(q, scale)
            else:
                expected = torch.zeros_like(scale)
            centre = ((H - 1) / 2 + float(offsets[i, 0]), (W - 1) / 2 + float(offsets[i, 1]))
            frame = self._add_noise(expected * float(fluence[i]), centre)
            frames[i] = frame.masked_fill_(self._dead, 0.0).cpu().numpy()
        truth = {
            "hit_class": classes.astype(np.int8),
            "n_particles": n_part,
            "structure_id": np.array([self.engine.structure.name] * n, dtype=object),
            "quaternions": quats,
            "positions_m": positions,
            "fluence_multiplier": fluence,
            "beam_center_offset_px": offsets,
        }
        if self.sample is not None:
            truth["size_scale"] = sizes
            truth["non_sample_kind"] = kinds
        return ShotBatch(frames=frames, truth=truth)

    # ------------------------------------------------------------------ pieces
    def _detector(self, offset_px):
        """q-vectors (H,W,3) and intensity scale (H,W) for a beam-centre offset (pixels)."""
        if not np.any(offset_px):
            return self.engine.q, self.engine.scale
        dev = self.engine.device
        return (torch.as_tensor(reciprocal_vectors(self.geometry, offset_px), device=dev),
                torch.as_tensor(intensity_scale(self.geometry, offset_px), device=dev))

    def _particle_intensity(self, quats, positions_angstrom, q, scale, sizes=None) -> torch.Tensor:
        dev = self.engine.device
        rots = torch.as_tensor(quaternion_to_matrix(quats), device=dev)
        pos = torch.as_tensor(positions_angstrom, device=dev) if len(quats) > 1 else None
        if sizes is None:
            field = self.engine.shot_field(rots, pos, q=q)
        else:
            field = self.engine.shot_field(rots, pos, q=q, scales=torch.as_tensor(sizes, device=dev))
        intensity = field.real ** 2 + field.imag ** 2
        return intensity * (self._scale32 if scale is self.engine.scale else scale.to(intensity.dtype))

    def _parasitic_intensity(self, q, scale) -> tuple[torch.Tensor, str]:
        """Photons (H, W) of one non-sample scatterer (:mod:`simulate.parasitic`) and its kind."""
        intensity, kind = parasitic_intensity(q, self.engine.structure.radius, self._non_sample, self.rng)
        return intensity * scale, kind

    def _add_noise(self, expected: torch.Tensor, centre=None) -> torch.Tensor:
        """Noisy frame (H, W) photons from the expected one; ``centre`` = beam centre (row, col) px."""
        lam = expected.to(torch.float32)
        if self.realism is not None:
            lam = apply_beam_realism(lam[None], self.realism, generator=self.torch_gen, center=centre)[0]
        if self.noise.background_photons:
            lam = lam + self.noise.background_photons
        out = torch.poisson(lam, generator=self.torch_gen) if self.noise.poisson else lam
        if self.noise.gaussian_sigma:
            out = out + self.noise.gaussian_sigma * torch.randn(
                out.shape, generator=self.torch_gen, device=out.device, dtype=out.dtype)
        if self.realism is not None:
            out = apply_detector_realism(out[None], self._dead[None], self.realism, generator=self.torch_gen,
                                         center=centre)[0][0]
        return out
