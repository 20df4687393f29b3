"""Classification-time adaptation of a :class:`~speckle_embed.fewshot.classifier.FewShotClassifier`.

``FewShotClassifier(adapt=...)`` names one option or a list, applied in this order:

* ``"batchnorm"`` (label-free): BatchNorm statistics re-estimated on the unlabelled frames
  (:func:`~speckle_embed.adaptation.batchnorm.reestimate_batchnorm`);
* ``"finetune"`` (few labels): the embedding fine-tuned on the augmented supports within
  ``budget_s`` seconds (:func:`~speckle_embed.adaptation.finetune.finetune_on_supports`);
* ``"prototypes"`` (label-free): class prototypes refined by soft k-means over the unlabelled
  embeddings (:func:`~speckle_embed.adaptation.prototypes.refine_prototypes`); queries are
  then classified by the distance to the refined prototypes instead of the rule.

The result is an :class:`AdaptationState` (the adapted embedder copy and/or the prototypes);
:func:`save_adaptation` / :func:`load_adaptation` store it as one ``.npz`` (numpy arrays only,
``allow_pickle=False``) next to the classifier's files.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speckle_embed.adaptation.batchnorm import reestimate_batchnorm
from speckle_embed.adaptation.finetune import finetune_on_supports
from speckle_embed.adaptation.inputs import new_embedder, resolve_geometry
from speckle_embed.adaptation.prototypes import prototype_distances, refine_prototypes

__all__ = ["ADAPTATIONS", "AdaptationState", "parse_adapt", "adapt_embedder", "adapt_prototypes",
           "save_adaptation", "load_adaptation"]

#: Options in the order they are applied, with their defaults (``adapt_options`` overrides them).
ADAPTATIONS: dict[str, dict[str, Any]] = {
    "batchnorm": {"max_frames": 2048, "batch_size": 128, "budget_s": 60.0, "seed": 0},
    "finetune": {"budget_s": 60.0, "max_steps": 200, "lr": 1e-4, "temperature": 0.1, "seed": 0},
    "prototypes": {"temperature": 0.1, "n_iter": 10, "support_weight": 1.0, "max_frames": 20000},
}
_LABEL_FREE = ("batchnorm", "prototypes")


@dataclass
class AdaptationState:
    """What an adaptation changed.

    Attributes
    ----------
    options : tuple of str
        Applied options, in order.
    embedder : SpeckleEmbedder or None
        The adapted copy (``batchnorm``/``finetune``), None when the embedding is unchanged.
    prototypes : ndarray (n_classes, d) or None
        Refined class prototypes (``prototypes``).
    log : dict
        Seconds and details per option.
    """

    options: tuple[str, ...]
    embedder: Any = None
    prototypes: np.ndarray | None = None
    log: dict = field(default_factory=dict)

    def distances(self, Z: np.ndarray) -> np.ndarray:
        """Squared distances ``(m, n_classes)`` to the refined prototypes."""
        return prototype_distances(Z, self.prototypes)


def parse_adapt(adapt) -> tuple[str, ...]:
    """``None | str | sequence of str`` -> the options in application order (validated)."""
    if adapt is None:
        return ()
    names = [adapt] if isinstance(adapt, str) else list(adapt)
    bad = [a for a in names if a not in ADAPTATIONS]
    if bad:
        raise ValueError(f"unknown adapt option {bad[0]!r}; choose from {list(ADAPTATIONS)} (or a list of them)")
    return tuple(a for a in ADAPTATIONS if a in names)


def _options(name: str, overrides: Mapping | None) -> dict:
    opts = dict(ADAPTATIONS[name])
    extra = dict((overrides or {}).get(name, {}))
    unknown = sorted(set(extra) - set(opts))
    if unknown:
        raise ValueError(f"adapt_options[{name!r}] has unknown key {unknown[0]!r}; known: {sorted(opts)}")
    return {**opts, **extra}


def adapt_embedder(embedder, options: Sequence[str], X, codes, mask, unlabelled, unlabelled_mask, *,
                   center=None, scale=None, adapt_options: Mapping | None = None) -> AdaptationState:
    """Apply the embedding-changing options (``batchnorm``, ``finetune``) before the supports are embedded.

    Raises
    ------
    ValueError
        A label-free option without ``unlabelled`` frames; ``finetune`` with ``scale`` set.
    """
    state = AdaptationState(tuple(options))
    if any(o in _LABEL_FREE for o in options) and unlabelled is None:
        raise ValueError(f"adapt={list(options)} needs the run's unlabelled frames: "
                         "fit(X, y, unlabelled=frames)")
    emb = embedder
    if "batchnorm" in options:
        t0 = time.perf_counter()
        c, s = resolve_geometry(emb, unlabelled, unlabelled_mask, center, scale)
        emb = reestimate_batchnorm(emb, unlabelled, unlabelled_mask, center=c, scale=s,
                                   **_options("batchnorm", adapt_options))
        state.log["batchnorm"] = {"seconds": time.perf_counter() - t0}
    if "finetune" in options:
        if scale is not None:
            raise ValueError("adapt='finetune' trains at the embedder's training pixel scale; use scale=None")
        c, _ = resolve_geometry(emb, X, mask, center, None)
        emb, log = finetune_on_supports(emb, X, codes, None if mask is None or np.ndim(mask) != 2 else mask,
                                        center=c, **_options("finetune", adapt_options))
        state.log["finetune"] = log
    state.embedder = emb if emb is not embedder else None
    return state


def adapt_prototypes(state: AdaptationState, support_z, codes, unlabelled_z, n_classes: int, *,
                     adapt_options: Mapping | None = None) -> None:
    """Refine the prototypes (``prototypes`` option) from the support and unlabelled embeddings."""
    if "prototypes" not in state.options:
        return
    opts = _options("prototypes", adapt_options)
    t0 = time.perf_counter()
    u = np.asarray(unlabelled_z)[: int(opts.pop("max_frames"))]
    state.prototypes = refine_prototypes(support_z, codes, u, n_classes, **opts)
    state.log["prototypes"] = {"seconds": time.perf_counter() - t0, "n_unlabelled": int(u.shape[0])}


def save_adaptation(state: AdaptationState, path: Path) -> dict:
    """Write the state's arrays to ``path`` (``.npz``); returns the JSON metadata to keep beside."""
    arrays = {}
    if state.prototypes is not None:
        arrays["prototypes"] = np.asarray(state.prototypes, dtype=np.float64)
    if state.embedder is not None:
        for k, v in state.embedder.model.state_dict().items():
            arrays[f"model/{k}"] = v.detach().cpu().numpy()
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return {"options": list(state.options), "log": state.log, "has_prototypes": state.prototypes is not None,
            "has_model": state.embedder is not None}


def load_adaptation(path: Path, meta: Mapping, embedder) -> AdaptationState:
    """Rebuild an :class:`AdaptationState` written by :func:`save_adaptation` (base ``embedder``)."""
    state = AdaptationState(parse_adapt(list(meta["options"])), log=dict(meta.get("log") or {}))
    with np.load(path, allow_pickle=False) as z:
        if meta.get("has_prototypes"):
            state.prototypes = np.asarray(z["prototypes"])
        if meta.get("has_model"):
            model = copy.deepcopy(embedder.model)
            sd = {k[len("model/"):]: torch.from_numpy(np.array(z[k])) for k in z.files if k.startswith("model/")}
            model.load_state_dict(sd, strict=True)
            state.embedder = new_embedder(embedder, model)
    return state
