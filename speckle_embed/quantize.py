"""Moved: the code lives in :mod:`speckle_embed.inference.int8`; this old path names the same module."""
import sys

from speckle_embed.inference import int8 as _module

sys.modules[__name__] = _module
