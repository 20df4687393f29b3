"""Leave-one-domain-out protocol: frozen K-shot single vs not-single on held-out realistic domains.

A **domain** is a labelled dataset made with settings a model did not train on (issue 14,
section 2): a detector preset, a sample family and artefact settings that training never saw.
Each has a **role**:

* ``validation``: the domain the checkpoint was chosen on (e.g. the AMO domain of
  ``experiment=pretrain_realistic``); its figure is shown, marked "chose the checkpoint -
  not a result", and never reported as a test result;
* ``test``: a held-out domain. A test domain whose detector preset was seen in training (empty
  ``held_out.preset``) is flagged as such in the report.

For every domain and K the same seeded episodes (:func:`~speckle_embed.evaluation.episodes.sample_episodes`,
2-way ``single`` vs ``not single``, ``k_shot`` supports per class, label-balanced queries, supports
and queries from one file of the domain) are scored by every embedding given (frozen, the
few-shot rule over its embeddings), optionally by classification-time adaptations of it
(``prototypes``, ``batchnorm``, ``batchnorm+prototypes``, ``finetune``: :data:`ADAPTATIONS`), by
the classical baselines (:mod:`speckle_embed.baselines`) and
by any extra method, so the rows of a table are paired. An **in-domain reference** set (the
same protocol on a non-realistic, training-like set) gives the **gap** = reference minus domain.

Scores per method: accuracy and F1 (``single`` positive) of each episode, their mean over
episodes and a 95 % percentile-bootstrap interval over episodes (:func:`episode_interval`),
plus the pooled figures of :func:`~speckle_embed.evaluation.episodes.evaluate_predictions`.

Examples
--------
>>> import numpy as np
>>> from speckle_embed.evaluation.labelled import LabelledSet
>>> rng = np.random.default_rng(0)
>>> hit = np.array([1, 2, 3] * 10)
>>> frames = np.where(hit[:, None, None] == 1, 5.0, 0.5) * np.ones((30, 16, 16), np.float32)
>>> d = Domain("toy", ("toy/",), "test", {"preset": ["toy detector"]})
>>> res = domain_protocol({d.name: [LabelledSet("toy", rng.poisson(frames).astype(np.float32), hit)]},
...                       [d], {}, k_shots=[1], n_query=4, n_tasks=10, progress=False)
>>> res["domains"][0]["by_k"]["1"]["methods"]["photon count (no learning)"]["accuracy"]
1.0
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speckle_embed.adaptation import (
    finetune_on_supports,
    prototype_distances,
    reestimate_batchnorm,
    refine_prototypes,
)
from speckle_embed.adaptation import ADAPTATIONS as CLASSIFIER_ADAPTATIONS
from speckle_embed.adaptation.inputs import resolve_geometry
from speckle_embed.data import DatasetError
from speckle_embed.evaluation.baselines import baseline_features, baseline_predictions
from speckle_embed.fewshot.episodes import (
    Episode,
    episode_distances,
    support_distances,
    evaluate_predictions,
    sample_episodes,
)
from speckle_embed.evaluation.labelled import (
    DEFAULT_LABELS_PATH,
    LabelledSet,
    load_labelled_sets,
)
from speckle_embed.fewshot.rules import get_rule, logistic
from speckle_embed.inference.views import embed_views, view_indices

__all__ = [
    "ADAPTATIONS",
    "FINETUNE_OPTIONS",
    "HELD_OUT_KEYS",
    "ROLES",
    "VALIDATION_MARK",
    "Domain",
    "DomainDataError",
    "add_domain_section",
    "binary_labels",
    "domain_episodes",
    "domain_problem",
    "domain_protocol",
    "episode_interval",
    "folder_problem",
    "generate_command",
    "load_domain",
    "parse_domains",
    "resolve_path",
    "score_methods",
]

#: Roles of a domain.
ROLES = ("validation", "test")
#: What a domain records as held out from training (free-text lists).
HELD_OUT_KEYS = ("preset", "family", "artefacts")
#: Classification-time adaptations that can be added as rows (``domains.adapt``): label-free
#: ``prototypes`` (refined over the file's other frames), ``batchnorm`` (statistics re-estimated on
#: the file's frames), both (``batchnorm+prototypes``), and ``finetune`` (a copy of the embedding
#: fine-tuned on each episode's supports, :func:`~speckle_embed.adaptation.finetune_on_supports`).
ADAPTATIONS = ("prototypes", "batchnorm", "batchnorm+prototypes", "finetune")
#: Options of the ``finetune`` row (``domains.finetune``) and their defaults: those of
#: ``FewShotClassifier(adapt="finetune")`` (:data:`speckle_embed.adaptation.ADAPTATIONS`); the seed
#: is the protocol's.
FINETUNE_OPTIONS = {k: v for k, v in CLASSIFIER_ADAPTATIONS["finetune"].items() if k != "seed"}
#: How a validation-role row is marked in every table.
VALIDATION_MARK = "validation: chose the checkpoint - not a result"
#: Episode label of the positive class (``single``) and of everything else.
SINGLE, NOT_SINGLE = 1, 0


class DomainDataError(DatasetError):
    """A domain's dataset folder is missing, unfinished or unreadable (one-line message with the fix)."""


