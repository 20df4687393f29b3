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

This module is the writer; the other concepts live in their own modules and are re-exported here:
:mod:`simulate.shard_validation` (checking the arrays, :class:`ShardValidationError`),
:mod:`simulate.shard_checks` (:func:`content_sha256`, :func:`shard_is_complete`,
:func:`verify_shard`) and :mod:`simulate.shard_cleanup` (:func:`cleanup_partial`).

This module depends on numpy, h5py and the standard library only (plus the pure-Python
``simulate.errors`` and the core modules :mod:`speckle_embed.formats` (paths, hit classes,
temporary names) and :mod:`speckle_embed.atomic`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from speckle_embed.formats import (CXI_VERSION, DATA_PATH, HIT_CLASSES, MASK_PATH,
                                   TMP_SUFFIX, TRUTH_GROUP, parse_tmp_name, pid_alive, tmp_sibling)  # noqa: F401 (re-exported)

from .shard_checks import CHECKSUM_ATTR, content_sha256, shard_is_complete, verify_shard
from .shard_cleanup import cleanup_partial
from .shard_validation import (TRUTH_SPEC, ShardValidationError, as_frames, as_mask, first_nonfinite_frame,
                               prepare_attrs, prepare_truth)

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
        spec = TRUTH_SPEC.get(key)
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

    frames_arr = as_frames(frames)
    n, h, w = frames_arr.shape
    bad = first_nonfinite_frame(frames_arr)
    if bad is not None:
        raise ShardValidationError(
            f"frame {bad} of {n} contains NaN or inf (after conversion to float32); "
            f"refusing to write {final}")
    truth_arrs = prepare_truth(truth, n)
    mask_arr = as_mask(mask, (h, w))
    attrs_clean = prepare_attrs(attrs)
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
