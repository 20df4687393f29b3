"""Pairwise distances between embeddings.

Every miner and the triplet loss use the *squared* Euclidean distance, so the margin is a
squared-L2 margin (as in SpeckleNN and FaceNet).
"""
from __future__ import annotations

import torch

__all__ = ["pairwise_squared_l2"]


def _check_matrix(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def pairwise_squared_l2(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distance between every row of ``a`` and every row of ``b``.

    Uses the expansion ``|x - y|^2 = |x|^2 + |y|^2 - 2 x.y`` (one matrix product, O(N M)
    memory) with three safeguards against its round-off:

    * both sets are first centred on their common mean (distances are translation
      invariant, and centring removes the cancellation between large ``|x|^2`` terms when
      the points sit far from the origin);
    * half-precision inputs are computed in float32;
    * the result is clamped to ``>= 0``, and when ``b`` is omitted (or is ``a`` itself) the
      matrix is made exactly symmetric and its diagonal exactly 0.

    The function is differentiable (no square root, so no singular gradient at 0).

    Parameters
    ----------
    a : Tensor, shape (N, d), floating point
    b : Tensor, shape (M, d), floating point, optional
        Defaults to ``a`` (self-distances).

    Returns
    -------
    Tensor, shape (N, M)
        ``D[i, j] = sum_k (a[i, k] - b[j, k])**2``; dtype is that of the inputs promoted to at
        least float32, on the inputs' device.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> pairwise_squared_l2(x)
    tensor([[ 0., 25.],
            [25.,  0.]])
    """
    _check_matrix("a", a)
    same = b is None or b is a
    if same:
        b = a
    else:
        _check_matrix("b", b)
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"a and b must have the same embedding size, got {a.shape[1]} and {b.shape[1]}"
            )
        if a.device != b.device:
            raise ValueError(f"a and b are on different devices ({a.device} and {b.device})")

    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a_ = a.to(dtype)
    b_ = a_ if same else b.to(dtype)
    n, m = a_.shape[0], b_.shape[0]
    if n == 0 or m == 0:
        return a_.new_zeros(n, m)

    centre = (a_ if same else torch.cat([a_, b_], dim=0)).mean(dim=0, keepdim=True)
    a_ = a_ - centre
    b_ = a_ if same else b_ - centre
    sq_a = a_.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
    sq_b = sq_a.T if same else b_.pow(2).sum(dim=1).unsqueeze(0)  # (1, M)
    dist = torch.addmm(sq_a + sq_b, a_, b_.T, beta=1.0, alpha=-2.0).clamp_min(0.0)
    if same:
        # a @ a.T is not bitwise symmetric in BLAS; make d(i, j) == d(j, i) exactly.
        dist = 0.5 * (dist + dist.T)
        eye = torch.eye(n, dtype=torch.bool, device=dist.device)
        dist = dist.masked_fill(eye, 0.0)
    return dist