@dataclass(frozen=True)
class Domain:
    """One held-out domain of the protocol.

    Attributes
    ----------
    name : str
        Short name (``amo``, ``agipd``...).
    dirs : tuple of str
        Labelled HDF5 folders or files of the domain (relative to the run's base folder).
    role : str
        ``"validation"`` (chose the checkpoint: never a result) or ``"test"``.
    held_out : dict
        ``{"preset": [...], "family": [...], "artefacts": [...]}``: free text, what training never
        saw. An empty ``preset`` list means the detector preset was seen in training.
    note : str
        Shown beside the domain in the report.
    simulate : tuple of str
        ``python -m simulate`` overrides that generate one of ``dirs`` (``out_dir=`` is added).
    """

    name: str
    dirs: tuple[str, ...]
    role: str = "test"
    held_out: dict = field(default_factory=dict)
    note: str = ""
    simulate: tuple[str, ...] = ()

    @property
    def preset_seen(self) -> bool:
        """The detector preset was seen in training (nothing listed under ``held_out.preset``)."""
        return not self.held_out.get("preset")

    @property
    def role_label(self) -> str:
        """Role as shown in tables."""
        if self.role == "validation":
            return VALIDATION_MARK
        if self.role == "reference":
            return "in-domain reference"
        return "test (detector preset seen in training)" if self.preset_seen else "test"


def parse_domains(entries: Sequence[Mapping], key: str = "domains.sets") -> list[Domain]:
    """Domains from config entries (``name``, ``dirs``, ``role``, ``held_out``, ``note``, ``simulate``).

    Raises
    ------
    ValueError
        A malformed entry; the message names ``key[i]`` and the field.
    """
    if not entries:
        raise ValueError(f"{key} is empty: list at least one domain (name, dirs, role, held_out)")
    out, seen = [], set()
    for i, e in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(e, Mapping):
            raise TypeError(f"{where} must be a mapping with name, dirs, role, held_out; got {e!r}")
        unknown = set(e) - {"name", "dirs", "role", "held_out", "note", "simulate"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: name, dirs, role, held_out, "
                             "note, simulate)")
        name = e.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name must be a non-empty string, got {name!r}")
        if name in seen:
            raise ValueError(f"{where}.name {name!r} is used twice")
        seen.add(name)
        dirs = e.get("dirs")
        dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs or [])
        if not dirs:
            raise ValueError(f"{where} ({name}).dirs must list at least one labelled folder or file")
        role = e.get("role", "test")
        if role not in ROLES:
            raise ValueError(f"{where} ({name}).role must be one of {ROLES}, got {role!r}")
        held = dict(e.get("held_out") or {})
        bad = set(held) - set(HELD_OUT_KEYS)
        if bad:
            raise ValueError(f"{where} ({name}).held_out: unknown keys {sorted(bad)} (allowed: {HELD_OUT_KEYS})")
        held = {k: [str(v) for v in ([held[k]] if isinstance(held.get(k), str) else list(held.get(k) or []))]
                for k in HELD_OUT_KEYS}
        sim = e.get("simulate") or ()
        sim = tuple(str(s) for s in ([sim] if isinstance(sim, str) else sim))
        out.append(Domain(name, tuple(os.fspath(d) for d in dirs), role, held, str(e.get("note") or ""), sim))
    return out


