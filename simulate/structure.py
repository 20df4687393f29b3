"""A scattering particle as a set of atoms (or coarse-grained pseudo-atoms).

Every structure source (PDB/mmCIF files, procedural particles, continuum objects)
produces a :class:`Structure`; the diffraction engine only ever sees this class.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import StructureError
from .form_factors import KNOWN_ELEMENTS, normalise_element


@dataclass(frozen=True)
class Structure:
    """Atoms of one particle, centred on their centre of electrons.

    Attributes
    ----------
    name : str
        Short identifier used in datasets and logs (e.g. ``"1BXN"``, ``"proc-ring-0003"``).
    positions : ndarray, shape (n, 3), float64
        Atom positions in angstrom, centred so that the electron-weighted centre is 0.
    elements : ndarray, shape (n,), str
        Upper-case element symbols (``"C"``, ``"FE"``...), each with a known form factor.
    weights : ndarray, shape (n,), float64
        Multiplier of each atom's form factor (1 for real atoms; a coarse-grained
        pseudo-atom standing for many electrons carries a larger weight).
    source : str
        Provenance: a file path, ``"procedural:<kind>:<seed>"``, ``"continuum:<kind>"``...
    """

    name: str
    positions: np.ndarray
    elements: np.ndarray
    weights: np.ndarray
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_atoms(cls, positions_angstrom, elements, *, weights=None, name: str = "atoms",
                   source: str = "from_atoms", center: bool = True) -> "Structure":
        """Build a structure from raw atoms.

        Parameters
        ----------
        positions_angstrom : array_like, shape (n, 3)
            Atom positions in angstrom.
        elements : sequence of str, length n
            Element symbols, any case (``"C"``, ``"Fe"``, ``"FE"``).
        weights : array_like, shape (n,), optional
            Form-factor multipliers (default 1).
        center : bool
            Shift positions so that the electron-weighted centre is at the origin.

        Raises
        ------
        StructureError
            Empty structure, wrong shapes, non-finite coordinates or unknown elements
            (the message names the offending symbols and ``source``).

        Examples
        --------
        >>> s = Structure.from_atoms([[0, 0, 0], [10, 0, 0]], ["C", "O"])
        >>> s.n_atoms, round(float(s.positions[0, 0]), 3)
        (2, -5.714)
        """
        pos = np.asarray(positions_angstrom, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise StructureError(f"{source}: positions must have shape (n, 3), got {pos.shape}")
        if pos.shape[0] == 0:
            raise StructureError(f"{source}: the structure is empty (no atoms)")
        if not np.all(np.isfinite(pos)):
            bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
            raise StructureError(f"{source}: non-finite coordinates at atom indices {bad[:10].tolist()}")
        raw = np.asarray(elements, dtype=str).reshape(-1)
        uniq, inverse = np.unique(raw, return_inverse=True)   # normalise each symbol once
        elems = np.array([normalise_element(e) for e in uniq], dtype="U4")[inverse]
        if elems.shape[0] != pos.shape[0]:
            raise StructureError(
                f"{source}: {pos.shape[0]} positions but {elems.shape[0]} element symbols")
        unknown = sorted(set(elems.tolist()) - KNOWN_ELEMENTS)
        if unknown:
            raise StructureError(f"{source}: unknown element symbol(s) {unknown}; "
                                 "no X-ray form factor is tabulated for them")
        w = np.ones(pos.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (pos.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise StructureError(f"{source}: weights must be {pos.shape[0]} finite non-negative numbers")
        if center:
            from .form_factors import atomic_number
            u, inv = np.unique(elems, return_inverse=True)
            z = np.array([atomic_number(e) for e in u])[inv] * w
            pos = pos - (z[:, None] * pos).sum(0) / max(z.sum(), 1e-12)
        pos.setflags(write=False)
        elems.setflags(write=False)
        w.setflags(write=False)
        return cls(name=name, positions=pos, elements=elems, weights=w, source=source)

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_atoms(self) -> int:
        """Number of (pseudo-)atoms."""
        return int(self.positions.shape[0])

    @property
    def n_electrons(self) -> float:
        """Total number of electrons, sum of Z times weight (forward-scattering amplitude)."""
        from .form_factors import atomic_number
        u, inv = np.unique(self.elements, return_inverse=True)
        return float(np.sum(np.array([atomic_number(e) for e in u])[inv] * self.weights))

    @property
    def radius(self) -> float:
        """Largest distance of an atom from the centre, in angstrom."""
        return float(np.sqrt((self.positions ** 2).sum(1)).max())

    @property
    def composition(self) -> dict[str, int]:
        """Atom count per element."""
        u, c = np.unique(self.elements, return_counts=True)
        return {str(e): int(n) for e, n in zip(u, c)}

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (f"Structure(name={self.name!r}, n_atoms={self.n_atoms}, "
                f"radius={self.radius:.1f} A, source={self.source!r})")
