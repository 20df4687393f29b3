"""Embedding networks and the registry that builds them from config dicts."""
from .registry import MODEL_REGISTRY, build_model, model_config, register_model
from .specklenn import SpeckleNNEmbedding

__all__ = [
    "SpeckleNNEmbedding",
    "MODEL_REGISTRY",
    "register_model",
    "build_model",
    "model_config",
]
