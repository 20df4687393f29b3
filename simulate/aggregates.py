"""Where the members of an aggregate sit: ballistic clusters of touching (or nearly touching) spheres.

Used for multi hits (2-4 copies of the particle, :mod:`simulate.shots`) and for debris clumps
of non-sample hits (:mod:`simulate.parasitic`). Own code rather than a library: it is skopi's
``build_bpca`` rule (each new sphere touches a random earlier one without overlapping any),
extended to unequal radii and small gaps.
"""
from __future__ import annotations

import numpy as np

__all__ = ["contact_positions"]


def contact_positions(n_particles: int, radius, rng: np.random.Generator, max_tries: int = 1000, *,
                      gap_rel=(0.0, 0.0)) -> np.ndarray:
    """Centres of ``n`` touching spheres (a ballistic-like aggregate), re-centred on their mean.

    Each new sphere ``i`` is placed at distance ``(r_i + r_k)(1 + g)`` from a randomly chosen
    earlier sphere ``k`` in a uniformly random direction, and kept if it overlaps no other
    (centre distance ``>= r_i + r_j``), as skopi's ``build_bpca``.

    Parameters
    ----------
    n_particles : int
        Number of spheres (>= 1).
    radius : float or array_like, shape (n,)
        One radius for all, or one per sphere (any length unit; the result is in that unit).
    rng : numpy.random.Generator
        Source of the directions (and gaps).
    max_tries : int
        Random directions tried per sphere before giving up.
    gap_rel : (float, float)
        Range ``[low, high]`` of the relative gap ``g`` between a new sphere and the one it
        attaches to, drawn uniformly once per new sphere; ``(0, 0)`` (default) touches and
        draws nothing, which keeps the random stream of earlier versions.

    Returns
    -------
    ndarray, shape (n, 3)
        Centres, mean 0.

    Raises
    ------
    ValueError
        Non-positive radii, a wrong number of radii or a bad gap range.
    RuntimeError
        No free site found in ``max_tries`` directions (does not happen for the small
        aggregates used here).

    Examples
    --------
    >>> pos = contact_positions(2, 30.0, np.random.default_rng(0))
    >>> round(float(np.linalg.norm(pos[0] - pos[1])), 6)
    60.0
    """
    radii = np.asarray(radius, dtype=np.float64)
    if radii.ndim == 0:
        radii = np.full(n_particles, float(radii))
    if radii.shape != (n_particles,) or not np.all(radii > 0):
        raise ValueError(f"radius must be positive, one value or {n_particles}, got {radius!r}")
    lo, hi = (float(g) for g in gap_rel)
    if not 0 <= lo <= hi:
        raise ValueError(f"gap_rel = {gap_rel!r}: need 0 <= low <= high")
    centres = [np.zeros(3)]
    while len(centres) < n_particles:
        new = len(centres)
        gap = rng.uniform(lo, hi) if hi > 0 else 0.0
        for _ in range(max_tries):
            v = rng.normal(size=3)
            k = rng.integers(len(centres))
            reach = radii[k] + radii[new]
            if gap:
                reach = reach * (1 + gap)
            cand = centres[k] + reach * v / np.linalg.norm(v)
            if all(np.linalg.norm(cand - c) >= (radii[j] + radii[new]) * (1 - 1e-9)
                   for j, c in enumerate(centres)):
                centres.append(cand)
                break
        else:  # pragma: no cover - a free contact site always exists for small aggregates
            raise RuntimeError("could not place a touching particle")
    pos = np.array(centres)
    return pos - pos.mean(0)
