"""Hit-class labels shared by the simulator and the datasets it writes.

The integer code of a class is its position in :data:`HIT_CLASSES`; datasets store the
code (``/entry_1/truth/hit_class``, int8) and the names (file attribute ``hit_class_names``).

=====  ==============  ==========================================================
code   name            meaning
=====  ==============  ==========================================================
0      ``no_hit``      the pulse missed every particle (background/noise only)
1      ``single``      exactly one particle of the shard's structure was hit
2      ``multi``       two or more particles were hit in the same pulse
3      ``non_sample``  the pulse hit something else (contaminant, droplet, ...)
=====  ==============  ==========================================================

Few-shot code treats ``single`` as the positive class for F1 scores.
"""
from __future__ import annotations

import numbers

from speckle_embed.formats import HIT_CLASSES

__all__ = [
    "HIT_CLASSES",
    "NO_HIT",
    "SINGLE",
    "MULTI",
    "NON_SAMPLE",
    "hit_class_index",
    "hit_class_name",
]

# HIT_CLASSES (names by integer code) is owned by speckle_embed.formats and re-exported here.

NO_HIT: int = 0
SINGLE: int = 1
MULTI: int = 2
NON_SAMPLE: int = 3


def hit_class_index(name: str) -> int:
    """Integer code of a hit class.

    Parameters
    ----------
    name : str
        One of :data:`HIT_CLASSES` (surrounding whitespace and letter case are ignored,
        ``-`` is accepted for ``_``, e.g. ``"Non-Sample"``).

    Returns
    -------
    int
        The code, ``0 <= code < len(HIT_CLASSES)``.

    Raises
    ------
    ValueError
        If ``name`` is not a known class; the message lists the valid names.

    Examples
    --------
    >>> hit_class_index("single")
    1
    """
    if not isinstance(name, str):
        raise TypeError(f"hit class name must be a str, got {type(name).__name__} ({name!r})")
    key = name.strip().lower().replace("-", "_")
    try:
        return HIT_CLASSES.index(key)
    except ValueError:
        raise ValueError(
            f"unknown hit class {name!r}; valid names are {', '.join(HIT_CLASSES)}"
        ) from None


def hit_class_name(index: int) -> str:
    """Name of the hit class with integer code ``index``.

    Parameters
    ----------
    index : int
        Class code (Python or NumPy integer), ``0 <= index < len(HIT_CLASSES)``.

    Returns
    -------
    str
        The entry of :data:`HIT_CLASSES`.

    Raises
    ------
    ValueError
        If ``index`` is out of range (negative codes such as the ``-1`` "unknown" label
        of unlabelled data are rejected too).
    TypeError
        If ``index`` is not an integer (bools are rejected).

    Examples
    --------
    >>> hit_class_name(2)
    'multi'
    """
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"hit class index must be an integer, got {type(index).__name__} ({index!r})")
    i = int(index)
    if not 0 <= i < len(HIT_CLASSES):
        raise ValueError(
            f"hit class index {i} out of range 0..{len(HIT_CLASSES) - 1} ({', '.join(HIT_CLASSES)})"
        )
    return HIT_CLASSES[i]
