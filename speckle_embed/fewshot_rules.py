"""Moved: the code lives in :mod:`speckle_embed.fewshot.rules`; this old path names the same module."""
import sys

from speckle_embed.fewshot import rules as _module

sys.modules[__name__] = _module
