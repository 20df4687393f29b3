"""The results of ``speckle-embed classify``: ``<output_dir>/<output_name>.h5`` and ``.csv``, safe on a
full disk.

Each file is written to a ``<name>.<pid>-<hex>.tmp`` sibling and renamed when both are complete;
the HDF5 results are built in memory (about 93 bytes per frame for four classes:
``benchmarks/bench_classify_results_memory.py``) and written to disk at the end, so a write error
(full disk, I/O error, no permission) never leaves an HDF5 file open: it gives a one-line error,
no temporary file, and the previous results untouched (``docs/reliability.md``). HDF5 layout::

    /files                        input paths (str), index = file_index
    /predictions/file_index       int32 (n,)
    /predictions/frame_index      int64 (n,)   frame within its file
    /predictions/label            str or int64 (n,)   predicted class ("unknown"/-1 if rejected)
    /predictions/code             int64 (n,)   index into class_names, -1 if rejected
    /predictions/distances        float32 (n, n_classes)   the rule's distances
    /predictions/probabilities    float32 (n, n_classes)
    /predictions/empty            bool (n,)    no photons (or no contrast) in the model's field of
                                               view: the prediction is meaningless
    attributes: class_names (JSON), rule, temperature, threshold, classifier, checkpoint_hash,
                data_paths (JSON, per file), n_frames, n_empty, created_utc

The CSV has one row per frame:
``file, frame, prediction, distance_<class>..., proba_<class>..., empty`` (``empty`` 0 or 1).

The CSV has one row per frame:
``file, frame, prediction, distance_<class>..., proba_<class>..., empty`` (``empty`` 0 or 1).
"""
from __future__ import annotations

import csv
import errno
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from speckle_embed.atomic import tmp_sibling

__all__ = ["PredictionWriter", "write_error"]


def write_error(path: Path, exc: BaseException) -> OSError:
    """The one-line error for a failed write of ``path`` (full disk, I/O error, permission)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        reason, code = os.strerror(exc.errno), exc.errno
    else:
        reason, code = " ".join(str(exc).split())[:200], errno.EIO
    return OSError(code, f"cannot write {path}: {reason}; no result was written (earlier results are "
                         f"untouched): free space or fix the permissions of {path.parent}, or give "
                         "output_dir=<another folder>, and rerun")


class PredictionWriter:
    """Streams rows into a .csv temporary and an in-memory HDF5 file; :meth:`commit` writes the
    HDF5 temporary and renames both; :meth:`abort` removes every temporary.

    HDF5 never touches the disk before :meth:`commit` (``driver="core"``, no backing store): a
    file whose write failed cannot be closed by the HDF5 library, which then crashes the
    interpreter at exit (exit 139). The bytes are written by Python instead, whose errors are
    plain ``OSError``. Every error of a write is re-raised by :func:`write_error`.
    """

    def __init__(self, out_dir: Path, name: str, clf, files: list[Path], write_csv: bool):
        self.h5_path = out_dir / f"{name}.h5"
        self.csv_path = out_dir / f"{name}.csv" if write_csv else None
        self.h5_tmp = tmp_sibling(self.h5_path)
        self.csv_tmp = tmp_sibling(self.csv_path) if write_csv else None
        self.classes = [str(c) for c in clf.classes_.tolist()]
        c = len(self.classes)
        self.str_labels = clf._label_kind_ == "str"
        self.n = 0
        self.n_empty = 0
        self.csv_file = None
        # in memory; the name is only a label (no file is created)
        self.h5 = h5py.File(str(self.h5_tmp), "w", driver="core", backing_store=False,
                            block_size=1 << 22)
        self.h5.create_dataset("files", data=np.array([str(p) for p in files], dtype=object),
                               dtype=h5py.string_dtype())
        g = self.h5.create_group("predictions")
        chunk = 4096

        def ds(key, dtype, width=None):
            shape = (0,) if width is None else (0, width)
            return g.create_dataset(key, shape=shape, maxshape=(None,) + shape[1:], dtype=dtype,
                                    chunks=(chunk,) + shape[1:])

        self.ds = {
            "file_index": ds("file_index", np.int32),
            "frame_index": ds("frame_index", np.int64),
            "label": ds("label", h5py.string_dtype() if self.str_labels else np.int64),
            "code": ds("code", np.int64),
            "distances": ds("distances", np.float32, c),
            "probabilities": ds("probabilities", np.float32, c),
            "empty": ds("empty", np.bool_),
        }
        if write_csv:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                self.csv_file = open(self.csv_tmp, "w", newline="")
                self.csv = csv.writer(self.csv_file)
                self.csv.writerow(["file", "frame", "prediction"] + [f"distance_{n}" for n in self.classes]
                                  + [f"proba_{n}" for n in self.classes] + ["empty"])
            except OSError as exc:
                self.abort()
                raise write_error(self.csv_path, exc) from exc

    def append(self, file_index: int, path: Path, frame0: int, res) -> None:
        m = res.codes.shape[0]
        frames = np.arange(frame0, frame0 + m, dtype=np.int64)
        labels = (np.array([str(v) for v in res.labels], dtype=object) if self.str_labels
                  else res.labels.astype(np.int64))
        empty = np.zeros(m, bool) if res.empty is None else np.asarray(res.empty, bool)
        cols = {"file_index": np.full(m, file_index, np.int32), "frame_index": frames, "label": labels,
                "code": res.codes, "distances": res.distances.astype(np.float32),
                "probabilities": res.proba.astype(np.float32), "empty": empty}
        for key, d in self.ds.items():
            d.resize(self.n + m, axis=0)
            d[self.n:self.n + m] = cols[key]
        self.n += m
        self.n_empty += int(empty.sum())
        if self.csv_file is not None:
            name = str(path)
            try:
                for i in range(m):
                    self.csv.writerow([name, int(frames[i]), res.labels[i]]
                                      + [f"{v:.6g}" for v in res.distances[i]]
                                      + [f"{v:.6g}" for v in res.proba[i]] + [int(empty[i])])
            except OSError as exc:
                raise write_error(self.csv_path, exc) from exc

    def commit(self, attrs: Mapping[str, Any]) -> None:
        """Finish both temporaries (fsync), then rename them: the CSV, then the HDF5 file."""
        if self.csv_file is not None:
            try:
                self.csv_file.flush()
                os.fsync(self.csv_file.fileno())
                self.csv_file.close()
            except OSError as exc:
                raise write_error(self.csv_path, exc) from exc
        for key, value in attrs.items():
            self.h5.attrs[key] = value
        self.h5.flush()
        image = self.h5.id.get_file_image()
        self.h5.close()
        try:
            self.h5_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.h5_tmp, "wb") as fh:
                fh.write(image)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(self.h5_path, exc) from exc
        try:
            if self.csv_tmp is not None:
                os.replace(self.csv_tmp, self.csv_path)
            os.replace(self.h5_tmp, self.h5_path)
        except OSError as exc:
            raise write_error(self.h5_path, exc) from exc

    def abort(self) -> None:
        """Close everything and remove the temporaries; never raises."""
        try:
            self.h5.close()
        except Exception:  # noqa: BLE001 - an in-memory file; nothing to report
            pass
        if self.csv_file is not None:
            try:
                self.csv_file.close()  # may fail to flush its buffer on a full disk: the fd is closed anyway
            except OSError:
                pass
        for p in (self.h5_tmp, self.csv_tmp):
            if p is not None:
                try:
                    Path(p).unlink(missing_ok=True)
                except OSError:
                    pass
