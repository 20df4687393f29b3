"""Names shared by the files this project writes and reads: the one owner of each.

* Hit classes: the integer code of a class is its position in :data:`HIT_CLASSES`.
* CXI/HDF5 paths of a dataset shard (frames, mask, per-frame truth), as in the CXI format
  (cxidb ``cxi_file_format.tex``) with the simulator's ``/entry_1/truth`` group added.
* Temporary-file naming: every atomic writer of the project writes ``<name>.<pid>-<hex>.tmp``
  beside the final file and renames it; :func:`parse_tmp_name` recognises exactly those
  names (never a user's ``notes.tmp``) and returns the writer's pid, so a clean-up can tell
  whether the writer is gone.

This is a core module: it imports only the standard library (the simulator imports it).
"""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HIT_CLASSES",
    "pid_alive",
    "CXI_VERSION",
    "DATA_PATH",
    "MASK_PATH",
    "DETECTOR_GROUP",
    "DETECTOR_DATA_PATH",
    "DETECTOR_MASK_PATH",
    "MASK_PATHS",
    "TRUTH_GROUP",
    "TMP_SUFFIX",
    "TMP_NAME_RE",
    "TmpName",
    "tmp_name",
    "tmp_sibling",
    "parse_tmp_name",
]

# ----------------------------------------------------------------------------- hit classes
HIT_CLASSES: tuple[str, ...] = ("no_hit", "single", "multi", "non_sample")
"""Names of the hit classes, indexed by their integer code (``0 = no_hit`` ... ``3 = non_sample``)."""

# ----------------------------------------------------------------------------- CXI paths
CXI_VERSION = 150
"""Value of the ``/cxi_version`` dataset of the shards we write."""
DATA_PATH = "/entry_1/data_1/data"
"""Frames, float32 ``(n, H, W)`` in photons (shot index first)."""
MASK_PATH = "/entry_1/data_1/mask"
"""Pixel mask, uint16 ``(H, W)`` of CXI bits (0x1 invalid, 0x10 shadowed)."""
DETECTOR_GROUP = "/entry_1/instrument_1/detector_1"
DETECTOR_DATA_PATH = DETECTOR_GROUP + "/data"
"""Facility CXI files keep frames here (our shards link it to :data:`DATA_PATH`)."""
DETECTOR_MASK_PATH = DETECTOR_GROUP + "/mask"
MASK_PATHS: tuple[str, ...] = (MASK_PATH, DETECTOR_MASK_PATH)
"""Where a reader looks for the mask, in order."""
TRUTH_GROUP = "/entry_1/truth"
"""Per-frame ground truth of simulated shards (first axis = frame index)."""

# ----------------------------------------------------------------------------- temporaries
TMP_SUFFIX = ".tmp"
"""Suffix of every temporary file; readers skip files that end with it."""

TMP_NAME_RE = re.compile(r"^(?P<final>.+)\.(?P<pid>[0-9]+)-(?P<token>[0-9a-f]{8})(?P<tag>(?:\.[a-z]+)?)\.tmp$")
"""Our temporary names: ``<final name>.<pid>-<8 hex>[.<tag>].tmp`` (``tag`` e.g. ``old``)."""


@dataclass(frozen=True)
class TmpName:
    """A parsed temporary name: the final file's name and the pid of the process writing it."""

    final: str
    pid: int


def tmp_name(final_name: str, tag: str = "") -> str:
    """``<final_name>.<pid>-<8 hex>[.<tag>].tmp``: unique per writer and recognised by :func:`parse_tmp_name`.

    Examples
    --------
    >>> parse_tmp_name(tmp_name("a.h5")).final
    'a.h5'
    """
    if tag and not re.fullmatch(r"[a-z]+", tag):
        raise ValueError(f"tmp_name tag {tag!r} must be lower-case letters")
    return f"{final_name}.{os.getpid()}-{secrets.token_hex(4)}{'.' + tag if tag else ''}{TMP_SUFFIX}"


def tmp_sibling(final, tag: str = "") -> Path:
    """The temporary path beside ``final`` (:func:`tmp_name` of its name)."""
    final = Path(final)
    return final.with_name(tmp_name(final.name, tag))


def parse_tmp_name(name: str) -> TmpName | None:
    """The final name and writer pid of one of our temporaries, or None for any other name.

    Examples
    --------
    >>> parse_tmp_name("1BXN.h5.4242-0badc0de.tmp")
    TmpName(final='1BXN.h5', pid=4242)
    >>> parse_tmp_name("notes.tmp") is None
    True
    """
    m = TMP_NAME_RE.match(os.path.basename(name))
    if m is None:
        return None
    return TmpName(final=m.group("final"), pid=int(m.group("pid")))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (``kill(pid, 0)``)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True
