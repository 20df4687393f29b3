"""Sample variety of a dataset (``dataset.sample``): size polydispersity, aggregates, non-sample hits.

Real SPI runs do not image one rigid particle: virions vary in size from shot to shot,
aggregates are made of unequal members that need not touch exactly, and non-sample hits are
buffer droplets of many sizes, debris and broken capsids. :class:`SampleConfig` holds these
per-shot effects; :class:`simulate.shots.ShotGenerator` applies them.

Each section is on only if given (``{}`` = its documented defaults); ``dataset.sample`` null
or absent (the default) gives frames bit-identical to the simulator without it. Lengths are
relative to the particle radius ``R`` (``Structure.radius``, the largest atom distance from
the centre, angstrom), so the same options suit particles of every size.

``polydispersity`` (:class:`Polydispersity`)
    ``sigma_rel`` (default 0.05): relative standard deviation of the particle's linear size,
    drawn per particle and shot, ``s = 1 + sigma_rel * z`` with ``z`` standard normal
    truncated at ``+-max_sigmas`` (default 3; the truncated spread is 0.987 ``sigma_rel``).
    The particle is scaled at constant density (electrons ``s^3``, forward intensity ``s^6``,
    speckles ``1/s``); see :mod:`simulate.engine`. Range 0-0.2; 0.05 is about 3.5 nm on a
    70 nm PR772 capsid, as the few-per-cent size spread of virus preparations.
``aggregate`` (:class:`Aggregate`), multi hits
    ``gap_rel`` (default ``[0, 0.05]``): gap between an added member and the one it attaches
    to, relative to the sum of their radii, uniform per contact (``[0, 0]``: touching).
    ``same_size`` (default false): with polydispersity, one size for every member of an
    aggregate (true) or one per member (false: mixed sizes, contacts use each member's
    scaled radius).
``non_sample`` (:class:`NonSample`), non-sample hits
    Each non-sample hit is a buffer ``droplet`` (probability ``1 - debris_p - fragment_p``),
    ``debris`` (``debris_p``, default 0.25) or a capsid ``fragment`` (``fragment_p``, default
    0.25). Droplet: water ellipsoid of radius ``droplet_radius_rel`` (uniform, default
    ``[1.5, 4]`` R) and per-axis factors ``droplet_aspect`` (default ``[0.7, 1.3]``), with a
    rod streak (probability ``streak_p`` 0.5, length ``streak_length_rel`` ``[4, 10]`` and width
    ``streak_width_rel`` 0.1 droplet radii). Debris: a clump of ``debris_beads`` (default
    ``[2, 8]``) touching protein-density spheres of radii ``debris_radius_rel`` (uniform,
    default ``[0.1, 0.5]`` R). Fragment: a spherical cap of a capsid shell, half-angle
    ``fragment_angle_deg`` (uniform, default ``[20, 90]`` degrees), outer radius R, thickness
    ``fragment_thickness_rel`` (default 0.1 R; PR772: 4 nm on 35 nm). Densities in e/A^3:
    ``droplet_density`` 0.334 (water), ``debris_density`` and ``fragment_density`` 0.43
    (protein). Without the section, non-sample hits are the droplets and streaks of
    the defaults above (the simulator's original behaviour).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .continuum import PROTEIN_DENSITY, WATER_DENSITY

__all__ = ["Polydispersity", "Aggregate", "NonSample", "SampleConfig", "NON_SAMPLE_KINDS"]

NON_SAMPLE_KINDS = ("droplet", "droplet+streak", "debris", "fragment")
"""Values of the ``non_sample_kind`` truth of non-sample hits (empty string for other hits)."""


def _where(section: str, key: str) -> str:
    return f"dataset.sample.{section}.{key}"


def _range(value, section: str, key: str, *, minimum: float = 0.0, positive: bool = False,
           integer: bool = False) -> tuple:
    """A ``[low, high]`` pair as a tuple, checked: finite, ``minimum <= low <= high``."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{_where(section, key)} = {value!r}: must be a [low, high] pair") from None
    ok = (math.isfinite(low) and math.isfinite(high) and minimum <= low <= high
          and (not positive or low > 0))
    if integer:
        ok = ok and low.is_integer() and high.is_integer()
    if not ok:
        kind = "integers" if integer else "numbers"
        raise ValueError(f"{_where(section, key)} = {value!r}: need {kind} {minimum:g} "
                         f"{'<' if positive else '<='} low <= high")
    return (int(low), int(high)) if integer else (low, high)


