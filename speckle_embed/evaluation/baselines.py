"""Classical baselines scored on the same episodes as the embedding (issue 14, section 4).

Features of every frame are computed once per set (:meth:`NearestMeanBaseline.transform`), then
for each episode a fresh baseline is fitted on the support features and predicts the queries,
so the numbers sit beside the embedding's in every table (same supports, same queries).

Examples
--------
>>> import numpy as np
>>> from speckle_embed.fewshot.episodes import sample_episodes
>>> from speckle_embed.evaluation.labelled import LabelledSet
>>> rng = np.random.default_rng(0)
>>> frames = np.concatenate([rng.poisson(0.2, (8, 16, 16)), rng.poisson(3.0, (8, 16, 16))]).astype(np.float32)
>>> s = LabelledSet("toy", frames, [1] * 8 + [2] * 8)
>>> feats = baseline_features([s])
>>> eps = sample_episodes(np.array([1] * 8 + [2] * 8), np.zeros(16, int), k_shot=2, n_query=3, n_tasks=2)
>>> evaluate_baselines(feats, eps)["photon count (no learning)"]["accuracy"]
1.0
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import clone

from speckle_embed.baselines import BASELINES
from speckle_embed.fewshot.episodes import Episode, evaluate_predictions
from speckle_embed.evaluation.labelled import LabelledSet

__all__ = ["baseline_features", "evaluate_baselines", "baseline_predictions"]


def baseline_features(sets: Sequence[LabelledSet], *, frames: Sequence[np.ndarray] | None = None,
                      masks: Sequence | None = None, center=None,
                      baselines: Mapping | None = None) -> dict[str, tuple]:
    """Features of every frame of every set, concatenated in set order (as ``embed_sets``).

    Parameters
    ----------
    sets : sequence of LabelledSet
    frames : sequence of ndarray, optional
        Frames to use per set instead of ``set.frames`` (e.g. with photon noise drawn).
    masks : sequence, optional
        Mask per set instead of ``set.mask`` (e.g. with a detector-fraction mask).
    center : (row, col), optional
        Beam centre for every baseline (default the frame centre).
    baselines : mapping name -> estimator class, optional
        Default :data:`speckle_embed.baselines.BASELINES`.

    Returns
    -------
    dict
        ``{name: (estimator, features (N, F))}``.
    """
    out = {}
    for name, cls in (baselines or BASELINES).items():
        est = cls(center=center)
        feats = [est.transform(s.frames if frames is None else frames[i],
                               s.mask if masks is None else masks[i]) for i, s in enumerate(sets)]
        out[name] = (est, np.concatenate(feats))
    return out


def baseline_predictions(estimator, features: np.ndarray, ep: Episode) -> np.ndarray:
    """Episode labels of ``ep``'s queries by a baseline fitted on its supports."""
    est = clone(estimator).fit_features(features[ep.support_idx], ep.support_labels)
    return est.predict_features(features[ep.query_idx])


def evaluate_baselines(features: Mapping[str, tuple], episodes: Sequence[Episode], *,
                       structure_names: Sequence[str] | None = None) -> dict[str, dict]:
    """:func:`~speckle_embed.fewshot.episodes.evaluate_predictions` of every baseline."""
    return {name: evaluate_predictions(lambda ep, e=est, f=feats: baseline_predictions(e, f, ep), episodes,
                                       structure_names=structure_names)
            for name, (est, feats) in features.items()}
