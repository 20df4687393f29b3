"""SupportIndex: FAISS answers against numpy brute force, ids, persistence, errors, GPU plumbing."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import speckle_embed.index as index_mod
from speckle_embed.index import SupportIndex, gpu_available

DIM = 12


@pytest.fixture
def data():
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((60, DIM)).astype(np.float32)
    y = rng.integers(0, 4, size=60)
    q = rng.standard_normal((7, DIM)).astype(np.float32)
    return x, y, q


def brute_sq_l2(q, x):
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    return ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)


# ----------------------------------------------------------------------------- distances
def test_l2_search_matches_numpy(data):
    x, y, q = data
    index = SupportIndex(DIM, metric="l2", use_gpu=False)
    ids = index.add(x, y)
    np.testing.assert_array_equal(ids, np.arange(60))
    dist, labels, got_ids = index.search(q, k=5)
    ref = brute_sq_l2(q, x)
    order = np.argsort(ref, axis=1)[:, :5]
    np.testing.assert_array_equal(got_ids, order)
    np.testing.assert_array_equal(labels, y[order])
    # true squared L2 distances (not square-rooted), ascending
    np.testing.assert_allclose(dist, np.take_along_axis(ref, order, 1), rtol=1e-5, atol=1e-5)
    assert dist.dtype == np.float32 and labels.dtype == np.int64 and got_ids.dtype == np.int64
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_ip_search_matches_numpy(data):
    x, y, q = data
    index = SupportIndex(DIM, metric="ip", use_gpu=False)
    index.add(x, y)
    dist, labels, ids = index.search(q, k=6)
    ip = q.astype(np.float64) @ x.astype(np.float64).T
    order = np.argsort(-ip, axis=1)[:, :6]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(labels, y[order])
    np.testing.assert_allclose(dist, np.take_along_axis(ip, order, 1), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) <= 0)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_all_distances_is_squared_l2_ordered_by_id(data, metric):
    x, y, q = data
    index = SupportIndex(DIM, metric=metric, use_gpu=False)
    index.add(x, y)
    index.remove([0, 5, 59])
    keep = np.setdiff1d(np.arange(60), [0, 5, 59])
    d = index.all_distances(q)
    assert d.shape == (7, 57) and d.dtype == np.float32
    np.testing.assert_allclose(d, brute_sq_l2(q, x[keep]), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(index.ids_, keep)
    np.testing.assert_array_equal(index.labels_, y[keep])


def test_all_distances_chunks_queries(data, monkeypatch):
    x, y, q = data
    index = SupportIndex(DIM, use_gpu=False)
    index.add(x, y)
    full = index.all_distances(q)
    monkeypatch.setattr(index_mod, "_ALL_DISTANCES_CHUNK_BYTES", 1)  # one query per chunk
    np.testing.assert_array_equal(index.all_distances(q), full)


def test_k_larger_than_ntotal_is_padded(data):
    x, y, q = data
    for metric, pad in (("l2", np.inf), ("ip", -np.inf)):
        index = SupportIndex(DIM, metric=metric, use_gpu=False)
        index.add(x[:3], y[:3])
        dist, labels, ids = index.search(q, k=5)
        assert dist.shape == (7, 5)
        assert np.all(ids[:, 3:] == -1) and np.all(labels[:, 3:] == -1)
        assert np.all(dist[:, 3:] == pad)
        assert np.all(ids[:, :3] >= 0)


def test_accepts_float64_fortran_lists_and_torch(data):
    x, y, q = data
    index = SupportIndex(DIM, use_gpu=False)
    index.add(np.asfortranarray(x.astype(np.float64)), y.tolist())
    ref = index.search(q, 3)
    torch = pytest.importorskip("torch")
    got = index.search(torch.from_numpy(q).requires_grad_(True), 3)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(index.search(q.tolist(), 3)[2], ref[2])


def test_get_embeddings_round_trip(data):
    x, y, _ = data
    index = SupportIndex(DIM, use_gpu=False)
    index.add(x, y)
    index.remove([3, 4])
    np.testing.assert_array_equal(index.get_embeddings(), np.delete(x, [3, 4], axis=0))
    np.testing.assert_array_equal(index.get_embeddings([59, 0, 10]), x[[59, 0, 10]])
    np.testing.assert_allclose(index.squared_norms_, (np.delete(x, [3, 4], 0).astype(np.float64) ** 2).sum(1),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- ids
def test_ids_stable_after_remove(data):
    x, y, q = data
    index = SupportIndex(DIM, use_gpu=False)
    first = index.add(x[:30], y[:30])
    second = index.add(x[30:], y[30:])
    np.testing.assert_array_equal(second, np.arange(30, 60))
    assert index.remove([2, 31, 31, 45]) == 3
    assert index.ntotal == len(index) == 57
    # FAISS's own id map agrees with ours
    np.testing.assert_array_equal(faiss.vector_to_array(index._index.id_map), index.ids_)
    keep = np.setdiff1d(np.arange(60), [2, 31, 45])
    dist, labels, ids = index.search(q, k=10)
    ref = brute_sq_l2(q, x[keep])
    np.testing.assert_array_equal(ids, keep[np.argsort(ref, axis=1)[:, :10]])
    np.testing.assert_array_equal(labels, y[ids])
    # the returned ids still point at the embeddings they were given for
    np.testing.assert_array_equal(index.get_embeddings(ids[0]), x[ids[0]])
    # new supports get fresh ids; removed ids are never reused
    third = index.add(x[:2], [1, 1])
    np.testing.assert_array_equal(third, [60, 61])
    assert first[0] == 0 and 2 not in index.ids_


def test_remove_everything_then_search_raises(data):
    x, y, q = data
    index = SupportIndex(DIM, use_gpu=False)
    index.add(x[:4], y[:4])
    index.remove(np.arange(4))
    assert index.ntotal == 0
    with pytest.raises(ValueError, match="empty"):
        index.search(q, 1)


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_serialize_round_trip_identical(data, metric, tmp_path):
    x, y, q = data
    index = SupportIndex(DIM, metric=metric, use_gpu=False)
    index.add(x, y)
    index.remove([1, 7, 30])
    blob = index.serialize()
    assert isinstance(blob, bytes)
    for clone in (SupportIndex.deserialize(blob, use_gpu=False), _save_load(index, tmp_path)):
        assert (clone.dim, clone.metric, clone.ntotal) == (index.dim, index.metric, index.ntotal)
        np.testing.assert_array_equal(clone.ids_, index.ids_)
        np.testing.assert_array_equal(clone.labels_, index.labels_)
        for a, b in zip(index.search(q, 8), clone.search(q, 8)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(index.all_distances(q), clone.all_distances(q))
        np.testing.assert_array_equal(clone.add(x[:1], [0]), [60])  # id counter restored


def _save_load(index, tmp_path):
    path = tmp_path / "support.idx"
    index.save(path)
    assert path.exists() and not (tmp_path / "support.idx.tmp").exists()
    return SupportIndex.load(path, use_gpu=False)


def test_save_is_atomic_and_leaves_other_tmp_files_alone(data, tmp_path, monkeypatch):
    """save() writes its own <name>.<pid>-<hex>.tmp, fsyncs it, and never touches a user's .tmp file."""
    import speckle_embed.atomic

    x, y, _ = data
    index = SupportIndex(x.shape[1], use_gpu=False)
    index.add(x, y)
    user = tmp_path / "support.idx.tmp"
    user.write_text("a user's notes")
    synced = []
    real_fsync = speckle_embed.atomic.os.fsync
    monkeypatch.setattr(speckle_embed.atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    index.save(tmp_path / "support.idx")
    assert synced and user.read_text() == "a user's notes"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["support.idx", "support.idx.tmp"]
    assert SupportIndex.load(tmp_path / "support.idx", use_gpu=False).ntotal == index.ntotal


def test_deserialize_garbage_raises():
    with pytest.raises(ValueError, match="not a serialized SupportIndex"):
        SupportIndex.deserialize(b"definitely not an index")


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clearly(data):
    x, y, q = data
    with pytest.raises(ValueError, match="metric"):
        SupportIndex(DIM, metric="cosine")
    with pytest.raises(ValueError, match="dim"):
        SupportIndex(0)
    with pytest.raises(ValueError, match="use_gpu"):
        SupportIndex(DIM, use_gpu="yes")
    index = SupportIndex(DIM, use_gpu=False)
    with pytest.raises(ValueError, match="empty"):
        index.search(q, 3)
    with pytest.raises(ValueError, match="empty"):
        index.all_distances(q)
    with pytest.raises(ValueError, match=r"dimension 5 but the index has dim=12"):
        index.add(x[:, :5], y)
    with pytest.raises(ValueError, match=r"2-D.*x\[None, :\]"):
        index.add(x[0], y[:1])
    with pytest.raises(ValueError, match="length 59 but there are 60"):
        index.add(x, y[:-1])
    with pytest.raises(ValueError, match="integers"):
        index.add(x, y.astype(float))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        index.add(x[:2], [0, -1])
    with pytest.raises(ValueError, match="real numbers"):
        index.add(np.full((2, DIM), "a"), [0, 1])
    bad = x.copy()
    bad[17, 3] = np.nan
    bad[42, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf.*2 row\(s\): row 17, 42"):
        index.add(bad, y)
    with pytest.raises(ValueError, match="row 0"):
        index.add(np.full((1, DIM), 1e300), [0])  # overflows float32
    assert index.ntotal == 0  # nothing half-added
    index.add(x, y)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(q, 0)
    with pytest.raises(ValueError, match=r"queries has dimension 3"):
        index.search(q[:, :3], 2)
    bad_q = q.copy()
    bad_q[4, 1] = np.nan
    with pytest.raises(ValueError, match="queries.*row 4"):
        index.search(bad_q, 2)
    with pytest.raises(ValueError, match=r"ids not in the index: \[99\]"):
        index.remove([1, 99])
    assert index.ntotal == 60  # failed removal removed nothing


def test_empty_add_and_empty_query_batch(data):
    x, y, q = data
    index = SupportIndex(DIM, use_gpu=False)
    assert index.add(np.empty((0, DIM)), []).shape == (0,)
    index.add(x, y)
    d, l, i = index.search(np.empty((0, DIM)), 3)
    assert d.shape == l.shape == i.shape == (0, 3)


# ----------------------------------------------------------------------------- GPU plumbing
@pytest.mark.skipif(gpu_available(), reason="a GPU is visible to faiss here")
def test_use_gpu_true_without_gpu_raises_and_auto_falls_back():
    with pytest.raises(RuntimeError, match="use_gpu=True.*impossible"):
        SupportIndex(DIM, use_gpu=True)
    index = SupportIndex(DIM, use_gpu="auto")
    assert not index.on_gpu and "cpu" in repr(index)


class _FakeGpuFlat:
    """Stands in for a GpuIndexFlat: a CPU flat index that counts its calls."""

    def __init__(self, cpu_flat, calls):
        self._flat = faiss.clone_index(cpu_flat)
        self._calls = calls

    def add(self, x):
        self._calls["add"] += 1
        self._flat.add(x)

    def search(self, q, k):
        self._calls["search"] += 1
        return self._flat.search(q, k)


@pytest.fixture
def fake_gpu(monkeypatch):
    calls = {"clone": 0, "add": 0, "search": 0}

    def index_cpu_to_gpu(res, device, cpu_index):
        calls["clone"] += 1
        assert device == 0 and isinstance(cpu_index, faiss.IndexFlat)
        return _FakeGpuFlat(cpu_index, calls)

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    monkeypatch.setattr(index_mod, "_GPU_RESOURCES", None)
    return calls


def test_gpu_path_matches_cpu(data, fake_gpu):
    x, y, q = data
    gpu = SupportIndex(DIM, use_gpu=True)
    cpu = SupportIndex(DIM, use_gpu=False)
    assert gpu.on_gpu and not cpu.on_gpu
    assert SupportIndex(DIM, use_gpu="auto").on_gpu

    def same():
        for a, b in zip(gpu.search(q, 5), cpu.search(q, 5)):
            np.testing.assert_array_equal(a, b)

    for idx in (gpu, cpu):
        idx.add(x[:40], y[:40])
    same()
    assert fake_gpu == {"clone": 1, "add": 0, "search": 1}
    for idx in (gpu, cpu):
        idx.add(x[40:], y[40:])  # goes straight to the GPU copy
    same()
    assert fake_gpu["clone"] == 1 and fake_gpu["add"] == 1
    for idx in (gpu, cpu):
        idx.remove([0, 41, 50])  # GPU copy goes stale and is rebuilt on the next search
    same()
    assert fake_gpu["clone"] == 2
    # ids/labels map through GPU positions correctly; serialisation works from a GPU index
    np.testing.assert_array_equal(gpu.all_distances(q), cpu.all_distances(q))
    clone = SupportIndex.deserialize(gpu.serialize(), use_gpu=False)
    np.testing.assert_array_equal(clone.search(q, 5)[2], cpu.search(q, 5)[2])


def test_gpu_large_k_runs_on_cpu(fake_gpu):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((index_mod._GPU_MAX_K + 10, 4)).astype(np.float32)
    index = SupportIndex(4, use_gpu=True)
    index.add(x, np.zeros(len(x), dtype=int))
    searches = fake_gpu["search"]
    d = index.all_distances(x[:2])  # k = ntotal > GPU limit
    assert fake_gpu["search"] == searches
    np.testing.assert_allclose(d, brute_sq_l2(x[:2], x), rtol=1e-4, atol=1e-4)
