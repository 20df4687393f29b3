"""Moved: the code lives in :mod:`speckle_embed.inference.precision`; this old path names the same module."""
import sys

from speckle_embed.inference import precision as _module

sys.modules[__name__] = _module
