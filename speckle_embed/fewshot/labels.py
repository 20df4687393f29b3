"""Class labels of the few-shot classifier: strings or integers, one kind per classifier."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["label_kind", "as_label_list", "labels_array"]


def label_kind(values: list) -> str:
    """``"str"`` or ``"int"``: the one kind of ``values``; refuses booleans, floats and mixtures."""
    kinds = set()
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            raise ValueError(f"class labels must be strings or integers; got the boolean {v!r}")
        if isinstance(v, (str, np.str_)):
            kinds.add("str")
        elif isinstance(v, (int, np.integer)):
            kinds.add("int")
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            raise ValueError(f"class labels must be strings or integers; got the float {v!r} "
                             "(convert integer-valued float labels with .astype(int))")
        else:
            raise ValueError(f"class labels must be strings or integers; got {v!r} ({type(v).__name__})")
    if len(kinds) > 1:
        raise ValueError("class labels mix strings and integers; use one type")
    return kinds.pop() if kinds else "int"


def as_label_list(y: Any) -> list:
    """``y`` (list, array or tensor, 1-D) as a Python list; bytes decoded to str."""
    if hasattr(y, "detach") and hasattr(y, "cpu"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y, dtype=object) if not isinstance(y, np.ndarray) else y
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per support frame); got shape {arr.shape}")
    out = []
    for v in arr.tolist():
        out.append(v.decode() if isinstance(v, bytes) else v)
    return out


def labels_array(values: list, kind: str) -> np.ndarray:
    """``values`` as a 1-D array of ``kind``: ``str`` or ``int64``."""
    if kind == "str":
        return np.array([str(v) for v in values], dtype=str) if values else np.empty(0, dtype=str)
    return np.array([int(v) for v in values], dtype=np.int64)
