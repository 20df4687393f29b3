"""Writing simulated diffraction shards as CXI-flavoured HDF5 files.

One shard holds the frames simulated for one structure, the detector mask and the per-frame
ground truth. The layout (see ``DESIGN.md``, "HDF5 dataset layout") is::

    /cxi_version                               int  150
    /entry_1/data_1/data                       float32 (n, H, W)  photons, gzip 4 + shuffle,
                                                                   chunks (chunk_frames, H, W)
    /entry_1/data_1/mask                       uint16  (H, W)     CXI bits (0x1 invalid,
                                                                   0x10 shadowed, 0 good)
    /entry_1/instrument_1/detector_1/data  ->  soft link to /entry_1/data_1/data
    /entry_1/instrument_1/detector_1/mask  ->  soft link to /entry_1/data_1/mask
    /entry_1/truth/<key>                       per-frame truth, first axis = frame index

and the file attributes carry the caller's ``attrs`` (geometry with units in the names, seed,
config YAML, code version...) plus ``n_frames``, ``created_utc``, ``format`` and
``hit_class_names``.

A shard is built as an HDF5 image in memory, written to a temporary ``*.tmp`` file in the
destination directory, fsync'ed, closed and renamed with :func:`os.replace`, so a file that
exists under its final name is complete; :func:`cleanup_partial` removes the temporaries a killed
run leaves behind (only ours, only when their writer is gone), :func:`shard_is_complete` tells a
resumed run which shards are whole and :func:`verify_shard` checks a shard's stored content
checksum (attribute ``content_sha256``).

This module depends on numpy, h5py and the standard library only (plus the pure-Python
``simulate.errors`` and the core modules :mod:`speckle_embed.formats` (paths, hit classes,
temporary names) and :mod:`speckle_embed.atomic`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from speckle_embed.formats import (CXI_VERSION, DATA_PATH, HIT_CLASSES, MASK_PATH,
                                   TMP_SUFFIX, TRUTH_GROUP, parse_tmp_name, pid_alive, tmp_sibling)  # noqa: F401 (re-exported)

from .errors import SimulationError

__all__ = [
    "SHARD_FORMAT",
    "CXI_VERSION",
    "DATA_PATH",
    "MASK_PATH",
    "TRUTH_GROUP",
    "MASK_INVALID",
    "MASK_SHADOWED",
    "ShardValidationError",
    "CHECKSUM_ATTR",
    "write_shard",
    "content_sha256",
    "verify_shard",
    "pid_alive",
    "shard_is_complete",
    "cleanup_partial",
]

SHARD_FORMAT = "speckle_embed-shard-1"
"""Value of the ``format`` file attribute of every shard this module writes."""
# CXI_VERSION, DATA_PATH, MASK_PATH, TRUTH_GROUP, DETECTOR_GROUP, TMP_SUFFIX and the
# temporary-file naming are owned by speckle_embed.formats (re-exported here).

MASK_INVALID = 0x1
"""CXI mask bit: pixel invalid (module gaps, dead pixels)."""
MASK_SHADOWED = 0x10
"""CXI mask bit: pixel shadowed (beam stop)."""

CHECKSUM_ATTR = "content_sha256"
"""File attribute: sha256 of the shard's contents (:func:`content_sha256`), set by :func:`write_shard`."""
_RESERVED_ATTRS = frozenset({"n_frames", "created_utc", "format", CHECKSUM_ATTR})

# Known truth keys: (stored dtype, required trailing shape (None = any), units, description).
_TRUTH_SPEC: dict[str, tuple[Any, tuple | None, str | None, str]] = {
    "hit_class": (np.int8, (), "1",
                  "hit class code, index into the hit_class_names file attribute"),
    "n_particles": (np.int8, (), "1", "number of particles in the beam for this frame"),
    "structure_id": (str, None, None, "name of the structure the frame was simulated from"),
    "quaternions": (np.float32, (None, 4), "1",
                    "scalar-first (w, x, y, z) unit quaternion rotating each particle "
                    "(r' = R r), NaN-padded beyond n_particles"),
    "positions_m": (np.float32, (None, 3), "m",
                    "particle centre positions in the beam focus, NaN-padded beyond n_particles"),
    "fluence_multiplier": (np.float32, (), "1",
                           "pulse fluence relative to the nominal photon count"),
    "beam_center_offset_px": (np.float32, (2,), "pixel",
                              "offset (y, x) of the beam centre from the detector centre"),
}