def resolve_path(path: str, base_dir: str | None) -> Path:
    """``path`` relative to ``base_dir`` (unless absolute), ``~`` expanded."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() or not base_dir else Path(base_dir) / p


def generate_command(domain: Domain, path: str) -> str | None:
    """The ``python -m simulate ...`` command that makes ``path`` of ``domain`` (None without overrides)."""
    if not domain.simulate:
        return None
    return "python -m simulate " + " ".join(domain.simulate) + f" out_dir={path}"


def folder_problem(path) -> str | None:
    """Why a domain folder (or file) cannot be read yet, or None: it does not exist, holds no
    ``*.h5``/``*.cxi`` file, or a shard is still being written (the simulator's ``.<name>.h5.lock``
    beside no ``<name>.h5``)."""
    p = Path(os.fspath(path))
    if not p.exists():
        return "does not exist"
    if p.is_dir():
        pending = [q.name[1:-5] for q in p.glob(".*.h5.lock") if not (p / q.name[1:-5]).exists()]
        if pending:
            return f"is still being generated ({', '.join(sorted(pending))} unfinished)"
        if not any(q.suffix in (".h5", ".cxi") and q.is_file() for q in p.iterdir()):
            return "holds no labelled .h5/.cxi file"
    return None


def domain_problem(domain: Domain, base_dir: str | None = None) -> str | None:
    """Why ``domain`` cannot be read yet (one line with the fix), or None when every folder is complete
    (:func:`folder_problem`)."""
    for d in domain.dirs:
        p = resolve_path(d, base_dir)
        reason = folder_problem(p)
        if reason:
            cmd = generate_command(domain, d)
            fix = (f"make it with `{cmd}`" if cmd else "point the domain's dirs at labelled HDF5 files")
            return (f"domain {domain.name!r}: {p} {reason}; {fix}, or set domains.missing=skip "
                    "(or domains.missing=generate)")
    return None


def load_domain(domain: Domain, base_dir: str | None = None, *, labels_path: str = DEFAULT_LABELS_PATH,
                max_frames: int | None = None) -> list[LabelledSet]:
    """The labelled sets (one per file) of ``domain``.

    Raises
    ------
    DomainDataError
        A folder is missing or unfinished, or a file cannot be read as labelled frames (one line,
        naming the domain, the path and the fix).
    """
    problem = domain_problem(domain, base_dir)
    if problem:
        raise DomainDataError(problem)
    try:
        return load_labelled_sets([resolve_path(d, base_dir) for d in domain.dirs], labels_path=labels_path,
                                  max_frames=max_frames)
    except (OSError, ValueError) as exc:  # DatasetError is a ValueError
        raise DomainDataError(f"domain {domain.name!r}: {str(exc).splitlines()[0]}") from exc


def binary_labels(sets: Sequence[LabelledSet], classes: Sequence[int] = (1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """Single (1) vs not single (0) labels and the file index of every frame of ``sets``.

    Frames whose hit class is not in ``classes`` get ``-1`` (never drawn).

    Returns
    -------
    labels, file_index : ndarray of int64, shape (N,)
        Concatenated in set order.
    """
    labels, index = [], []
    for i, s in enumerate(sets):
        use = np.isin(s.hit, list(classes))
        labels.append(np.where(use, np.where(s.hit == 1, SINGLE, NOT_SINGLE), -1))
        index.append(np.full(len(s), i))
    return np.concatenate(labels).astype(np.int64), np.concatenate(index).astype(np.int64)


def domain_episodes(labels: np.ndarray, file_index: np.ndarray, *, k_shot: int, n_query: int, n_tasks: int,
                    seed: int, domain_index: int = 0) -> list[Episode]:
    """``n_tasks`` episodes of one domain, split evenly over its files (``ceil(n_tasks / files)`` each).

    The seed mixes ``seed`` with ``domain_index`` (different domains draw independent episodes);
    every K uses the same draw, so a K-shot support set is the first K of the same permutation.
    """
    n_files = int(file_index.max()) + 1 if file_index.size else 0
    per_file = math.ceil(int(n_tasks) / max(1, n_files))
    s = int(np.random.SeedSequence([int(seed), int(domain_index), 0xD0A1]).generate_state(1)[0])
    return sample_episodes(labels, file_index, n_way=2, k_shot=k_shot, n_query=n_query, n_tasks=per_file,
                           seed=s, classes=(SINGLE, NOT_SINGLE))


def episode_interval(values: np.ndarray, level: float = 0.95, *, n_resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-episode scores (:func:`scipy.stats.bootstrap`).

    The interval is over episodes drawn from the domain's fixed frames: it shows how much the
    figure depends on which K supports a user registers, not the spread between independently
    generated domains. Constant scores give a zero-width interval.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1 or np.ptp(v) == 0:
        return float(v[0] if v.size == 1 else v.mean()), float(v[0] if v.size == 1 else v.mean())
    from scipy.stats import bootstrap  # optional (the sim extra); the evaluation suite imports without scipy

    res = bootstrap((v,), np.mean, confidence_level=level, n_resamples=n_resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _episode_scores(pred: np.ndarray, ep: Episode) -> tuple[float, float]:
    j = ep.classes.index(SINGLE)
    p, t = pred == j, ep.query_labels == j
    tp, fp, fn = int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t))
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return float(np.mean(pred == ep.query_labels)), f1


def score_methods(methods: Mapping[str, Callable[[Episode], np.ndarray]], episodes: Sequence[Episode], *,
                  seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """Score every method on the same episodes.

    Parameters
    ----------
    methods : mapping name -> callable
        ``predict(episode)`` -> episode labels of its queries (as
        :func:`~speckle_embed.evaluation.episodes.evaluate_predictions`).
    episodes : sequence of Episode
    seed : int
        Seeds the bootstrap.
    level : float
        Confidence level of the intervals.

    Returns
    -------
    dict
        ``{name: {"accuracy", "accuracy_ci", "f1", "f1_ci"`` (means over episodes and their
        intervals), ``"accuracy_pooled", "f1_pooled", "n_tasks", "n_queries", "confusion",
        "_episode_accuracy", "_episode_f1"}}`` (underscored keys stay out of report.json).
    """
    out = {}
    for name, predict in methods.items():
        acc, f1 = [], []

        def recorded(ep, predict=predict, acc=acc, f1=f1):
            pred = np.asarray(predict(ep)).reshape(-1)
            a, f = _episode_scores(pred, ep) if pred.shape == ep.query_labels.shape else (np.nan, np.nan)
            acc.append(a)
            f1.append(f)
            return pred

        pooled = evaluate_predictions(recorded, episodes)
        acc, f1 = np.asarray(acc), np.asarray(f1)
        out[name] = {"accuracy": float(acc.mean()), "accuracy_ci": episode_interval(acc, level, seed=seed),
                     "f1": float(f1.mean()), "f1_ci": episode_interval(f1, level, seed=seed),
                     "accuracy_pooled": pooled["accuracy"], "f1_pooled": pooled["f1"],
                     "n_tasks": pooled["n_tasks"], "n_queries": pooled["n_queries"],
                     "confusion": pooled["confusion"], "_episode_accuracy": acc, "_episode_f1": f1}
    return out


def _rule_predict(z: np.ndarray, rule, views: np.ndarray | None = None,
                  query_views: bool = False) -> Callable[[Episode], np.ndarray]:
    z = np.ascontiguousarray(z, dtype=np.float32)

    def predict(ep: Episode) -> np.ndarray:
        return episode_distances(z, ep, rule, support_views=views, query_views=query_views).argmin(axis=1)
    return predict


def _prototype_predict(z: np.ndarray, labels: np.ndarray, file_index: np.ndarray) -> Callable:
    """Prototypes refined by soft k-means over the episode file's unlabelled frames (all but the supports)."""
    def predict(ep: Episode) -> np.ndarray:
        pool = np.flatnonzero((file_index == ep.structure) & (labels >= 0))
        pool = np.setdiff1d(pool, ep.support_idx)
        protos = refine_prototypes(z[ep.support_idx], ep.support_labels, z[pool], ep.n_way)
        return prototype_distances(z[ep.query_idx], protos).argmin(1)
    return predict


