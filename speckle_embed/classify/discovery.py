"""Inputs of ``speckle-embed classify``: the files named on the command line, the frames dataset
of each, its detector mask, and the one-line errors for files that cannot be read.

Frames datasets (``data_path=null``): the CXI paths (``/entry_1/data_1/data``, then
``/entry_1/instrument_1/detector_1/data``); else the one 3-D numeric dataset whose frames are
at least half the model's field of view. Several such datasets, or only smaller ones, are refused with a message
that lists them and names ``data_path=``.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import h5py
import numpy as np

from speckle_embed.data.shard import DEFAULT_DATA_PATH
from speckle_embed.formats import MASK_PATHS

__all__ = ["CXI_DATA_PATHS", "resolve_inputs", "find_frames_dataset", "open_input", "file_mask",
           "read_external_mask", "damaged_input_error"]

#: Where CXI files keep their frames, in order of preference (cxidb's CXI format).
CXI_DATA_PATHS = (DEFAULT_DATA_PATH, "/entry_1/instrument_1/detector_1/data")
_SUFFIXES = (".h5", ".cxi", ".hdf5", ".nxs")


def resolve_inputs(inputs, *, recursive: bool = False) -> list[Path]:
    """Files named by ``inputs``: files, directories (``*.h5``, ``*.cxi``...) or glob patterns.

    Unfinished ``*.tmp`` files are skipped; duplicates are removed, order kept.

    Raises
    ------
    FileNotFoundError
        A path or pattern matches nothing, or nothing at all was found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path):
        p = p.absolute()
        if p not in seen and not p.name.endswith(".tmp"):
            seen.add(p)
            out.append(p)

    for item in inputs:
        s = os.path.expanduser(os.fspath(item))
        if any(ch in s for ch in "*?["):
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                raise FileNotFoundError(f"input pattern {s!r} matches no file")
            for m in matches:
                if Path(m).is_dir():
                    for q in _dir_files(Path(m), recursive):
                        add(q)
                else:
                    add(Path(m))
        else:
            p = Path(s)
            if p.is_dir():
                found = _dir_files(p, recursive)
                if not found:
                    raise FileNotFoundError(f"input directory {p} holds no {'/'.join(_SUFFIXES)} file")
                for q in found:
                    add(q)
            elif p.exists():
                add(p)
            else:
                raise FileNotFoundError(f"input {p} does not exist")
    if not out:
        raise FileNotFoundError(f"no input file found in {list(inputs)}")
    return out


def _dir_files(d: Path, recursive: bool) -> list[Path]:
    it = d.rglob("*") if recursive else d.glob("*")
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in _SUFFIXES)


def _is_frames(obj) -> bool:
    return isinstance(obj, h5py.Dataset) and obj.ndim == 3 and obj.dtype.kind in "biuf"


