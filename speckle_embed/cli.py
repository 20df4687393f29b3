"""``speckle-embed classify``: classify every frame of HDF5/CXI files with a saved classifier.

The entry point (:func:`classify_main`) only composes ``conf/classify/classify.yaml`` with the command
line's Hydra overrides and calls :func:`run_classify`, a plain function of a config mapping that
the tests and notebooks can call too::

    speckle-embed classify classifier=clf/ inputs=[run42/*.cxi] output_dir=out/run42
    python -m speckle_embed classify classifier=clf/ inputs=[a.h5,b.h5] chunk_size=512 device=cuda

Files are read ``chunk_size`` frames at a time, so they may exceed the memory. Results go to
``<output_dir>/<output_name>.h5`` and ``.csv``, each written to a ``<name>.<pid>-<hex>.tmp``
sibling and renamed when both are complete; the HDF5 results are built in memory (about 93
bytes per frame for four classes: ``benchmarks/bench_classify_results_memory.py``) and written
to disk at the end,
so a write error (full disk, I/O error, no permission) never leaves an HDF5 file open: it gives
a one-line error, exit status 1, no temporary file, and the previous results untouched
(``docs/reliability.md``). HDF5 layout::

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

Frames datasets (``data_path=null``): the CXI paths (``/entry_1/data_1/data``, then
``/entry_1/instrument_1/detector_1/data``); else the one 3-D numeric dataset whose frames are
at least half the model's field of view. Several such datasets, or only smaller ones, are refused with a message
that lists them and names ``data_path=``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import errno
import glob
import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from speckle_embed.atomic import remove_stale_temporaries, tmp_sibling
from speckle_embed.data.h5dataset import DEFAULT_DATA_PATH, MASK_PATHS
from speckle_embed.frame_checks import EmptyFrameWarning, min_frame_side_px

__all__ = ["CONFIG_DIR", "CXI_DATA_PATHS", "classify_main", "run_classify", "resolve_inputs",
           "find_frames_dataset"]

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
"""Absolute path of the repository's ``conf/`` folder (editable install): one config tree per app,
``conf/<app>/<app>.yaml`` (classify, simulate, train, evaluate, demo, stream)."""
CLASSIFY_CONFIG_DIR = str(Path(CONFIG_DIR) / "classify")
"""The classify command's config tree, ``conf/classify/``."""

#: Where CXI files keep their frames, in order of preference (cxidb's CXI format).
CXI_DATA_PATHS = (DEFAULT_DATA_PATH, "/entry_1/instrument_1/detector_1/data")
_SUFFIXES = (".h5", ".cxi", ".hdf5", ".nxs")


# ----------------------------------------------------------------------------- inputs
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


def _damaged(path: Path, what: str, exc: BaseException) -> OSError:
    """The one-line error for an input file h5py cannot read (damaged or truncated)."""
    detail = " ".join(str(exc).split())
    return OSError(f"cannot read {what} of {path}: the file is damaged or truncated ({detail[:200]}); "
                   "copy it again from its source (or regenerate it), or leave it out of inputs")


def _read_external_mask(spec: str) -> np.ndarray:
    if ".h5:" in spec or ".cxi:" in spec or ".hdf5:" in spec:
        file, _, inner = spec.rpartition(":")
        with h5py.File(file, "r") as f:
            if inner not in f:
                raise ValueError(f"mask file {file} has no dataset {inner!r}")
            return np.asarray(f[inner][()])
    if spec.endswith(".npy"):
        return np.load(spec, allow_pickle=False)
    raise ValueError(f"mask_file must be a .npy file or 'file.h5:/dataset'; got {spec!r}")


def _file_mask(f: h5py.File, mask_path: str | None) -> np.ndarray | None:
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


def _open(path: Path) -> h5py.File:
    try:
        try:
            return h5py.File(path, "r", locking=False)
        except TypeError:
            return h5py.File(path, "r")
    except OSError as exc:
        detail = " ".join(str(exc).split())
        raise OSError(f"cannot open {path} as HDF5 (truncated, damaged or not HDF5: {detail}); copy it "
                      "again from its source, or leave it out of inputs") from exc


