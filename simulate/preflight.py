"""Checks made before any structure is simulated: run-wide settings and memory.

:func:`validate_run_settings` refuses a method, device, fluence, noise or geometry that would
make every structure fail, with one line naming the key. :func:`estimate_shard_bytes` bounds a
shard's peak memory (frames, detector arrays, reciprocal grid) so that
:func:`check_memory` can refuse a shard that would not fit, instead of the process being
killed by the kernel's OOM killer without a word.
"""
from __future__ import annotations

import math
import os

from .engine import DEFAULT_OVERSAMPLING, MAX_GRID_SIDE
from .geometry import Geometry
from .shots import FluenceConfig, NoiseConfig

__all__ = ["RunSettingsError", "InsufficientMemoryError", "PHOTON_ENERGY_RANGE_EV",
           "MAX_N_PIXELS", "validate_run_settings", "estimate_shard_bytes",
           "available_memory_bytes", "check_memory"]

PHOTON_ENERGY_RANGE_EV = (50.0, 200_000.0)
"""Accepted ``geometry.photon_energy_ev`` (X-rays; the form-factor tables' domain)."""
MAX_N_PIXELS = 65_536
"""Largest accepted ``geometry.n_pixels`` (detector side in pixels)."""

#: Bytes per detector pixel held besides the frames: the engine's q (float64 x3, float32 x3)
#: and intensity scale (float64), and per-shot temporaries (jittered q and scale, field,
#: intensity, noise), rounded up.
BYTES_PER_PIXEL = 128
#: Bytes per voxel of the reciprocal grid while it is built: complex64 grid, one complex64
#: NUFFT term, the transposed copy, int32 table index and float32 |k|.
BYTES_PER_VOXEL = 32
#: Copies of the frames alive at the peak: the per-chunk batches and their concatenation,
#: then the frames plus the in-memory HDF5 image and its copy while the shard is written
#: (compressed, at most the frames' size each).
FRAME_COPIES = 3


class RunSettingsError(ValueError):
    """A run-wide setting would make every structure fail; raised before any is simulated."""


class InsufficientMemoryError(MemoryError):
    """A shard's estimated peak memory exceeds the memory available on this machine."""


def validate_run_settings(geometry: Geometry, *, method: str, device: str,
                          noise: NoiseConfig, fluence: FluenceConfig) -> None:
    """Raise :class:`RunSettingsError` (one line naming the config key) for a bad setting.

    Checks ``method`` in {fast, direct}; ``device`` cpu, or cuda[:i] with CUDA available;
    ``fluence.kind`` and ``0 < fluence.low <= fluence.high``; noise widths ``>= 0``
    (``gaussian_sigma``, ``beam_center_jitter_px``, ``background_photons``); ``geometry.photon_energy_ev`` within
    :data:`PHOTON_ENERGY_RANGE_EV` and ``geometry.n_pixels <= MAX_N_PIXELS``.
    """
    if method not in ("fast", "direct"):
        raise RunSettingsError(f"method = {method!r}: choose 'fast' or 'direct'")
    dev = str(device)
    if dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RunSettingsError(f"device = {dev!r} but CUDA is not available on this machine "
                                   "(torch.cuda.is_available() is False); use device=cpu or auto")
    elif dev != "cpu":
        raise RunSettingsError(f"device = {dev!r}: choose cpu, cuda or auto")
    if fluence.kind not in ("constant", "loguniform", "lognormal"):
        raise RunSettingsError(f"dataset.fluence.kind = {fluence.kind!r}: choose constant, "
                               "loguniform or lognormal")
    if fluence.kind != "constant":
        low, high = fluence.low, fluence.high
        if not (_finite(low) and _finite(high) and 0 < low <= high):
            raise RunSettingsError(f"dataset.fluence.low/high = {low!r}/{high!r}: need "
                                   "0 < low <= high (pulse fluence multipliers)")
    for key in ("gaussian_sigma", "beam_center_jitter_px", "background_photons"):
        value = getattr(noise, key, 0.0)
        if not (_finite(value) and value >= 0):
            raise RunSettingsError(f"dataset.noise.{key} = {value!r}: must be a finite number >= 0")
    lo, hi = PHOTON_ENERGY_RANGE_EV
    if not lo <= geometry.photon_energy_ev <= hi:
        raise RunSettingsError(f"geometry.photon_energy_ev = {geometry.photon_energy_ev!r}: "
                               f"must lie in {lo:g}..{hi:g} eV")
    if geometry.n_pixels > MAX_N_PIXELS:
        raise RunSettingsError(f"geometry.n_pixels = {geometry.n_pixels}: at most {MAX_N_PIXELS}")


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def grid_side(geometry: Geometry, radius_angstrom: float, *,
              oversampling: float = DEFAULT_OVERSAMPLING, max_beam_offset_px: float = 0.0) -> int:
    """Voxels per side of the fast method's reciprocal grid (as :class:`~simulate.engine.ReciprocalVolume`).

    The detector corner has the largest ``|q| = sqrt(2 - 2 cos 2theta) / lambda``; the
    engine pads it for beam-centre jitter. Capped at ``MAX_GRID_SIDE + 1`` (the engine
    refuses larger grids itself).
    """
    a = geometry.detector_side_m / 2 - geometry.pixel_size_m / 2
    cos2t = geometry.distance_m / math.sqrt(2 * a * a + geometry.distance_m ** 2)
    q_max = math.sqrt(max(2 - 2 * cos2t, 0.0)) / (geometry.wavelength_m * 1e10)
    q_max *= 1 + max_beam_offset_px * 1.5 / geometry.n_pixels
    diameter = max(2.0 * radius_angstrom, 10.0)
    side = 2 * (int(math.ceil(q_max * oversampling * diameter)) + 2) + 1
    return min(side, MAX_GRID_SIDE + 1)


def estimate_shard_bytes(geometry: Geometry, n_frames: int, *, method: str = "fast",
                         radius_angstrom: float | None = None,
                         oversampling: float = DEFAULT_OVERSAMPLING,
                         max_beam_offset_px: float = 0.0) -> int:
    """Upper estimate of a shard's peak memory in bytes (CPU side).

    ``FRAME_COPIES * n * H * W * 4`` (float32 frames) ``+ BYTES_PER_PIXEL * H * W``
    (detector arrays) ``+ BYTES_PER_VOXEL * side**3`` (reciprocal grid of the fast method,
    when ``radius_angstrom`` is given; :func:`grid_side`).
    """
    pixels = geometry.n_pixels ** 2
    total = FRAME_COPIES * int(n_frames) * pixels * 4 + BYTES_PER_PIXEL * pixels
    if method == "fast" and radius_angstrom is not None:
        side = grid_side(geometry, radius_angstrom, oversampling=oversampling,
                         max_beam_offset_px=max_beam_offset_px)
        total += BYTES_PER_VOXEL * side ** 3
    return total


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation: ``MemAvailable`` of ``/proc/meminfo`` (Linux),
    else free physical pages (``os.sysconf``); None when neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, *, available: int | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` when ``needed`` bytes exceed the available memory."""
    available = available_memory_bytes() if available is None else available
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"{what} needs about {needed / 2**30:.1f} GiB of memory but {available / 2**30:.1f} GiB "
            "are available; lower dataset.n_frames, geometry.n_pixels or the oversampling")
