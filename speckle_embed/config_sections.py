"""Config sections: the one rule for building a dataclass from a (partial) mapping.

A core module (standard library only): the realism domain and the training augmentation build
their sections with it, so an unknown key is refused with the same one-line error everywhere.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["section_from_mapping"]


def section_from_mapping(cls: type, value: Any, where: str, *, nullable: bool = False):
    """The dataclass ``cls`` built from ``value``, a mapping of (some of) its fields.

    Missing fields take their defaults; an unknown key is refused with a one-line error naming
    the key(s), the section and the allowed keys. An instance of ``cls`` is returned as it is.

    Parameters
    ----------
    cls : dataclass type
        The section's class.
    value : Mapping, cls instance or None
        The section as given (a plain ``dict`` or any ``Mapping``).
    where : str
        The section's name in error messages (e.g. ``"realism.background"``).
    nullable : bool, optional
        Whether ``None`` is allowed (then returned as ``None``: the section is off).

    Returns
    -------
    cls instance or None

    Raises
    ------
    ValueError
        ``unknown key(s) [...] in <where>; allowed: [...]``.
    TypeError
        ``value`` is neither a mapping nor a ``cls`` (nor ``None`` when ``nullable``).

    Examples
    --------
    >>> @dataclasses.dataclass
    ... class Zoom:
    ...     p: float = 0.5
    ...     range: float = 0.1
    >>> section_from_mapping(Zoom, {"p": 1.0}, "augment.zoom")
    Zoom(p=1.0, range=0.1)
    >>> section_from_mapping(Zoom, {"angle": 3}, "augment.zoom")
    Traceback (most recent call last):
    ...
    ValueError: unknown key(s) ['angle'] in augment.zoom; allowed: ['p', 'range']
    """
    if isinstance(value, cls) or (nullable and value is None):
        return value
    if not isinstance(value, Mapping):
        allowed = "a mapping, null" if nullable else "a mapping"
        raise TypeError(f"{where} must be {allowed} or {cls.__name__}; got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(known)}")
    return cls(**dict(value))
