"""Read PDB and mmCIF files (plain or gzipped) into :class:`~simulate.structure.Structure`.

What is kept
------------
Protein, nucleic-acid and ligand atoms, hydrogens included when the file has them.
Waters (HOH, DOD, WAT...) and OPM membrane pseudo-atoms (residue ``DUM``) are removed,
and of alternative conformations only the first is kept.

Which copies are built (``assembly="auto"``)
--------------------------------------------
1. A file that stores one copy of the particle per MODEL (the model centroids lie apart,
   e.g. ferritin 2FHA, 24 MODELs) is read as the union of all its models.
2. Otherwise, if the file defines biological assemblies (PDB ``REMARK 350 BIOMT`` or mmCIF
   ``pdbx_struct_assembly``), the first assembly is built from the first model -- unless it
   would exceed ``max_atoms`` (a whole virus capsid), in which case the asymmetric unit is
   read and a warning says so.
3. Otherwise the first model (an NMR ensemble's models overlap: only the first is read).

Examples
--------
>>> from simulate.pdb_io import read_structure            # doctest: +SKIP
>>> read_structure("2FHA.pdb.gz").n_atoms                 # doctest: +SKIP
33912
"""
from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np

from .errors import StructureError
from .form_factors import KNOWN_ELEMENTS, normalise_element
from .structure import Structure

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
"""File-name endings recognised as structure files (each optionally followed by ``.gz``)."""

DEFAULT_MAX_ATOMS = 2_000_000
"""Largest biological assembly built automatically (atoms)."""

_REMOVED_RESIDUES = frozenset({"HOH", "DOD", "DUM"})


def list_structure_files(directory) -> list[Path]:
    """Structure files directly inside ``directory``, sorted by name.

    Parameters
    ----------
    directory : str or Path
        Folder to list (not searched recursively).

    Returns
    -------
    list of Path
        Files ending in ``.pdb``, ``.ent``, ``.cif`` or ``.mmcif``, optionally followed by
        ``.gz`` (case-insensitive).

    Raises
    ------
    StructureError
        ``directory`` does not exist or is not a folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise StructureError(f"{directory}: not a directory of structure files")
    return sorted(p for p in directory.iterdir() if p.is_file() and _is_structure_file(p))


def read_structure(path, *, assembly="auto", name: str | None = None,
                   max_atoms: int = DEFAULT_MAX_ATOMS) -> Structure:
    """Read a PDB or mmCIF file into a :class:`Structure` (positions in angstrom).

    Parameters
    ----------
    path : str or Path
        ``.pdb``/``.ent``/``.cif``/``.mmcif`` file, optionally gzipped (``.gz``).
    assembly : {"auto"}, str or None
        ``"auto"``: all models when they are copies of one particle, else the first
        biological assembly if the file defines one, else the first model (see the module
        notes). A string: the assembly of that name/id (e.g. ``"1"``). ``None``: the
        asymmetric unit, first model only.
    name : str, optional
        Structure name; default the file name without extensions (``"2FHA"``).
    max_atoms : int
        Largest assembly to build. ``"auto"`` falls back to the asymmetric unit beyond it
        (with a warning); a named assembly beyond it is an error.

    Returns
    -------
    Structure
        Atoms centred on their centre of electrons; ``source`` is the path.

    Raises
    ------
    StructureError
        Missing file, corrupt or truncated gzip, unparsable file, no atoms, unknown element
        (the message names the residue and atom), unknown assembly name or an assembly too
        large. Every message starts with the path.
    """
    path = Path(path)
    st = _read_gemmi(path)
    st.setup_entities()
    st.remove_alternative_conformations()
    models = _select_models(st, path, assembly, max_atoms) if len(st) else []
    for model in models:
        _remove_solvent(model)
    if sum(m.count_atom_sites() for m in models) == 0:
        raise StructureError(f"{path}: no atoms (after removing waters)")
    positions, elements = _extract_atoms(models, path)
    return Structure.from_atoms(positions, elements, name=name or _stem(path), source=str(path))


# ---------------------------------------------------------------------------- reading
def _is_structure_file(path: Path) -> bool:
    low = path.name.lower().removesuffix(".gz")
    return low.endswith(STRUCTURE_SUFFIXES)


def _stem(path: Path) -> str:
    """``"2FHA.pdb.gz" -> "2FHA"``."""
    stem = path.name.removesuffix(".gz").removesuffix(".GZ")
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def _check_gzip(path: Path) -> None:
    """Decompress the whole file once: gemmi may read a truncated member silently."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise StructureError(f"{path}: corrupt or truncated gzip file ({exc})") from exc