_FINITE_CHECK_BLOCK = 64  # frames converted/checked at a time (bounds temporary memory)


class ShardValidationError(SimulationError, ValueError):
    """The arrays given to :func:`write_shard` cannot form a valid shard; nothing was written."""


# ----------------------------------------------------------------------------- validation
def _as_frames(frames) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise ShardValidationError(
            f"frames must have shape (n, H, W), got an array of shape {arr.shape}")
    n, h, w = arr.shape
    if n == 0:
        raise ShardValidationError("frames is empty (n = 0); a shard needs at least one frame")
    if h == 0 or w == 0:
        raise ShardValidationError(f"frames have an empty detector shape (H, W) = ({h}, {w})")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) \
            or np.issubdtype(arr.dtype, np.complexfloating):
        raise ShardValidationError(
            f"frames must be real numbers (photons), got dtype {arr.dtype}")
    return arr


def _first_nonfinite_frame(frames: np.ndarray) -> int | None:
    """Index of the first frame with a NaN/inf value after conversion to float32, or None."""
    n = frames.shape[0]
    for start in range(0, n, _FINITE_CHECK_BLOCK):
        with np.errstate(over="ignore", invalid="ignore"):
            block = np.asarray(frames[start:start + _FINITE_CHECK_BLOCK], dtype=np.float32)
        ok = np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
        if not ok.all():
            return start + int(np.argmin(ok))
    return None


def _as_string_array(key: str, arr: np.ndarray) -> np.ndarray:
    """Object array of Python ``str`` (stored as variable-length UTF-8)."""
    if arr.dtype.kind == "U":
        return arr.astype(object)
    if arr.dtype.kind == "S":
        try:
            return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(arr)
        except UnicodeDecodeError as exc:
            raise ShardValidationError(f"truth[{key!r}] holds bytes that are not UTF-8: {exc}") from None
    out = np.empty(arr.shape, dtype=object)
    for idx, value in np.ndenumerate(arr):
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif not isinstance(value, str):
            raise ShardValidationError(
                f"truth[{key!r}] is an object array whose element {idx} is "
                f"{type(value).__name__} ({value!r}); only strings can be stored as objects")
        out[idx] = value
    return out


