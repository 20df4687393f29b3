"""The veto's output: frames predicted "single" written to CXI files of bounded size.

Files ``<directory>/singles-NNNNNN.cxi`` (CXI layout of the datasets, DESIGN.md)::

    /entry_1/data_1/data                  (n, H, W) frames as received (dtype kept)
    /entry_1/data_1/mask                  (H, W) uint16 CXI bits (0x1 invalid)
    /entry_1/event/train_id, pulse_id     int64 (n,)
    /entry_1/event/timestamp              float64 (n,) s since the epoch
    /entry_1/result_1/probabilities       float32 (n, n_classes), attribute class_names
    attributes: n_frames (committed), classifier, checkpoint_hash, class_name, created_utc

A file is written under a ``.tmp`` name and renamed when it holds ``max_file_bytes`` of frames
(or at shutdown); after each chunk it is flushed and ``n_frames`` records how many frames are
complete. After a kill -9, the next start finalises such a ``.tmp``: datasets cut to
``n_frames`` and renamed, or, if HDF5 cannot open it, left aside as ``*.damaged.tmp``. The
next file continues the numbering (the restart appends). Disk full: the writer keeps a reserve; when the free space would drop below ``reserve_bytes``
it closes the current file cleanly at its last frame, reports once, and retries after
``retry_s``: HDF5 itself never meets a full disk in the middle of a file (it then leaves file
handles it cannot close). If it still does (another process filled the disk first), the file is
cut to its last committed frame or removed. Frames meanwhile are counted as not written, and
classification goes on.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from speckle_embed.atomic import tmp_sibling

__all__ = ["SinglesWriter", "recover_tmp_files"]

log = logging.getLogger("speckle_embed.stream")
_FINAL = re.compile(r"^singles-(\d{6})\.cxi$")
_TMP = re.compile(r"^(singles-\d{6}\.cxi)\.\d+-[0-9a-f]+\.tmp$")
DATA = "/entry_1/data_1/data"


def recover_tmp_files(directory) -> list[Path]:
    """Finalise the ``.tmp`` files a killed writer left; returns the recovered final paths."""
    out = []
    for tmp in sorted(Path(directory).glob("singles-*.tmp")):
        m = _TMP.match(tmp.name)
        if not m:
            continue
        final = tmp.with_name(m.group(1))
        try:
            with h5py.File(tmp, "r+") as f:
                n = int(f.attrs.get("n_frames", 0))
                for path in (DATA, "/entry_1/event/train_id", "/entry_1/event/pulse_id",
                             "/entry_1/event/timestamp", "/entry_1/result_1/probabilities"):
                    f[path].resize(n, axis=0)
            if n == 0:
                tmp.unlink()
                continue
            os.replace(tmp, final)
            out.append(final)
            log.warning("singles: recovered %s (%d frames) left by an interrupted run", final.name, n)
        except (OSError, KeyError, RuntimeError) as exc:
            aside = tmp.with_name(tmp.name[:-len(".tmp")] + ".damaged.tmp")
            os.replace(tmp, aside)
            log.error("singles: %s cannot be recovered (%s); moved aside as %s", tmp.name, exc, aside.name)
    return out


class SinglesWriter:
    """Append frames to size-bounded CXI files.

    Parameters
    ----------
    directory : path
    frame_shape : (H, W)
    dtype : numpy dtype
    classes : sequence of str
    max_file_bytes : int
        Most bytes of frame data per file (at least one frame per file).
    mask : ndarray (H, W), optional
    attrs : dict, optional
        Extra file attributes (classifier, checkpoint_hash, class_name).
    compression : str, optional
        h5py compression of the frames (None: none, fastest; "gzip", "lzf").
    retry_s : float
        Seconds to wait after a failed write before trying again.
    reserve_bytes : int
        Free space left on the disk: a chunk that would eat into it is not written.
    on_error : callable, optional
    """

    def __init__(self, directory, frame_shape, dtype, classes, *, max_file_bytes: int = 1 << 30, mask=None,
                 attrs=None, compression: str | None = None, retry_s: float = 10.0,
                 reserve_bytes: int = 64 << 20, on_error=None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.classes = [str(c) for c in classes]
        frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.frames_per_file = max(1, int(max_file_bytes) // frame_bytes)
        self.mask = None if mask is None else np.asarray(mask, dtype=np.uint16)
        self.attrs = dict(attrs or {})
        self.compression, self.retry_s = compression, float(retry_s)
        self.reserve_bytes = int(reserve_bytes)
        self.frame_bytes = frame_bytes
        self.on_error = on_error or (lambda: None)
        self.not_written = 0
        self.written = 0
        self.files: list[Path] = recover_tmp_files(self.dir)
        nums = [int(m.group(1)) for p in self.dir.iterdir() if (m := _FINAL.match(p.name))]
        self.next_index = max(nums) + 1 if nums else 0
        self._f = None
        self._tmp = self._final = None
        self._n = 0
        self._pause_until = 0.0

    def _open(self) -> None:
        self._final = self.dir / f"singles-{self.next_index:06d}.cxi"
        self.next_index += 1
        self._tmp = tmp_sibling(self._final)
        f = h5py.File(self._tmp, "w")
        h, w = self.frame_shape
        f.create_dataset(DATA, shape=(0, h, w), maxshape=(None, h, w), dtype=self.dtype, chunks=(1, h, w),
                         compression=self.compression)
        if self.mask is not None:
            f.create_dataset("/entry_1/data_1/mask", data=self.mask)
        for key, dt in (("train_id", np.int64), ("pulse_id", np.int64), ("timestamp", np.float64)):
            f.create_dataset(f"/entry_1/event/{key}", shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
        pr = f.create_dataset("/entry_1/result_1/probabilities", shape=(0, len(self.classes)),
                              maxshape=(None, len(self.classes)), dtype=np.float32,
                              chunks=(4096, len(self.classes)))
        pr.attrs["class_names"] = json.dumps(self.classes)
        for k, v in self.attrs.items():
            f.attrs[k] = v
        f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["n_frames"] = 0
        self._f, self._n = f, 0

    def write(self, frames, train_id, pulse_id, timestamp, probabilities) -> int:
        """Append frames (split over files as needed); returns how many were written."""
        n = len(frames)
        if n == 0:
            return 0
        if time.monotonic() < self._pause_until:
            self.not_written += n
            return 0
        done = 0
        try:
            while done < n:
                if self._f is None:
                    self._open()
                k = min(n - done, self.frames_per_file - self._n)
                free = shutil.disk_usage(self.dir).free
                if free < self.reserve_bytes + 2 * k * self.frame_bytes + (1 << 16):
                    raise OSError(28, f"No space left on device: {free} bytes free, the reserve is "
                                      f"{self.reserve_bytes} (singles.reserve_bytes)")
                sl = slice(done, done + k)
                f, a, b = self._f, self._n, self._n + k
                for path, v in ((DATA, frames[sl]), ("/entry_1/event/train_id", train_id[sl]),
                                ("/entry_1/event/pulse_id", pulse_id[sl]),
                                ("/entry_1/event/timestamp", timestamp[sl]),
                                ("/entry_1/result_1/probabilities", np.asarray(probabilities[sl], np.float32))):
                    f[path].resize(b, axis=0)
                    f[path][a:b] = v
                f.attrs["n_frames"] = b
                f.flush()
                self._n = b
                done += k
                if self._n >= self.frames_per_file:
                    self._finish()
        except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError for some failed writes
            self.not_written += n - done
            self.on_error()
            log.error("singles: cannot write %s (%s: %s); the file is closed at its last complete frame, "
                      "still classifying; next try in %.0f s", self._final, type(exc).__name__, exc, self.retry_s)
            self._abandon(clean=isinstance(exc, OSError) and "reserve" in str(exc))
            self._pause_until = time.monotonic() + self.retry_s
        self.written += done
        return done

    def _finish(self) -> None:
        self._f.close()
        self._f = None
        os.replace(self._tmp, self._final)
        self.files.append(self._final)

    def _abandon(self, clean: bool = False) -> None:
        """After a failed write: keep the committed frames if the file can be finalised, else remove it."""
        if clean and self._f is not None:  # stopped by the reserve: nothing failed, close normally
            try:
                if self._n:
                    self._finish()
                else:
                    self._f.close()
                    self._f = None
                    self._tmp.unlink(missing_ok=True)
                return
            except (OSError, RuntimeError):
                pass
        try:
            if self._f is not None:
                self._f.close()
        except Exception:  # noqa: BLE001 - HDF5 may refuse to close a file it could not write
            pass
        self._f = None
        if self._tmp is not None and self._tmp.exists():
            try:
                recovered = recover_tmp_files(self.dir)
                self.files.extend(recovered)
            except OSError:
                self._tmp.unlink(missing_ok=True)
            aside = self._tmp.with_name(self._tmp.name[:-len(".tmp")] + ".damaged.tmp")
            aside.unlink(missing_ok=True)  # our own half-written file: nothing to keep

    def close(self) -> None:
        """Finalise the open file (shutdown)."""
        if self._f is not None:
            try:
                if self._n == 0:
                    self._f.close()
                    self._tmp.unlink(missing_ok=True)
                    self._f = None
                else:
                    self._finish()
            except (OSError, RuntimeError) as exc:
                log.error("singles: cannot finalise %s (%s)", self._final, exc)
                self._abandon()
