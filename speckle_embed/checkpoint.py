"""Checkpoint files: the one owner of their formats, hashing, safe loading and the "pretrained" spec.

Two formats (DESIGN.md), both a ``torch.save`` dict of plain Python data and tensors:

* :data:`CHECKPOINT_FORMAT`: what training writes (``best.pt``, ``last.pt``) and
  :meth:`SpeckleEmbedder.save_checkpoint` writes: ``format``, ``model`` (registry config),
  ``state_dict``, ``preprocessing``, ``training`` metadata (``last.pt`` adds the resume states).
* :data:`PRETRAINED_FORMAT`: the shipped, int8-compressed form of ``speckle_embed/weights/<name>.pt``
  (:func:`compress_checkpoint`); :func:`expand_checkpoint` turns it back into the first format.

Trust model (``docs/reliability.md``): a pickle can run code when it is loaded. Every file is read
with ``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers (plus the
numpy scalar types of :data:`SAFE_GLOBALS`); a file that needs anything else is refused with
:class:`UntrustedCheckpointError` and nothing in it runs. The only way past the refusal is the
explicit ``trust_checkpoint=True`` (for files you or your team wrote with an older version);
:func:`convert_checkpoint` then writes a plain copy that loads safely from then on.

The checkpoint spec accepted by ``init_checkpoint=`` (training) and ``checkpoint=`` (evaluation)
has one grammar, :func:`parse_checkpoint_spec`: ``pretrained`` or ``default`` (the default shipped
embedding), ``pretrained:<name>`` (a shipped embedding by name), or a file path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from speckle_embed.atomic import write_bytes_atomically

__all__ = [
    "CHECKPOINT_FORMAT", "PRETRAINED_FORMAT", "WEIGHTS_DIR", "DEFAULT_PRETRAINED", "GROUP_SIZE",
    "MIN_INT8_ELEMENTS", "SAFE_GLOBALS", "CheckpointError", "UntrustedCheckpointError", "LoadedCheckpoint",
    "CheckpointSpec", "sha256_file", "file_hash", "bytes_hash", "weights_fingerprint", "load_checkpoint_file",
    "write_checkpoint", "expand_checkpoint", "compress_checkpoint", "convert_checkpoint", "to_plain",
    "parse_checkpoint_spec", "resolve_checkpoint_spec", "available_pretrained",
]

#: ``format`` of a regular checkpoint (training, ``save_checkpoint``).
CHECKPOINT_FORMAT = "speckle_embed-checkpoint-1"
#: ``format`` of a compressed (shipped) checkpoint.
PRETRAINED_FORMAT = "speckle_embed-pretrained-1"
#: Folder of the shipped weights (package data).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Name of the default shipped embedding.
DEFAULT_PRETRAINED = "specklenn-realistic-v12"
#: Inputs per int8 quantisation group of the shipped form (one float32 scale each).
GROUP_SIZE = 128
#: Weight matrices smaller than this stay float32 in the shipped form.
MIN_INT8_ELEMENTS = 65536
#: The only non-torch types a checkpoint may hold: numpy scalars (``np.float64(0.9)`` in metadata)
#: and their dtypes. Rebuilding them runs no user code.
SAFE_GLOBALS = [np.dtype, np.float64(0).__reduce__()[0]] + sorted(
    {type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}, key=lambda t: t.__name__)

_SPEC_PRETRAINED = ("pretrained", "default")


class CheckpointError(ValueError):
    """A checkpoint file is missing keys, corrupt or incompatible; the message names the file."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint needs arbitrary Python objects to load (which could run code); it was not loaded."""


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint_file` read.

    Attributes
    ----------
    checkpoint : dict
        In :data:`CHECKPOINT_FORMAT` (a compressed file is expanded to float32 weights).
    hash : str
        :func:`file_hash` of the file bytes.
    path : pathlib.Path
    trusted : bool
        ``True`` when the file needed ``trust_checkpoint=True`` (it holds objects beyond plain
        data); its contents were converted to plain data (:func:`to_plain`).
    """

    checkpoint: dict
    hash: str
    path: Path
    trusted: bool


class CheckpointSpec(NamedTuple):
    """A parsed checkpoint spec: exactly one of ``pretrained`` (a shipped name) and ``path``."""

    pretrained: str | None
    path: Path | None


# ----------------------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike) -> str:
    """Full SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bytes_hash(data: bytes) -> str:
    """Checkpoint hash of DESIGN.md for bytes in memory: first 16 hex digits of their SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """Checkpoint hash of DESIGN.md: first 16 hex digits of the SHA-256 of the file bytes."""
    return sha256_file(path)[:16]


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """First 16 hex of a SHA-256 over the names, dtypes, shapes and bytes of a ``state_dict``.

    Equal fingerprints mean equal weights (bit for bit), wherever the tensors live.
    """
    h = hashlib.sha256()
    for key, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- loading
def _trust_hint(path: Path, unsafe: list[str] | None, reason: str) -> str:
    what = f"the object type(s) {', '.join(unsafe)}" if unsafe else f"objects it refuses ({reason})"
    return (f"checkpoint {path} was NOT loaded: unpickling it needs {what}, which torch.load(weights_only=True) "
            "does not allow; a file from an untrusted source could run arbitrary code this way. Only if you "
            "trust this file (you or your team wrote it, e.g. with an older speckle_embed), load it with "
            "trust_checkpoint=True (SpeckleEmbedder.from_checkpoint / FewShotClassifier.load; "
            "`speckle-embed classify|evaluate ... trust_checkpoint=true`) and convert it once to a safe file: "
            "speckle_embed.checkpoint.convert_checkpoint(src, dst, trust_checkpoint=True), or for a "
            "classifier folder FewShotClassifier.load(old, trust_checkpoint=True).save(new) "
            "(docs/reliability.md, 'Trust model')")


def _torch_load(data: bytes, path: Path, trust: bool, map_location) -> Any:
    """``torch.load`` of file bytes: ``weights_only=True`` (+ :data:`SAFE_GLOBALS`) unless trusted."""
    if trust:
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - zip/EOF/pickle errors of a damaged file
            raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint: "
                                  f"{type(exc).__name__}: {exc}") from exc
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint: {exc}") from exc
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be listed without unpickling
            unsafe = None
        unsafe = None if unsafe is None else [g for g in unsafe if g not in _safe_names()] or None
        raise UntrustedCheckpointError(_trust_hint(path, unsafe, str(exc).splitlines()[0])) from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF errors of a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint "
                              f"(truncated or overwritten?): {type(exc).__name__}: {exc}") from exc


def _safe_names() -> set[str]:
    return {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}


def _read_raw(path: Path, trust: bool, map_location: Any) -> tuple[Any, bytes, bool]:
    """(unpickled object, file bytes, whether it needed trust) of a checkpoint file."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        return _torch_load(data, path, False, map_location), data, False
    except UntrustedCheckpointError:
        if not trust:
            raise
    return to_plain(_torch_load(data, path, True, map_location)), data, True


def load_checkpoint_file(path: str | os.PathLike, *, trust_checkpoint: bool = False, map_location: Any = "cpu",
                         expand_compressed: bool = True) -> LoadedCheckpoint:
    """Read and check a checkpoint file without running code from it.

    Parameters
    ----------
    path : str or os.PathLike
        A :data:`CHECKPOINT_FORMAT` file, or a :data:`PRETRAINED_FORMAT` one.
    trust_checkpoint : bool, default False
        ``False``: ``torch.load(weights_only=True)`` only; a file that needs other objects raises
        :class:`UntrustedCheckpointError`. ``True`` (explicit opt-in, for files you trust): such a
        file is unpickled in full, which can run code it contains; its contents are then
        converted to plain data (:func:`to_plain`).
    map_location : optional
        As :func:`torch.load`.
    expand_compressed : bool, default True
        Accept the compressed shipped form (expanded to float32 weights); ``False`` refuses it.

    Returns
    -------
    LoadedCheckpoint

    Raises
    ------
    FileNotFoundError
        No such file.
    UntrustedCheckpointError
        The file needs arbitrary objects and ``trust_checkpoint`` is False (the message says how to
        convert a trusted file).
    CheckpointError
        Empty, corrupt, not a dict, or another format. The message names the file.
    """
    path = Path(os.fspath(path)).expanduser()
    ckpt, data, trusted = _read_raw(path, trust_checkpoint, map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    fmt = ckpt.get("format")
    if fmt == PRETRAINED_FORMAT and expand_compressed:
        ckpt = expand_checkpoint(ckpt, path)
        fmt = ckpt["format"]
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {fmt!r}; expected {CHECKPOINT_FORMAT!r}"
                              + (f" or {PRETRAINED_FORMAT!r}" if expand_compressed else ""))
    return LoadedCheckpoint(ckpt, bytes_hash(data), path, trusted)


def write_checkpoint(ckpt: Mapping, path: str | os.PathLike) -> str:
    """``torch.save`` a checkpoint dict atomically (temporary sibling, fsync, rename); returns its hash."""
    buf = io.BytesIO()
    torch.save(dict(ckpt), buf)
    data = buf.getvalue()
    write_bytes_atomically(data, Path(os.fspath(path)).expanduser())
    return bytes_hash(data)


def to_plain(obj: Any) -> Any:
    """``obj`` rebuilt from types ``torch.load(weights_only=True)`` accepts.

    Containers become ``dict``/``list``/``tuple``, numpy scalars Python numbers, numpy arrays
    tensors, paths strings, dataclasses dicts; tensors, dtypes, devices and Python scalars stay;
    any other object becomes its ``repr`` string (metadata only: weights are tensors).
    """
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype,
                                       torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)) if obj.dtype.kind in "biufc" else to_plain(obj.tolist())
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, (str, int, float, bool)) or k is None else str(to_plain(k))): to_plain(v)
                for k, v in obj.items()}
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    return repr(obj)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, trust_checkpoint: bool = False) -> str:
    """Rewrite a checkpoint as plain data, so that it loads with ``weights_only=True``.

    The way to keep using a **trusted** old file that :func:`load_checkpoint_file` refuses:
    ``convert_checkpoint("old.pt", "new.pt", trust_checkpoint=True)`` unpickles it in full (which
    runs any code it holds: only for files you trust), converts every value with
    :func:`to_plain` and writes ``dst`` atomically, then checks that ``dst`` loads safely. A
    compressed shipped file stays compressed.

    Returns
    -------
    str
        :func:`file_hash` of ``dst``.
    """
    src = Path(os.fspath(src)).expanduser()
    ckpt, _, _ = _read_raw(src, trust_checkpoint, "cpu")
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    if fmt not in (CHECKPOINT_FORMAT, PRETRAINED_FORMAT):
        raise CheckpointError(f"checkpoint {src} has format {fmt!r}; expected {CHECKPOINT_FORMAT!r} "
                              f"or {PRETRAINED_FORMAT!r}")
    digest = write_checkpoint(to_plain(ckpt), dst)
    load_checkpoint_file(dst)  # proof: the new file loads with weights_only=True
    return digest


# ----------------------------------------------------------------------------- the shipped form
def _quantise(w: torch.Tensor, group: int) -> dict:
    """Symmetric int8 of a 2-D float tensor, one scale per ``group`` inputs of each row."""
    rows, cols = w.shape
    pad = (-cols) % group
    wp = torch.nn.functional.pad(w.float(), (0, pad)).reshape(rows, -1, group)
    scale = wp.abs().amax(dim=2) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(wp / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return {"int8": q.reshape(rows, -1)[:, :cols].contiguous(), "scale": scale.contiguous(),
            "group": int(group), "shape": [int(rows), int(cols)]}


def _dequantise(entry: dict) -> torch.Tensor:
    rows, cols = entry["shape"]
    group = int(entry["group"])
    pad = (-cols) % group
    q = torch.nn.functional.pad(entry["int8"].float(), (0, pad)).reshape(rows, -1, group)
    return (q * entry["scale"][..., None]).reshape(rows, -1)[:, :cols].contiguous()


def expand_checkpoint(ckpt: dict, path: Any = "<memory>") -> dict:
    """A compressed (:data:`PRETRAINED_FORMAT`) checkpoint dict -> the regular one (float32 ``state_dict``)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != PRETRAINED_FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: format {fmt!r}, expected {PRETRAINED_FORMAT!r}")
    try:
        state = {k: _dequantise(v) if isinstance(v, dict) else v for k, v in ckpt["tensors"].items()}
        return {"format": CHECKPOINT_FORMAT, "model": ckpt["model"], "state_dict": state,
                "preprocessing": ckpt["preprocessing"],
                "training": {"pretrained": ckpt.get("name"), **dict(ckpt.get("provenance") or {})}}
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt compressed weights: {exc!r}") from exc


def compress_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, name: str = DEFAULT_PRETRAINED,
                        group: int = GROUP_SIZE, min_int8_elements: int = MIN_INT8_ELEMENTS,
                        provenance: dict | None = None) -> dict:
    """Write the shipped (int8-compressed) form of a training checkpoint.

    Every 2-D weight matrix with at least ``min_int8_elements`` elements is stored as int8 with
    one float32 scale per ``group`` consecutive inputs of a row (symmetric, round to nearest),
    everything else in float32.

    Parameters
    ----------
    src : path
        ``best.pt`` of a training run (:data:`CHECKPOINT_FORMAT`; loaded with ``weights_only=True``).
    dst : path
        Output file (written atomically).
    name : str
        Name of the embedding (``load_pretrained(name)``).
    group, min_int8_elements : int
        Quantisation group size and the smallest matrix that is quantised.
    provenance : dict, optional
        Stored with the weights (training command, data, seed, source checkpoint hash).

    Returns
    -------
    dict
        ``bytes`` of the output, ``source_hash``, ``max_abs_error`` of the dequantised weights.
    """
    loaded = load_checkpoint_file(src, expand_compressed=False)
    ckpt = loaded.checkpoint
    tensors, max_err = {}, 0.0
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and value.ndim == 2 and value.numel() >= min_int8_elements:
            entry = _quantise(value, group)
            max_err = max(max_err, float((_dequantise(entry) - value.float()).abs().max()))
            tensors[key] = entry
        else:
            tensors[key] = value.clone()
    meta = ckpt.get("training") or {}
    out = {"format": PRETRAINED_FORMAT, "name": name, "model": ckpt["model"],
           "preprocessing": ckpt["preprocessing"], "tensors": tensors,
           "provenance": {**{k: meta[k] for k in ("epoch", "step", "best_metric", "config") if k in meta},
                          **(provenance or {}), "source_hash": loaded.hash}}
    write_checkpoint(out, dst)
    return {"bytes": Path(os.fspath(dst)).stat().st_size, "source_hash": loaded.hash, "max_abs_error": max_err}


# ----------------------------------------------------------------------------- the spec
def available_pretrained() -> list[str]:
    """Names of the embeddings shipped in this installation."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def parse_checkpoint_spec(spec: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> CheckpointSpec:
    """Parse ``pretrained`` / ``default`` / ``pretrained:<name>`` / a path.

    Parameters
    ----------
    spec : str or os.PathLike
        ``"pretrained"`` or ``"default"``: :data:`DEFAULT_PRETRAINED`; ``"pretrained:<name>"``: the
        shipped embedding ``<name>``; anything else is a file path (``~`` expanded).
    base_dir : path, optional
        Where a relative path starts (default the current directory).
    """
    if not isinstance(spec, os.PathLike):
        text = str(spec).strip()
        if not text:
            raise ValueError("empty checkpoint spec: give a checkpoint path, 'pretrained' or "
                             "'pretrained:<name>'")
        head, colon, name = text.partition(":")
        if head in _SPEC_PRETRAINED and (not colon or head == "pretrained"):
            return CheckpointSpec(name.strip() or DEFAULT_PRETRAINED, None)
    path = Path(os.path.expanduser(os.fspath(spec)))
    if not path.is_absolute() and base_dir is not None:
        path = Path(os.fspath(base_dir)) / path
    return CheckpointSpec(None, path)


def resolve_checkpoint_spec(spec: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """The file a checkpoint spec names (:func:`parse_checkpoint_spec`).

    Raises
    ------
    FileNotFoundError
        A shipped name that is not installed (the message lists those available).
    """
    parsed = parse_checkpoint_spec(spec, base_dir)
    if parsed.path is not None:
        return parsed.path
    file = WEIGHTS_DIR / f"{parsed.pretrained}.pt"
    if not file.is_file():
        raise FileNotFoundError(f"no pretrained embedding {parsed.pretrained!r} at {file}; available: "
                                f"{available_pretrained() or 'none (was the package installed without its weights?)'}")
    return file
