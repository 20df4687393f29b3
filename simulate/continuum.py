"""Continuum objects (spheres, core-shell particles, faceted and elongated capsids) as pseudo-atom clouds.

Large low-resolution objects such as the PR772 virus (about 70 nm) are described by their
electron density, not atoms. Each object is sampled on a jittered cubic lattice of spacing
``voxel_angstrom`` (one point per cell, uniformly placed inside its cell, so there is no
lattice to give Bragg peaks). Every point is a carbon pseudo-atom whose weight stands for
the electrons of its cell, ``weight = density * voxel^3 / 6``; the weights of each region
are then scaled so that the region holds exactly ``density * volume`` electrons.

The description is faithful for ``|q|`` well below ``1 / voxel_angstrom`` (for 10 A voxels,
``|q| < 0.05 1/A``, i.e. 20 A resolution): at higher q the carbon form factor and the
sampling points show through.

Electron densities (e/A^3), for the ``density`` arguments:

- protein: :data:`PROTEIN_DENSITY` = 0.43 (1.35 g/cm^3)
- nucleic acid: :data:`NUCLEIC_ACID_DENSITY` = 0.55 (about 1.7 g/cm^3)
- water: :data:`WATER_DENSITY` = 0.334 (for reference; SPI particles are in vacuum)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import StructureError
from .structure import Structure

PROTEIN_DENSITY = 0.43
"""Electron density of protein, e/A^3."""
NUCLEIC_ACID_DENSITY = 0.55
"""Electron density of nucleic acid (RNA/DNA), e/A^3."""
WATER_DENSITY = 0.334
"""Electron density of liquid water, e/A^3."""

_PSEUDO_ELEMENT, _PSEUDO_Z = "C", 6


@dataclass(frozen=True)
class _Region:
    """Part of an object with a uniform density; a point belongs to the first region
    (in the object's list) whose ``inside`` test it passes."""

    inside: Callable[[np.ndarray], np.ndarray]   # (n, 3) angstrom -> (n,) bool
    volume: float                                # A^3, excluding earlier regions
    density: float                               # e/A^3
    label: str


# ---------------------------------------------------------------------------- public API
def sphere(radius_angstrom: float, density: float = PROTEIN_DENSITY, *,
           voxel_angstrom: float = 10.0, seed: int = 0) -> Structure:
    """Homogeneous sphere.

    Parameters
    ----------
    radius_angstrom : float
        Radius in angstrom.
    density : float
        Electron density in e/A^3.
    voxel_angstrom : float
        Lattice spacing of the pseudo-atoms in angstrom.
    seed : int
        Seed of the lattice jitter.

    Returns
    -------
    Structure
        Carbon pseudo-atoms holding ``density * 4/3 pi r^3`` electrons in total.

    Examples
    --------
    >>> s = sphere(100.0)
    >>> round(s.n_electrons / (0.43 * 4 / 3 * np.pi * 100.0 ** 3), 6)
    1.0
    """
    _check_positive(radius_angstrom=radius_angstrom, voxel_angstrom=voxel_angstrom)
    _check_densities(density=density)
    r = float(radius_angstrom)
    regions = [_Region(_ball(r), 4 / 3 * np.pi * r ** 3, density, "sphere")]
    return _pseudo_atoms(regions, r, voxel_angstrom, seed, name=f"continuum-sphere-r{r:.0f}",
                         source=f"continuum:sphere:radius={r:g},density={density:g}")


def core_shell(core_radius: float, shell_thickness: float,
               core_density: float = NUCLEIC_ACID_DENSITY,
               shell_density: float = PROTEIN_DENSITY, *,
               voxel_angstrom: float = 10.0, seed: int = 0) -> Structure:
    """Spherical core inside a concentric spherical shell.

    Parameters
    ----------
    core_radius : float
        Core radius in angstrom.
    shell_thickness : float
        Shell thickness in angstrom (outer radius ``core_radius + shell_thickness``).
    core_density, shell_density : float
        Electron densities in e/A^3 (0 leaves that region empty).
    voxel_angstrom : float
        Lattice spacing of the pseudo-atoms in angstrom.
    seed : int
        Seed of the lattice jitter.

    Returns
    -------
    Structure
        Carbon pseudo-atoms; the core and shell hold exactly their electrons.
    """
    _check_positive(core_radius=core_radius, shell_thickness=shell_thickness,
                    voxel_angstrom=voxel_angstrom)
    _check_densities(core_density=core_density, shell_density=shell_density)
    rc, ro = float(core_radius), float(core_radius) + float(shell_thickness)
    regions = [_Region(_ball(rc), 4 / 3 * np.pi * rc ** 3, core_density, "core"),
               _Region(_ball(ro), 4 / 3 * np.pi * (ro ** 3 - rc ** 3), shell_density, "shell")]
    return _pseudo_atoms(regions, ro, voxel_angstrom, seed,
                         name=f"continuum-coreshell-r{rc:.0f}-t{shell_thickness:.0f}",
                         source=(f"continuum:core_shell:core_radius={rc:g},"
                                 f"shell_thickness={shell_thickness:g},core_density={core_density:g},"
                                 f"shell_density={shell_density:g}"))


def icosahedral_capsid(diameter_angstrom: float = 700.0, shell_thickness: float = 40.0,
                       core_density: float = NUCLEIC_ACID_DENSITY,
                       shell_density: float = PROTEIN_DENSITY, *,
                       voxel_angstrom: float = 10.0, seed: int = 0) -> Structure:
    """Icosahedral protein capsid around a genome core (PR772-like: about 70 nm).

    The capsid is the region between two concentric icosahedra whose faces are
    ``shell_thickness`` apart; the core fills the inner icosahedron. Five-fold vertices lie
    along ``(0, +-1, +-phi)`` and its cyclic permutations.

    Parameters
    ----------
    diameter_angstrom : float
        Vertex-to-vertex diameter in angstrom (twice the circumradius); the face-to-face
        diameter is 0.795 times this.
    shell_thickness : float
        Capsid thickness perpendicular to the faces, in angstrom.
    core_density, shell_density : float
        Electron densities in e/A^3; the default core is pure nucleic acid (use a lower
        value for a loosely packed genome, 0 for an empty capsid).
    voxel_angstrom : float
        Lattice spacing of the pseudo-atoms in angstrom (700 A at 10 A: about 1.1e5 atoms).
    seed : int
        Seed of the lattice jitter.

    Returns
    -------
    Structure
        Carbon pseudo-atoms; core and shell hold exactly their electrons.
    """
    _check_positive(diameter_angstrom=diameter_angstrom, shell_thickness=shell_thickness,
                    voxel_angstrom=voxel_angstrom)
    _check_densities(core_density=core_density, shell_density=shell_density)
    circumradius = diameter_angstrom / 2
    outer_in = circumradius * _ICOSA_INRADIUS
    if shell_thickness >= outer_in:
        raise StructureError(f"shell_thickness={shell_thickness}: must be below the capsid "
                             f"inradius {outer_in:.1f} A")
    inner_in = outer_in - shell_thickness
    v_outer, v_inner = _icosahedron_volume(outer_in), _icosahedron_volume(inner_in)
    regions = [_Region(_icosahedron(inner_in), v_inner, core_density, "core"),
               _Region(_icosahedron(outer_in), v_outer - v_inner, shell_density, "shell")]
    return _pseudo_atoms(regions, circumradius, voxel_angstrom, seed,
                         name=f"continuum-capsid-d{diameter_angstrom:.0f}",
                         source=(f"continuum:icosahedral_capsid:diameter={diameter_angstrom:g},"
                                 f"shell_thickness={shell_thickness:g},core_density={core_density:g},"
                                 f"shell_density={shell_density:g}"))


def ellipsoidal_capsid(diameter_angstrom: float = 600.0, aspect_ratio: float = 1.5,
                       shell_thickness: float = 40.0, core_density: float = NUCLEIC_ACID_DENSITY,
                       shell_density: float = PROTEIN_DENSITY, *, voxel_angstrom: float = 10.0,
                       seed: int = 0) -> Structure:
    """Spheroidal (prolate or oblate) capsid around a genome core: a non-spherical virion.

    The outer surface is the spheroid ``(x^2 + y^2) / a^2 + z^2 / c^2 <= 1`` with equatorial
    semi-axis ``a = diameter_angstrom / 2`` and polar semi-axis ``c = aspect_ratio * a``; the
    core is the spheroid of semi-axes ``a - t, a - t, c - t`` (``t = shell_thickness``). The
    shell is exactly ``t`` thick along the three axes and thinner in between (the parallel
    surface of a spheroid is not a spheroid): at least ``0.93 t`` for aspect ratios 0.5-2
    (``t = 40``, ``a = 300`` A: 37.2-40 A), ``0.86 t`` at 3.

    Parameters
    ----------
    diameter_angstrom : float
        Equatorial diameter ``2 a`` in angstrom.
    aspect_ratio : float
        Polar over equatorial semi-axis ``c / a`` (> 1 prolate, < 1 oblate, 1 a sphere).
    shell_thickness : float
        Shell thickness ``t`` along the axes, in angstrom (below ``min(a, c)``).
    core_density, shell_density : float
        Electron densities in e/A^3 (0 leaves that region empty).
    voxel_angstrom : float
        Lattice spacing of the pseudo-atoms in angstrom.
    seed : int
        Seed of the lattice jitter.

    Returns
    -------
    Structure
        Carbon pseudo-atoms, long axis along z; core and shell hold exactly their electrons
        (``density * 4/3 pi a^2 c`` per spheroid).

    Examples
    --------
    >>> s = ellipsoidal_capsid(300.0, 2.0, 30.0, voxel_angstrom=15.0)
    >>> round(float(np.ptp(s.positions[:, 2]) / np.ptp(s.positions[:, 0])), 1)
    2.0
    """
    _check_positive(diameter_angstrom=diameter_angstrom, aspect_ratio=aspect_ratio,
                    shell_thickness=shell_thickness, voxel_angstrom=voxel_angstrom)
    _check_densities(core_density=core_density, shell_density=shell_density)
    a = float(diameter_angstrom) / 2
    c = a * float(aspect_ratio)
    t = float(shell_thickness)
    if t >= min(a, c):
        raise StructureError(f"shell_thickness={shell_thickness}: must be below the smaller "
                             f"semi-axis {min(a, c):.1f} A")
    v_outer = 4 / 3 * np.pi * a * a * c
    v_inner = 4 / 3 * np.pi * (a - t) ** 2 * (c - t)
    regions = [_Region(_spheroid(a - t, c - t), v_inner, core_density, "core"),
               _Region(_spheroid(a, c), v_outer - v_inner, shell_density, "shell")]
    return _pseudo_atoms(regions, max(a, c), voxel_angstrom, seed,
                         name=f"continuum-ellipsoid-d{diameter_angstrom:.0f}-x{aspect_ratio:g}",
                         source=(f"continuum:ellipsoidal_capsid:diameter={diameter_angstrom:g},"
                                 f"aspect_ratio={aspect_ratio:g},shell_thickness={t:g},"
                                 f"core_density={core_density:g},shell_density={shell_density:g}"))


def spherocylinder_capsid(diameter_angstrom: float = 500.0, aspect_ratio: float = 2.0,
                          shell_thickness: float = 40.0, core_density: float = NUCLEIC_ACID_DENSITY,
                          shell_density: float = PROTEIN_DENSITY, *, voxel_angstrom: float = 10.0,
                          seed: int = 0) -> Structure:
    """Elongated capsid: a cylinder with hemispherical caps (spherocylinder) around a core.

    The outer surface is every point within ``r = diameter_angstrom / 2`` of the segment
    ``|z| <= h`` on the z axis, ``h = r (aspect_ratio - 1)``, so the total length is
    ``aspect_ratio * diameter_angstrom``; the core is the points within ``r - t`` of the
    same segment (a shell of constant thickness ``t``), as prolate phage heads (T4-like) and
    bacilliform virions.

    Parameters
    ----------
    diameter_angstrom : float
        Outer diameter ``2 r`` in angstrom.
    aspect_ratio : float
        Total length over diameter (>= 1; 1 is a sphere).
    shell_thickness : float
        Shell thickness in angstrom (below ``r``).
    core_density, shell_density : float
        Electron densities in e/A^3 (0 leaves that region empty).
    voxel_angstrom : float
        Lattice spacing of the pseudo-atoms in angstrom.
    seed : int
        Seed of the lattice jitter.

    Returns
    -------
    Structure
        Carbon pseudo-atoms, long axis along z; volume of a spherocylinder
        ``pi r^2 (2 h) + 4/3 pi r^3`` per region.
    """
    _check_positive(diameter_angstrom=diameter_angstrom, aspect_ratio=aspect_ratio,
                    shell_thickness=shell_thickness, voxel_angstrom=voxel_angstrom)
    _check_densities(core_density=core_density, shell_density=shell_density)
    if aspect_ratio < 1:
        raise StructureError(f"aspect_ratio={aspect_ratio}: a spherocylinder needs length >= "
                             "diameter (aspect_ratio >= 1); use ellipsoidal_capsid for oblate shapes")
    r = float(diameter_angstrom) / 2
    h = r * (float(aspect_ratio) - 1)
    t = float(shell_thickness)
    if t >= r:
        raise StructureError(f"shell_thickness={shell_thickness}: must be below the radius {r:.1f} A")

    def volume(radius):
        return np.pi * radius ** 2 * 2 * h + 4 / 3 * np.pi * radius ** 3

    regions = [_Region(_capsule(r - t, h), volume(r - t), core_density, "core"),
               _Region(_capsule(r, h), volume(r) - volume(r - t), shell_density, "shell")]
    return _pseudo_atoms(regions, r + h, voxel_angstrom, seed,
                         name=f"continuum-spherocylinder-d{diameter_angstrom:.0f}-x{aspect_ratio:g}",
                         source=(f"continuum:spherocylinder_capsid:diameter={diameter_angstrom:g},"
                                 f"aspect_ratio={aspect_ratio:g},shell_thickness={t:g},"
                                 f"core_density={core_density:g},shell_density={shell_density:g}"))


# ---------------------------------------------------------------------------- icosahedron
def icosahedron_vertices() -> np.ndarray:
    """Unit vectors to the 12 vertices (five-fold axes), shape (12, 3)."""
    phi = (1 + 5 ** 0.5) / 2
    base = np.array([[0, s1, s2 * phi] for s1 in (1, -1) for s2 in (1, -1)], dtype=float)
    v = np.concatenate([np.roll(base, k, axis=1) for k in range(3)])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def icosahedron_face_normals() -> np.ndarray:
    """Unit normals of the 20 faces (three-fold axes), shape (20, 3)."""
    v = icosahedron_vertices()
    edge = np.min(np.linalg.norm(v[:, None] - v[None], axis=-1) + 9 * np.eye(12))
    adjacent = np.isclose(np.linalg.norm(v[:, None] - v[None], axis=-1), edge)
    faces = [(i, j, k) for i in range(12) for j in range(i + 1, 12) for k in range(j + 1, 12)
             if adjacent[i, j] and adjacent[j, k] and adjacent[i, k]]
    centres = v[np.array(faces)].mean(axis=1)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _unit_inradius() -> float:
    """Inradius of the icosahedron of circumradius 1 (0.7947)."""
    v = icosahedron_vertices()
    return float(np.max(icosahedron_face_normals() @ v[0]))


_ICOSA_INRADIUS = _unit_inradius()


def _icosahedron_volume(inradius: float) -> float:
    """Volume (A^3) of the icosahedron of given inradius: 20 pyramids of height inradius."""
    v = icosahedron_vertices()
    edge = np.min(np.linalg.norm(v[0] - v[1:], axis=1)) * inradius / _ICOSA_INRADIUS
    return 20 * (np.sqrt(3) / 4 * edge ** 2) * inradius / 3


def _icosahedron(inradius: float) -> Callable[[np.ndarray], np.ndarray]:
    normals = icosahedron_face_normals()
    return lambda x: (x @ normals.T).max(axis=1) <= inradius


def _ball(radius: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: (x ** 2).sum(axis=1) <= radius ** 2


def _spheroid(a: float, c: float) -> Callable[[np.ndarray], np.ndarray]:
    """Inside the spheroid of equatorial semi-axis ``a`` (x, y) and polar semi-axis ``c`` (z)."""
    return lambda x: (x[:, 0] ** 2 + x[:, 1] ** 2) / a ** 2 + x[:, 2] ** 2 / c ** 2 <= 1


def _capsule(radius: float, half_length: float) -> Callable[[np.ndarray], np.ndarray]:
    """Within ``radius`` of the segment ``|z| <= half_length`` of the z axis."""
    def inside(x):
        dz = np.clip(np.abs(x[:, 2]) - half_length, 0, None)
        return x[:, 0] ** 2 + x[:, 1] ** 2 + dz ** 2 <= radius ** 2
    return inside


# ---------------------------------------------------------------------------- sampling
def _jittered_lattice(half_extent: float, voxel: float, rng) -> np.ndarray:
    """One point uniformly placed in each cell of a cubic lattice covering the cube
    ``[-half_extent, half_extent]^3``; shape (n, 3) in angstrom."""
    n = int(np.ceil(half_extent / voxel + 0.5))
    axis = np.arange(-n, n + 1) * voxel
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid + rng.uniform(-voxel / 2, voxel / 2, size=grid.shape)


def _pseudo_atoms(regions, half_extent: float, voxel: float, seed: int, *,
                  name: str, source: str) -> Structure:
    """Carbon pseudo-atoms filling ``regions``, each region holding exactly its electrons."""
    points = _jittered_lattice(half_extent, voxel, np.random.default_rng(seed))
    owner = np.full(len(points), -1)
    for k, region in enumerate(regions):
        owner[(owner < 0) & region.inside(points)] = k
    weights = np.zeros(len(points))
    for k, region in enumerate(regions):
        count = np.count_nonzero(owner == k)
        if region.density > 0 and count == 0:
            raise StructureError(f"voxel_angstrom={voxel}: too coarse, no sample point falls in "
                                 f"the {region.label} of {name}")
        if count:
            weights[owner == k] = region.density * region.volume / (count * _PSEUDO_Z)
    keep = weights > 0
    if not keep.any():
        raise StructureError(f"{name}: every density is zero, the object is empty")
    elements = np.full(np.count_nonzero(keep), _PSEUDO_ELEMENT)
    return Structure.from_atoms(points[keep], elements, weights=weights[keep], name=name,
                                source=f"{source},voxel={voxel:g},seed={seed}")


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _check_positive(**values) -> None:
    for key, value in values.items():
        if not np.isfinite(_as_float(value)) or _as_float(value) <= 0:
            raise StructureError(f"{key}={value!r}: must be a positive finite number (angstrom)")


def _check_densities(**values) -> None:
    for key, value in values.items():
        if not np.isfinite(_as_float(value)) or _as_float(value) < 0:
            raise StructureError(f"{key}={value!r}: must be a finite electron density >= 0 (e/A^3)")
