"""The offline protocol of SpeckleNN (Wang et al. 2023, section 4.1) on held-out structures.

Per structure, 2-way K-shot episodes (single vs multi hit): ``k_shot`` supports per class and
``n_query`` label-balanced queries per class (the paper: 1,000 queries = 500 per class), all
from that structure's frames; queries classified by the mean-distance rule; accuracy and F1
with the single hit as positive, **averaged over structures** (the paper's figure of merit; the
pooled numbers are reported too).

* :func:`kshot_protocol` - K = 1, 5, 20 at the baseline fluence, with confusion matrices;
* :func:`fluence_scan` - the same at 1e-2 .. 1e2 times the baseline fluence (noise-free sets);
* :func:`size_table` - per-structure accuracy against particle size (atoms);
* :func:`tsne_embeddings` - a 2-D t-SNE map of embeddings with the supports of one episode.

All take a :class:`~speckle_embed.inference.embedder.SpeckleEmbedder` (or any object with its ``embed``)
and :class:`~speckle_embed.evaluation.labelled.LabelledSet` s.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from speckle_embed.evaluation.baselines import baseline_features, evaluate_baselines
from speckle_embed.fewshot.episodes import Episode, evaluate_episodes, sample_episodes
from speckle_embed.evaluation.labelled import LabelledSet, photon_frames

__all__ = ["embed_sets", "kshot_protocol", "fluence_scan", "size_table", "tsne_embeddings",
           "PAPER_FLUENCE_FACTORS", "summarise"]

#: 1e-2 .. 1e2 times the baseline fluence in steps of 10^0.5 (9 levels), as in the paper.
PAPER_FLUENCE_FACTORS = tuple(float(10 ** (e / 2)) for e in range(-4, 5))


def _progress(iterable, progress: bool, desc: str, total=None):
    if not progress:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False)


def embed_sets(embedder, sets: Sequence[LabelledSet], *, fluence_factor: float = 1.0,
               gaussian_sigma: float = 0.15, seed: int = 0, indices: Sequence | None = None,
               progress: bool = True, **embed_kwargs: Any):
    """Embed the frames of every set (photon noise drawn for noise-free sets).

    Parameters
    ----------
    embedder : SpeckleEmbedder
    sets : sequence of LabelledSet
    fluence_factor, gaussian_sigma : float
        Noise of noise-free sets (see :func:`~speckle_embed.evaluation.labelled.photon_frames`).
    seed : int
        Noise seed; set ``i`` at fluence ``f`` uses ``(seed, i, round(1000 log10 f))``.
    indices : sequence of index arrays, optional
        Frames to use of each set (default all).
    **embed_kwargs
        Passed to ``embedder.embed`` (``scale``, ``center``, ``batch_size``...).

    Returns
    -------
    z : ndarray (N, d) float32
    hit : ndarray (N,) int64
    structure : ndarray (N,) int64
        Position of the frame's set in ``sets``.
    """
    zs, hits, structs = [], [], []
    tag = int(round(1000 * np.log10(fluence_factor)))
    for i, s in enumerate(_progress(sets, progress, f"embed x{fluence_factor:g}")):
        idx = None if indices is None else np.asarray(indices[i])
        frames = photon_frames(s, fluence_factor, gaussian_sigma=gaussian_sigma,
                               seed=[int(seed), i, tag & 0xFFFFFFFF], indices=idx)
        zs.append(np.asarray(embedder.embed(frames, mask=s.mask, **embed_kwargs), dtype=np.float32))
        hit = s.hit if idx is None else s.hit[idx]
        hits.append(hit)
        structs.append(np.full(hit.shape, i, dtype=np.int64))
    return np.concatenate(zs), np.concatenate(hits), np.concatenate(structs)


def summarise(result: dict) -> dict:
    """Structure-averaged accuracy and F1 of an :func:`evaluate_episodes` result."""
    per = result["per_structure"]
    return {"accuracy_mean": float(np.mean([v["accuracy"] for v in per.values()])),
            "f1_mean": float(np.mean([v["f1"] for v in per.values()])),
            "accuracy_std": float(np.std([v["accuracy"] for v in per.values()])),
            "accuracy_pooled": result["accuracy"], "f1_pooled": result["f1"],
            "n_structures": len(per), "n_tasks": result["n_tasks"], "n_queries": result["n_queries"]}


def kshot_protocol(embedder, sets: Sequence[LabelledSet], *, k_shots: Sequence[int] = (1, 5, 20),
                   n_query: int = 500, n_tasks: int = 20, rule: str = "mean_distance", seed: int = 0,
                   gaussian_sigma: float = 0.15, progress: bool = True, embeddings=None,
                   baselines: bool = True, **embed_kwargs: Any) -> dict:
    """2-way K-shot accuracy and F1 per structure at the baseline fluence.

    Parameters
    ----------
    embedder : SpeckleEmbedder
    sets : sequence of LabelledSet
        One per held-out structure, with single (1) and multi (2) hits.
    k_shots : sequence of int
        Supports per class (the paper: 1, 5, 20).
    n_query : int
        Queries per class and episode (the paper: 500, i.e. 1,000 balanced queries); fewer
        when a structure has fewer frames (reported as ``n_queries``).
    n_tasks : int
        Episodes per structure and K.
    rule : str
        Decision rule (:mod:`speckle_embed.fewshot.rules`).
    embeddings : tuple (z, hit, structure), optional
        Precomputed :func:`embed_sets` output (baseline fluence).
    baselines : bool
        Also score the classical baselines (:mod:`speckle_embed.baselines`) on the same
        episodes and the same noisy frames (``by_k[K]["baselines"][name]`` = summary).

    Returns
    -------
    dict
        ``by_k``: ``{K: summary + "per_structure" + "confusion" + "baselines"}`` and the
        embeddings under ``"_embeddings"`` (not JSON; popped by the report).
    """
    names = [s.name for s in sets]
    z, hit, struct = embeddings if embeddings is not None else embed_sets(
        embedder, sets, gaussian_sigma=gaussian_sigma, seed=seed, progress=progress, **embed_kwargs)
    out: dict[str, Any] = {"by_k": {}, "structures": names, "n_query": n_query, "n_tasks": n_tasks,
                           "rule": rule}
    feats = None
    if baselines:  # the very frames embed_sets embedded (same noise seed)
        frames = [photon_frames(s, 1.0, gaussian_sigma=gaussian_sigma, seed=[int(seed), i, 0])
                  for i, s in enumerate(sets)]
        feats = baseline_features(sets, frames=frames, center=embed_kwargs.get("center")
                                  if not isinstance(embed_kwargs.get("center"), str) else None)
    for k in k_shots:
        episodes = sample_episodes(hit, struct, n_way=2, k_shot=int(k), n_query=n_query,
                                   n_tasks=n_tasks, seed=seed)
        res = evaluate_episodes(z, episodes, rule=rule, structure_names=names)
        out["by_k"][str(int(k))] = {**summarise(res), "per_structure": res["per_structure"],
                                    "confusion": res["confusion"],
                                    "confusion_classes": res["confusion_classes"]}
        if feats is not None:
            out["by_k"][str(int(k))]["baselines"] = {
                name: summarise(r) for name, r in evaluate_baselines(feats, episodes, structure_names=names).items()}
    out["_embeddings"] = (z, hit, struct)
    return out


def fluence_scan(embedder, sets: Sequence[LabelledSet], *,
                 factors: Sequence[float] = PAPER_FLUENCE_FACTORS, k_shot: int = 5, n_query: int = 100,
                 n_tasks: int = 10, rule: str = "mean_distance", seed: int = 0,
                 gaussian_sigma: float = 0.15, progress: bool = True, **embed_kwargs: Any) -> dict:
    """2-way ``k_shot`` accuracy and F1 against fluence (noise-free sets only).

    Every level uses the same frames of each structure (``k_shot + n_query`` per class, drawn
    once with ``seed``) and the same episodes, so only the photon noise changes.

    Returns
    -------
    dict
        ``factors`` and ``levels``: one summary (+ ``per_structure``) per factor.

    Raises
    ------
    ValueError
        A set holds noisy frames (it cannot be re-simulated at another fluence).
    """
    noisy = [s.name for s in sets if not s.clean]
    if noisy:
        raise ValueError(f"the fluence scan needs noise-free sets (dataset=eval_clean); {noisy} hold noisy frames")
    need = int(k_shot) + int(n_query)
    picks = []
    for i, s in enumerate(sets):
        rng = np.random.default_rng([int(seed), i, 0xF1])
        pick = [rng.permutation(np.flatnonzero(s.hit == c))[:need] for c in (1, 2)]
        picks.append(np.sort(np.concatenate(pick)))
    names = [s.name for s in sets]
    levels = []
    for f in _progress(list(factors), progress, "fluence scan"):
        z, hit, struct = embed_sets(embedder, sets, fluence_factor=float(f), gaussian_sigma=gaussian_sigma,
                                    seed=seed, indices=picks, progress=False, **embed_kwargs)
        episodes = sample_episodes(hit, struct, n_way=2, k_shot=k_shot, n_query=n_query,
                                   n_tasks=n_tasks, seed=seed)
        res = evaluate_episodes(z, episodes, rule=rule, structure_names=names)
        levels.append({"factor": float(f), **summarise(res), "per_structure": res["per_structure"]})
    return {"factors": [float(f) for f in factors], "k_shot": int(k_shot), "n_query": int(n_query),
            "n_tasks": int(n_tasks), "levels": levels}


def size_table(sets: Sequence[LabelledSet], kshot: dict, k: int = 5) -> list[dict]:
    """Per-structure accuracy and F1 at ``k`` shots with the structure's atoms and radius.

    Returns
    -------
    list of dict
        ``name, n_atoms, radius_angstrom, accuracy, f1``, sorted by atoms.
    """
    per = kshot["by_k"][str(int(k))]["per_structure"]
    rows = [{"name": s.name, "n_atoms": s.n_atoms, "radius_angstrom": s.radius_angstrom,
             "accuracy": per[s.name]["accuracy"], "f1": per[s.name]["f1"]}
            for s in sets if s.name in per]
    return sorted(rows, key=lambda r: (r["n_atoms"] is None, r["n_atoms"] or 0))


def tsne_embeddings(z: np.ndarray, hit: np.ndarray, struct: np.ndarray, *, structures: Sequence[int],
                    k_shot: int = 5, n_points: int = 300, perplexity: float = 30.0,
                    seed: int = 0) -> dict:
    """2-D t-SNE of the embeddings of a few structures, with one episode's supports marked.

    Parameters
    ----------
    z, hit, struct : arrays from :func:`embed_sets`
    structures : sequence of int
        Set positions to map (each gets its own t-SNE).
    k_shot : int
        Supports per class marked on the map (drawn like an episode, same seed).
    n_points : int
        Frames per structure (balanced single/multi, supports included).
    perplexity : float
        t-SNE perplexity (capped below the number of points).

    Returns
    -------
    dict
        ``{structure: {"xy": (n, 2), "hit": (n,), "support": (n,) bool}}``.
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError as exc:  # pragma: no cover - sklearn ships with the eval/dev extras
        raise ImportError("t-SNE needs scikit-learn: pip install 'speckle_embed[eval]'") from exc
    maps = {}
    for s in structures:
        ep: Episode = sample_episodes(hit, struct, n_way=2, k_shot=k_shot,
                                      n_query=max(1, n_points // 2 - k_shot), n_tasks=1, seed=seed,
                                      structures=[s])[0]
        idx = np.concatenate([ep.support_idx, ep.query_idx])
        is_support = np.r_[np.ones(ep.support_idx.size, bool), np.zeros(ep.query_idx.size, bool)]
        perp = float(min(perplexity, max(2.0, (idx.size - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(z[idx])
        maps[int(s)] = {"xy": xy, "hit": hit[idx], "support": is_support}
    return maps