# ----------------------------------------------------------------------------- outputs
def _write_error(path: Path, exc: BaseException) -> OSError:
    """The one-line error for a failed write of ``path`` (full disk, I/O error, permission)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        reason, code = os.strerror(exc.errno), exc.errno
    else:
        reason, code = " ".join(str(exc).split())[:200], errno.EIO
    return OSError(code, f"cannot write {path}: {reason}; no result was written (earlier results are "
                         f"untouched): free space or fix the permissions of {path.parent}, or give "
                         "output_dir=<another folder>, and rerun")


class _Writer:
    """Streams rows into a .csv temporary and an in-memory HDF5 file; :meth:`commit` writes the
    HDF5 temporary and renames both; :meth:`abort` removes every temporary.

    HDF5 never touches the disk before :meth:`commit` (``driver="core"``, no backing store): a
    file whose write failed cannot be closed by the HDF5 library, which then crashes the
    interpreter at exit (exit 139). The bytes are written by Python instead, whose errors are
    plain ``OSError``. Every error of a write is re-raised by :func:`_write_error`.
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
                raise _write_error(self.csv_path, exc) from exc

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
                raise _write_error(self.csv_path, exc) from exc

    def commit(self, attrs: Mapping[str, Any]) -> None:
        """Finish both temporaries (fsync), then rename them: the CSV, then the HDF5 file."""
        if self.csv_file is not None:
            try:
                self.csv_file.flush()
                os.fsync(self.csv_file.fileno())
                self.csv_file.close()
            except OSError as exc:
                raise _write_error(self.csv_path, exc) from exc
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
            raise _write_error(self.h5_path, exc) from exc
        try:
            if self.csv_tmp is not None:
                os.replace(self.csv_tmp, self.csv_path)
            os.replace(self.h5_tmp, self.h5_path)
        except OSError as exc:
            raise _write_error(self.h5_path, exc) from exc

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


