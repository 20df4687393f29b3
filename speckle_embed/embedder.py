"""Moved: the code lives in :mod:`speckle_embed.inference.embedder`; this old path names the same module."""
import sys

from speckle_embed.inference import embedder as _module

sys.modules[__name__] = _module
