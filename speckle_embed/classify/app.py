"""The run of ``speckle-embed classify`` (:func:`run_classify`): a plain function of a config mapping
that reads the inputs chunk by chunk (:mod:`speckle_embed.classify.discovery`), classifies them with a
saved classifier and writes the results (:mod:`speckle_embed.classify.writer`)."""
from __future__ import annotations

import datetime as _dt
import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from speckle_embed.atomic import remove_stale_temporaries
from speckle_embed.classify.discovery import (
    damaged_input_error,
    file_mask,
    find_frames_dataset,
    open_input,
    read_external_mask,
    resolve_inputs,
)
from speckle_embed.classify.writer import PredictionWriter
from speckle_embed.frame_checks import EmptyFrameWarning, min_frame_side_px

__all__ = ["run_classify"]


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
    extra_mask = read_external_mask(str(get("mask_file"))) if get("mask_file") else None

    # the smallest frame the model takes (unknown before embedding with scale="auto")
    fov = None if isinstance(clf.scale, str) else min_frame_side_px(emb.preprocessing, clf.scale)

    # pass 1: frames datasets and counts (cheap, metadata only), every input checked before writing
    plan = []
    for p in files:
        with open_input(p) as f:
            try:
                ds = find_frames_dataset(f, get("data_path"), min_side=fov)
            except (OSError, RuntimeError, KeyError) as exc:
                raise damaged_input_error(p, "the dataset listing", exc) from exc
            plan.append((p, ds.name, int(ds.shape[0])))
    total = sum(n for _, _, n in plan)

    out_dir, out_name = Path(get("output_dir", "classify_out")), str(get("output_name", "predictions"))
    for final in (out_dir / f"{out_name}.h5", out_dir / f"{out_name}.csv"):
        remove_stale_temporaries(final)  # left by a killed run (their pid is gone)
    writer = PredictionWriter(out_dir, out_name, clf, files, bool(get("write_csv", True)))
    counts: Counter = Counter()
    bar = None
    if get("progress", True):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="pattern", unit_scale=True, desc="classify", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for fi, (p, dpath, n) in enumerate(plan):
            with open_input(p) as f:
                ds = f[dpath]
                try:
                    mask = file_mask(f, get("mask_path")) if get("use_file_mask", True) else None
                except (OSError, RuntimeError) as exc:
                    raise damaged_input_error(p, "the mask", exc) from exc
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
                        raise damaged_input_error(p, f"frames {start}:{stop} of {dpath}", exc) from exc
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
