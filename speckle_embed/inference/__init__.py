"""Inference: frames in, unit-norm embeddings out.

One concept per module, re-exported here:

* :mod:`~speckle_embed.inference.embedder`: :class:`SpeckleEmbedder` (embedding);
* :mod:`~speckle_embed.inference.checkpoint_io`: its checkpoint loading and saving;
* :mod:`~speckle_embed.inference.frames`: input checks and the window the model sees, on top of
  the one preprocessing implementation (:func:`speckle_embed.preprocess.model_inputs`);
* :mod:`~speckle_embed.inference.precision`: the precisions, BatchNorm folding of the float copy;
* :mod:`~speckle_embed.inference.int8`: static int8 quantization on the CPU (``docs/int8.md``);
* :mod:`~speckle_embed.inference.transfer`: pinned host-to-device copies (the GPU input path);
* :mod:`~speckle_embed.inference.export`: TorchScript / ONNX graphs that take raw frames;
* :mod:`~speckle_embed.inference.pretrained`: the embedding shipped in the package.
"""
from __future__ import annotations

from .embedder import SpeckleEmbedder
from .export import export_onnx, export_torchscript
from .int8 import Int8SpeckleNN, quantize_specklenn
from .pretrained import available_pretrained, load_pretrained
from .transfer import HostToDevice

__all__ = ["SpeckleEmbedder", "load_pretrained", "available_pretrained", "export_onnx", "export_torchscript",
           "quantize_specklenn", "Int8SpeckleNN", "HostToDevice"]
