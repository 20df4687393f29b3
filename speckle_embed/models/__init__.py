"""Networks and the registry that builds them from config dicts.

``specklenn`` (the SpeckleNN embedding), ``preact_resnet`` (Assalauova et al. 2022) and
``shi2019`` (Shi et al. 2019) are registered on import.
"""
from .registry import MODEL_REGISTRY, build_model, model_config, register_model
from .resnet import PreActBlock, PreActResNetClassifier
from .shi2019 import SHI2019_THRESHOLD, Shi2019CNN
from .specklenn import SpeckleNNEmbedding

__all__ = [
    "SpeckleNNEmbedding",
    "PreActBlock",
    "PreActResNetClassifier",
    "Shi2019CNN",
    "SHI2019_THRESHOLD",
    "MODEL_REGISTRY",
    "register_model",
    "build_model",
    "model_config",
]