# ----------------------------------------------------------------------------- the run
def run_classify(cfg: Mapping[str, Any]) -> dict:
    """Classify the frames of the input files (the work of ``speckle-embed classify``).

    Parameters
    ----------
    cfg : mapping
        Keys of ``conf/classify/classify.yaml`` (plain dict or DictConfig); missing optional keys take
        their defaults.

    Returns
    -------
    dict
        ``n_frames``, ``n_empty`` (frames flagged empty), ``counts`` (label -> frames), ``h5``,
        ``csv`` (paths or None), ``seconds``, ``patterns_per_s``, ``files``.

    Raises
    ------
    ValueError
        A bad setting (the message names the key and its valid values), frames that cannot be
        found unambiguously or are smaller than the model's field of view.
    OSError
        An input that cannot be read (names the file) or an output that cannot be written (full
        disk, permission: names the file); no temporary file is left.
    """
    from speckle_embed.classifier import FewShotClassifier

    get = (lambda k, d=None: cfg.get(k, d))
    if not get("classifier"):
        raise ValueError("classifier=<directory of a saved FewShotClassifier> is required")
    if not get("inputs"):
        raise ValueError("inputs=[file, directory or glob, ...] is required")
    batch_size = get("batch_size", 256)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (frames per forward pass); got {batch_size!r}: "
                         "give batch_size=256 or another positive integer")
    chunk = get("chunk_size", 1024)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk_size must be an integer >= 1 (frames read at a time); got {chunk!r}: "
                         "give chunk_size=1024 or another positive integer")
    files = resolve_inputs(list(get("inputs")) if not isinstance(get("inputs"), str) else get("inputs"),
                           recursive=bool(get("recursive", False)))
    if get("threads"):
        import torch

        torch.set_num_threads(int(get("threads")))
    trust = get("trust_checkpoint", False)
    if not isinstance(trust, bool):
        raise ValueError(f"trust_checkpoint must be true or false; got {trust!r}")
    clf = FewShotClassifier.load(get("classifier"), device=get("device", "auto"), trust_checkpoint=trust)
    emb = clf.embedder
    emb.batch_size = batch_size
    emb.precision = get("precision", "float32") or "float32"
    if get("scale") is not None:
        s = get("scale")
        clf.scale = s if isinstance(s, str) else float(s)
    if get("center") is not None:
        c = get("center")
        clf.center = c if isinstance(c, str) else tuple(float(v) for v in c)
    extra_mask = _read_external_mask(str(get("mask_file"))) if get("mask_file") else None

    # the smallest frame the model takes (unknown before embedding with scale="auto")
    fov = None if isinstance(clf.scale, str) else min_frame_side_px(emb.preprocessing, clf.scale)

    # pass 1: frames datasets and counts (cheap, metadata only), every input checked before writing
    plan = []
    for p in files:
        with _open(p) as f:
            try:
                ds = find_frames_dataset(f, get("data_path"), min_side=fov)
            except (OSError, RuntimeError, KeyError) as exc:
                raise _damaged(p, "the dataset listing", exc) from exc
            plan.append((p, ds.name, int(ds.shape[0])))
    total = sum(n for _, _, n in plan)

    out_dir, out_name = Path(get("output_dir", "classify_out")), str(get("output_name", "predictions"))
    for final in (out_dir / f"{out_name}.h5", out_dir / f"{out_name}.csv"):
        remove_stale_temporaries(final)  # left by a killed run (their pid is gone)
    writer = _Writer(out_dir, out_name, clf, files, bool(get("write_csv", True)))
    counts: Counter = Counter()
    bar = None
    if get("progress", True):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="pattern", unit_scale=True, desc="classify", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for fi, (p, dpath, n) in enumerate(plan):
            with _open(p) as f:
                ds = f[dpath]
                try:
                    mask = _file_mask(f, get("mask_path")) if get("use_file_mask", True) else None
                except (OSError, RuntimeError) as exc:
                    raise _damaged(p, "the mask", exc) from exc
                if extra_mask is not None:
                    if extra_mask.shape != tuple(ds.shape[1:]):
                        raise ValueError(f"mask_file has shape {extra_mask.shape} but {p} has frames of "
                                         f"{tuple(ds.shape[1:])}")
                    mask = (extra_mask != 0) if mask is None else ((mask != 0) | (extra_mask != 0))
                for start in range(0, n, chunk):
                    stop = min(start + chunk, n)
                    try:
                        frames = ds[start:stop]
                    except (OSError, RuntimeError) as exc:
                        raise _damaged(p, f"frames {start}:{stop} of {dpath}", exc) from exc
                    try:
                        with warnings.catch_warnings():  # empty frames go to the `empty` column
                            warnings.simplefilter("ignore", EmptyFrameWarning)
                            res = clf.classify(frames, mask)
                    except ValueError as exc:
                        raise ValueError(f"{p} frames {start}:{stop}: {exc}") from exc
                    writer.append(fi, p, start, res)
                    counts.update(res.labels.tolist())
                    if bar is not None:
                        bar.update(stop - start)
        seconds = time.perf_counter() - t0
        writer.commit({
            "class_names": json.dumps(writer.classes),
            "rule": str(clf.rule),
            "temperature": float(clf._temperature()),
            "threshold": np.nan if clf.threshold_ is None else float(clf.threshold_),
            "classifier": str(Path(get("classifier")).absolute()),
            "checkpoint_hash": str(clf.checkpoint_hash_),
            "data_paths": json.dumps([d for _, d, _ in plan]),
            "n_frames": int(total),
            "n_empty": int(writer.n_empty),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return {"n_frames": int(total), "n_empty": int(writer.n_empty), "counts": dict(counts), "h5": writer.h5_path,
            "csv": writer.csv_path, "seconds": seconds,
            "patterns_per_s": total / seconds if seconds > 0 else float("inf"),
            "files": [str(p) for p in files]}


# ----------------------------------------------------------------------------- entry point
_USAGE = """usage: speckle-embed classify classifier=DIR inputs=[PATH,...] [key=value ...]

Classify every frame of HDF5/CXI files with a FewShotClassifier saved by clf.save(DIR).
Keys (conf/classify/classify.yaml), as Hydra overrides:
"""


def classify_main(argv: list[str] | None = None) -> int:
    """Compose ``conf/classify/classify.yaml`` with Hydra overrides ``argv`` and run :func:`run_classify`.

    ``--help`` prints the keys, ``--cfg`` the composed configuration. Returns the exit status.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    argv = list(sys.argv[1:] if argv is None else argv)
    show_cfg = "--cfg" in argv or "-c" in argv
    if "-h" in argv or "--help" in argv:
        print(_USAGE + (Path(CLASSIFY_CONFIG_DIR) / "classify.yaml").read_text())
        return 0
    overrides = [a for a in argv if a not in ("--cfg", "-c")]
    bad = [a for a in overrides if a.startswith("-")]
    if bad:
        print(f"speckle-embed classify: unknown option {bad[0]} (use key=value overrides; --help)",
              file=sys.stderr)
        return 2
    try:
        with initialize_config_dir(config_dir=CLASSIFY_CONFIG_DIR, version_base="1.3", job_name="classify"):
            cfg = compose(config_name="classify", overrides=overrides)
    except HydraException as exc:
        print(f"speckle-embed classify: {exc}", file=sys.stderr)
        return 2
    if show_cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"speckle-embed classify: missing value: {exc.full_key} (give {exc.full_key}=...; see --help)",
              file=sys.stderr)
        return 2
    try:
        summary = run_classify(plain)
    except (FileNotFoundError, ValueError, OSError) as exc:
        if os.environ.get("SPECKLE_EMBED_DEBUG"):
            raise
        print("speckle-embed classify: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["counts"].items(), key=lambda kv: str(kv[0])))
    print(f"classified {summary['n_frames']} frames from {len(summary['files'])} file(s) in "
          f"{summary['seconds']:.1f} s ({summary['patterns_per_s']:.0f} patterns/s)\n"
          f"  {counts}\n  -> {summary['h5']}" + (f"\n  -> {summary['csv']}" if summary["csv"] else ""))
    if summary["n_empty"]:
        print(f"  {summary['n_empty']} frame(s) have no photons (or no contrast) in the model's field of "
              "view: flagged in the `empty` column, their predictions are meaningless")
    return 0
