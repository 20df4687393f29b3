"""Moved: the code lives in :mod:`speckle_embed.fewshot.classifier`; this old path names the same module."""
import sys

from speckle_embed.fewshot import classifier as _module

sys.modules[__name__] = _module