def _number(value, section: str, key: str, *, low: float, high: float = math.inf,
            open_low: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and (x > low if open_low else x >= low) and x <= high):
        bounds = f"{'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
        raise ValueError(f"{_where(section, key)} = {value!r}: must be a number {bounds}")
    return x


@dataclass
class Polydispersity:
    """Per-particle size factor ``s = 1 + sigma_rel * z``, ``|z| <= max_sigmas`` (module notes)."""

    sigma_rel: float = 0.05
    max_sigmas: float = 3.0

    def __post_init__(self):
        self.sigma_rel = _number(self.sigma_rel, "polydispersity", "sigma_rel", low=0.0, high=0.2)
        self.max_sigmas = _number(self.max_sigmas, "polydispersity", "max_sigmas", low=0.0, high=5.0,
                                  open_low=True)

    @property
    def max_scale(self) -> float:
        """Largest size factor that can be drawn, ``1 + max_sigmas * sigma_rel``."""
        return 1.0 + self.max_sigmas * self.sigma_rel

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` size factors, shape (n,): truncated normal about 1 (redrawn beyond the cut)."""
        z = rng.standard_normal(n)
        bad = np.abs(z) > self.max_sigmas
        while bad.any():
            z[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > self.max_sigmas
        return 1.0 + self.sigma_rel * z


@dataclass
class Aggregate:
    """Multi hits: relative gaps between members, and whether members share one size."""

    gap_rel: tuple = (0.0, 0.05)
    same_size: bool = False

    def __post_init__(self):
        self.gap_rel = _range(self.gap_rel, "aggregate", "gap_rel")
        if self.gap_rel[1] > 1.0:
            raise ValueError(f"{_where('aggregate', 'gap_rel')} = {list(self.gap_rel)}: gaps above "
                             "1 (one radius sum) are separate particles, not an aggregate")
        if not isinstance(self.same_size, (bool, np.bool_)):
            raise ValueError(f"{_where('aggregate', 'same_size')} = {self.same_size!r}: must be true or false")


@dataclass
class NonSample:
    """Non-sample hits: droplet / debris / fragment shares and their size ranges (module notes)."""

    droplet_radius_rel: tuple = (1.5, 4.0)
    droplet_aspect: tuple = (0.7, 1.3)
    droplet_density: float = WATER_DENSITY
    streak_p: float = 0.5
    streak_length_rel: tuple = (4.0, 10.0)
    streak_width_rel: float = 0.1
    debris_p: float = 0.25
    debris_beads: tuple = (2, 8)
    debris_radius_rel: tuple = (0.1, 0.5)
    debris_density: float = PROTEIN_DENSITY
    fragment_p: float = 0.25
    fragment_angle_deg: tuple = (20.0, 90.0)
    fragment_thickness_rel: float = 0.1
    fragment_density: float = PROTEIN_DENSITY

    def __post_init__(self):
        sec = "non_sample"
        self.droplet_radius_rel = _range(self.droplet_radius_rel, sec, "droplet_radius_rel", positive=True)
        self.droplet_aspect = _range(self.droplet_aspect, sec, "droplet_aspect", positive=True)
        self.streak_length_rel = _range(self.streak_length_rel, sec, "streak_length_rel", positive=True)
        self.debris_beads = _range(self.debris_beads, sec, "debris_beads", minimum=1, integer=True)
        if self.debris_beads[1] > 16:
            raise ValueError(f"{_where(sec, 'debris_beads')} = {list(self.debris_beads)}: at most 16 beads")
        self.debris_radius_rel = _range(self.debris_radius_rel, sec, "debris_radius_rel", positive=True)
        self.fragment_angle_deg = _range(self.fragment_angle_deg, sec, "fragment_angle_deg", positive=True)
        if self.fragment_angle_deg[1] > 180:
            raise ValueError(f"{_where(sec, 'fragment_angle_deg')} = {list(self.fragment_angle_deg)}: "
                             "a cap half-angle is at most 180 degrees")
        for key in ("streak_p", "debris_p", "fragment_p"):
            setattr(self, key, _number(getattr(self, key), sec, key, low=0.0, high=1.0))
        if self.debris_p + self.fragment_p > 1 + 1e-12:
            raise ValueError(f"dataset.sample.non_sample: debris_p + fragment_p = "
                             f"{self.debris_p + self.fragment_p:g} must be <= 1 (the rest are droplets)")
        for key in ("droplet_density", "debris_density", "fragment_density", "streak_width_rel"):
            setattr(self, key, _number(getattr(self, key), sec, key, low=0.0, open_low=True))
        self.fragment_thickness_rel = _number(self.fragment_thickness_rel, sec, "fragment_thickness_rel",
                                              low=0.0, high=1.0, open_low=True)


#: Non-sample hits without a ``non_sample`` section: droplets and streaks only, as before.
DROPLETS_ONLY = NonSample(debris_p=0.0, fragment_p=0.0)

_SECTIONS = {"polydispersity": Polydispersity, "aggregate": Aggregate, "non_sample": NonSample}


def _section(value, cls, name: str):
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"dataset.sample.{name} must be a mapping of {cls.__name__} fields or null, "
                         f"got {value!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ValueError(f"dataset.sample.{name}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


@dataclass
class SampleConfig:
    """The ``dataset.sample`` section: each sub-section on only if given (module notes).

    Parameters
    ----------
    polydispersity : Polydispersity or dict, optional
    aggregate : Aggregate or dict, optional
    non_sample : NonSample or dict, optional

    Examples
    --------
    >>> cfg = SampleConfig.from_dict({"polydispersity": {"sigma_rel": 0.05}})
    >>> cfg.max_size_scale
    1.15
    """

    polydispersity: Polydispersity | None = None
    aggregate: Aggregate | None = None
    non_sample: NonSample | None = None

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            setattr(self, name, _section(getattr(self, name), cls, name))

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> "SampleConfig":
        """From the plain ``dataset.sample`` mapping (unknown sections are refused)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"dataset.sample must be a mapping with sections {sorted(_SECTIONS)}, got {value!r}")
        unknown = sorted(set(value) - set(_SECTIONS))
        if unknown:
            raise ValueError(f"dataset.sample: unknown section(s) {unknown}; allowed: {sorted(_SECTIONS)}")
        return cls(**dict(value))

    @property
    def max_size_scale(self) -> float:
        """Largest particle size factor (1 without polydispersity)."""
        return self.polydispersity.max_scale if self.polydispersity is not None else 1.0

    def member_sizes(self, m: int, rng: np.random.Generator) -> np.ndarray | None:
        """Size factors of the ``m`` particles of one shot, or None without polydispersity."""
        if self.polydispersity is None:
            return None
        if m > 1 and self.aggregate is not None and self.aggregate.same_size:
            return np.repeat(self.polydispersity.draw(1, rng), m)
        return self.polydispersity.draw(m, rng)

    @property
    def gap_rel(self) -> tuple:
        """Gap range of aggregate contacts (``(0, 0)``: touching, without the section)."""
        return self.aggregate.gap_rel if self.aggregate is not None else (0.0, 0.0)

    @property
    def non_sample_or_default(self) -> NonSample:
        """The ``non_sample`` section, or droplets and streaks only without it."""
        return self.non_sample if self.non_sample is not None else DROPLETS_ONLY
