"""The decision log: every classified frame appended to HDF5 parts and a CSV, in atomic chunks.

Layout of ``<directory>``::

    part-000000.h5, part-000001.h5, ...   one per flush, each written as *.tmp and renamed
    decisions.csv                         one line per frame, appended a whole chunk at a time

Each HDF5 part holds ``/decisions/{train_id, pulse_id, timestamp, code, label, distances,
probabilities, margin, latency_ms}`` (first axis = frame) and the attributes ``class_names``
(JSON), ``schema``. A part that exists under its final name is complete; a process killed at
any moment leaves at most a ``.tmp`` (skipped by readers, removed at the next start) and at
most a partial last CSV line, which the next start cuts off before appending. A chunk that
cannot be written (disk full) is removed again (the CSV is truncated back to its previous
length), reported once per episode, and retried at the next flush; the classification never
stops for it. :func:`read_decision_log` reads everything back.
"""
from __future__ import annotations

import glob
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

__all__ = ["LOG_FIELDS", "DecisionLog", "csv_rows", "read_decision_log"]

log = logging.getLogger("speckle_embed.stream")

#: per-frame columns of the log (in the HDF5 parts and the CSV)
LOG_FIELDS = ("train_id", "pulse_id", "timestamp", "code", "label", "distances", "probabilities", "margin",
              "latency_ms")
_PART = re.compile(r"^part-(\d{6})\.h5$")
CSV_NAME = "decisions.csv"


