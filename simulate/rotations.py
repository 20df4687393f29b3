"""Quaternions (scalar-first, as skopi) and rotation matrices."""
from __future__ import annotations

import numpy as np


def quaternion_to_matrix(quaternions) -> np.ndarray:
    """Rotation matrices of unit quaternions ``(w, x, y, z)``.

    Same formula as ``skopi.geometry.quaternion2rot3d``; the matrix rotates the particle,
    ``r' = R r``. Quaternions are normalised first.

    Parameters
    ----------
    quaternions : array_like, shape (..., 4)

    Returns
    -------
    ndarray, shape (..., 3, 3), float64
    """
    q = np.asarray(quaternions, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(q)):
        raise ValueError("quaternions must be finite and non-zero")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniformly distributed rotations (Shoemake's method), shape (n, 4), ``w >= 0``."""
    u1, u2, u3 = rng.random((3, n))
    q = np.stack([np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
                  np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
                  np.sqrt(u1) * np.sin(2 * np.pi * u3),
                  np.sqrt(u1) * np.cos(2 * np.pi * u3)], axis=-1)[:, [3, 0, 1, 2]]
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)