def _batchnorm_embeddings(emb, sets: Sequence[LabelledSet], labels: np.ndarray, file_index: np.ndarray, seed: int,
                          embed_kwargs: Mapping, rule, support_views: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings of every file (and their views, as :func:`_embed`) by a copy of ``emb`` with
    BatchNorm statistics re-estimated on that file's frames of the used classes (label-free)."""
    parts = [_embed(reestimate_batchnorm(emb, s.frames[labels[file_index == i] >= 0], s.mask, seed=seed),
                    [s], embed_kwargs, rule, support_views) for i, s in enumerate(sets)]
    return (np.concatenate([p[0] for p in parts]),
            None if parts[0][1] is None else np.concatenate([p[1] for p in parts]))


def _finetune_predict(emb, sets: Sequence[LabelledSet], rule, embed_kwargs: Mapping, options: Mapping, seed: int,
                      log: list, support_views: str = "none",
                      query_views: str = "none") -> Callable[[Episode], np.ndarray]:
    """Per episode: a copy of ``emb`` fine-tuned on the episode's supports within the budget
    (:func:`~speckle_embed.adaptation.finetune_on_supports`), then the rule on its embeddings of the
    supports and queries. The beam centre is resolved once per file (``embed_kwargs["center"]``,
    ``"auto"`` on the whole file); each fine-tuning's log (steps, seconds) is appended to ``log``. With
    ``rule="logistic"`` the tuned embeddings of the supports' views train it (``support_views``) and,
    with ``query_views="d4"``, each query is classified from all its views."""
    offsets = np.cumsum([0] + [len(s) for s in sets])
    centers: dict[int, Any] = {}

    def predict(ep: Episode) -> np.ndarray:
        s, lo = sets[ep.structure], offsets[ep.structure]
        if ep.structure not in centers:
            centers[ep.structure] = resolve_geometry(emb, s.frames, s.mask, embed_kwargs.get("center"), None)[0]
        kw = {**embed_kwargs, "center": centers[ep.structure]}
        support, query = s.frames[ep.support_idx - lo], s.frames[ep.query_idx - lo]
        tuned, info = finetune_on_supports(emb, support, ep.support_labels, s.mask, center=kw["center"], seed=seed,
                                           **options)
        log.append(info)
        zs, vs = _embed(tuned, [LabelledSet("supports", support, ep.support_labels, mask=s.mask)], kw, rule,
                        support_views)
        zq = (embed_views(tuned, query, s.mask, group=query_views, **kw) if query_views != "none"
              else np.ascontiguousarray(tuned.embed(query, s.mask, **kw), dtype=np.float32))
        return support_distances(zs, ep.support_labels, zq, ep.n_way, rule, views=vs).argmin(axis=1)
    return predict


def _finetune_options(options: Mapping | None, adapt: Sequence[str], embedders: Mapping[str, Any],
                      embed_kwargs: Mapping) -> dict:
    """``FINETUNE_OPTIONS`` updated by ``options`` (None values keep the default; validated, one-line
    errors naming the key)."""
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(FINETUNE_OPTIONS))
    if unknown:
        raise ValueError(f"domains.finetune: unknown key(s) {unknown}; allowed: {sorted(FINETUNE_OPTIONS)}")
    out = {**FINETUNE_OPTIONS, **options}
    if "finetune" not in adapt:
        return out
    if not float(out["budget_s"]) > 0 or int(out["max_steps"]) < 1:
        raise ValueError(f"domains.finetune needs budget_s > 0 and max_steps >= 1; got budget_s={out['budget_s']}, "
                         f"max_steps={out['max_steps']}")
    if embed_kwargs.get("scale") is not None:
        raise ValueError("domains.adapt=finetune trains at the embedder's training pixel scale; "
                         "set domains.embed.scale=null")
    bad = [label for label, e in embedders.items() if not hasattr(e, "model")]
    if bad:
        raise ValueError(f"domains.adapt=finetune needs embedders with a network to train (SpeckleEmbedder); "
                         f"{bad} have none")
    return out


