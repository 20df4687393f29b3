"""Per-frame random draws from a configured range (the one helper every realism effect uses).

A range is a pair ``[low, high]`` of plain numbers (YAML- and checkpoint-friendly); ``low ==
high`` fixes the value. All draws take a :class:`torch.Generator` so that the same generator
state gives the same frames.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["check_range", "uniform", "log_uniform", "bernoulli"]


def check_range(value, where: str, *, low: float = float("-inf"), high: float = float("inf"),
                positive: bool = False) -> tuple[float, float]:
    """``(lo, hi)`` floats from a pair, or ``ValueError`` naming ``where``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a pair [low, high] of numbers, got {value!r}") from None
    if not (low <= lo <= hi <= high) or (positive and lo <= 0):
        bound = "(0" if positive else f"[{low:g}"
        raise ValueError(f"{where} must satisfy {bound} <= low <= high <= {high:g}], got {value!r}")
    return lo, hi


def uniform(rng: Sequence[float], n: int, generator, device=None) -> torch.Tensor:
    """``n`` draws of ``U(low, high)``, float32."""
    u = torch.rand(n, generator=generator, device=device)
    return float(rng[0]) + u * (float(rng[1]) - float(rng[0]))


def log_uniform(rng: Sequence[float], n: int, generator, device=None) -> torch.Tensor:
    """``n`` draws uniform in ``log`` between ``low > 0`` and ``high`` (scale-free quantities)."""
    lo, hi = float(rng[0]), float(rng[1])
    u = torch.rand(n, generator=generator, device=device)
    return torch.exp(torch.log(torch.tensor(lo)) + u * (torch.log(torch.tensor(hi)) - torch.log(torch.tensor(lo))))


def bernoulli(p: float, n: int, generator, device=None) -> torch.Tensor:
    """``n`` booleans, True with probability ``p`` (one uniform each, drawn whatever ``p``)."""
    return torch.rand(n, generator=generator, device=device) < float(p)
