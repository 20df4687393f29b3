"""A labelled FAISS index of support embeddings.

:class:`SupportIndex` holds the *support set* of a few-shot classifier: embeddings of shape
``(n, d)`` together with an integer class label per row.  It wraps a FAISS
``IndexIDMap2(IndexFlatL2)`` (or ``IndexFlatIP``), so searches are exact (brute force), every
support gets a stable integer id that survives removals, and the whole thing serialises to bytes.

Conventions (see ``/work/shared/STYLE.md``, faiss section):

* FAISS wants float32, C-contiguous arrays; every input is converted here, after checking its
  shape and that it holds no NaN/inf (the offending row is named in the error).
* ``IndexFlatL2`` returns **squared** L2 distances; :meth:`SupportIndex.search` hands them back
  unchanged.  ``IndexFlatIP`` returns inner products (larger = closer).
* Ids are assigned here, ``0, 1, 2, ...`` in insertion order, and are never reused.  Every
  per-support array (:attr:`~SupportIndex.ids_`, :attr:`~SupportIndex.labels_`, the columns of
  :meth:`~SupportIndex.all_distances`, :meth:`~SupportIndex.get_embeddings`) is ordered by
  ascending id.
* Labels are non-negative integers; ``-1`` is reserved for "no result" / "unknown".

GPU: the CPU ``IndexIDMap2`` is always the source of truth.  With ``use_gpu`` a copy of its flat
storage is placed on the GPU (``StandardGpuResources`` + ``index_cpu_to_gpu``) and serves
:meth:`~SupportIndex.search`; additions go to both, a removal marks the GPU copy stale and it is
rebuilt on the next search.  Searches with ``k`` above the GPU limit run on the CPU.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from speckle_embed.atomic import write_bytes_atomically

__all__ = ["SupportIndex", "gpu_available"]

_METRICS = ("l2", "ip")
_FORMAT_VERSION = 1
# Largest k that FAISS GPU brute-force search accepts (GPU_MAX_SELECTION_K).
_GPU_MAX_K = 2048
# all_distances() materialises (chunk, ntotal) float32 + int64 results; keep a chunk under this.
_ALL_DISTANCES_CHUNK_BYTES = 256 * 2**20

_GPU_RESOURCES: Any = None  # one StandardGpuResources shared by every index (lazily created)


def gpu_available() -> bool:
    """Whether FAISS can place an index on a GPU here.

    Returns
    -------
    bool
        True when the installed faiss has GPU support (``StandardGpuResources``) and
        ``faiss.get_num_gpus() > 0``.
    """
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return int(faiss.get_num_gpus()) > 0
    except Exception:  # pragma: no cover - defensive: broken CUDA runtime
        return False


def _gpu_resources() -> Any:
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def _to_numpy(x: Any) -> np.ndarray:
    """Array-like (numpy, list, CPU/GPU torch tensor) to a numpy array, without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_matrix(x: Any, dim: int, name: str) -> np.ndarray:
    """Validate an ``(n, dim)`` real matrix and return it as float32, C-contiguous.

    Raises
    ------
    ValueError
        Wrong number of dimensions, wrong width, non-numeric dtype, or a row holding NaN/inf.
    """
    arr = _to_numpy(x)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (use x[None, :] for a single vector)" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be a 2-D array of shape (n, {dim}); got shape {arr.shape}{hint}")
    if arr.shape[1] != dim:
        raise ValueError(
            f"{name} has dimension {arr.shape[1]} but the index has dim={dim}; "
            f"expected shape (n, {dim}), got {arr.shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)  # after the cast: float64 overflow shows up as inf
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"{name} contains NaN or inf (or values too large for float32) in "
            f"{bad.size} row(s): row {shown}"
        )
    return arr


def _check_int_vector(x: Any, name: str, length: int | None = None) -> np.ndarray:
    """Validate a 1-D integer vector and return it as int64."""
    arr = _to_numpy(x)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold integers; got dtype {arr.dtype}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]} but there are {length} embeddings")
    return arr.astype(np.int64, copy=False)