class DecisionLog:
    """Buffered appender.

    Parameters
    ----------
    directory : path
    classes : sequence of str
    flush_records : int
        Flush when this many records wait.
    flush_seconds : float
        ... or when the oldest waiting record is this old.
    csv : bool
        Also append ``decisions.csv``.
    max_pending : int
        Records kept while writes fail; older ones are dropped (counted in :attr:`lost`).
    reserve_bytes : int
        Free disk space kept: a chunk that would eat into it is not written (HDF5 then never
        meets a full disk in the middle of a file).
    on_error : callable, optional
        ``on_error()`` per failed flush (the counters).
    """

    def __init__(self, directory, classes, *, flush_records: int = 4096, flush_seconds: float = 2.0,
                 csv: bool = True, max_pending: int = 1_000_000, reserve_bytes: int = 16 << 20, on_error=None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.classes = [str(c) for c in classes]
        self.flush_records, self.flush_seconds = int(flush_records), float(flush_seconds)
        self.max_pending = int(max_pending)
        self.reserve_bytes = int(reserve_bytes)
        self.on_error = on_error or (lambda: None)
        self._buf: list[dict] = []
        self._n_buf = 0
        self._since = None
        self.lost = 0
        self.failing = False
        self.records_written = 0
        for tmp in self.dir.glob("part-*.tmp"):  # a previous run killed mid-write
            tmp.unlink(missing_ok=True)
        parts = [int(m.group(1)) for p in self.dir.iterdir() if (m := _PART.match(p.name))]
        self.next_part = max(parts) + 1 if parts else 0
        self.csv_path = self.dir / CSV_NAME if csv else None
        if self.csv_path is not None:
            self._prepare_csv()

    def _csv_header(self) -> str:
        return ",".join(["train_id", "pulse_id", "timestamp", "label", "code"]
                        + [f"distance_{c}" for c in self.classes] + [f"proba_{c}" for c in self.classes]
                        + ["margin", "latency_ms"]) + "\n"

    def _prepare_csv(self) -> None:
        p = self.csv_path
        if not p.exists() or p.stat().st_size == 0:
            with open(p, "w") as f:
                f.write(self._csv_header())
            return
        with open(p, "rb+") as f:  # cut a partial last line left by a killed process
            data = f.read()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):
                f.truncate(cut)
                log.warning("decision log %s: removed a partial last line (%d bytes) left by an interrupted "
                            "run", p, len(data) - cut)
            first = data.split(b"\n", 1)[0].decode() + "\n"
        if first != self._csv_header():
            raise ValueError(f"{p} has other columns ({first.strip()[:80]}...) than this classifier; "
                             "use another log.directory")

    def append(self, **cols) -> None:
        """Queue one batch: every key of :data:`LOG_FIELDS`, first axis = frame."""
        n = len(cols["code"])
        if n == 0:
            return
        self._buf.append(cols)
        self._n_buf += n
        self._since = self._since or time.monotonic()
        while self._n_buf > self.max_pending and len(self._buf) > 1:
            old = self._buf.pop(0)
            self._n_buf -= len(old["code"])
            self.lost += len(old["code"])
        if self._n_buf >= self.flush_records or time.monotonic() - self._since >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        """Write the waiting records as one part (+ CSV chunk); ``False`` if the write failed."""
        if not self._buf:
            return True
        cols = {k: np.concatenate([np.asarray(b[k]) for b in self._buf]) for k in LOG_FIELDS}
        final = self.dir / f"part-{self.next_part:06d}.h5"
        tmp = tmp_sibling(final)
        csv_size = self.csv_path.stat().st_size if self.csv_path is not None else 0
        try:
            free = shutil.disk_usage(self.dir).free
            need = sum(v.nbytes if hasattr(v, "nbytes") else 64 * len(v) for v in cols.values()) * 3
            if free < self.reserve_bytes + need:
                raise OSError(28, f"No space left on device: {free} bytes free, the reserve is "
                                  f"{self.reserve_bytes} (log.reserve_bytes)")
            with h5py.File(tmp, "w") as f:
                g = f.create_group("decisions")
                for k in LOG_FIELDS:
                    v = cols[k]
                    if k == "label":
                        g.create_dataset(k, data=v.astype(object), dtype=h5py.string_dtype())
                    else:
                        g.create_dataset(k, data=v)
                f.attrs["class_names"] = json.dumps(self.classes)
                f.attrs["schema"] = "speckle_embed.decision-log/1"
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if self.csv_path is not None:
                self._append_csv(cols)
            os.replace(tmp, final)
        except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError for some failed writes
            tmp.unlink(missing_ok=True)
            if self.csv_path is not None:
                try:
                    os.truncate(self.csv_path, csv_size)
                except OSError:
                    pass
            self.on_error()
            if not self.failing:
                log.error("decision log: cannot write %s (%s: %s); still classifying, keeping up to %d "
                          "records in memory and retrying at each flush", final, type(exc).__name__, exc,
                          self.max_pending)
            self.failing = True
            self._since = time.monotonic()
            return False
        if self.failing:
            log.warning("decision log: writing again (%s)", final.name)
        self.failing = False
        self.next_part += 1
        self.records_written += len(cols["code"])
        self._buf, self._n_buf, self._since = [], 0, None
        return True

    def _append_csv(self, cols: dict) -> None:
        data = csv_rows(cols, len(self.classes))
        fd = os.open(self.csv_path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                k = os.write(fd, view)
                view = view[k:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> bool:
        """Flush what waits; ``False`` if it could not be written."""
        return self.flush()


def csv_rows(cols: dict, n_classes: int) -> bytes:
    """The CSV lines (``\\n``-terminated) of a chunk of :data:`LOG_FIELDS` columns.

    Columns are converted to Python values once (``tolist``) and each row formatted by one
    ``%`` over a fixed format string, about 4x faster than per-value f-strings (the decision log
    writes thousands of rows per flush on the classifier thread). Formats: ids and codes as
    integers, ``timestamp`` ``%.6f``, distances, probabilities and margin ``%.6g``, latency ``%.3f``.
    """
    n = len(cols["code"])
    if n == 0:
        return b""
    fmt = "%d,%d,%.6f,%s,%d," + ",".join(["%.6g"] * (2 * n_classes)) + ",%.6g,%.3f"
    ints = [np.asarray(cols[k]).astype(np.int64).tolist() for k in ("train_id", "pulse_id")]
    dist = np.asarray(cols["distances"], dtype=np.float64).reshape(n, n_classes)
    proba = np.asarray(cols["probabilities"], dtype=np.float64).reshape(n, n_classes)
    columns = (ints + [np.asarray(cols["timestamp"], dtype=np.float64).tolist(),
                       [str(v) for v in np.asarray(cols["label"]).tolist()],
                       np.asarray(cols["code"]).astype(np.int64).tolist()]
               + dist.T.tolist() + proba.T.tolist()
               + [np.asarray(cols[k], dtype=np.float64).tolist() for k in ("margin", "latency_ms")])
    return ("\n".join([fmt % row for row in zip(*columns)]) + "\n").encode()


def read_decision_log(directory) -> dict:
    """All complete parts of a decision log, concatenated in order.

    Returns
    -------
    dict
        The :data:`LOG_FIELDS` arrays (``label`` as str) and ``class_names``.
    """
    d = Path(directory)
    parts = sorted(p for p in glob.glob(str(d / "part-*.h5")) if _PART.match(Path(p).name))
    if not parts:
        raise FileNotFoundError(f"no decision log part (part-NNNNNN.h5) in {d}")
    cols: dict[str, list] = {k: [] for k in LOG_FIELDS}
    names = None
    for p in parts:
        with h5py.File(p, "r") as f:
            names = json.loads(f.attrs["class_names"])
            for k in LOG_FIELDS:
                ds = f["decisions"][k]
                cols[k].append(np.asarray(ds.asstr()[()], dtype=str) if k == "label" else ds[()])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["class_names"] = names
    return out
