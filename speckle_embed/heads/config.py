"""Heads from configs and from disk: :func:`head_from_config`, :func:`load_head`."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from speckle_embed.heads.ensemble import EnsembleHead
from speckle_embed.heads.io import ENSEMBLE_JSON, HEAD_JSON, plain
from speckle_embed.heads.supervised import SupervisedHead, norm_name

__all__ = ["head_from_config", "load_head"]


def head_from_config(cfg: Mapping) -> SupervisedHead | EnsembleHead:
    """Build an (unfitted) head from a config dict, e.g. ``conf/evaluate/heads/resnet_maxf1.yaml``.

    Parameters
    ----------
    cfg : Mapping
        ``kind``: ``"supervised"`` (default) or ``"ensemble"``. A supervised config holds
        :class:`SupervisedHead` parameters; an ensemble config holds ``n_folds``,
        ``mirror_tta``, ``threshold``, ``seed``, ``progress`` and ``head`` (member parameters).
        ``name``/``description`` keys are ignored. OmegaConf ``DictConfig`` works too.

    Examples
    --------
    >>> h = head_from_config({"kind": "supervised", "model": {"name": "shi2019"}, "threshold": 0.9})
    >>> type(h).__name__, h.threshold
    ('SupervisedHead', 0.9)
    """
    cfg = plain(cfg)
    if not isinstance(cfg, dict):
        raise TypeError(f"head config must be a mapping; got {type(cfg).__name__}")
    kind = norm_name(str(cfg.pop("kind", "supervised")))
    for key in ("name", "description"):
        cfg.pop(key, None)
    if kind in ("supervised", "supervisedhead"):
        cls, valid = SupervisedHead, SupervisedHead._get_param_names()
    elif kind in ("ensemble", "ensemblehead"):
        cls, valid = EnsembleHead, EnsembleHead._get_param_names() + SupervisedHead._get_param_names()
    else:
        raise ValueError(f"unknown head kind {kind!r}; use 'supervised' or 'ensemble'")
    bad = sorted(set(cfg) - set(valid))
    if bad:
        raise ValueError(f"unknown keys {bad} in {cls.__name__} config; valid keys: {sorted(valid)}")
    return cls(**cfg)


def load_head(directory: str | os.PathLike, *, device: str = "auto") -> SupervisedHead | EnsembleHead:
    """Load a saved :class:`SupervisedHead` or :class:`EnsembleHead` (whichever the directory holds)."""
    directory = Path(os.fspath(directory)).expanduser()
    if (directory / ENSEMBLE_JSON).is_file():
        return EnsembleHead.load(directory, device=device)
    if (directory / HEAD_JSON).is_file():
        return SupervisedHead.load(directory, device=device)
    raise FileNotFoundError(f"{directory} holds no saved head ({HEAD_JSON} or {ENSEMBLE_JSON})")