class SupportIndex:
    """Exact nearest-neighbour index over labelled support embeddings (FAISS flat + id map).

    Parameters
    ----------
    dim : int
        Embedding dimension ``d``.
    metric : {"l2", "ip"}, default "l2"
        ``"l2"``: squared Euclidean distance (``IndexFlatL2``, smaller = closer).
        ``"ip"``: inner product (``IndexFlatIP``, larger = closer; cosine similarity for
        unit-norm embeddings).
    use_gpu : {"auto", True, False}, default "auto"
        ``"auto"`` uses a GPU when faiss has GPU support and sees a device, and the CPU
        otherwise, silently.  ``True`` raises :class:`RuntimeError` when that is impossible.
        ``False`` always stays on the CPU.

    Attributes
    ----------
    dim : int
    metric : str
    ntotal : int
        Number of supports currently stored.
    ids_ : ndarray of int64, shape (ntotal,)
        Ids of the stored supports, ascending.
    labels_ : ndarray of int64, shape (ntotal,)
        Label of each support, ordered by id (aligned with ``ids_``).
    on_gpu : bool
        Whether searches run on a GPU.

    Examples
    --------
    >>> import numpy as np
    >>> index = SupportIndex(dim=2)
    >>> ids = index.add(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]), labels=[0, 0, 1])
    >>> dist, labels, ids = index.search(np.array([[0.9, 0.0]]), k=2)
    >>> labels.tolist(), ids.tolist()
    ([[0, 0]], [[1, 0]])
    >>> np.round(dist.astype(float), 2).tolist()
    [[0.01, 0.81]]
    """

    def __init__(self, dim: int, metric: str = "l2", use_gpu: bool | str = "auto") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer; got {dim!r}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}; got {metric!r}")
        if use_gpu not in ("auto", True, False):
            raise ValueError(f"use_gpu must be 'auto', True or False; got {use_gpu!r}")
        self.dim = int(dim)
        self.metric = metric
        self.use_gpu = use_gpu
        flat = faiss.IndexFlatL2(self.dim) if metric == "l2" else faiss.IndexFlatIP(self.dim)
        self._index = faiss.IndexIDMap2(flat)
        self._ids = np.empty(0, dtype=np.int64)  # ascending == FAISS storage order
        self._labels = np.empty(0, dtype=np.int64)
        self._sqnorms = np.empty(0, dtype=np.float64)  # ||x||^2 per support (for "ip" -> L2)
        self._next_id = 0
        self._gpu_index: Any = None
        self._gpu_stale = False
        self.on_gpu = self._resolve_gpu(use_gpu)

    # ------------------------------------------------------------------ GPU plumbing
    @staticmethod
    def _resolve_gpu(use_gpu: bool | str) -> bool:
        if use_gpu is False:
            return False
        if gpu_available():
            return True
        if use_gpu is True:
            if not hasattr(faiss, "StandardGpuResources"):
                why = "the installed faiss has no GPU support (install faiss-gpu instead of faiss-cpu)"
            else:
                why = "faiss.get_num_gpus() reports no visible GPU"
            raise RuntimeError(f"SupportIndex(use_gpu=True) is impossible: {why}; "
                               "pass use_gpu='auto' to fall back to the CPU")
        return False

    def _gpu_search_index(self) -> Any:
        """The GPU copy of the flat storage (positions == CPU storage order), rebuilt if stale."""
        if self._gpu_index is None or self._gpu_stale:
            self._gpu_index = faiss.index_cpu_to_gpu(
                _gpu_resources(), 0, faiss.downcast_index(self._index.index))
            self._gpu_stale = False
        return self._gpu_index

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        """Number of supports stored."""
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def ids_(self) -> np.ndarray:
        """Ids of the stored supports, ascending; shape ``(ntotal,)``."""
        return self._ids.copy()

    @property
    def labels_(self) -> np.ndarray:
        """Labels of the stored supports ordered by id; shape ``(ntotal,)``."""
        return self._labels.copy()

    @property
    def squared_norms_(self) -> np.ndarray:
        """``||x||^2`` of each stored support (float64, as stored in float32), ordered by id."""
        return self._sqnorms.copy()

    def __repr__(self) -> str:
        device = "gpu" if self.on_gpu else "cpu"
        return (f"SupportIndex(dim={self.dim}, metric={self.metric!r}, ntotal={self.ntotal}, "
                f"device={device!r})")

    # ------------------------------------------------------------------ mutation
    def add(self, embeddings: Any, labels: Any) -> np.ndarray:
        """Add labelled supports.

        Parameters
        ----------
        embeddings : array-like, shape (n, d)
            Converted to float32, C-contiguous.  Rows must be finite.
        labels : array-like of int, shape (n,)
            Non-negative class labels.

        Returns
        -------
        ids : ndarray of int64, shape (n,)
            The ids given to the new supports (consecutive, never reused).
        """
        x = _check_matrix(embeddings, self.dim, "embeddings")
        y = _check_int_vector(labels, "labels", length=x.shape[0])
        if y.size and y.min() < 0:
            bad = np.flatnonzero(y < 0)
            raise ValueError(f"labels must be >= 0 (-1 means 'unknown'); row {bad[0]} has label {y[bad[0]]}")
        n = x.shape[0]
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        if n == 0:
            return ids
        self._index.add_with_ids(x, ids)
        if self.on_gpu and self._gpu_index is not None and not self._gpu_stale:
            self._gpu_index.add(x)
        self._next_id += n
        self._ids = np.concatenate([self._ids, ids])
        self._labels = np.concatenate([self._labels, y])
        self._sqnorms = np.concatenate([self._sqnorms, np.einsum("ij,ij->i", x, x, dtype=np.float64)])
        return ids

    def remove(self, ids: Any) -> int:
        """Remove supports by id.  Ids of the remaining supports do not change.

        Parameters
        ----------
        ids : array-like of int, shape (r,)
            Ids to remove (duplicates allowed).  Every id must be present.

        Returns
        -------
        int
            Number of supports removed.

        Raises
        ------
        ValueError
            If an id is not in the index.
        """
        ids = np.unique(_check_int_vector(ids, "ids"))
        if ids.size == 0:
            return 0
        missing = ids[~np.isin(ids, self._ids)]
        if missing.size:
            raise ValueError(f"ids not in the index: {missing[:10].tolist()}")
        removed = int(self._index.remove_ids(ids))
        keep = ~np.isin(self._ids, ids)
        self._ids, self._labels, self._sqnorms = self._ids[keep], self._labels[keep], self._sqnorms[keep]
        self._gpu_stale = True
        assert removed == ids.size and self.ntotal == self._ids.size
        return removed

    # ------------------------------------------------------------------ queries
    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions in ``ids_`` of (valid, i.e. >= 0) ids."""
        return np.searchsorted(self._ids, ids)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` nearest supports of each query.

        Parameters
        ----------
        queries : array-like, shape (m, d)
        k : int
            Number of neighbours, ``k >= 1``.  If ``k > ntotal`` the missing columns are padded
            with id ``-1``, label ``-1`` and distance ``+inf`` ("l2") / ``-inf`` ("ip").

        Returns
        -------
        distances : ndarray of float32, shape (m, k)
            Squared L2 distances, ascending ("l2"), or inner products, descending ("ip").
        labels : ndarray of int64, shape (m, k)
            Labels of the neighbours.
        ids : ndarray of int64, shape (m, k)
            Ids of the neighbours.

        Raises
        ------
        ValueError
            Empty index, bad ``k``, or malformed queries.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        if self.ntotal == 0:
            raise ValueError("cannot search an empty SupportIndex: add() supports first")
        q = _check_matrix(queries, self.dim, "queries")
        k = int(k)
        if q.shape[0] == 0:
            return (np.empty((0, k), np.float32), np.empty((0, k), np.int64), np.empty((0, k), np.int64))
        if self.on_gpu and min(k, self.ntotal) <= _GPU_MAX_K:
            kk = min(k, self.ntotal)
            dist, pos = self._gpu_search_index().search(q, kk)
            ids = np.where(pos >= 0, self._ids[np.clip(pos, 0, None)], -1)
            if kk < k:
                dist = np.concatenate([dist, np.full((q.shape[0], k - kk), np.nan, np.float32)], axis=1)
                ids = np.concatenate([ids, np.full((q.shape[0], k - kk), -1, np.int64)], axis=1)
        else:
            dist, ids = self._index.search(q, k)
        ids = ids.astype(np.int64, copy=False)
        valid = ids >= 0
        labels = np.full(ids.shape, -1, dtype=np.int64)
        labels[valid] = self._labels[self._positions(ids[valid])]
        if not valid.all():
            dist = np.array(dist, dtype=np.float32)
            dist[~valid] = np.inf if self.metric == "l2" else -np.inf
        return dist, labels, ids

    def all_distances(self, queries: Any) -> np.ndarray:
        """Squared L2 distance from every query to every support.

        Computed by a brute-force FAISS search with ``k = ntotal`` (queries in chunks to bound
        memory), then reordered by id.  For ``metric="ip"`` the inner products are converted,
        ``||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x`` (clipped at 0), so the result is a squared L2
        distance for either metric.

        Parameters
        ----------
        queries : array-like, shape (m, d)

        Returns
        -------
        ndarray of float32, shape (m, ntotal)
            Column ``j`` is the support with id ``ids_[j]`` (label ``labels_[j]``).
        """
        if self.ntotal == 0:
            raise ValueError("cannot compute distances to an empty SupportIndex: add() supports first")
        q = _check_matrix(queries, self.dim, "queries")
        n = self.ntotal
        out = np.empty((q.shape[0], n), dtype=np.float32)
        chunk = max(1, _ALL_DISTANCES_CHUNK_BYTES // (12 * n))
        for start in range(0, q.shape[0], chunk):
            qs = q[start:start + chunk]
            dist, _, ids = self.search(qs, n)
            block = np.empty_like(dist)
            np.put_along_axis(block, self._positions(ids), dist, axis=1)
            if self.metric == "ip":
                qn = np.einsum("ij,ij->i", qs, qs, dtype=np.float64)
                block = np.maximum(qn[:, None] + self._sqnorms[None, :] - 2.0 * block, 0.0)
            out[start:start + chunk] = block
        return out

    def get_embeddings(self, ids: Any = None) -> np.ndarray:
        """Stored embeddings (as float32), read back from the CPU FAISS index.

        Parameters
        ----------
        ids : array-like of int, shape (r,), optional
            Which supports; default all of them, ordered by id.

        Returns
        -------
        ndarray of float32, shape (r, d)
        """
        if ids is None:
            if self.ntotal == 0:
                return np.empty((0, self.dim), dtype=np.float32)
            return self._index.index.reconstruct_n(0, self.ntotal)  # storage order == id order
        ids = _check_int_vector(ids, "ids")
        missing = ids[~np.isin(ids, self._ids)]
        if missing.size:
            raise ValueError(f"ids not in the index: {missing[:10].tolist()}")
        return self._index.index.reconstruct_batch(self._positions(ids)).reshape(-1, self.dim)

    # ------------------------------------------------------------------ persistence
    def serialize(self) -> bytes:
        """The index (FAISS bytes via ``faiss.serialize_index``) plus ids and labels, as bytes.

        The payload is an ``.npz`` archive (no pickles); :meth:`deserialize` reads it back.
        """
        buf = io.BytesIO()
        np.savez(
            buf,
            format_version=np.int64(_FORMAT_VERSION),
            dim=np.int64(self.dim),
            metric=np.array(self.metric),
            next_id=np.int64(self._next_id),
            ids=self._ids,
            labels=self._labels,
            faiss_index=faiss.serialize_index(self._index),
        )
        return buf.getvalue()

    @classmethod
    def deserialize(cls, data: bytes, use_gpu: bool | str = "auto") -> "SupportIndex":
        """Rebuild an index from :meth:`serialize` output.

        Parameters
        ----------
        data : bytes
        use_gpu : {"auto", True, False}, default "auto"
            Where the rebuilt index searches (not stored in the bytes).

        Returns
        -------
        SupportIndex
        """
        try:
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
                fields = {name: z[name] for name in z.files}
        except Exception as exc:
            raise ValueError(f"not a serialized SupportIndex: {exc}") from exc
        required = {"format_version", "dim", "metric", "next_id", "ids", "labels", "faiss_index"}
        if not required <= set(fields):
            raise ValueError(f"not a serialized SupportIndex: missing {sorted(required - set(fields))}")
        if int(fields["format_version"]) != _FORMAT_VERSION:
            raise ValueError(f"unsupported SupportIndex format version {int(fields['format_version'])}")
        self = cls(int(fields["dim"]), metric=str(fields["metric"]), use_gpu=use_gpu)
        index = faiss.deserialize_index(np.ascontiguousarray(fields["faiss_index"], dtype=np.uint8))
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"corrupt serialized SupportIndex: holds a {type(index).__name__}, "
                             "not an IndexIDMap2")
        stored_ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        ids = fields["ids"].astype(np.int64)
        expected_metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        consistent = (
            index.d == self.dim
            and index.metric_type == expected_metric
            and np.array_equal(stored_ids, ids)
            and fields["labels"].shape == ids.shape
        )
        if not consistent:
            raise ValueError("corrupt serialized SupportIndex: FAISS index, ids and labels disagree")
        self._index = index
        self._ids = ids
        self._labels = fields["labels"].astype(np.int64)
        self._next_id = int(fields["next_id"])
        x = self.get_embeddings()
        self._sqnorms = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`serialize` bytes to ``path`` atomically (:func:`speckle_embed.atomic.write_bytes_atomically`:
        a ``<name>.<pid>-<hex>.tmp`` sibling, fsync, rename)."""
        write_bytes_atomically(self.serialize(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, use_gpu: bool | str = "auto") -> "SupportIndex":
        """Read an index written by :meth:`save`."""
        return cls.deserialize(Path(path).read_bytes(), use_gpu=use_gpu)
