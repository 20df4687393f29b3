"""speckle_embed: few-shot classification of X-ray single-particle-imaging diffraction patterns.

A small CNN maps a detector frame to a unit-length embedding (SpeckleNN, Wang et al.,
IUCrJ 2023); a new sample is classified by distance to a handful of labelled supports held
in a FAISS index. Public names are imported lazily so that ``import speckle_embed`` stays
light and never needs the simulator's dependencies (skopi, gemmi, finufft)::

    import speckle_embed as se
    emb = se.SpeckleEmbedder.from_checkpoint("best.pt")
    clf = se.FewShotClassifier(emb).fit(support_frames, support_labels)
    clf.predict(query_frames)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # few-shot API
    "SpeckleEmbedder": "speckle_embed.inference.embedder",
    "FewShotClassifier": "speckle_embed.fewshot.classifier",
    "load_pretrained": "speckle_embed.inference.pretrained",
    "CheckpointError": "speckle_embed.checkpoint",
    "UntrustedCheckpointError": "speckle_embed.checkpoint",
    "NotFittedError": "speckle_embed.fewshot.classifier",
    "ClassifierFileError": "speckle_embed.fewshot.classifier",
    "speckle_size": "speckle_embed.scale",
    "estimate_scale": "speckle_embed.scale",
    "estimate_center": "speckle_embed.scale",
    "geometric_scale": "speckle_embed.scale",
    # building blocks
    "Preprocessing": "speckle_embed.preprocess",
    "preprocess": "speckle_embed.preprocess",
    "SupportIndex": "speckle_embed.fewshot.index",
    "export_onnx": "speckle_embed.inference.export",
    "export_torchscript": "speckle_embed.inference.export",
    "SpeckleNNEmbedding": "speckle_embed.models",
    "PreActResNetClassifier": "speckle_embed.models",
    "Shi2019CNN": "speckle_embed.models",
    "SupervisedHead": "speckle_embed.heads",
    "EnsembleHead": "speckle_embed.heads",
    "head_from_config": "speckle_embed.heads",
    "load_head": "speckle_embed.heads",
    "build_model": "speckle_embed.models",
    "model_config": "speckle_embed.models",
    "TripletLoss": "speckle_embed.losses",
    "SemiHardMiner": "speckle_embed.losses",
    "BatchHardMiner": "speckle_embed.losses",
    "BatchAllMiner": "speckle_embed.losses",
    "SpeckleH5Dataset": "speckle_embed.data",
    "open_dataset": "speckle_embed.data",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speckle_embed' has no attribute {name!r}")


def __dir__():
    return __all__
