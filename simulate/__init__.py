"""simulate: a fast, skopi-faithful simulator of X-ray single-particle-imaging shots.

Structures (PDB/mmCIF, procedural protein-like particles, continuum objects) become
noise-free patterns with a torch engine (CPU or CUDA) checked against skopi's direct sum,
then whole shots (single/multi/no-hit/non-sample, fluence jitter, Poisson and Gaussian
noise, masks) written as CXI-flavoured HDF5 shards. Quick start::

    from simulate import Structure, default_geometry, diffraction_intensity
    s = Structure.from_atoms(positions_angstrom, elements)
    I = diffraction_intensity(s, [[1, 0, 0, 0]], default_geometry())   # (1, 172, 172) photons

Units: angstrom for structures, metres and eV for geometry, photons for patterns; see
DESIGN.md. Public names are imported lazily.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Structure": "simulate.structure",
    "Geometry": "simulate.geometry",
    "default_geometry": "simulate.geometry",
    "pnccd_geometry": "simulate.geometry",
    "detector_mask": "simulate.geometry",
    "diffraction_intensity": "simulate.engine",
    "PatternEngine": "simulate.engine",
    "ShotGenerator": "simulate.shots",
    "NoiseConfig": "simulate.shots",
    "FluenceConfig": "simulate.shots",
    "HitMix": "simulate.shots",
    "read_structure": "simulate.pdb_io",
    "procedural_particle": "simulate.procedural",
    "procedural_library": "simulate.procedural",
    "sphere": "simulate.continuum",
    "core_shell": "simulate.continuum",
    "icosahedral_capsid": "simulate.continuum",
    "ellipsoidal_capsid": "simulate.continuum",
    "spherocylinder_capsid": "simulate.continuum",
    "SampleConfig": "simulate.sample_variety",
    "random_quaternions": "simulate.rotations",
    "write_shard": "simulate.dataset_io",
    "generate_dataset": "simulate.generate",
    "HIT_CLASSES": "simulate.labels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'simulate' has no attribute {name!r}")


def __dir__():
    return __all__
