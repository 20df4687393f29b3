"""``speckle-embed classify`` (apps layer): one concept per module, re-exported here.

* :mod:`~speckle_embed.classify.discovery`: input files, their frames dataset and mask;
* :mod:`~speckle_embed.classify.writer`: the full-disk-safe ``.h5`` / ``.csv`` results;
* :mod:`~speckle_embed.classify.app`: :func:`run_classify`, the run.

The command line (:func:`speckle_embed.cli.classify_main`) composes the config and calls :func:`run_classify`.
"""
from __future__ import annotations

from .app import run_classify
from .discovery import CXI_DATA_PATHS, find_frames_dataset, resolve_inputs
from .writer import PredictionWriter

__all__ = ["run_classify", "CXI_DATA_PATHS", "find_frames_dataset", "resolve_inputs", "PredictionWriter"]