def _read_gemmi(path: Path):
    import gemmi  # lazy: only the simulator needs gemmi

    if not path.is_file():
        raise StructureError(f"{path}: no such structure file")
    if path.suffix.lower() == ".gz":
        _check_gzip(path)
    try:
        return gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError, ValueError, IndexError...
        raise StructureError(f"{path}: cannot parse as PDB/mmCIF ({exc})") from exc


def _remove_solvent(model) -> None:
    """Remove waters and membrane pseudo-atoms (after building copies: mmCIF assembly
    generators name the water subchains too)."""
    model.remove_waters()
    for chain in model:
        for i in reversed(range(len(chain))):
            if chain[i].name in _REMOVED_RESIDUES:
                del chain[i]


# ---------------------------------------------------------------------------- copies
def _select_models(st, path: Path, assembly, max_atoms: int) -> list:
    """The gemmi models whose atoms make up the particle."""
    if assembly is None:
        return [st[0]]
    if assembly == "auto":
        if _models_are_copies(st):
            return list(st)
        if len(st.assemblies) == 0:
            return [st[0]]
        return [_build_assembly(st, st.assemblies[0], path, max_atoms, fallback=True)]
    matches = [a for a in st.assemblies if a.name == str(assembly)]
    if not matches:
        names = [a.name for a in st.assemblies]
        raise StructureError(f"{path}: no biological assembly {assembly!r}; the file has {names}")
    return [_build_assembly(st, matches[0], path, max_atoms, fallback=False)]


def _model_positions(model) -> np.ndarray:
    return np.array([a.pos.tolist() for ch in model for r in ch if not r.is_water()
                     for a in r]).reshape(-1, 3)


def _models_are_copies(st) -> bool:
    """True when the models are distinct copies (centroids apart), not an NMR ensemble."""
    if len(st) < 2:
        return False
    coords = [_model_positions(m) for m in st]
    if any(c.shape[0] == 0 for c in coords):
        return False
    centroids = np.array([c.mean(0) for c in coords])
    gyration = np.sqrt(((coords[0] - centroids[0]) ** 2).sum(1).mean())
    dist = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return bool(dist.min() > 0.5 * max(gyration, 1.0))


def _assembly_atom_count(model, assembly) -> int:
    """Atoms that ``gemmi.make_assembly`` would produce, counted without building them."""
    total = 0
    for gen in assembly.generators:
        chains, subchains = set(gen.chains), set(gen.subchains)
        n = sum(len(r) for ch in model for r in ch
                if ch.name in chains or r.subchain in subchains)
        total += n * len(gen.operators)
    return total


def _build_assembly(st, assembly, path: Path, max_atoms: int, *, fallback: bool):
    import gemmi

    n = _assembly_atom_count(st[0], assembly)
    if n > max_atoms:
        msg = (f"{path}: biological assembly {assembly.name!r} would have {n} atoms "
               f"(> max_atoms={max_atoms})")
        if not fallback:
            raise StructureError(msg)
        warnings.warn(msg + "; reading the asymmetric unit instead", stacklevel=4)
        return st[0]
    try:
        model = gemmi.make_assembly(assembly, st[0], gemmi.HowToNameCopiedChain.Dup)
    except RuntimeError as exc:
        raise StructureError(f"{path}: cannot build assembly {assembly.name!r} ({exc})") from exc
    if model.count_atom_sites() == 0:
        raise StructureError(f"{path}: biological assembly {assembly.name!r} has no atoms")
    return model


# ---------------------------------------------------------------------------- atoms
def _extract_atoms(models, path: Path) -> tuple[np.ndarray, list[str]]:
    """Positions, shape (n, 3) in angstrom, and element symbols of every atom of ``models``."""
    positions, elements, unknown = [], [], []
    for model in models:
        for chain in model:
            for res in chain:
                for atom in res:
                    symbol = normalise_element(atom.element.name)
                    if symbol not in KNOWN_ELEMENTS:
                        unknown.append(f"atom {atom.name!r} of residue {res.name} {res.seqid} "
                                       f"in chain {chain.name} (element {atom.element.name!r})")
                    positions.append(atom.pos.tolist())
                    elements.append(symbol)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise StructureError(f"{path}: unknown element for {'; '.join(unknown[:3])}{more}")
    return np.asarray(positions, dtype=np.float64).reshape(-1, 3), elements
