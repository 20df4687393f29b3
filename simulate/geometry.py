"""Experimental geometry: beam, square detector, reciprocal-space pixel vectors, corrections, masks.

Everything follows skopi's ``SimpleSquareDetector`` + ``Beam`` conventions (see DESIGN.md):
pixel ``(row, col)`` sits at ``x = -L/2 + (col + 1/2) L/N``, ``y = -L/2 + (row + 1/2) L/N``,
``z = distance``; the beam travels along +z, polarised along x.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import GeometryError

#: Classical electron radius (m), as skopi's ``Thomson_factor`` uses it.
ELECTRON_RADIUS_M = 2.817895019671143e-15
#: h*c in eV*m (skopi's conversion constant).
HC_EV_M = 1.23984197386209e-06

# CXI mask bits (cxidb CXI format): invalid pixels and pixels shadowed by the beam stop.
MASK_INVALID = 0x1
MASK_SHADOWED = 0x10


@dataclass(frozen=True)
class Geometry:
    """Beam and detector of one experiment. Field names carry their units.

    Attributes
    ----------
    n_pixels : int
        Pixels per side of the square detector.
    detector_side_m : float
        Side length of the detector (m); pixel pitch is ``detector_side_m / n_pixels``.
    distance_m : float
        Sample-detector distance (m).
    photon_energy_ev : float
        Photon energy (eV).
    photons_per_pulse : float
        Incident photons per pulse.
    focus_radius_m : float
        Radius of the (top-hat, circular) focal spot (m); fluence is
        ``photons_per_pulse / (pi focus_radius_m**2)`` as in skopi.
    beamstop_px : tuple of int
        ``(rows, cols)`` of the central beam stop, flagged ``MASK_SHADOWED``; (0, 0) for none.
    gap_px : int
        Width in pixels of the vertical panel gap through the centre (a ``n_pixels x gap_px``
        strip), flagged ``MASK_INVALID``; 0 for none.
    polarization : tuple of float
        Polarisation direction of the incident beam (skopi's default ``(1, 0, 0)``).
    """

    n_pixels: int = 172
    detector_side_m: float = 0.1
    distance_m: float = 0.1
    photon_energy_ev: float = 1660.0
    photons_per_pulse: float = 1e12
    focus_radius_m: float = 0.5e-6
    beamstop_px: tuple = (6, 8)
    gap_px: int = 4
    polarization: tuple = (1.0, 0.0, 0.0)

    def __post_init__(self):
        checks = {
            "n_pixels": self.n_pixels >= 2 and float(self.n_pixels).is_integer(),
            "detector_side_m": self.detector_side_m > 0,
            "distance_m": self.distance_m > 0,
            "photon_energy_ev": self.photon_energy_ev > 0,
            "photons_per_pulse": self.photons_per_pulse > 0,
            "focus_radius_m": self.focus_radius_m > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (ok and np.isfinite(value)):
                raise GeometryError(f"geometry.{name} = {value!r} is not valid "
                                    "(must be a finite positive number; n_pixels an integer >= 2)")
        bs = tuple(int(v) for v in self.beamstop_px)
        if len(bs) != 2 or min(bs) < 0 or max(bs) > self.n_pixels:
            raise GeometryError(f"geometry.beamstop_px = {self.beamstop_px!r}: need (rows, cols) "
                                f"within 0..{self.n_pixels}")
        if not 0 <= int(self.gap_px) < self.n_pixels:
            raise GeometryError(f"geometry.gap_px = {self.gap_px!r}: need 0 <= gap_px < n_pixels")
        if not np.linalg.norm(self.polarization) > 0:
            raise GeometryError(f"geometry.polarization = {self.polarization!r} has zero length")
        object.__setattr__(self, "n_pixels", int(self.n_pixels))
        object.__setattr__(self, "beamstop_px", bs)
        object.__setattr__(self, "polarization", tuple(float(v) for v in self.polarization))

    # ------------------------------------------------------------------ derived scalars
    @property
    def wavelength_m(self) -> float:
        """Wavelength (m)."""
        return HC_EV_M / self.photon_energy_ev

    @property
    def pixel_size_m(self) -> float:
        """Pixel pitch (m)."""
        return self.detector_side_m / self.n_pixels

    @property
    def fluence_photons_per_m2(self) -> float:
        """Incident fluence (photons / m^2), skopi's ``photons_per_pulse / focus_area``."""
        return self.photons_per_pulse / (np.pi * self.focus_radius_m ** 2)

    def replace(self, **changes) -> "Geometry":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Plain-dict view (for HDF5 attributes and configs)."""
        return dataclasses.asdict(self)


def default_geometry() -> Geometry:
    """The SpeckleNN paper's geometry: 1.66 keV, 1e12 photons/pulse, 0.5 um focus radius,
    172x172 detector, 6x8 beam stop and 172x4 gap.

    The paper does not state detector size and distance; we use a 0.1 m detector at 0.1 m
    (581 um pixels). The 96x96 central crop then reaches ``|q| = 2 sin(theta)/lambda``
    of about 0.037 1/A at its edge (resolution ~27 A); one pixel is 7.8e-4 1/A, so the
    finest speckle of a 200 A particle (``1/D`` = 0.005 1/A) spans ~6 pixels: 1e4-1e5-atom
    particles are sampled well above Nyquist.
    """
    return Geometry()


def pnccd_geometry(binning: int = 8) -> Geometry:
    """A pnCCD-like preset for PR772-like data: 1.7 keV, 0.13 m, 75 um pixels.

    The physical detector is 1024x1024 pixels (76.8 mm); ``binning`` merges
    ``binning x binning`` pixels (default 8: 128x128 frames of 600 um pixels, as
    PR772 frames are often binned). The centre gap is modelled as 1 binned pixel,
    the beam stop as 2x2 binned pixels.
    """
    if binning < 1 or 1024 % binning:
        raise GeometryError(f"pnccd_geometry(binning={binning}): binning must divide 1024")
    n = 1024 // binning
    return Geometry(n_pixels=n, detector_side_m=1024 * 75e-6, distance_m=0.13,
                    photon_energy_ev=1700.0, photons_per_pulse=1e12, focus_radius_m=0.5e-6,
                    beamstop_px=(max(2, 16 // binning),) * 2, gap_px=max(1, 8 // binning))


# ---------------------------------------------------------------------- per-pixel arrays
def pixel_positions(geometry: Geometry, beam_offset_px=(0.0, 0.0)) -> np.ndarray:
    """Pixel centres in the lab frame, shape (H, W, 3), metres.

    ``beam_offset_px = (dy, dx)`` moves the beam centre by that many pixels (the detector
    shifts by the opposite amount), for beam-centre jitter.
    """
    n, p = geometry.n_pixels, geometry.pixel_size_m
    axis = -geometry.detector_side_m / 2 + p / 2 + np.arange(n) * p
    x, y = np.meshgrid(axis - beam_offset_px[1] * p, axis - beam_offset_px[0] * p, indexing="xy")
    z = np.full_like(x, geometry.distance_m)
    return np.stack([x, y, z], axis=-1)


def reciprocal_vectors(geometry: Geometry, beam_offset_px=(0.0, 0.0)) -> np.ndarray:
    """Scattering vectors ``q = (r_hat - z_hat) / lambda`` of every pixel, shape (H, W, 3), 1/angstrom."""
    pos = pixel_positions(geometry, beam_offset_px)
    r_hat = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    r_hat[..., 2] -= 1.0
    return r_hat / (geometry.wavelength_m * 1e10)


def polarization_factor(geometry: Geometry, beam_offset_px=(0.0, 0.0)) -> np.ndarray:
    """``|r_hat x e|^2`` per pixel (skopi's polarisation correction), shape (H, W)."""
    pos = pixel_positions(geometry, beam_offset_px)
    r_hat = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    e = np.asarray(geometry.polarization, dtype=np.float64)
    e = e / np.linalg.norm(e)
    return np.sum(np.cross(r_hat, e) ** 2, axis=-1)


def solid_angle(geometry: Geometry, beam_offset_px=(0.0, 0.0)) -> np.ndarray:
    """Solid angle of each pixel, ``A cos(alpha) / R^2`` as skopi computes it, shape (H, W), sr."""
    pos = pixel_positions(geometry, beam_offset_px)
    r = np.linalg.norm(pos, axis=-1)
    return geometry.pixel_size_m ** 2 * (geometry.distance_m / r) / r ** 2


def intensity_scale(geometry: Geometry, beam_offset_px=(0.0, 0.0)) -> np.ndarray:
    """Photons per pixel per squared electron of scattering amplitude, shape (H, W).

    skopi's ``linear_correction``: ``fluence * r_e^2 * polarisation * solid_angle``, so that
    ``photons = intensity_scale * |F|^2`` with ``F`` in electrons.
    """
    return (geometry.fluence_photons_per_m2 * ELECTRON_RADIUS_M ** 2
            * polarization_factor(geometry, beam_offset_px) * solid_angle(geometry, beam_offset_px))


def detector_mask(geometry: Geometry) -> np.ndarray:
    """CXI mask of the detector, uint16 (H, W): 0 good, ``MASK_SHADOWED`` beam stop,
    ``MASK_INVALID`` gap. Both are centred on the detector."""
    n = geometry.n_pixels
    mask = np.zeros((n, n), dtype=np.uint16)
    if geometry.gap_px:
        c0 = (n - geometry.gap_px) // 2
        mask[:, c0:c0 + geometry.gap_px] |= MASK_INVALID
    rows, cols = geometry.beamstop_px
    if rows and cols:
        r0, c0 = (n - rows) // 2, (n - cols) // 2
        mask[r0:r0 + rows, c0:c0 + cols] |= MASK_SHADOWED
    return mask


def q_max(geometry: Geometry, beam_offset_px=(0.0, 0.0)) -> float:
    """Largest ``|q|`` on the detector (1/angstrom)."""
    return float(np.linalg.norm(reciprocal_vectors(geometry, beam_offset_px), axis=-1).max())


def q_pixel_step(geometry: Geometry) -> float:
    """``|q|`` step between neighbouring pixels at the detector centre (1/angstrom)."""
    return geometry.pixel_size_m / geometry.distance_m / (geometry.wavelength_m * 1e10)


def check_sampling(geometry: Geometry, diameter_angstrom: float, where: str = "structure",
                   min_oversampling: float = 2.0) -> float:
    """Raise ``GeometryError`` if the detector cannot sample the speckle of a particle.

    The finest speckle of a particle of diameter ``D`` has period ``1/D`` in ``q``; Nyquist
    requires at least 2 pixels per speckle. Returns the oversampling ratio
    ``1 / (D * q_pixel_step)``.
    """
    ratio = 1.0 / (diameter_angstrom * q_pixel_step(geometry))
    if ratio < min_oversampling:
        raise GeometryError(
            f"{where}: particle diameter {diameter_angstrom:.0f} A is too large for the detector "
            f"sampling (speckle oversampling {ratio:.2f} < {min_oversampling}); increase "
            f"geometry.distance_m ({geometry.distance_m} m) or n_pixels ({geometry.n_pixels}), "
            f"or decrease detector_side_m ({geometry.detector_side_m} m)")
    return ratio