def _embed(emb, sets: Sequence[LabelledSet], embed_kwargs: Mapping, rule=None,
           support_views: str = "none") -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings ``(N, d)`` of every frame of ``sets`` and, when ``rule`` trains on them
    (``"logistic"``) with ``support_views`` other than ``"none"``, of all their symmetry views
    ``(N, n_views, d)`` (else None)."""
    if support_views == "none" or rule is None or get_rule(rule) is not logistic:
        return np.concatenate([np.asarray(emb.embed(s.frames, s.mask, **embed_kwargs)) for s in sets]), None
    views = np.concatenate([embed_views(emb, s.frames, s.mask, group=support_views, **embed_kwargs) for s in sets])
    return np.ascontiguousarray(views[:, 0]), views


def _progress(on: bool, text: str) -> None:
    if on:
        print(f"[domains] {text}", flush=True)


def _evaluate_domain(domain: Domain, sets: Sequence[LabelledSet], index: int, embedders: Mapping[str, Any], *,
                     k_shots, n_query, n_tasks, seed, rule, classes, baselines, adapt, finetune, extra_methods,
                     embed_kwargs, level, progress, support_views, query_views="none") -> dict:
    labels, file_index = binary_labels(sets, classes)
    methods: dict[str, Callable] = {}
    kinds: dict[str, str] = {}
    finetune_logs: dict[str, list] = {}
    qv = query_views != "none"
    for label, emb in embedders.items():
        _progress(progress, f"{domain.name}: embedding {sum(len(s) for s in sets)} frames with {label}")
        z, views = _embed(emb, sets, embed_kwargs, rule, support_views)
        methods[label], kinds[label] = _rule_predict(z, rule, views, qv), "embedding"
        zb = vb = None
        for a in adapt:
            row = f"{label} + {a.replace('+', ' + ')}"
            if a in ("batchnorm", "batchnorm+prototypes") and zb is None:
                zb, vb = _batchnorm_embeddings(emb, sets, labels, file_index, seed, embed_kwargs, rule, support_views)
            if a == "prototypes":
                methods[row] = _prototype_predict(z, labels, file_index)
            elif a == "batchnorm":
                methods[row] = _rule_predict(zb, rule, vb, qv)
            elif a == "batchnorm+prototypes":
                methods[row] = _prototype_predict(zb, labels, file_index)
            else:  # finetune
                _progress(progress, f"{domain.name}: {row}: fine-tuning on every episode's supports "
                                    f"(up to {finetune['budget_s']} s each)")
                finetune_logs[row] = []
                methods[row] = _finetune_predict(emb, sets, rule, embed_kwargs, finetune, seed, finetune_logs[row],
                                                 support_views, query_views)
            kinds[row] = "adapted"
    if baselines:
        feats = baseline_features(sets, baselines=baselines if isinstance(baselines, Mapping) else None)
        for name, (est, f) in feats.items():
            methods[name], kinds[name] = (lambda ep, e=est, f=f: baseline_predictions(e, f, ep)), "baseline"
    for name, make in (extra_methods or {}).items():
        methods[name], kinds[name] = make(sets, labels, file_index), "extra"
    by_k = {}
    for k in k_shots:
        eps = domain_episodes(labels, file_index, k_shot=int(k), n_query=n_query, n_tasks=n_tasks, seed=seed,
                              domain_index=index)
        by_k[str(int(k))] = {"n_tasks": len(eps), "n_query_per_class": int(eps[0].query_labels.size // 2),
                             "methods": score_methods(methods, eps, seed=seed, level=level), "_episodes": eps}
    counts = {}
    for s in sets:
        for c, n in s.class_counts().items():
            counts[str(c)] = counts.get(str(c), 0) + n
    row = {"name": domain.name, "role": domain.role, "role_label": domain.role_label,
           "held_out": domain.held_out, "preset_seen": domain.preset_seen, "note": domain.note,
           "dirs": list(domain.dirs), "files": [s.path for s in sets], "n_frames": int(labels.size),
           "class_counts": counts, "kinds": kinds, "by_k": by_k}
    if finetune_logs:
        row["finetune"] = {m: {"fine_tunings": len(g), "steps_mean": float(np.mean([x["steps"] for x in g])),
                               "seconds_mean": float(np.mean([x["seconds"] for x in g]))}
                           for m, g in finetune_logs.items() if g}
    return row


def domain_protocol(sets: Mapping[str, Sequence[LabelledSet]], domains: Sequence[Domain],
                    embedders: Mapping[str, Any], *, k_shots: Sequence[int] = (1, 5), n_query: int = 50,
                    n_tasks: int = 100, seed: int = 0, rule="logistic", classes: Sequence[int] = (1, 2, 3),
                    baselines: bool | Mapping = True, adapt: Sequence[str] = (), finetune: Mapping | None = None,
                    extra_methods: Mapping[str, Callable] | None = None, reference: Domain | None = None,
                    reference_sets: Sequence[LabelledSet] | None = None, embed_kwargs: Mapping | None = None,
                    level: float = 0.95, progress: bool = True, support_views: str = "d4",
                    query_views: str = "none", domain_indices: Sequence[int] | None = None, reference_index: int | None = None) -> dict:
    """Run the leave-one-domain-out protocol.

    Parameters
    ----------
    sets : mapping domain name -> sequence of LabelledSet
        The frames of every domain (:func:`load_domain`).
    domains : sequence of Domain
        Rows of the table, in order.
    embedders : mapping label -> embedder
        Anything with ``embed(frames (N, H, W), mask (H, W), **embed_kwargs) -> (N, d)``; several
        checkpoints side by side.
    k_shots : sequence of int
        Supports per class.
    n_query : int
        Queries per class and episode (at most; balanced).
    n_tasks : int
        Episodes per domain and K (split evenly over its files).
    seed : int
        Episodes and bootstrap.
    rule : str or callable
        Few-shot rule of :mod:`speckle_embed.fewshot.rules` for the embeddings (default
        ``"logistic"``, as :class:`~speckle_embed.fewshot.FewShotClassifier`).
    classes : sequence of int
        Hit classes used: ``single`` (1) against the others listed.
    baselines : bool or mapping name -> estimator class
        The classical baselines (default :data:`speckle_embed.baselines.BASELINES`); False: none.
    adapt : sequence of str
        Extra rows per embedding from :data:`ADAPTATIONS`, in the order given: label-free ones use
        the file's frames; ``finetune`` fine-tunes a copy of the embedding on every episode's
        supports (each episode costs up to ``finetune["budget_s"]`` seconds; the embedder must
        have a ``model``, and ``embed_kwargs["scale"]`` must be unset).
    finetune : mapping, optional
        Overrides of :data:`FINETUNE_OPTIONS` (``budget_s``, ``max_steps``, ``lr``,
        ``temperature``; None keeps the default) for the ``finetune`` row.
    extra_methods : mapping name -> callable, optional
        ``make(sets, labels, file_index)`` -> ``predict(episode)``: any other method on the
        same episodes (labels are the single (1) / not single (0) / unused (-1) codes).
    reference, reference_sets : Domain and its sets, optional
        The in-domain reference set; the gap is reference minus domain, per method and K.
    embed_kwargs : mapping, optional
        Passed to every ``embed`` call (``scale``, ``center``, ``batch_size``).
    level : float
        Confidence level of the intervals.
    progress : bool
    support_views : {"d4", "none"}, default "d4"
        Symmetry views of the supports that train ``rule="logistic"`` (as the classifier's
        option of that name; every frame is then embedded in all 8 views, 8 times the cost).
    query_views : {"none", "d4"}, default "none"
        ``"d4"``: each query is classified from the logistic rule's probabilities averaged over
        its views (as ``FewShotClassifier(query_views="d4")``); needs ``rule="logistic"`` and the
        same ``support_views``. Applies to the embedding rows and their ``batchnorm`` and
        ``finetune`` rows (the ``prototypes`` rows classify by distance, without views).
    domain_indices : sequence of int, optional
        The index that seeds each domain's episodes (default its position in ``domains``). The app
        passes each domain's position in the declared list, so that leaving domains out
        (``domains.roles``, ``domains.missing=skip``) does not change the episodes of the others.
    reference_index : int, optional
        The index that seeds the reference's episodes (default one more than the largest domain
        index; the app passes the number of declared domains).

    Returns
    -------
    dict
        ``{"settings": {...}, "methods": [names], "kinds": {name: kind}, "domains": [per domain: name,
        role, role_label, held_out, preset_seen, note, files, class_counts, by_k -> {K: {methods ->
        scores (:func:`score_methods`), gap -> {method: {"accuracy", "f1"}}}}, and with ``finetune``
        finetune -> {method: {"fine_tunings", "steps_mean", "seconds_mean"}}], "reference": ... or None}``.
    """
    adapt = tuple(adapt or ())
    bad = [a for a in adapt if a not in ADAPTATIONS]
    if bad:
        raise ValueError(f"domains.adapt: unknown {bad}; choose from {ADAPTATIONS}")
    finetune = _finetune_options(finetune, adapt, embedders, embed_kwargs or {})
    if not embedders and not baselines and not extra_methods:
        raise ValueError("nothing to score: give an embedder, baselines or an extra method")
    missing = [d.name for d in domains if d.name not in sets]
    if missing:
        raise ValueError(f"no sets given for domains {missing}")
    view_indices(support_views)  # an unknown view group fails before any work
    view_indices(query_views)
    if query_views != "none" and (support_views != query_views or rule is None or get_rule(rule) is not logistic):
        raise ValueError(f"query_views={query_views!r} classifies each query from its views with the logistic "
                         f"rule trained on the same views: it needs rule='logistic' and support_views="
                         f"{query_views!r} (got rule={rule!r}, support_views={support_views!r})")
    kw = {"k_shots": [int(k) for k in k_shots], "n_query": int(n_query), "n_tasks": int(n_tasks),
          "seed": int(seed), "rule": rule, "classes": tuple(classes), "baselines": baselines, "adapt": adapt,
          "finetune": finetune, "extra_methods": extra_methods, "embed_kwargs": dict(embed_kwargs or {}), "level": level,
          "progress": progress, "support_views": support_views, "query_views": query_views}
    indices = list(range(len(domains))) if domain_indices is None else [int(i) for i in domain_indices]
    if len(indices) != len(domains):
        raise ValueError(f"domain_indices: {len(indices)} indices for {len(domains)} domains")
    rows = [_evaluate_domain(d, sets[d.name], i, embedders, **kw) for i, d in zip(indices, domains)]
    ref = None
    if reference is not None:
        ref = _evaluate_domain(Domain(reference.name, reference.dirs, "test", reference.held_out, reference.note),
                               reference_sets, max(indices, default=-1) + 1 if reference_index is None
                               else int(reference_index), embedders, **kw)
        ref["role"], ref["role_label"] = "reference", "in-domain reference"
        for r in rows:
            for k, v in r["by_k"].items():
                rk = ref["by_k"][k]["methods"]
                v["gap"] = {m: {"accuracy": rk[m]["accuracy"] - s["accuracy"], "f1": rk[m]["f1"] - s["f1"]}
                            for m, s in v["methods"].items() if m in rk}
    names = list(rows[0]["kinds"]) if rows else []
    return {"settings": {"k_shots": kw["k_shots"], "n_query": kw["n_query"], "n_tasks": kw["n_tasks"],
                         "seed": kw["seed"], "rule": rule if isinstance(rule, str) else getattr(rule, "__name__", "custom"),
                         "support_views": support_views, "query_views": query_views,
                         "classes": list(classes), "adapt": list(adapt), "level": level,
                         **({"finetune": finetune} if "finetune" in adapt else {}),
                         "interval": "percentile bootstrap over episodes (scipy.stats.bootstrap, 2000 resamples)"},
            "methods": names, "kinds": rows[0]["kinds"] if rows else {}, "domains": rows, "reference": ref}


# ---------------------------------------------------------------------------------------------- report
def _fmt(score: Mapping, key: str) -> str:
    lo, hi = score[f"{key}_ci"]
    return f"{score[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def add_domain_section(report, result: Mapping, out_dir, *, embeddings: Mapping[str, Mapping] | None = None,
                       skipped: Sequence[str] = ()) -> None:
    """Add the "Held-out realistic domains" section (tables, figure) of ``result`` to ``report``.

    Parameters
    ----------
    report : speckle_embed.evaluation.report.Report
    result : mapping
        :func:`domain_protocol`'s result.
    out_dir : path
        Where the figure is written (``domains.png``).
    embeddings : mapping label -> {"checkpoint", "checkpoint_hash"}, optional
        Shown under the table.
    skipped : sequence of str
        One line per domain left out (missing data), shown in the report.
    """
    from speckle_embed.evaluation import (
        figures,  # matplotlib only when a report is drawn
    )

    st = result["settings"]
    kinds = result["kinds"]
    learned = [m for m, k in kinds.items() if k != "baseline"]
    base = [m for m, k in kinds.items() if k == "baseline"]
    ref = result.get("reference")
    report.heading("Held-out realistic domains (leave-one-domain-out)")
    report.text(
        f"2-way single vs not single ({', '.join(map(str, st['classes'][1:]))} = not single), K supports per "
        f"class, {st['n_tasks']} episodes per domain and K with up to {st['n_query']} label-balanced queries "
        f"per class, supports and queries from one file of the domain, rule {st['rule']}"
        f"{' (trained on the D4 symmetry views of the supports)' if st['rule'] == 'logistic' and st.get('support_views', 'none') != 'none' else ''}"
        f"{'; each query classified from the mean probability of its D4 views' if st.get('query_views', 'none') != 'none' else ''}, seed {st['seed']}; "
        "every method is scored on the same episodes. Cells: mean over episodes "
        f"[{round(100 * st['level'])} % {st['interval']}]. Gap = in-domain reference minus the domain "
        "(accuracy, same method). The validation domain chose the checkpoint: its row is not a result. "
        "See docs/domains.md.")
    for k in (str(k) for k in st["k_shots"]):
        header = ["domain", "role"]
        for m in learned:
            header += [f"{m}: accuracy", f"{m}: F1"]
        header += [f"{b}: accuracy" for b in base]
        header += [f"gap {m}" for m in learned if ref is not None]
        rows = []
        for d in ([ref] if ref is not None else []) + list(result["domains"]):
            v = d["by_k"][k]
            row = [d["name"], d["role_label"]]
            for m in learned:
                row += [_fmt(v["methods"][m], "accuracy"), _fmt(v["methods"][m], "f1")]
            row += [_fmt(v["methods"][b], "accuracy") for b in base]
            if ref is not None:
                row += ["-" if d is ref else f"{v['gap'][m]['accuracy']:+.3f}" for m in learned]
            rows.append(row)
        report.heading(f"{k}-shot", 3)
        report.table(header, rows)
    report.heading("What each domain holds out from training", 3)
    report.table(["domain", "role", "detector preset", "sample family", "artefacts", "note", "files"],
                 [[d["name"], d["role_label"], "; ".join(d["held_out"]["preset"]) or "(seen in training)",
                   "; ".join(d["held_out"]["family"]) or "-", "; ".join(d["held_out"]["artefacts"]) or "-",
                   d["note"] or "-", ", ".join(Path(f).name for f in d["files"])]
                  for d in result["domains"]])
    if embeddings:
        report.text("Embeddings: " + "; ".join(f"{m} = {e.get('checkpoint')} (hash {e.get('checkpoint_hash')})"
                                                for m, e in embeddings.items()))
    for line in skipped:
        report.text(f"Skipped: {line}")
    path = figures.plot_domains(result, Path(os.fspath(out_dir)) / "domains.png")
    report.figure(path, "Held-out realistic domains: accuracy per method with its interval over episodes "
                        "(hatched: the validation domain, not a result)")
