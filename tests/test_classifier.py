"""FewShotClassifier: known answers of each rule, incremental registration, probabilities,
neighbours, rejection, persistence (round trip, embedder identity, corruption) and input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from speckle_embed.classifier import ClassifierFileError, FewShotClassifier, NotFittedError
from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.fewshot_rules import knn, mean_distance, prototype
from speckle_embed.index import SupportIndex

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}
YY, XX = np.mgrid[:128, :128] - 63.5


def rings(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.poisson(50 * (1 + np.cos(np.hypot(YY, XX) / rng.uniform(2.9, 3.1))))
                     for _ in range(n)]).astype(np.uint16)


def stripes(n, seed=0):
    rng = np.random.default_rng(seed + 1000)
    return np.stack([rng.poisson(50 * (1 + np.cos(XX / rng.uniform(2.9, 3.1)))) for _ in range(n)]).astype(np.uint16)


@pytest.fixture(scope="module")
def emb():
    return SpeckleEmbedder.random_init(model=SMALL, seed=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    support = np.concatenate([rings(4, 1), stripes(4, 1)])
    labels = ["ring"] * 4 + ["stripe"] * 4
    queries = np.concatenate([rings(5, 2), stripes(5, 2)])
    truth = np.array(["ring"] * 5 + ["stripe"] * 5)
    return support, labels, queries, truth


class KeyedEmbedder(SpeckleEmbedder):
    """An embedder whose 'frame' is the embedding itself: frame[:, 0, :d] (for exact answers)."""

    def embed(self, frames, mask=None, **kw):
        x = np.asarray(frames, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"frames must have shape (N, H, W); got {x.shape}")
        return np.ascontiguousarray(x[:, 0, :2], dtype=np.float32)


def as_frames(points):
    pts = np.asarray(points, dtype=np.float32)
    f = np.zeros((len(pts), 4, 4), np.float32)
    f[:, 0, :2] = pts
    return f


@pytest.fixture
def keyed():
    e = SpeckleEmbedder.random_init(model=SMALL, device="cpu")
    e.__class__ = KeyedEmbedder
    return e


# ----------------------------------------------------------------------------- rules
def test_each_rule_gives_the_known_answer(keyed):
    # class "wide" has supports at x = -3 and 3, class "tight" two at x = 1; query at 0:
    # mean_distance -> tight (9 vs 1), prototype -> wide (0 vs 1), knn(k=1) -> tight (nearest 1).
    support = as_frames([[-3, 0], [3, 0], [1, 0], [1, 0]])
    y = ["wide", "wide", "tight", "tight"]
    q = as_frames([[0, 0]])
    expect = {"mean_distance": "tight", "prototype": "wide", "knn": "tight"}
    for rule, answer in expect.items():
        clf = FewShotClassifier(keyed, rule=rule, k=1).fit(support, y)
        assert clf.classes_.tolist() == ["tight", "wide"]
        assert clf.predict(q).tolist() == [answer], rule
    d = FewShotClassifier(keyed, rule="mean_distance").fit(support, y).decision_distances(q)
    np.testing.assert_allclose(d, [[1.0, 9.0]])


@pytest.mark.parametrize("rule, fn", [("mean_distance", mean_distance), ("prototype", prototype), ("knn", knn)])
def test_distances_match_fewshot_rules(keyed, rule, fn):
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((30, 2)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    q = rng.standard_normal((7, 2)).astype(np.float32)
    clf = FewShotClassifier(keyed, rule=rule, k=4).fit(as_frames(pts), y)
    index = SupportIndex(2, use_gpu=False)
    index.add(pts, y)
    kw = {"k": 4} if rule == "knn" else {}
    ref = fn(index, q, **kw)
    np.testing.assert_allclose(clf.decision_distances(as_frames(q)), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(as_frames(q)), ref.argmin(1))


@pytest.mark.parametrize("rule", ["mean_distance", "prototype", "knn"])
def test_random_embedder_separates_rings_and_stripes(emb, data, rule):
    support, labels, queries, truth = data
    clf = FewShotClassifier(emb, rule=rule, k=3)
    assert clf.fit(support, labels) is clf
    assert clf.classes_.tolist() == ["ring", "stripe"] and clf.n_supports_.tolist() == [4, 4]
    np.testing.assert_array_equal(clf.predict(queries), truth)
    assert clf.score(queries, truth) == 1.0


def test_int_labels(emb, data):
    support, _, queries, truth = data
    clf = FewShotClassifier(emb).fit(support, np.array([7] * 4 + [3] * 4))
    assert clf.classes_.tolist() == [3, 7] and clf.classes_.dtype == np.int64
    assert clf.predict(queries).tolist() == [7] * 5 + [3] * 5


# ----------------------------------------------------------------------------- incremental
def test_register_equals_fit_on_union(emb, data):
    support, labels, queries, _ = data
    union = FewShotClassifier(emb).fit(support, labels)
    inc = FewShotClassifier(emb).fit(support[:2], labels[:2])
    inc.register("ring", support[2:4]).register("stripe", support[4:6])
    for frame in support[6:]:
        inc.register("stripe", frame)
    assert inc.classes_.tolist() == union.classes_.tolist()
    assert inc.n_supports_.tolist() == [4, 4]
    np.testing.assert_array_equal(inc.predict(queries), union.predict(queries))
    np.testing.assert_allclose(inc.predict_proba(queries), union.predict_proba(queries), rtol=1e-5, atol=1e-6)


def test_register_on_empty_and_new_class(emb, data):
    support, _, queries, truth = data
    clf = FewShotClassifier(emb)
    with pytest.raises(NotFittedError):
        clf.predict(queries)
    clf.register("single", support[:4])
    assert clf.classes_.tolist() == ["single"]
    clf.register("multi", support[4:])
    assert clf.classes_.tolist() == ["single", "multi"]
    assert clf.predict(queries).tolist() == ["single"] * 5 + ["multi"] * 5
    with pytest.raises(ValueError, match="integer"):
        clf.register(3, support[:1])
    with pytest.raises(ValueError, match="no frames"):
        clf.register("single", support[:0])


# ----------------------------------------------------------------------------- probabilities, neighbours
def test_predict_proba(emb, data):
    support, labels, queries, _ = data
    for rule in ("mean_distance", "prototype", "knn"):
        clf = FewShotClassifier(emb, rule=rule, k=3).fit(support, labels)
        p = clf.predict_proba(queries)
        assert p.shape == (10, 2)
        np.testing.assert_allclose(p.sum(1), 1.0)
        np.testing.assert_array_equal(clf.classes_[p.argmax(1)], clf.predict(queries))
    sharp = FewShotClassifier(emb, temperature=0.01).fit(support, labels).predict_proba(queries)
    soft = FewShotClassifier(emb, temperature=10.0).fit(support, labels).predict_proba(queries)
    assert sharp.max(1).min() > soft.max(1).max()


def test_kneighbors(emb, data):
    support, labels, queries, _ = data
    clf = FewShotClassifier(emb).fit(support, labels)
    dist, lab = clf.kneighbors(queries, k=3)
    assert dist.shape == lab.shape == (10, 3)
    assert (np.diff(dist, axis=1) >= 0).all()
    assert (lab[:5] == "ring").all() and (lab[5:] == "stripe").all()
    z = clf.transform(queries[:1])
    s = clf.transform(support)
    np.testing.assert_allclose(dist[0], np.sort(((s - z) ** 2).sum(1))[:3], rtol=1e-4, atol=1e-6)
    _, _, ids = clf.kneighbors(queries, k=8, return_ids=True)
    assert sorted(ids[0].tolist()) == list(range(8))
    with pytest.raises(ValueError, match="k must"):
        clf.kneighbors(queries, k=9)


# ----------------------------------------------------------------------------- rejection
def test_rejection(keyed):
    rng = np.random.default_rng(1)
    a = rng.normal([0, 0], 0.1, (10, 2))
    b = rng.normal([5, 0], 0.1, (10, 2))
    support = as_frames(np.concatenate([a, b]))
    q = as_frames([[0, 0], [5, 0], [2.5, 40.0]])
    clf = FewShotClassifier(keyed, reject_quantile=1.0).fit(support, ["a"] * 10 + ["b"] * 10)
    assert clf.threshold_ > 0
    assert clf.predict(q).tolist() == ["a", "b", "unknown"]
    np.testing.assert_allclose(clf.predict_proba(q).sum(1), 1.0)
    ints = FewShotClassifier(keyed, reject_quantile=1.0).fit(support, [0] * 10 + [1] * 10)
    assert ints.predict(q).tolist() == [0, 1, -1]
    custom = FewShotClassifier(keyed, reject_quantile=1.0, unknown_label="other").fit(support, ["a"] * 10 + ["b"] * 10)
    assert custom.predict(q).tolist()[-1] == "other"
    with pytest.raises(ValueError, match="at least 2 supports"):
        FewShotClassifier(keyed, reject_quantile=0.9).fit(support[:11], ["a"] * 10 + ["b"])
    with pytest.raises(ValueError, match="unknown"):
        FewShotClassifier(keyed, reject_quantile=0.9).fit(support, ["a"] * 10 + ["unknown"] * 10)


# ----------------------------------------------------------------------------- errors
def test_input_errors(emb, data):
    support, labels, _, _ = data
    clf = FewShotClassifier(emb)
    with pytest.raises(ValueError, match="empty support set"):
        clf.fit(support[:0], [])
    with pytest.raises(ValueError, match="class 'multi' has no supports"):
        clf.fit(support, labels, classes=["ring", "stripe", "multi"])
    with pytest.raises(ValueError, match="not in classes"):
        clf.fit(support, labels, classes=["ring"])
    with pytest.raises(ValueError, match="labels but X has"):
        clf.fit(support, labels[:-1])
    with pytest.raises(ValueError, match="mix strings and integers"):
        clf.fit(support, ["a"] * 4 + [1] * 4)
    with pytest.raises(ValueError, match="float"):
        clf.fit(support, np.arange(8, dtype=float))
    nan = support.astype(np.float32)
    nan[5] = np.nan
    with pytest.raises(ValueError, match="frame 5 "):
        clf.fit(nan, labels)
    with pytest.raises(ValueError, match=r"shape \(n, H, W\)"):
        clf.fit(support[..., None], labels)
    with pytest.raises(ValueError, match="shape"):
        clf.fit(support[0, 0], labels)
    with pytest.raises(ValueError, match="mask shape"):
        clf.fit(support, labels, mask=np.zeros((100, 100)))
    clf.fit(support, labels)
    with pytest.raises(ValueError, match="frames must"):
        clf.predict(np.zeros((2, 2, 128, 128)))
    with pytest.raises(ValueError, match="unknown rule"):
        FewShotClassifier(emb, rule="nearest").fit(support, labels)
    with pytest.raises(ValueError, match="temperature"):
        FewShotClassifier(emb, temperature=0).fit(support, labels)


def test_get_set_params(emb):
    clf = FewShotClassifier(emb, rule="knn", k=3)
    p = clf.get_params()
    assert p["rule"] == "knn" and p["k"] == 3 and p["embedder"] is emb
    assert clf.set_params(k=7).k == 7
    with pytest.raises(ValueError, match="(?i)invalid parameter 'bogus'"):  # scikit-learn's message
        clf.set_params(bogus=1)


# ----------------------------------------------------------------------------- persistence
@pytest.fixture(scope="module")
def saved(emb, data, tmp_path_factory):
    support, labels, queries, _ = data
    ckpt = tmp_path_factory.mktemp("ckpt") / "best.pt"
    emb.save_checkpoint(ckpt)
    original = SpeckleEmbedder.from_checkpoint(ckpt, device="cpu")
    clf = FewShotClassifier(original, rule="knn", k=3, reject_quantile=0.9).fit(support, labels)
    directory = tmp_path_factory.mktemp("clf") / "model"
    clf.save(directory)
    return clf, directory, original


def test_save_load_round_trip(saved, data):
    clf, directory, original = saved
    queries = data[2]
    assert sorted(p.name for p in directory.iterdir()) == ["classifier.json", "embedder.pt", "index.npz",
                                                           "support_views.npy"]
    assert not list(directory.parent.glob("*.tmp"))
    loaded = FewShotClassifier.load(directory, device="cpu")
    assert loaded.embedder.checkpoint_hash == original.checkpoint_hash
    assert loaded.classes_.tolist() == clf.classes_.tolist()
    assert (loaded.rule, loaded.k, loaded.reject_quantile, loaded.threshold_) == ("knn", 3, 0.9, clf.threshold_)
    np.testing.assert_array_equal(loaded.predict(queries), clf.predict(queries))
    np.testing.assert_array_equal(loaded.predict_proba(queries), clf.predict_proba(queries))
    same = FewShotClassifier.load(directory, embedder=original)
    np.testing.assert_array_equal(same.decision_distances(queries), clf.decision_distances(queries))
    # the copy of the checkpoint is byte-identical to the original file
    assert (directory / "embedder.pt").read_bytes() == original.checkpoint_path.read_bytes()


def test_save_overwrites_only_a_saved_classifier(emb, data, tmp_path):
    support, labels, queries, _ = data
    clf = FewShotClassifier(emb).fit(support, labels)
    clf.save(tmp_path / "c")
    clf.register("ring", support[:1]).save(tmp_path / "c")  # replace
    assert FewShotClassifier.load(tmp_path / "c", embedder=emb).n_supports_.tolist() == [5, 4]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing"):
        clf.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "precious"


def test_unsaved_embedder_gets_a_hash_on_save(data, tmp_path):
    support, labels, queries, _ = data
    fresh = SpeckleEmbedder.random_init(model=SMALL, seed=9, device="cpu")
    assert fresh.checkpoint_hash is None
    clf = FewShotClassifier(fresh).fit(support, labels)
    clf.save(tmp_path / "c")
    assert fresh.checkpoint_hash is not None
    loaded = FewShotClassifier.load(tmp_path / "c", embedder=fresh)
    np.testing.assert_array_equal(loaded.predict(queries), clf.predict(queries))


def test_mismatched_embedder_is_refused(saved, tmp_path):
    _, directory, _ = saved
    other = SpeckleEmbedder.random_init(model=SMALL, seed=1, device="cpu")
    other.save_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="checkpoint hash"):
        FewShotClassifier.load(directory, embedder=other)


def _copy(directory, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(directory, dst)
    return dst


def test_corrupted_files_are_named(saved, tmp_path):
    _, directory, _ = saved
    d = _copy(directory, tmp_path)
    data = bytearray((d / "index.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "index.npz").write_bytes(bytes(data))
    with pytest.raises(ClassifierFileError, match="index.npz"):
        FewShotClassifier.load(d)

    d2 = _copy(directory, tmp_path / "b")
    (d2 / "classifier.json").write_text("{ not json")
    with pytest.raises(ClassifierFileError, match="classifier.json"):
        FewShotClassifier.load(d2)

    d3 = _copy(directory, tmp_path / "c")
    raw = (d3 / "embedder.pt").read_bytes()
    (d3 / "embedder.pt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ClassifierFileError, match="embedder.pt"):
        FewShotClassifier.load(d3)

    d4 = _copy(directory, tmp_path / "d")
    (d4 / "index.npz").unlink()
    with pytest.raises(ClassifierFileError, match="index.npz is missing"):
        FewShotClassifier.load(d4)

    d5 = _copy(directory, tmp_path / "e")
    meta = json.loads((d5 / "classifier.json").read_text())
    meta["n_supports"] = [4, 3]
    (d5 / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ClassifierFileError, match="disagree"):
        FewShotClassifier.load(d5)

    with pytest.raises(FileNotFoundError, match="classifier.json"):
        FewShotClassifier.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        FewShotClassifier.load(tmp_path / "nowhere")
