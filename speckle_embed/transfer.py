"""Moved: the code lives in :mod:`speckle_embed.inference.transfer`; this old path names the same module."""
import sys

from speckle_embed.inference import transfer as _module

sys.modules[__name__] = _module
