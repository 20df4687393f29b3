"""Labelled evaluation sets: the frames of one structure (or one experiment run) with hit classes.

A :class:`LabelledSet` holds what the evaluation protocols need from one HDF5/CXI file: frames
(photons), the detector mask, the hit class of every frame and, for simulated shards, the
structure's size. Simulated shards written with ``dataset=eval_clean`` are **noise-free**
(expected photons at exactly the nominal fluence); :func:`photon_frames` draws the photon noise
of any fluence from them, which is how one file serves both the K-shot protocol and the
fluence scan.

Examples
--------
>>> import numpy as np
>>> s = LabelledSet("toy", np.full((4, 8, 8), 2.0, np.float32), np.array([1, 1, 2, 2]), clean=True)
>>> noisy = photon_frames(s, fluence_factor=10.0, gaussian_sigma=0.0, seed=0)
>>> noisy.shape, float(noisy.mean()) > 15
((4, 8, 8), True)
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np

from speckle_embed.data import DatasetError, discover_shards, read_frames, read_mask

__all__ = ["LabelledSet", "load_labelled_sets", "photon_frames", "DEFAULT_LABELS_PATH"]

#: Where the simulator (and the CXI-flavoured files this package writes) keep the hit classes.
DEFAULT_LABELS_PATH = "/entry_1/truth/hit_class"


@dataclass
class LabelledSet:
    """Frames of one structure with their hit classes.

    Attributes
    ----------
    name : str
        Structure (shard) name, e.g. ``"1BXN"``.
    frames : ndarray, shape (N, H, W), float32
        Photons per pixel; expected photons (no noise) when ``clean``.
    hit : ndarray, shape (N,), int64
        Hit-class codes (``1`` single, ``2`` multi, ``3`` non-sample; DESIGN.md).
    mask : ndarray, shape (H, W), uint16, or None
        CXI mask bits (non-zero = bad pixel).
    clean : bool
        Frames are noise-free expected photons (simulated with ``dataset=eval_clean``).
    n_atoms : int or None
        Atoms of the structure (simulated shards).
    radius_angstrom : float or None
        Radius of the structure (simulated shards).
    path : str
        File the set was read from.
    """

    name: str
    frames: np.ndarray
    hit: np.ndarray
    mask: np.ndarray | None = None
    clean: bool = False
    n_atoms: int | None = None
    radius_angstrom: float | None = None
    path: str = ""
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.hit = np.asarray(self.hit, dtype=np.int64).reshape(-1)
        if self.frames.ndim != 3:
            raise ValueError(f"{self.name}: frames must be (N, H, W), got shape {self.frames.shape}")
        if self.hit.shape[0] != self.frames.shape[0]:
            raise ValueError(f"{self.name} ({self.path}): {self.frames.shape[0]} frames but "
                             f"{self.hit.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.hit.shape[0])

    def class_counts(self) -> dict[int, int]:
        """Frames per hit-class code."""
        codes, counts = np.unique(self.hit, return_counts=True)
        return {int(c): int(n) for c, n in zip(codes, counts)}


def _is_clean(attrs) -> bool:
    """A shard is noise-free when its ``noise`` attribute says no Poisson and no Gaussian noise."""
    try:
        noise = json.loads(attrs.get("noise", "{}"))
        fluence = json.loads(attrs.get("fluence", "{}"))
    except (TypeError, json.JSONDecodeError):
        return False
    return (noise.get("poisson") is False and not noise.get("gaussian_sigma")
            and fluence.get("kind") == "constant" and not fluence.get("pulse_sigma"))


def _scalar(attrs, key):
    value = attrs.get(key)
    return None if value is None else value.item() if hasattr(value, "item") else value


def load_labelled_sets(paths, structures: Sequence[str] | None = None, *,
                       labels_path: str = DEFAULT_LABELS_PATH, data_path: str | None = None,
                       mask_path: str | None = None, max_frames: int | None = None) -> list[LabelledSet]:
    """Read labelled files (one :class:`LabelledSet` per file).

    Parameters
    ----------
    paths : str, os.PathLike or iterable of them
        Shard folders or files (``*.h5``/``*.cxi``).
    structures : sequence of str, optional
        Keep only these structure (file stem) names, in this order; a missing one is an error.
    labels_path : str
        HDF5 path of the ``(N,)`` integer hit classes (real data: wherever the labels are).
    data_path, mask_path : str, optional
        Frames and mask locations (default: the CXI paths, see :mod:`speckle_embed.data`).
    max_frames : int, optional
        Read at most this many frames per file (the first ones).

    Raises
    ------
    FileNotFoundError
        A path or a requested structure does not exist.
    speckle_embed.data.DatasetError
        A file has no labels at ``labels_path`` or they do not match its frames.
    """
    files = discover_shards(paths)
    by_name = {}
    for p in files:
        by_name.setdefault(p.stem, p)
    if structures is not None:
        missing = [s for s in structures if s not in by_name]
        if missing:
            raise FileNotFoundError(f"structures {missing} not found in {paths} "
                                    f"(available: {sorted(by_name)})")
        files = [by_name[s] for s in structures]
    sets = []
    for p in files:
        with h5py.File(p, "r") as f:
            if labels_path not in f:
                raise DatasetError(f"{p}: no hit-class labels at {labels_path!r} "
                                   "(give labels_path= for files with labels elsewhere)")
            hit = np.asarray(f[labels_path][()]).reshape(-1)
            attrs = dict(f.attrs)
        if hit.dtype.kind not in "iu":
            raise DatasetError(f"{p}: labels at {labels_path!r} must be integer hit-class codes, "
                               f"got dtype {hit.dtype}")
        rows = slice(None) if max_frames is None else slice(0, int(max_frames))
        kwargs = {} if data_path is None else {"data_path": data_path}
        frames = read_frames(p, rows, **kwargs)
        hit = hit[rows]
        if hit.shape[0] != frames.shape[0]:
            raise DatasetError(f"{p}: {frames.shape[0]} frames but {hit.shape[0]} labels at {labels_path!r}")
        sets.append(LabelledSet(
            name=str(attrs.get("structure_name", p.stem)) if structures is None else p.stem,
            frames=frames, hit=hit, mask=read_mask(p, mask_path), clean=_is_clean(attrs),
            n_atoms=_scalar(attrs, "structure_n_atoms"),
            radius_angstrom=_scalar(attrs, "structure_radius_angstrom"), path=os.fspath(p),
            attrs={k: _scalar(attrs, k) for k in ("photons_per_pulse", "photon_energy_ev", "n_pixels",
                                                    "structure_kind") if k in attrs}))
    return sets


def photon_frames(s: LabelledSet, fluence_factor: float = 1.0, *, gaussian_sigma: float = 0.15,
                  seed: int | Iterable[int] = 0, indices=None) -> np.ndarray:
    """Frames with photon noise at ``fluence_factor`` times the nominal fluence.

    For a noise-free set: ``Poisson(factor * expected) + N(0, gaussian_sigma)`` per pixel (the
    simulator's noise model), masked pixels 0. For a set that already holds noisy frames only
    ``fluence_factor == 1`` is allowed and the frames are returned unchanged.

    Parameters
    ----------
    s : LabelledSet
    fluence_factor : float
        Multiplier of the nominal fluence (``1`` = baseline).
    gaussian_sigma : float
        Detector read noise, photons.
    seed : int or sequence of int
        Seeds :func:`numpy.random.default_rng`.
    indices : array_like of int, optional
        Frames to return (default all).

    Returns
    -------
    ndarray, shape (n, H, W), float32
    """
    frames = s.frames if indices is None else s.frames[np.asarray(indices)]
    if not s.clean:
        if fluence_factor != 1.0:
            raise ValueError(f"{s.name}: frames already hold photon noise, so they cannot be "
                             "re-simulated at another fluence; simulate a noise-free set with "
                             "dataset=eval_clean for a fluence scan")
        return frames
    if not fluence_factor > 0:
        raise ValueError(f"fluence_factor must be > 0, got {fluence_factor}")
    rng = np.random.default_rng(seed)
    lam = frames.astype(np.float64) * float(fluence_factor)
    out = rng.poisson(lam).astype(np.float32)
    if gaussian_sigma:
        out += rng.normal(0.0, gaussian_sigma, out.shape).astype(np.float32)
    if s.mask is not None:
        out[:, s.mask != 0] = 0.0
    return out
