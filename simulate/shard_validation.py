"""The arrays given to :func:`simulate.dataset_io.write_shard`, checked and converted to what a shard
stores: frames ``(n, H, W)`` of finite real numbers, the known truth keys with their dtypes and units
(:data:`TRUTH_SPEC`), the CXI mask bits, and attributes HDF5 can store (JSON for the rest).
Errors are :class:`ShardValidationError`; nothing is written before these checks pass.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from speckle_embed.formats import HIT_CLASSES

from .errors import SimulationError
from .shard_checks import CHECKSUM_ATTR, FRAME_BLOCK

__all__ = ["ShardValidationError", "TRUTH_SPEC", "RESERVED_ATTRS", "as_frames", "first_nonfinite_frame",
           "prepare_truth", "as_mask", "prepare_attrs"]

RESERVED_ATTRS = frozenset({"n_frames", "created_utc", "format", CHECKSUM_ATTR})
"""File attributes :func:`simulate.dataset_io.write_shard` sets itself (refused in ``attrs``)."""

# Known truth keys: (stored dtype, required trailing shape (None = any), units, description).
TRUTH_SPEC: dict[str, tuple[Any, tuple | None, str | None, str]] = {
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
    # only with dataset.sample (simulate.sample_variety):
    "size_scale": (np.float32, (None,), "1",
                   "linear size of each particle relative to the structure as built "
                   "(polydispersity), NaN-padded beyond n_particles"),
    "non_sample_kind": (str, None, None,
                        "droplet, droplet+streak, debris or fragment for non-sample hits, else empty"),
}


class ShardValidationError(SimulationError, ValueError):
    """The arrays given to :func:`write_shard` cannot form a valid shard; nothing was written."""


def as_frames(frames) -> np.ndarray:
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


def first_nonfinite_frame(frames: np.ndarray) -> int | None:
    """Index of the first frame with a NaN/inf value after conversion to float32, or None."""
    n = frames.shape[0]
    for start in range(0, n, FRAME_BLOCK):
        with np.errstate(over="ignore", invalid="ignore"):
            block = np.asarray(frames[start:start + FRAME_BLOCK], dtype=np.float32)
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


def prepare_truth(truth: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
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
        spec = TRUTH_SPEC.get(key)
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


def as_mask(mask, shape: tuple[int, int]) -> np.ndarray:
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


def prepare_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ShardValidationError(f"attrs must be a dict, got {type(attrs).__name__}")
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ShardValidationError(f"attribute name {key!r} must be a non-empty str")
        if key in RESERVED_ATTRS:
            raise ShardValidationError(
                f"attribute {key!r} is set by write_shard itself; remove it from attrs")
        try:
            out[key] = _attr_value(key, value)
        except (TypeError, ValueError) as exc:
            raise ShardValidationError(f"attribute {key!r} cannot be stored: {exc}") from None
    return out
