"""Build embedding models from plain config dicts (as stored in checkpoints)."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .specklenn import SpeckleNNEmbedding

__all__ = ["MODEL_REGISTRY", "register_model", "build_model", "model_config"]

#: Model name -> class. Every class takes its config as keyword arguments and exposes a
#: ``config`` property with those arguments.
MODEL_REGISTRY: dict[str, type[nn.Module]] = {"specklenn": SpeckleNNEmbedding}

DEFAULT_MODEL = "specklenn"


def register_model(name: str, cls: type[nn.Module] | None = None):
    """Add a model class to :data:`MODEL_REGISTRY`; usable as a decorator.

    Parameters
    ----------
    name : str
        Key used in configs (``{"name": name, ...}``); must not be taken already.
    cls : type, optional
        The ``nn.Module`` subclass. Omit it to use ``@register_model("name")``.
    """

    def _register(klass: type[nn.Module]) -> type[nn.Module]:
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not klass:
            raise ValueError(f"model name {name!r} is already registered")
        MODEL_REGISTRY[name] = klass
        return klass

    return _register if cls is None else _register(cls)


def build_model(config: Mapping) -> nn.Module:
    """Instantiate a model from ``{"name": <registry key>, **constructor kwargs}``.

    Parameters
    ----------
    config : Mapping
        ``name`` selects the class (default ``"specklenn"``); the other keys are passed to
        its constructor. The mapping is not modified (a Hydra ``DictConfig`` works too).

    Returns
    -------
    nn.Module

    Examples
    --------
    >>> model = build_model({"name": "specklenn", "embedding_size": 64})
    >>> model.config["embedding_size"]
    64
    >>> type(build_model(model_config(model))) is type(model)
    True
    """
    kwargs = dict(config)
    name = kwargs.pop("name", DEFAULT_MODEL)
    try:
        cls = MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; registered: {sorted(MODEL_REGISTRY)}"
        ) from None
    return cls(**kwargs)


def model_config(model: nn.Module) -> dict:
    """``{"name": <registry key>, **model.config}``: what :func:`build_model` needs.

    Raises
    ------
    ValueError
        If the model's class is not registered.
    """
    for name, cls in MODEL_REGISTRY.items():
        if type(model) is cls:
            return {"name": name, **model.config}
    raise ValueError(f"{type(model).__name__} is not in MODEL_REGISTRY")
