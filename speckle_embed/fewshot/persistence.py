"""Saving and loading a :class:`~speckle_embed.fewshot.classifier.FewShotClassifier` as a folder.

Saved classifier layout (one directory, written atomically: a ``<dir>.<pid>-<hex>.tmp`` sibling
renamed into place)::

    classifier.json   format, rule parameters, class names, support counts, threshold, the
                      embedder's checkpoint hash and preprocessing, SHA-256 of the files below
    index.npz         SupportIndex.save (FAISS flat index, ids, integer labels 0..C-1)
    embedder.pt       the embedder's weights (a copy of its checkpoint file while the weights in
                      memory are still those of the file), so that load() works standalone
    adaptation.npz    only when fit(..., unlabelled=) adapted the classifier
    support_views.npy the embeddings of every symmetry view of every support, (n, n_views, d)
                      float32, rows in the index's order (train the "logistic" rule)

Only these files belong to the classifier: saving over a saved classifier replaces them
and keeps any other file of the folder (a user's ``notes.txt``). Loading reads ``embedder.pt``
with ``torch.load(weights_only=True)`` only; the SHA-256 list in ``classifier.json`` detects
damage, not tampering (``docs/reliability.md``, "Trust model").

:meth:`FewShotClassifier.save` and :meth:`FewShotClassifier.load` call :func:`save_classifier`
and :func:`load_classifier`; this module owns the format (:data:`CLASSIFIER_FORMAT`) and its checks.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from speckle_embed.adaptation import load_adaptation, save_adaptation
from speckle_embed.atomic import build_directory_atomically, read_format_json
from speckle_embed.checkpoint import UntrustedCheckpointError, file_hash, sha256_file, write_checkpoint
from speckle_embed.fewshot.index import SupportIndex
from speckle_embed.fewshot.labels import labels_array
from speckle_embed.inference.embedder import SpeckleEmbedder

if TYPE_CHECKING:
    from speckle_embed.fewshot.classifier import FewShotClassifier

__all__ = ["CLASSIFIER_FORMAT", "ClassifierFileError", "save_classifier", "load_classifier"]

#: ``format`` of ``classifier.json``.
CLASSIFIER_FORMAT = "speckle_embed-classifier-1"
_JSON, _INDEX, _EMBEDDER = "classifier.json", "index.npz", "embedder.pt"
_ADAPTATION = "adaptation.npz"  # only when fit(..., unlabelled=) adapted the classifier
_VIEWS = "support_views.npy"
_OWN_FILES = (_JSON, _INDEX, _EMBEDDER, _ADAPTATION, _VIEWS)  # everything else in a classifier folder is the user's


class ClassifierFileError(ValueError):
    """A saved classifier is incomplete, corrupt or inconsistent; the message names the file."""


def save_classifier(clf: "FewShotClassifier", directory: str | os.PathLike) -> Path:
    """Write the fitted ``clf`` to ``directory`` atomically; see :meth:`FewShotClassifier.save`."""

    clf._check_fitted()
    if not isinstance(clf.rule, str):
        raise ValueError("a classifier with a custom (callable) rule cannot be saved")
    directory = Path(os.fspath(directory)).expanduser().absolute()
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()) and not (directory / _JSON).exists():
            raise FileExistsError(f"refusing to overwrite {directory}: a non-empty directory that "
                                  "does not hold a saved FewShotClassifier")
    emb = clf.embedder
    if clf.checkpoint_hash_ is not None and clf.checkpoint_hash_ != emb.checkpoint_hash:
        raise ValueError(f"the embedder changed since fit (checkpoint {clf.checkpoint_hash_} -> "
                         f"{emb.checkpoint_hash}); refit before saving")
    same_weights = emb.weights_match_checkpoint()
    identity: dict[str, str] = {}

    def write(tmp: Path) -> None:
        clf.index_.save(tmp / _INDEX)
        src = emb.checkpoint_path
        if (same_weights and emb._file_is_plain and src is not None and Path(src).is_file()
                and file_hash(src) == emb.checkpoint_hash):
            shutil.copyfile(src, tmp / _EMBEDDER)
            identity["hash"] = emb.checkpoint_hash
        else:  # the weights in use, as plain data; unchanged weights keep their identity
            digest = write_checkpoint(emb.checkpoint_dict(), tmp / _EMBEDDER)
            identity["hash"] = emb.checkpoint_hash if (same_weights and emb.checkpoint_hash) else digest
        prep = emb.preprocessing.to_dict()
        meta = {
            "format": CLASSIFIER_FORMAT,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {"rule": clf.rule, "k": int(clf.k), "temperature": clf.temperature,
                       "reject_quantile": clf.reject_quantile, "unknown_label": clf.unknown_label,
                       "scale": clf.scale, "center": None if clf.center is None else
                       (clf.center if isinstance(clf.center, str) else [float(c) for c in clf.center]),
                       "support_views": clf.support_views, "query_views": clf.query_views},
            "label_kind": clf._label_kind_,
            "classes": clf.classes_.tolist(),
            "n_supports": clf.n_supports_.tolist(),
            "threshold": clf.threshold_,
            "embedding_size": clf.embedding_size_,
            "embedder": {"checkpoint_hash": identity["hash"], "file": _EMBEDDER,
                         "preprocessing": prep, "reference_speckle_px": emb.reference_speckle_px},
            "files": {_INDEX: sha256_file(tmp / _INDEX), _EMBEDDER: sha256_file(tmp / _EMBEDDER)},
        }
        views = getattr(clf, "support_view_embeddings_", None)
        if views is not None:
            np.save(tmp / _VIEWS, np.ascontiguousarray(views, dtype=np.float32), allow_pickle=False)
            meta["files"][_VIEWS] = sha256_file(tmp / _VIEWS)
        if getattr(clf, "adaptation_", None) is not None:
            meta["adaptation"] = save_adaptation(clf.adaptation_, tmp / _ADAPTATION)
            meta["files"][_ADAPTATION] = sha256_file(tmp / _ADAPTATION)
        with open(tmp / _JSON, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    out = build_directory_atomically(directory, write, own=_OWN_FILES)
    if identity["hash"] != emb.checkpoint_hash or not (same_weights and emb._file_is_plain):
        # the embedder is now identified by (and can be reloaded from) the file just written
        emb.checkpoint_hash = identity["hash"]
        emb.checkpoint_path = directory / _EMBEDDER
        emb._file_fingerprint = emb.weights_fingerprint()
        emb._file_is_plain = True
    clf.checkpoint_hash_ = identity["hash"]
    return out


def load_classifier(cls: type["FewShotClassifier"], directory: str | os.PathLike,
                    embedder: SpeckleEmbedder | None = None, *, device: str = "auto",
                    use_gpu: bool | str = "auto", trust_checkpoint: bool = False) -> "FewShotClassifier":
    """Read a classifier written by :func:`save_classifier` as an instance of ``cls``; see
    :meth:`FewShotClassifier.load`."""
    directory = Path(os.fspath(directory)).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"saved classifier directory {directory} does not exist")
    jpath = directory / _JSON
    meta = read_format_json(jpath, CLASSIFIER_FORMAT, ClassifierFileError, "FewShotClassifier")
    try:
        params = dict(meta["params"])
        kind = meta["label_kind"]
        names = list(meta["classes"])
        n_supports = [int(v) for v in meta["n_supports"]]
        files = dict(meta["files"])
        saved_hash = meta["embedder"]["checkpoint_hash"]
        threshold = meta["threshold"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ClassifierFileError(f"{jpath} lacks or garbles a field: {exc!r}") from exc
    _check_saved_fields(jpath, kind, names, threshold)

    def check(name: str) -> Path:
        p = directory / name
        if not p.is_file():
            raise ClassifierFileError(f"{p} is missing from the saved classifier")
        want = files.get(name)
        if want is not None and sha256_file(p) != want:
            raise ClassifierFileError(f"{p} is corrupt: its SHA-256 differs from the one recorded in "
                                      f"{jpath.name} (modified or truncated after saving)")
        return p

    ipath = check(_INDEX)
    try:
        index = SupportIndex.load(ipath, use_gpu=use_gpu)
    except Exception as exc:  # noqa: BLE001
        raise ClassifierFileError(f"{ipath} cannot be read as a SupportIndex: {exc}") from exc

    if embedder is None:
        epath = check(_EMBEDDER)
        try:
            embedder = SpeckleEmbedder.from_checkpoint(epath, device=device,
                                                       trust_checkpoint=trust_checkpoint)
        except UntrustedCheckpointError:
            raise
        except (ValueError, OSError) as exc:
            raise ClassifierFileError(f"{epath}: {exc}") from exc
        embedder.checkpoint_hash = saved_hash  # identity of the original checkpoint
    elif not isinstance(embedder, SpeckleEmbedder):
        raise TypeError(f"embedder must be a SpeckleEmbedder; got {type(embedder).__name__}")
    elif embedder.checkpoint_hash != saved_hash:
        raise ValueError(
            f"the classifier in {directory} was fitted with the embedder of checkpoint hash "
            f"{saved_hash!r}, but the given embedder has {embedder.checkpoint_hash!r}: its "
            "embeddings are not comparable with the stored supports. Load without embedder= to "
            "use the saved copy of the original, or refit with the new embedder.")

    names_init = set(cls._get_param_names()) - {"embedder"}  # the parameters of __init__ (scikit-learn)
    params.setdefault("support_views", "none")  # saved before the option existed: no views were kept
    params.setdefault("query_views", "none")    # saved before the option existed
    clf = cls(embedder, **{k: v for k, v in params.items() if k in names_init}, use_gpu=use_gpu)
    if isinstance(clf.center, list):
        clf.center = tuple(clf.center)
    _check_supports(ipath, jpath, index, names, n_supports)
    try:
        classes = labels_array(names, kind)
    except (TypeError, ValueError) as exc:
        raise ClassifierFileError(f"{jpath}: key 'classes' holds {names!r}, which are not all "
                                  f"{'integers' if kind == 'int' else 'strings'} as key 'label_kind' "
                                  f"= {kind!r} says ({exc}); restore the file or re-save the "
                                  "classifier") from exc
    if index.dim != embedder.embedding_size:
        raise ClassifierFileError(f"{ipath} holds {index.dim}-D supports but the embedder gives "
                                  f"{embedder.embedding_size}-D embeddings")
    clf.index_ = index
    clf.classes_ = classes
    clf._label_kind_ = kind
    clf.n_supports_ = np.asarray(n_supports, dtype=np.int64)
    clf.embedding_size_ = int(index.dim)
    clf.checkpoint_hash_ = saved_hash
    clf.threshold_ = None if threshold is None else float(threshold)
    clf._logistic_model = None
    clf.support_view_embeddings_ = None
    if _VIEWS in files:
        vpath = check(_VIEWS)
        try:
            views = np.load(vpath, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ClassifierFileError(f"{vpath} cannot be read as support view embeddings: {exc}") from exc
        if views.ndim != 3 or views.shape[0] != index.ntotal or views.shape[2] != index.dim:
            raise ClassifierFileError(f"{vpath} holds an array of shape {views.shape}; expected "
                                      f"({index.ntotal}, n_views, {index.dim}) for the supports of {ipath.name} "
                                      f"({_REFIX})")
        clf.support_view_embeddings_ = views.astype(np.float32, copy=False)
    clf.adaptation_ = None
    if meta.get("adaptation") is not None:
        apath = check(_ADAPTATION)
        try:
            clf.adaptation_ = load_adaptation(apath, meta["adaptation"], embedder)
            clf.adapt = list(clf.adaptation_.options)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ClassifierFileError(f"{apath} cannot be read as the classifier's adaptation: {exc}") from exc
    return clf


_REFIX = "restore the file from a backup or re-save the classifier with clf.save(); do not edit it by hand"


def _check_saved_fields(jpath: Path, kind: Any, names: list, threshold: Any) -> None:
    """Refuse impossible ``label_kind`` / ``classes`` / ``threshold`` values of ``classifier.json``."""
    if kind not in ("str", "int"):
        raise ClassifierFileError(f"{jpath}: key 'label_kind' is {kind!r}; expected 'str' or 'int' ({_REFIX})")
    if not names:
        raise ClassifierFileError(f"{jpath}: key 'classes' is empty; a saved classifier has at least one class "
                                  f"({_REFIX})")
    if len(set(map(repr, names))) != len(names):
        raise ClassifierFileError(f"{jpath}: key 'classes' has duplicates: {names!r} ({_REFIX})")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise ClassifierFileError(f"{jpath}: key 'threshold' is {threshold!r}; expected a finite number or "
                                  f"null (no rejection) ({_REFIX})")


def _check_supports(ipath: Path, jpath: Path, index: SupportIndex, names: list, n_supports: list[int]) -> None:
    """The index's supports per class code must match ``classes`` and ``n_supports`` of the JSON."""
    counts = np.bincount(index.labels_, minlength=len(names)).tolist() if index.ntotal else []
    if len(counts) > len(names):
        extra = {code: counts[code] for code in range(len(names), len(counts)) if counts[code]}
        raise ClassifierFileError(
            f"{jpath}: key 'classes' lists {len(names)} class(es) {names!r} but {ipath.name} holds supports of "
            f"{len(counts)} classes: no class name for label code(s) {sorted(extra)} "
            f"(supports: {extra}) - a class is missing from 'classes' ({_REFIX})")
    empty = [names[i] for i, c in enumerate(counts) if c == 0] if counts else list(names)
    if empty:
        raise ClassifierFileError(
            f"{jpath}: key 'classes' lists {empty!r}, which have no supports in {ipath.name} (extra "
            f"class(es); the index has supports for {[n for n in names if n not in empty]!r}) ({_REFIX})")
    if len(n_supports) != len(names) or counts != n_supports:
        diff = [f"{names[i]!r}: {counts[i]} in {ipath.name}, {n_supports[i] if i < len(n_supports) else 'none'} "
                f"in {jpath.name}" for i in range(len(names))
                if i >= len(n_supports) or counts[i] != n_supports[i]]
        raise ClassifierFileError(f"{jpath}: key 'n_supports' {n_supports} disagrees with {ipath.name}: "
                                  f"{'; '.join(diff) or 'one count per class expected'} ({_REFIX})")