def find_frames_dataset(f: h5py.File, data_path: str | None = None, *,
                        min_side: int | None = None) -> h5py.Dataset:
    """The ``(n, H, W)`` frames of an open file.

    Parameters
    ----------
    f : h5py.File
    data_path : str, optional
        HDF5 path of the frames. Default: the first of :data:`CXI_DATA_PATHS` that is a 3-D
        numeric dataset; else the only 3-D numeric dataset of the file whose frames are at
        least ``min_side`` pixels across.
    min_side : int, optional
        The smallest frame side the model takes (pixels,
        :func:`speckle_embed.frame_checks.min_frame_side_px`: half its field of view): smaller
        frames are refused, and are not candidates for discovery.

    Raises
    ------
    ValueError
        Nothing suitable, several candidates (listed, with ``data_path=`` to choose one), or
        frames smaller than ``min_side``; the message names the file.
    """
    name = f.filename

    def size_ok(obj, where: str) -> h5py.Dataset:
        if min_side is not None and (obj.shape[1] < min_side or obj.shape[2] < min_side):
            raise ValueError(f"{name}: {where} {obj.name!r} holds frames of {obj.shape[1]}x{obj.shape[2]} "
                             f"pixels, smaller than the smallest frame the model takes ({min_side}x{min_side} pixels, half "
                             "its field of view): these are not detector frames for this model; give "
                             "data_path=<HDF5 path of the (n, H, W) frames>")
        return obj

    if data_path:
        obj = f.get(data_path)
        if obj is None:
            raise ValueError(f"{name} has no dataset {data_path!r} (data_path=...)")
        if not _is_frames(obj):
            raise ValueError(f"{name}: {data_path!r} is not an (n, H, W) numeric dataset "
                             f"(shape {getattr(obj, 'shape', None)}); fix data_path=...")
        return size_ok(obj, "data_path")
    for path in CXI_DATA_PATHS:
        obj = f.get(path)
        if _is_frames(obj):
            return size_ok(obj, "the CXI frames dataset")
    candidates: list[h5py.Dataset] = []
    small: list[h5py.Dataset] = []
    seen: list[str] = []

    def visit(path, o):
        if isinstance(o, h5py.Dataset):
            seen.append(f"/{path} {o.shape}")
            if _is_frames(o):
                too_small = min_side is not None and (o.shape[1] < min_side or o.shape[2] < min_side)
                (small if too_small else candidates).append(o)

    f.visititems(visit)

    def listing(objs):
        return ", ".join(f"{o.name} {o.shape}" for o in objs)

    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise ValueError(f"{name} has no frames at a CXI path ({', '.join(CXI_DATA_PATHS)}) and several "
                         f"3-D datasets that could be the frames: {listing(candidates)}; choose one with "
                         "data_path=<path>")
    if small:
        raise ValueError(f"{name} has no frames at a CXI path ({', '.join(CXI_DATA_PATHS)}); its 3-D "
                         f"datasets {listing(small)} are smaller than the smallest frame the model takes, "
                         f"{min_side}x{min_side} pixels, so none holds detector frames; give "
                         "data_path=<HDF5 path of the (n, H, W) frames>")
    shown = ", ".join(seen[:10]) or "none"
    raise ValueError(f"{name} has no 3-D (n, H, W) dataset of frames; datasets: {shown}. "
                     "Give data_path=...")


def damaged_input_error(path: Path, what: str, exc: BaseException) -> OSError:
    """The one-line error for an input file h5py cannot read (damaged or truncated)."""
    detail = " ".join(str(exc).split())
    return OSError(f"cannot read {what} of {path}: the file is damaged or truncated ({detail[:200]}); "
                   "copy it again from its source (or regenerate it), or leave it out of inputs")


def read_external_mask(spec: str) -> np.ndarray:
    """The ``mask_file=`` mask: a ``.npy`` file or ``file.h5:/dataset`` (nonzero = bad pixel)."""
    if ".h5:" in spec or ".cxi:" in spec or ".hdf5:" in spec:
        file, _, inner = spec.rpartition(":")
        with h5py.File(file, "r") as f:
            if inner not in f:
                raise ValueError(f"mask file {file} has no dataset {inner!r}")
            return np.asarray(f[inner][()])
    if spec.endswith(".npy"):
        return np.load(spec, allow_pickle=False)
    raise ValueError(f"mask_file must be a .npy file or 'file.h5:/dataset'; got {spec!r}")


def file_mask(f: h5py.File, mask_path: str | None) -> np.ndarray | None:
    """The 2-D mask stored in ``f`` (``mask_path``, else the first of ``MASK_PATHS``), or None."""
    paths = [mask_path] if mask_path else list(MASK_PATHS)
    for p in paths:
        obj = f.get(p)
        if obj is None:
            continue
        if not isinstance(obj, h5py.Dataset) or obj.ndim != 2 or obj.dtype.kind not in "biu":
            raise ValueError(f"{f.filename}: mask {p!r} must be a 2-D integer dataset")
        return np.asarray(obj[()])
    if mask_path:
        raise ValueError(f"{f.filename} has no mask dataset {mask_path!r}")
    return None


def open_input(path: Path) -> h5py.File:
    """``path`` opened read-only (no HDF5 file locking); a one-line ``OSError`` naming it otherwise."""
    try:
        try:
            return h5py.File(path, "r", locking=False)
        except TypeError:
            return h5py.File(path, "r")
    except OSError as exc:
        detail = " ".join(str(exc).split())
        raise OSError(f"cannot open {path} as HDF5 (truncated, damaged or not HDF5: {detail}); copy it "
                      "again from its source, or leave it out of inputs") from exc
