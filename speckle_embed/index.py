"""Moved: the code lives in :mod:`speckle_embed.fewshot.index`; this old path names the same module."""
import sys

from speckle_embed.fewshot import index as _module

sys.modules[__name__] = _module