def _prepare_truth(truth: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    if truth is None:
        return {}
    if not isinstance(truth, Mapping):
        raise ShardValidationError(f"truth must be a dict of arrays, got {type(truth).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in truth.items():
        if not isinstance(key, str) or not key or "/" in key or key in (".", ".."):
            raise ShardValidationError(f"truth key {key!r} is not a valid HDF5 dataset name")
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            got = "a scalar" if arr.ndim == 0 else f"first dimension {arr.shape[0]}"
            raise ShardValidationError(
                f"truth[{key!r}] must have first dimension n = {n} (one entry per frame), "
                f"got {got} (shape {arr.shape})")
        spec = _TRUTH_SPEC.get(key)
        if spec is not None and spec[1] is not None:
            trailing = spec[1]
            if len(arr.shape) - 1 != len(trailing) or any(
                    t is not None and t != s for t, s in zip(trailing, arr.shape[1:])):
                want = "(n" + "".join(f", {'k' if t is None else t}" for t in trailing) + ")"
                raise ShardValidationError(
                    f"truth[{key!r}] must have shape {want}, got {arr.shape}")
        if arr.dtype.kind in "USO":
            arr = _as_string_array(key, arr)
        elif spec is not None and spec[0] is str:
            raise ShardValidationError(
                f"truth[{key!r}] must hold strings, got dtype {arr.dtype}")
        elif spec is not None:
            arr = _cast_known(key, arr, spec[0])
        elif arr.dtype.kind not in "biufc":
            raise ShardValidationError(
                f"truth[{key!r}] has dtype {arr.dtype}, which cannot be stored")
        if key == "hit_class":
            bad = np.flatnonzero((arr < 0) | (arr >= len(HIT_CLASSES)))
            if bad.size:
                raise ShardValidationError(
                    f"truth['hit_class'][{bad[0]}] = {arr[bad[0]]} is not a hit class code "
                    f"0..{len(HIT_CLASSES) - 1} ({', '.join(HIT_CLASSES)})")
        if key == "n_particles":
            bad = np.flatnonzero(arr < 0)
            if bad.size:
                raise ShardValidationError(
                    f"truth['n_particles'][{bad[0]}] = {arr[bad[0]]} is negative")
        out[key] = arr
    return out


def _cast_known(key: str, arr: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if arr.dtype.kind not in "biuf":
        raise ShardValidationError(f"truth[{key!r}] must be numeric, got dtype {arr.dtype}")
    if dtype.kind in "iu":
        flat = arr.reshape(arr.shape[0], -1)
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(flat) & (flat == np.round(flat)) & (flat >= info.min) & (flat <= info.max)
        bad_rows = np.flatnonzero(~ok.all(axis=1))
        if bad_rows.size:
            i = int(bad_rows[0])
            raise ShardValidationError(
                f"truth[{key!r}][{i}] = {arr[i]!r} cannot be stored as {dtype} "
                f"(integers {info.min}..{info.max})")
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(dtype)


def _as_mask(mask, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=np.uint16)
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise ShardValidationError(
            f"mask must have the frame shape (H, W) = {shape}, got {arr.shape}")
    if arr.dtype == np.bool_:
        raise ShardValidationError(
            "mask is boolean; pass CXI bits instead (e.g. np.where(bad, MASK_INVALID, 0)) so "
            "that the meaning of True is not ambiguous")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ShardValidationError(f"mask must hold integer CXI bits, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
        raise ShardValidationError(
            f"mask values must fit uint16 CXI bits (0..65535), got range {arr.min()}..{arr.max()}")
    return arr.astype(np.uint16)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    return str(value)


def _attr_value(key: str, value):
    """Convert one user attribute to something h5py stores (JSON text for containers)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return json.dumps(value, default=_json_default)
    if isinstance(value, (str, bytes, bool, int, float, np.generic)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return value
        return json.dumps(value.tolist(), default=_json_default)
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    return str(value)


def _prepare_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ShardValidationError(f"attrs must be a dict, got {type(attrs).__name__}")
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ShardValidationError(f"attribute name {key!r} must be a non-empty str")
        if key in _RESERVED_ATTRS:
            raise ShardValidationError(
                f"attribute {key!r} is set by write_shard itself; remove it from attrs")
        try:
            out[key] = _attr_value(key, value)
        except (TypeError, ValueError) as exc:
            raise ShardValidationError(f"attribute {key!r} cannot be stored: {exc}") from None
    return out


# ----------------------------------------------------------------------------- writing
def _tmp_path(final: Path) -> Path:
    return tmp_sibling(final)


def _fsync_directory(path: Path) -> None:
    """Best-effort fsync of a directory (makes a rename durable; unsupported on some systems)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:  # nothing more we can do; the caller's error is the one that matters
        pass


def _write_contents(f: h5py.File, frames: np.ndarray, truth: dict[str, np.ndarray],
                    mask: np.ndarray, attrs: dict[str, Any], compression, compression_level,
                    chunk_frames: int) -> None:
    n, h, w = frames.shape
    f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))

    entry = f.create_group("entry_1")
    entry.attrs["NX_class"] = "NXentry"
    data_group = entry.create_group("data_1")
    data_group.attrs["NX_class"] = "NXdata"
    data_group.attrs["signal"] = "data"
    data_group.attrs["axes"] = "experiment_identifier:y:x"

    comp_kwargs: dict[str, Any] = {}
    if compression == "gzip":
        comp_kwargs = dict(compression="gzip", compression_opts=int(compression_level), shuffle=True)
    elif compression == "lzf":
        comp_kwargs = dict(compression="lzf", shuffle=True)
    chunk = min(chunk_frames, n)
    dset = data_group.create_dataset("data", shape=(n, h, w), dtype=np.float32,
                                     chunks=(chunk, h, w), **comp_kwargs)
    dset.attrs["axes"] = "experiment_identifier:y:x"
    dset.attrs["units"] = "photons"
    dset.attrs["long_name"] = "photons per pixel"
    for start in range(0, n, chunk):
        with np.errstate(over="ignore", invalid="ignore"):
            dset[start:start + chunk] = np.asarray(frames[start:start + chunk], dtype=np.float32)

    mset = data_group.create_dataset("mask", data=mask, dtype=np.uint16)
    mset.attrs["axes"] = "y:x"
    mset.attrs["units"] = "1"
    mset.attrs["description"] = (
        "CXI pixel mask bits: 0x1 invalid (gaps, dead pixels), 0x10 shadowed (beam stop); "
        "0 = good pixel")

    instrument = entry.create_group("instrument_1")
    instrument.attrs["NX_class"] = "NXinstrument"
    detector = instrument.create_group("detector_1")
    detector.attrs["NX_class"] = "NXdetector"
    detector["data"] = h5py.SoftLink(DATA_PATH)
    detector["mask"] = h5py.SoftLink(MASK_PATH)

    truth_group = entry.create_group("truth")
    truth_group.attrs["description"] = (
        "per-frame ground truth of the simulation; the first axis of every dataset is the "
        "frame index of /entry_1/data_1/data")
    for key, arr in truth.items():
        if arr.dtype == object:
            tset = truth_group.create_dataset(key, shape=arr.shape,
                                              dtype=h5py.string_dtype("utf-8"))
            tset[...] = arr
        else:
            tset = truth_group.create_dataset(key, data=arr)
        spec = _TRUTH_SPEC.get(key)
        if spec is not None:
            if spec[2] is not None:
                tset.attrs["units"] = spec[2]
            tset.attrs["description"] = spec[3]

    f.attrs["hit_class_names"] = json.dumps(list(HIT_CLASSES))
    for key, value in attrs.items():
        f.attrs[key] = value
    f.attrs["n_frames"] = np.int64(n)
    f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    f.attrs["format"] = SHARD_FORMAT


def write_shard(path, frames, truth: Mapping[str, Any] | None, mask, attrs: Mapping[str, Any] | None,
                *, compression: str | None = "gzip", chunk_frames: int = 1,
                compression_level: int = 4, durable: bool = True) -> Path:
    """Write one complete shard atomically.

    Everything is validated first (nothing touches the disk on invalid input). The HDF5
    file is then built in memory (extra memory: about twice the compressed shard size),
    written with plain OS calls to a unique ``<path>.<pid>-<hex>.tmp`` in the destination
    directory, fsync'ed, closed and renamed onto ``path`` with :func:`os.replace` (an
    existing file of that name is replaced). A file under the final name is therefore
    always complete, and a full disk is an ordinary ``OSError`` (HDF5 itself cannot recover
    from write failures on an open file).

    Parameters
    ----------
    path : str or os.PathLike
        Final file name, conventionally ``<structure>.h5``. Missing parent directories
        are created.
    frames : array_like, shape (n, H, W), real
        Photons per pixel, ``n >= 1``; stored as float32 at ``/entry_1/data_1/data`` (row =
        detector y, column = detector x). Every value must be finite after conversion to
        float32.
    truth : dict of str to array_like, or None
        Per-frame ground truth stored at ``/entry_1/truth/<key>``; the first dimension of
        every array must be ``n``. Strings (``str``/``bytes`` arrays or object arrays of
        ``str``) are stored as variable-length UTF-8. Known keys are checked and cast to
        their DESIGN.md dtypes: ``hit_class`` int8 (codes of :data:`simulate.labels.HIT_CLASSES`),
        ``n_particles`` int8 (>= 0), ``structure_id`` str, ``quaternions`` float32
        ``(n, k, 4)`` scalar-first, ``positions_m`` float32 ``(n, k, 3)`` metres,
        ``fluence_multiplier`` float32 ``(n,)``, ``beam_center_offset_px`` float32
        ``(n, 2)`` pixels; NaN padding of the particle axis is kept. Other keys are stored
        with their own numeric dtype.
    mask : array_like, shape (H, W), integer, or None
        CXI mask bits stored as uint16: ``MASK_INVALID = 0x1``, ``MASK_SHADOWED = 0x10``,
        0 = good. ``None`` stores an all-good mask. Boolean masks are refused (ambiguous).
    attrs : dict or None
        File attributes (geometry with units in the names, seed, config YAML, code
        version...). ``dict``/``list``/``tuple`` values are stored as JSON text, ``None`` as
        ``""``, numeric arrays and scalars as they are, anything else as ``str(value)``.
        ``n_frames``, ``created_utc``, ``format`` and ``content_sha256`` (the checksum
        of :func:`content_sha256`, checked by :func:`verify_shard`) are reserved; ``hit_class_names``
        defaults to the JSON list of :data:`simulate.labels.HIT_CLASSES`.
    compression : {"gzip", "lzf", None}, optional
        Frame compression filter (with byte shuffle). Default gzip.
    chunk_frames : int, optional
        Frames per HDF5 chunk; chunks are ``(min(chunk_frames, n), H, W)``. Default 1
        (fast random access to single frames).
    compression_level : int, optional
        gzip level 0-9, default 4.
    durable : bool, optional
        fsync the file and its directory so the shard survives a power loss (default True).

    Returns
    -------
    pathlib.Path
        The final path.

    Raises
    ------
    ShardValidationError
        (a ``ValueError``) on invalid input; the message names the first bad frame index,
        the truth key or the attribute at fault. Nothing is written.
    OSError
        If the file cannot be written (read-only or missing directory, disk full...);
        the message names ``path``, the temporary file is removed and no file appears
        under the final name.
    """
    final = Path(os.fspath(path))
    if final.name.endswith(TMP_SUFFIX):
        raise ShardValidationError(f"shard path {final} must not end with {TMP_SUFFIX!r}")
    if compression not in ("gzip", "lzf", None):
        raise ShardValidationError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) \
            or chunk_frames < 1:
        raise ShardValidationError(f"chunk_frames must be an integer >= 1, got {chunk_frames!r}")
    if not 0 <= int(compression_level) <= 9:
        raise ShardValidationError(f"compression_level must be 0..9, got {compression_level!r}")

    frames_arr = _as_frames(frames)
    n, h, w = frames_arr.shape
    bad = _first_nonfinite_frame(frames_arr)
    if bad is not None:
        raise ShardValidationError(
            f"frame {bad} of {n} contains NaN or inf (after conversion to float32); "
            f"refusing to write {final}")
    truth_arrs = _prepare_truth(truth, n)
    mask_arr = _as_mask(mask, (h, w))
    attrs_clean = _prepare_attrs(attrs)
    attrs_clean[CHECKSUM_ATTR] = content_sha256(frames_arr, truth_arrs, mask_arr)

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(final, None, exc) from exc
    if final.is_dir():
        raise IsADirectoryError(f"cannot write shard {final}: a directory has that name")

    # The HDF5 image is built in memory and written with plain OS calls: HDF5 that hits a
    # full disk mid-write cannot close the file and leaves the library in a broken state
    # (errors at exit, even segfaults), whereas a failed os.write is an ordinary OSError.
    tmp = _tmp_path(final)
    try:
        image = _build_image(tmp, frames_arr, truth_arrs, mask_arr, attrs_clean, compression,
                             compression_level, int(chunk_frames))
    except (OSError, RuntimeError) as exc:  # h5py reports some HDF5 failures as RuntimeError
        raise _write_error(final, None, exc) from exc
    try:
        _write_bytes(tmp, image, durable)
        del image
        os.replace(tmp, final)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _write_error(final, tmp, exc) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    if durable:
        _fsync_directory(final.parent)
    return final


def content_sha256(frames, truth: Mapping[str, np.ndarray], mask: np.ndarray) -> str:
    """sha256 (hex) of a shard's contents as stored: frames (float32), mask (uint16), truth.

    Covered: the frames' float32 bytes (C order, hashed ``_FINITE_CHECK_BLOCK`` frames at a
    time), the mask's uint16 bytes, then each truth array in key order (name, shape and
    bytes as stored; strings as UTF-8, NUL-separated). Attributes are not covered (HDF5
    keeps them in the metadata, which h5py already refuses to open when damaged).
    Own code: no library hashes an HDF5 file's *decoded* datasets, and the file's bytes
    cannot hold their own digest.

    Parameters
    ----------
    frames : array_like (n, H, W) or h5py.Dataset
    truth : dict of str to ndarray or h5py.Dataset
    mask : array_like (H, W)
    """
    h = hashlib.sha256()
    n = frames.shape[0]
    h.update(f"frames{tuple(frames.shape)}".encode())
    for start in range(0, n, _FINITE_CHECK_BLOCK):
        with np.errstate(over="ignore", invalid="ignore"):
            block = np.asarray(frames[start:start + _FINITE_CHECK_BLOCK], dtype=np.float32)
        h.update(np.ascontiguousarray(block).tobytes())
    h.update(f"mask{tuple(mask.shape)}".encode())
    h.update(np.ascontiguousarray(np.asarray(mask[()], dtype=np.uint16)).tobytes())
    for key in sorted(truth):
        arr = truth[key]
        if isinstance(arr, h5py.Dataset):
            arr = arr.asstr()[()] if h5py.check_string_dtype(arr.dtype) else arr[()]
        arr = np.asarray(arr)
        h.update(f"\0truth/{key}{arr.shape}{arr.dtype.kind}".encode())
        if arr.dtype.kind in "OUS":
            h.update(b"\0".join(str(v).encode("utf-8") if not isinstance(v, bytes) else v
                                for v in arr.ravel()))
        else:
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _build_image(tmp: Path, frames, truth, mask, attrs, compression, compression_level,
                 chunk_frames) -> bytes:
    """The complete shard as an HDF5 file image (bytes), built in memory."""
    f = h5py.File(f"{tmp}.mem", "w", driver="core", backing_store=False, block_size=1 << 20,
                  libver=("v108", "latest"))
    try:
        _write_contents(f, frames, truth, mask, attrs, compression, compression_level, chunk_frames)
        f.flush()
        return f.id.get_file_image()
    finally:
        f.close()


def _write_bytes(tmp: Path, image: bytes, durable: bool) -> None:
    """Create ``tmp`` (must not exist) holding ``image``; fsync it if ``durable``."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(image)
        while view:
            written = os.write(fd, view[: 1 << 26])
            view = view[written:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(final: Path, tmp: Path | None, exc: BaseException) -> OSError:
    via = f" (via temporary file {tmp.name})" if tmp is not None else ""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    msg = f"could not write shard {final}{via}: {type(exc).__name__}: {reason}"
    errno_ = getattr(exc, "errno", None)
    return OSError(errno_, msg) if errno_ is not None else OSError(msg)


# ----------------------------------------------------------------------------- resume helpers
def shard_is_complete(path) -> bool:
    """Whether ``path`` is a complete shard written by :func:`write_shard`.

    True when the file exists under its final (non-``.tmp``) name, opens with h5py, has
    the ``format`` attribute of this writer, a 3-D ``/entry_1/data_1/data`` whose length
    equals the ``n_frames`` attribute, the mask, and truth arrays of that length. Never
    raises for a missing, truncated or foreign file (returns False).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    bool
    """
    p = Path(os.fspath(path))
    if p.name.endswith(TMP_SUFFIX) or not p.is_file():
        return False
    try:
        with h5py.File(p, "r") as f:
            if not str(f.attrs.get("format", "")).startswith("speckle_embed-shard-"):
                return False
            data = f.get(DATA_PATH)
            if not isinstance(data, h5py.Dataset) or data.ndim != 3:
                return False
            n_attr = f.attrs.get("n_frames")
            if n_attr is None or int(n_attr) != data.shape[0]:
                return False
            mask = f.get(MASK_PATH)
            if not isinstance(mask, h5py.Dataset) or mask.shape != data.shape[1:]:
                return False
            truth = f.get(TRUTH_GROUP)
            if truth is not None:
                for item in truth.values():
                    if isinstance(item, h5py.Dataset) and (item.ndim == 0 or item.shape[0] != data.shape[0]):
                        return False
        return True
    except Exception:  # noqa: BLE001 - any failure to read means "not complete"
        return False


def verify_shard(path) -> str | None:
    """Why ``path`` cannot be reused, or None when it is complete and undamaged.

    Checks :func:`shard_is_complete`, then decodes every dataset and compares
    :func:`content_sha256` with the ``content_sha256`` attribute stored at writing, so a
    shard damaged inside a compressed chunk (or edited since) is caught. Costs one read and
    decompression of the shard.

    Returns
    -------
    str or None
        A short reason (``"incomplete or unreadable"``, ``"no content checksum"``,
        ``"unreadable data: ..."``, ``"checksum mismatch"``), or None.
    """
    if not shard_is_complete(path):
        return "incomplete or unreadable"
    try:
        with h5py.File(os.fspath(path), "r") as f:
            stored = f.attrs.get(CHECKSUM_ATTR)
            if stored is None:
                return "no content checksum (written by an older version)"
            truth = f.get(TRUTH_GROUP)
            items = {k: v for k, v in truth.items() if isinstance(v, h5py.Dataset)} if truth else {}
            actual = content_sha256(f[DATA_PATH], items, f[MASK_PATH])
    except Exception as exc:  # noqa: BLE001 - a failing decompression is damage
        return f"unreadable data: {type(exc).__name__}: {exc}"
    if actual != (stored.decode() if isinstance(stored, bytes) else str(stored)):
        return "checksum mismatch (damaged or modified after writing)"
    return None


def cleanup_partial(directory, *, max_age_s: float = 24 * 3600.0, recursive: bool = False,
                    min_age_s: float = 0.0) -> list[Path]:
    """Remove this package's stale temporaries left by interrupted writes (crash, ``kill -9``).

    Only names of :func:`speckle_embed.formats.parse_tmp_name` (``<name>.<pid>-<hex>.tmp``)
    are considered, so a user's ``notes.tmp`` is never touched. Such a file is removed when
    its writer is gone: no process with its pid exists on this machine, or the file was not
    modified for ``max_age_s`` (a writer on another host of a shared file system, or a
    reused pid). A temporary of a live writer is kept.

    Parameters
    ----------
    directory : str or os.PathLike
        Directory holding shards. A missing directory is not an error (nothing to clean).
    max_age_s : float, optional
        Remove a temporary older than this even if its pid is alive (default one day).
    recursive : bool, optional
        Also clean sub-directories.
    min_age_s : float, optional
        Never remove files modified less than this many seconds ago (default 0).

    Returns
    -------
    list of pathlib.Path
        The files removed, sorted.

    Raises
    ------
    NotADirectoryError
        If ``directory`` exists but is not a directory.
    """
    d = Path(os.fspath(directory))
    if not d.exists():
        return []
    if not d.is_dir():
        raise NotADirectoryError(f"cleanup_partial: {d} is not a directory")
    now = time.time()
    removed = []
    for p in sorted(d.rglob(f"*{TMP_SUFFIX}") if recursive else d.glob(f"*{TMP_SUFFIX}")):
        parsed = parse_tmp_name(p.name)
        if parsed is None:
            continue
        try:
            if not p.is_file() or p.is_symlink():
                continue
            age = now - p.stat().st_mtime
            if age < min_age_s:
                continue
            if pid_alive(parsed.pid) and age < max_age_s:
                continue
            p.unlink()
            removed.append(p)
        except FileNotFoundError:  # removed concurrently
            continue
    return removed
