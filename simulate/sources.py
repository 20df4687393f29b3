"""Structure sources: from a plain-dict source config to lazily built structures.

A *source* names a set of particles to simulate. :func:`resolve_sources` turns its
configuration (plain dicts and lists, e.g. ``OmegaConf.to_container(cfg.source)``; this module
never imports hydra) into a list of :class:`StructureSpec`: a unique name plus a zero-argument
loader, so that the dataset generator can decide which structures it has to build (resume,
sharding over jobs) before paying for reading or building any of them.

Source kinds (the ``kind`` key)
-------------------------------
``procedural``
    ``n_structures``, ``seed``, ``n_atoms_min``, ``n_atoms_max``: the particles of
    :func:`simulate.procedural.procedural_library` (same names, sizes and seeds), built one
    at a time. Optional ``kinds``: a list of procedural kinds to cycle through instead of
    all of :data:`simulate.procedural.KINDS`.
``pdb``
    ``directory`` (every structure file directly inside it) or ``files`` (a list of paths),
    optional ``ids`` (keep only these names, case-insensitive; a missing id becomes a
    structure that fails with a clear message), ``assembly`` (default ``"auto"``, see
    :func:`simulate.pdb_io.read_structure`) and ``max_atoms``. Relative paths are taken
    relative to ``base_dir``.
``continuum``
    ``objects``: a list of ``{kind, name, params}`` with ``kind`` one of ``sphere``,
    ``core_shell``, ``icosahedral_capsid``, ``ellipsoidal_capsid``, ``spherocylinder_capsid``
    (:data:`CONTINUUM_KINDS`) and ``params`` the keyword arguments of the
    function of that name in :mod:`simulate.continuum`. ``name`` defaults to
    ``continuum-<kind>-<hash of params>``.
``mixed``
    ``sources``: a list of source configs of the kinds above (nested ``mixed`` allowed).

Every config may carry a ``name`` (the dataset name, used by the app for the output folder)
that is ignored here. Structure names must be unique across a source: they name the shard
files.

Examples
--------
>>> specs = resolve_sources({"kind": "procedural", "n_structures": 2, "seed": 0,
...                          "n_atoms_min": 2000, "n_atoms_max": 3000})
>>> [s.name for s in specs]
['proc-globular-s0000', 'proc-elongated-s0001']
>>> specs[0].load().n_atoms <= 3000                              # doctest: +SKIP
True
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from speckle_embed.paths import absolute_path

from .errors import SimulationError, StructureError
from .structure import Structure

__all__ = ["SOURCE_KINDS", "CONTINUUM_KINDS", "SourceConfigError", "StructureSpec",
           "resolve_sources"]

SOURCE_KINDS = ("procedural", "pdb", "continuum", "mixed")
"""Values accepted for the ``kind`` key of a source config."""
CONTINUUM_KINDS = ("sphere", "core_shell", "icosahedral_capsid", "ellipsoidal_capsid",
                   "spherocylinder_capsid")
"""Continuum object kinds (functions of :mod:`simulate.continuum`)."""

_COMMON_KEYS = {"kind", "name"}
_KEYS = {
    "procedural": {"n_structures", "seed", "n_atoms_min", "n_atoms_max", "kinds"},
    "pdb": {"directory", "files", "ids", "assembly", "max_atoms"},
    "continuum": {"objects"},
    "mixed": {"sources"},
}


class SourceConfigError(SimulationError, ValueError):
    """A source configuration is malformed (unknown kind or key, duplicate names...)."""


@dataclass(frozen=True)
class StructureSpec:
    """One structure to simulate, not yet built.

    Attributes
    ----------
    name : str
        Unique structure name; the shard file is ``<name>.h5``.
    loader : callable
        Zero-argument function returning the :class:`~simulate.structure.Structure`
        (reads the file or builds the particle). May raise
        :class:`~simulate.errors.StructureError`.
    source : str
        Human-readable provenance (file path, ``procedural:<kind>:seed=<seed>``...), known
        without loading; used in reports.
    kind : str
        The source kind that produced it (``"pdb"``, ``"procedural"``, ``"continuum"``).
    """

    name: str
    loader: Callable[[], Structure] = field(repr=False, compare=False)
    source: str = ""
    kind: str = ""

    def load(self) -> Structure:
        """Build the structure, renamed to :attr:`name` if the loader named it otherwise.

        Raises
        ------
        StructureError
            From the loader, or if it did not return a ``Structure``.
        """
        structure = self.loader()
        if not isinstance(structure, Structure):
            raise StructureError(f"{self.name}: the loader returned {type(structure).__name__}, "
                                 "not a Structure")
        if structure.name != self.name:
            structure = dataclasses.replace(structure, name=self.name)
        return structure


# ---------------------------------------------------------------------------- public API
def resolve_sources(cfg: Mapping[str, Any], *, base_dir=None) -> list[StructureSpec]:
    """The structures of a source config, in a stable order, nothing built yet.

    Parameters
    ----------
    cfg : mapping
        Source config (plain dict): ``kind`` plus the keys of that kind (module notes).
    base_dir : str or Path, optional
        Folder that relative ``pdb`` paths are relative to (default: the current directory).

    Returns
    -------
    list of StructureSpec
        Unique names; procedural and continuum in config order, PDB files sorted by name
        (a ``files`` list keeps its order).

    Raises
    ------
    SourceConfigError
        Unknown ``kind`` or key, missing required key, bad value, duplicate structure name.
    StructureError
        A ``pdb`` ``directory`` that does not exist.
    """
    specs = _resolve(cfg, Path(base_dir) if base_dir is not None else Path.cwd(), "source")
    seen: dict[str, StructureSpec] = {}
    for spec in specs:
        if spec.name in seen:
            raise SourceConfigError(
                f"duplicate structure name {spec.name!r} ({seen[spec.name].source} and "
                f"{spec.source}); names must be unique because they name the shard files")
        seen[spec.name] = spec
    return specs


# ---------------------------------------------------------------------------- dispatch
def _resolve(cfg, base_dir: Path, where: str) -> list[StructureSpec]:
    if not isinstance(cfg, Mapping):
        raise SourceConfigError(f"{where} must be a mapping with a 'kind' key, got "
                                f"{type(cfg).__name__} ({cfg!r})")
    kind = cfg.get("kind")
    if kind not in SOURCE_KINDS:
        raise SourceConfigError(f"{where}.kind = {kind!r}: choose one of {', '.join(SOURCE_KINDS)}")
    unknown = sorted(set(cfg) - _COMMON_KEYS - _KEYS[kind])
    if unknown:
        raise SourceConfigError(f"{where}: unknown key(s) {unknown} for kind {kind!r}; "
                                f"allowed: {sorted(_KEYS[kind] | _COMMON_KEYS)}")
    if kind == "procedural":
        return _procedural(cfg, where)
    if kind == "pdb":
        return _pdb(cfg, base_dir, where)
    if kind == "continuum":
        return _continuum(cfg, where)
    subs = cfg.get("sources")
    if not isinstance(subs, Sequence) or isinstance(subs, (str, bytes)) or not subs:
        raise SourceConfigError(f"{where}.sources must be a non-empty list of source configs")
    return [spec for i, sub in enumerate(subs)
            for spec in _resolve(sub, base_dir, f"{where}.sources[{i}]")]


def _int(cfg, key: str, where: str, *, default=None, minimum: int = 0) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise SourceConfigError(f"{where}.{key} is required")
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise SourceConfigError(f"{where}.{key} = {value!r}: must be an integer >= {minimum}")
    return int(value)


# ---------------------------------------------------------------------------- procedural
def _procedural(cfg, where: str) -> list[StructureSpec]:
    from .procedural import KINDS, procedural_particle

    n = _int(cfg, "n_structures", where)
    seed = _int(cfg, "seed", where, default=0)
    lo = _int(cfg, "n_atoms_min", where, default=10_000, minimum=1)
    hi = _int(cfg, "n_atoms_max", where, default=100_000, minimum=1)
    if lo > hi:
        raise SourceConfigError(f"{where}: n_atoms_min = {lo} > n_atoms_max = {hi}")
    kinds = tuple(cfg.get("kinds") or KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SourceConfigError(f"{where}.kinds: unknown procedural kind(s) {bad}; choose from {KINDS}")
    # Same draws as procedural.procedural_library, so the names and sizes agree with it.
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(lo), np.log(hi + 1), size=n)).astype(int)
    specs = []
    for i in range(n):
        kind, n_atoms, pseed = kinds[i % len(kinds)], int(min(sizes[i], hi)), seed * 10_000 + i
        specs.append(StructureSpec(
            name=f"proc-{kind}-s{pseed:04d}",
            loader=functools.partial(procedural_particle, kind, n_atoms, pseed),
            source=f"procedural:{kind}:seed={pseed}:n_atoms={n_atoms}", kind="procedural"))
    return specs


# ---------------------------------------------------------------------------- pdb
def _stem(path: Path) -> str:
    """``"2FHA.pdb.gz" -> "2FHA"`` (the default name of :func:`simulate.pdb_io.read_structure`)."""
    stem = path.name
    if stem.lower().endswith(".gz"):
        stem = stem[:-3]
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def _missing_structure(message: str) -> Structure:
    raise StructureError(message)


def _pdb(cfg, base_dir: Path, where: str) -> list[StructureSpec]:
    from .pdb_io import list_structure_files, read_structure

    directory, files = cfg.get("directory"), cfg.get("files")
    if (directory is None) == (files is None):
        raise SourceConfigError(f"{where}: give exactly one of 'directory' or 'files'")
    if directory is not None:
        directory = absolute_path(directory, base_dir)
        paths = list_structure_files(directory)
        if not paths:
            raise StructureError(f"{directory}: no structure files (.pdb/.ent/.cif/.mmcif[.gz])")
    else:
        if isinstance(files, (str, bytes, os.PathLike)) or not isinstance(files, Sequence):
            raise SourceConfigError(f"{where}.files must be a list of paths, got {files!r}")
        paths = [absolute_path(p, base_dir) for p in files]
    assembly = cfg.get("assembly", "auto")
    kwargs = {"assembly": assembly}
    if cfg.get("max_atoms") is not None:
        kwargs["max_atoms"] = _int(cfg, "max_atoms", where, minimum=1)

    ids = cfg.get("ids")
    if ids is not None:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise SourceConfigError(f"{where}.ids must be a list of structure names, got {ids!r}")
        by_id = {}
        for p in paths:
            by_id.setdefault(_stem(p).upper(), p)
        specs = []
        for wanted in ids:
            p = by_id.get(str(wanted).upper())
            if p is None:
                message = (f"{where}: no structure file for id {wanted!r} in "
                           f"{directory if directory is not None else 'the files list'}")
                specs.append(StructureSpec(str(wanted), functools.partial(_missing_structure, message),
                                           source=f"pdb:{wanted}:missing", kind="pdb"))
            else:
                specs.append(_pdb_spec(p, _stem(p), read_structure, kwargs))
        return specs
    return [_pdb_spec(p, _stem(p), read_structure, kwargs) for p in paths]


def _pdb_spec(path: Path, name: str, read_structure, kwargs) -> StructureSpec:
    return StructureSpec(name, functools.partial(read_structure, path, name=name, **kwargs),
                         source=str(path), kind="pdb")


# ---------------------------------------------------------------------------- continuum
def _continuum_object(kind: str, params: dict) -> Structure:
    from . import continuum

    return getattr(continuum, kind)(**params)


def _continuum(cfg, where: str) -> list[StructureSpec]:
    objects = cfg.get("objects")
    if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence) or not objects:
        raise SourceConfigError(f"{where}.objects must be a non-empty list of "
                                "{kind, name, params} entries")
    from . import continuum

    specs = []
    for i, obj in enumerate(objects):
        w = f"{where}.objects[{i}]"
        if not isinstance(obj, Mapping):
            raise SourceConfigError(f"{w} must be a mapping {{kind, name, params}}, got {obj!r}")
        unknown = sorted(set(obj) - {"kind", "name", "params"})
        if unknown:
            raise SourceConfigError(f"{w}: unknown key(s) {unknown}; allowed: kind, name, params")
        kind = obj.get("kind")
        if kind not in CONTINUUM_KINDS:
            raise SourceConfigError(f"{w}.kind = {kind!r}: choose one of {', '.join(CONTINUUM_KINDS)}")
        params = dict(obj.get("params") or {})
        allowed = set(inspect.signature(getattr(continuum, kind)).parameters)
        bad = sorted(set(params) - allowed)
        if bad:
            raise SourceConfigError(f"{w}.params: unknown parameter(s) {bad} for {kind}; "
                                    f"allowed: {sorted(allowed)}")
        text = json.dumps(params, sort_keys=True, default=str)
        name = obj.get("name") or f"continuum-{kind}-{zlib.crc32(text.encode()):08x}"
        specs.append(StructureSpec(str(name), functools.partial(_continuum_object, kind, params),
                                   source=f"continuum:{kind}:{text}", kind="continuum"))
    return specs
