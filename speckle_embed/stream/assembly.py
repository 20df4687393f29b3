"""Assemble modular detectors (AGIPD, Jungfrau...) into images with the facility's geometry.

``extra-geom`` (European XFEL) places every module pixel (``position_modules``) from either
its built-in layouts or a CrystFEL ``.geom`` file. Gaps between modules and ASICs, the
calibration's bad pixels (a static module mask and/or the per-pulse mask sent with the data)
become CXI mask bits; the beam centre of the geometry becomes the classifier's ``center``.
"""
from __future__ import annotations

import numpy as np

from speckle_embed.stream.packet import FramePacket

__all__ = ["DETECTORS", "MASK_INVALID", "DetectorAssembler", "build_geometry"]

#: CXI mask bit of an invalid pixel (gap or bad), as in the datasets (DESIGN.md)
MASK_INVALID = 0x1

#: detector kind -> extra_geom class name
DETECTORS = {"agipd": "AGIPD_1MGeometry", "jungfrau": "JUNGFRAUGeometry", "lpd": "LPD_1MGeometry",
             "dssc": "DSSC_1MGeometry", "epix100": "Epix100Geometry", "pnccd": "PNCCDGeometry"}

#: AGIPD-1M quadrant corners (pixels) of extra-geom's documentation example, for tests/rehearsals
AGIPD_EXAMPLE_QUADS = [(-525, 625), (-550, -10), (520, -160), (542.5, 475)]


def build_geometry(detector: str, geom_file: str | None = None, quad_positions=None, module_positions=None):
    """An extra-geom geometry object.

    Parameters
    ----------
    detector : str
        A key of :data:`DETECTORS`.
    geom_file : str, optional
        CrystFEL ``.geom`` file (takes precedence).
    quad_positions : list of (x, y), optional
        AGIPD/LPD/DSSC quadrant corners in pixels (default: extra-geom's AGIPD example).
    module_positions : list of (x, y), optional
        Jungfrau module offsets in pixels (``JUNGFRAUGeometry.from_module_positions``).
    """
    import extra_geom  # optional heavy dependency of the stream extra

    if detector not in DETECTORS:
        raise ValueError(f"assembly.detector must be one of {sorted(DETECTORS)}; got {detector!r}")
    cls = getattr(extra_geom, DETECTORS[detector])
    if geom_file:
        return cls.from_crystfel_geom(str(geom_file))
    if detector == "jungfrau":
        return cls.from_module_positions(offsets=[tuple(p) for p in (module_positions or [(0, 0)])])
    if hasattr(cls, "from_quad_positions"):
        return cls.from_quad_positions([tuple(p) for p in (quad_positions or AGIPD_EXAMPLE_QUADS)])
    raise ValueError(f"assembly.detector={detector!r} needs assembly.geom_file (a CrystFEL .geom file)")


class DetectorAssembler:
    """Module data ``(n, modules, ss, fs)`` -> frames ``(n, H, W)`` float32 and a CXI mask.

    Parameters
    ----------
    geometry : extra_geom geometry
    module_mask : ndarray, shape (modules, ss, fs), optional
        The calibration's bad pixels (non-zero = bad).

    Attributes
    ----------
    mask : ndarray of uint16, shape (H, W)
        ``MASK_INVALID`` on gaps and on the assembled static bad pixels.
    center : (float, float)
        Beam centre (row, col) in assembled pixels.
    module_shape : tuple
        Expected ``(modules, ss, fs)``.
    """

    def __init__(self, geometry, module_mask=None):
        self.geometry = geometry
        self.module_shape = tuple(geometry.expected_data_shape)
        probe = np.zeros(self.module_shape, np.float32)
        if module_mask is not None:
            module_mask = np.asarray(module_mask)
            if module_mask.shape != self.module_shape:
                raise ValueError(f"assembly.mask_file has shape {module_mask.shape}; the geometry expects "
                                 f"{self.module_shape}")
            probe[module_mask != 0] = np.nan
        img, centre = geometry.position_modules(probe)
        self.mask = np.where(np.isnan(img), MASK_INVALID, 0).astype(np.uint16)
        self.center = (float(centre[0]), float(centre[1]))
        self.frame_shape = img.shape

    def assemble(self, modules: np.ndarray) -> np.ndarray:
        """Assembled float32 frames; gaps are 0 (and masked by :attr:`mask`)."""
        modules = np.asarray(modules)
        if modules.ndim == 3:
            modules = modules[None]
        if tuple(modules.shape[1:]) != self.module_shape:
            raise ValueError(f"module data of shape {tuple(modules.shape[1:])}, the geometry expects "
                             f"{self.module_shape}")
        out = self.geometry.output_array_for_position_fast((modules.shape[0],), np.float32)
        img, _ = self.geometry.position_modules(modules, out=out)
        np.nan_to_num(img, copy=False, nan=0.0)
        return img

    def assemble_mask(self, module_masks: np.ndarray) -> np.ndarray:
        """Per-frame masks ``(n, modules, ss, fs)`` -> ``(n, H, W)`` uint16 (gaps included)."""
        bad = self.assemble((np.asarray(module_masks) != 0).astype(np.float32))
        return np.where((bad > 0) | (self.mask[None] != 0), MASK_INVALID, 0).astype(np.uint16)

    def assemble_packet(self, p: FramePacket) -> FramePacket:
        """A packet of module data as a packet of assembled frames."""
        mask = None
        if p.mask is not None and p.mask.ndim == 4:
            mask = self.assemble_mask(p.mask)
        return FramePacket(self.assemble(p.frames), p.train_id, p.pulse_id, p.timestamp, p.received_ns,
                           mask, p.source)
