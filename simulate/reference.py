"""skopi as the physics reference: the same pattern computed entirely with skopi's own code.

skopi computes patterns through CUDA only; on a CPU it offers its numba direct sum
(``skopi.diffraction.calculate_molecular_form_factor_square``). This module builds skopi's
``Beam``, ``SimpleSquareDetector`` and ``Particle`` for a :class:`Structure` and a
:class:`Geometry` and returns skopi's expected photons per pixel
(``detector.linear_correction * |F|^2``), so that our engine can be checked against it,
q-vectors, corrections, form factors and units included.
"""
from __future__ import annotations

import numpy as np

from .geometry import Geometry
from .structure import Structure


def skopi_detector(geometry: Geometry):
    """skopi ``SimpleSquareDetector`` initialised with a ``Beam`` of this geometry."""
    import skopi

    beam = skopi.Beam(photon_energy=geometry.photon_energy_ev, fluence=geometry.photons_per_pulse,
                      focus_radius=geometry.focus_radius_m)
    beam.Polarization = np.asarray(geometry.polarization, dtype=np.float64)
    return skopi.SimpleSquareDetector(geometry.n_pixels, geometry.detector_side_m,
                                      geometry.distance_m, beam=beam)


def skopi_particle(structure: Structure):
    """A ``skopi.Particle`` holding the structure's atoms (metres) and Waasmaier-Kirfel table.

    The form-factor table is built exactly as ``Particle.create_from_atoms`` does (skopi's
    database, its q-sample grid), but for every element, not only skopi's short list.
    """
    import skopi
    from skopi.ff_waaskirf_database import load_waaskirf_database

    if not np.allclose(structure.weights, 1.0):
        raise ValueError("skopi has no per-atom weights: compare real atoms only")
    from .form_factors import atomic_number

    z = np.array([atomic_number(e) for e in structure.elements])
    order = np.argsort(z, kind="stable")
    z_sorted = z[order]
    types, first = np.unique(z_sorted, return_index=True)
    particle = skopi.Particle()
    particle.atom_pos = structure.positions[order] * 1e-10
    particle.num_atom_types = len(types)
    particle.split_idx = np.append(first, [len(z_sorted)])
    bohr_radius = 0.529177206
    particle.q_sample = np.linspace(0, 10, 101) / (2.0 * np.pi * bohr_radius * 2.0)
    particle.compton_q_sample = particle.q_sample
    particle.num_q_samples = len(particle.q_sample)
    particle.sBound = np.zeros(particle.num_q_samples)
    particle.nFree = np.zeros(particle.num_q_samples)
    table = load_waaskirf_database()
    rows = []
    for zz in types:
        a1, a2, a3, a4, a5, c, b1, b2, b3, b4, b5 = table[(table[:, 0] == zz) & (table[:, 1] == 0)][0, 2:]
        s2 = particle.q_sample ** 2
        rows.append(a1 * np.exp(-b1 * s2) + a2 * np.exp(-b2 * s2) + a3 * np.exp(-b3 * s2)
                    + a4 * np.exp(-b4 * s2) + a5 * np.exp(-b5 * s2) + c)
    particle.ff_table = np.vstack(rows) if len(rows) > 1 else rows[0]
    return particle


def skopi_intensity(structure: Structure, quaternion, geometry: Geometry,
                    crop: int | None = None) -> np.ndarray:
    """skopi's CPU direct-sum pattern (photons per pixel) of one orientation.

    Parameters
    ----------
    structure : Structure
    quaternion : array_like, shape (4,)
        Scalar-first quaternion, applied with ``Particle.rotate`` (skopi's convention).
    geometry : Geometry
    crop : int, optional
        Compute only the central ``crop x crop`` pixels (the direct sum is slow).

    Returns
    -------
    ndarray, shape (H, W) or (crop, crop), float64
    """
    from skopi.diffraction import calculate_molecular_form_factor_square

    det = skopi_detector(geometry)
    particle = skopi_particle(structure)
    particle.rotate(np.asarray(quaternion, dtype=np.float64))
    q_vec = np.asarray(det.pixel_position_reciprocal)[0]      # (H, W, 3) 1/m
    q_norm = np.asarray(det.pixel_distance_reciprocal)[0]     # (H, W) 1/m
    scale = np.asarray(det.linear_correction)[0]
    if crop is not None:
        r0 = (geometry.n_pixels - crop) // 2
        sl = (slice(r0, r0 + crop), slice(r0, r0 + crop))
        q_vec, q_norm, scale = q_vec[sl], q_norm[sl], scale[sl]
    # skopi passes sin(theta)/lambda in 1/angstrom to the form factors (gpu/diffraction.py).
    f2 = calculate_molecular_form_factor_square(particle, q_norm * (1e-10 / 2.0), q_vec)
    return f2 * scale
