"""The "logistic" few-shot rule and the symmetry views of supports (issue 14, section 3).

Oracles: scikit-learn's LogisticRegression fitted directly (the rule's distances are its
-log probabilities); numpy's rot90/fliplr of the raw frame (a view of the model input about a
centred beam is the same pixel permutation of the frame)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from speckle_embed.fewshot import FewShotClassifier
from speckle_embed.fewshot.classifier import ClassifierFileError
from speckle_embed.fewshot.index import SupportIndex
from speckle_embed.fewshot.linear import LOGISTIC_C, fit_logistic, logistic, logistic_distances
from speckle_embed.fewshot.rules import get_rule, scores_to_proba
from speckle_embed.inference.embedder import SpeckleEmbedder
from speckle_embed.inference.views import N_D4_VIEWS, VIEW_GROUPS, detector_view, view_indices

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}
YY, XX = np.mgrid[:128, :128] - 63.5


@pytest.fixture(scope="module")
def emb():
    return SpeckleEmbedder.random_init(model=SMALL, seed=0, device="cpu")


def rings(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.poisson(50 * (1 + np.cos(np.hypot(YY, XX) / rng.uniform(2.9, 3.1))))
                     for _ in range(n)]).astype(np.uint16)


def stripes(n, seed):
    rng = np.random.default_rng(seed + 1000)
    # oblique stripes: no view of one is another support's frame
    return np.stack([rng.poisson(50 * (1 + np.cos((XX + 0.4 * YY) / rng.uniform(2.9, 3.1))))
                     for _ in range(n)]).astype(np.uint16)


# ----------------------------------------------------------------------------- the rule
def test_logistic_rule_equals_sklearn_oracle():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 6)).astype(np.float32)
    y = np.repeat([0, 1, 2], 4)
    x[y == 1] += 1.5
    q = rng.normal(size=(7, 6)).astype(np.float32)
    index = SupportIndex(6)
    index.add(x, y)
    d = logistic(index, q)
    oracle = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(x.astype(np.float64), y)
    np.testing.assert_allclose(d, -oracle.predict_log_proba(q.astype(np.float64)), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(scores_to_proba(d, 1.0), oracle.predict_proba(q.astype(np.float64)), atol=1e-9)
    assert get_rule("logistic") is logistic


def test_logistic_rule_trains_on_given_rows_and_checks_input():
    index = SupportIndex(2)
    index.add(np.array([[1.0, 0.0], [0.0, 1.0]]), [0, 1])
    extra = (np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), np.array([0, 0, 1, 1]))
    assert logistic(index, np.array([[0.7, 0.3]]), training=extra).argmin(1).tolist() == [0]
    assert fit_logistic(np.ones((3, 2)), [0, 0, 0], 1) == 0   # one class: nothing to separate
    with pytest.raises(ValueError, match="C must be a positive number"):
        fit_logistic(np.ones((2, 2)), [0, 1], 2, C=0)
    with pytest.raises(ValueError, match="class 1 of 2 has none"):
        fit_logistic(np.ones((2, 2)), [0, 0], 2)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        fit_logistic(np.ones(3), [0, 1, 1], 2)


# ----------------------------------------------------------------------------- views
def test_views_form_the_d4_group():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = [detector_view(x, k) for k in range(N_D4_VIEWS)]
    keys = {tuple(v.flatten().tolist()) for v in views}
    assert len(keys) == 8                                         # eight distinct permutations
    for a in views:                                               # closed under composition
        for k in range(N_D4_VIEWS):
            assert tuple(detector_view(a, k).flatten().tolist()) in keys
    a = x[0, 0].numpy()
    oracle = [np.rot90(a, k) for k in range(4)] + [np.fliplr(np.rot90(a, k)) for k in range(4)]
    for v, o in zip(views, oracle):
        np.testing.assert_array_equal(v[0, 0].numpy(), o)
    assert view_indices("none") == (0,) and view_indices("d4") == tuple(range(8)) and sorted(VIEW_GROUPS) == ["d4", "none"]
    with pytest.raises(ValueError, match="support_views must be one of"):
        view_indices("d8")
    with pytest.raises(ValueError, match="view must be an integer"):
        detector_view(x, 8)


def test_embedding_of_a_view_equals_embedding_of_the_turned_frame(emb):
    """About a centred beam the view of the model input is the view of the frame itself."""
    frames = np.concatenate([rings(2, 3), stripes(2, 3)]).astype(np.float32)
    mask = np.zeros((128, 128), np.uint16)
    mask[60:68, :] = 1                                            # a horizontal gap turns with the frame
    for k in range(N_D4_VIEWS):
        turned = np.rot90(frames, k % 4, axes=(1, 2))
        m = np.rot90(mask, k % 4)
        if k >= 4:
            turned, m = turned[:, :, ::-1], m[:, ::-1]
        want = emb.embed(np.ascontiguousarray(turned), np.ascontiguousarray(m))
        got = emb.embed(frames, mask, view=k)
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="view must be an integer"):
        emb.embed(frames, view=-1)


# ----------------------------------------------------------------------------- the classifier
def test_default_classifier_is_logistic_with_d4_views(emb):
    support = np.concatenate([rings(3, 1), stripes(3, 1)])
    labels = ["ring"] * 3 + ["stripe"] * 3
    clf = FewShotClassifier(emb).fit(support, labels)
    assert (clf.rule, clf.support_views) == ("logistic", "d4")
    views = clf.support_view_embeddings_
    assert views.shape == (6, 8, 32)
    np.testing.assert_allclose(views[:, 0], clf.index_.get_embeddings(), atol=1e-6)
    np.testing.assert_allclose(views[:, 5], emb.embed(support, view=5), atol=1e-6)
    queries = np.concatenate([rings(4, 2), stripes(4, 2)])
    assert clf.predict(queries).tolist() == ["ring"] * 4 + ["stripe"] * 4
    proba = clf.predict_proba(queries)
    oracle = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(
        views.reshape(48, 32).astype(np.float64), np.repeat([0, 1], 24))
    np.testing.assert_allclose(proba, oracle.predict_proba(emb.embed(queries).astype(np.float64)), atol=1e-8)
    plain = FewShotClassifier(emb, support_views="none").fit(support, labels)
    assert plain.support_view_embeddings_.shape == (6, 1, 32)
    assert "support_views='none'" in repr(plain) and "rule" not in repr(clf).split(";")[0]


def test_distance_rules_embed_the_support_frames_only(emb, monkeypatch):
    """The D4 views train the logistic rule; other rules do not pay 8 embeddings per support."""
    support = np.concatenate([rings(3, 1), stripes(3, 1)])
    labels = ["ring"] * 3 + ["stripe"] * 3
    embedded = []
    real_embed = type(emb).embed

    def counting_embed(self, frames, *args, **kw):
        embedded.append(len(frames))
        return real_embed(self, frames, *args, **kw)

    monkeypatch.setattr(type(emb), "embed", counting_embed)
    clf = FewShotClassifier(emb, rule="mean_distance").fit(support, labels)
    assert clf.support_view_embeddings_.shape == (6, 1, 32) and sum(embedded) == 6
    embedded.clear()
    FewShotClassifier(emb).fit(support, labels)
    assert sum(embedded) == 6 * 8


def test_register_appends_views_and_refits(emb):
    clf = FewShotClassifier(emb).fit(np.concatenate([rings(2, 1), stripes(2, 1)]), ["ring"] * 2 + ["stripe"] * 2)
    before = clf.predict_proba(rings(1, 9))
    clf.register("stripe", stripes(2, 5))
    assert clf.support_view_embeddings_.shape == (6, 8, 32)
    np.testing.assert_allclose(clf.support_view_embeddings_[4:, 0], emb.embed(stripes(2, 5)), atol=1e-6)
    assert not np.allclose(clf.predict_proba(rings(1, 9)), before)   # the model was refitted
    clf.register("blank", np.zeros((1, 128, 128)) + np.random.default_rng(0).poisson(1.0, (1, 128, 128)))
    assert clf.predict_proba(rings(2, 7)).shape == (2, 3)
    with pytest.raises(ValueError, match="support_views must be one of"):
        FewShotClassifier(emb, support_views="all").fit(rings(2, 1), ["a", "b"])


def test_logistic_with_rejection_calibrates(emb):
    clf = FewShotClassifier(emb, reject_quantile=1.0).fit(
        np.concatenate([rings(3, 1), stripes(3, 1)]), ["ring"] * 3 + ["stripe"] * 3)
    assert clf.threshold_ is not None and np.isfinite(clf.threshold_) and clf.threshold_ >= 0


def test_views_saved_and_loaded(emb, tmp_path):
    support = np.concatenate([rings(3, 1), stripes(3, 1)])
    clf = FewShotClassifier(emb).fit(support, ["ring"] * 3 + ["stripe"] * 3)
    queries = np.concatenate([rings(3, 4), stripes(3, 4)])
    clf.save(tmp_path / "clf")
    loaded = FewShotClassifier.load(tmp_path / "clf", embedder=emb)
    assert loaded.support_views == "d4"
    np.testing.assert_array_equal(loaded.support_view_embeddings_, clf.support_view_embeddings_)
    np.testing.assert_allclose(loaded.predict_proba(queries), clf.predict_proba(queries), atol=1e-12)
    # damage is detected by the recorded checksum
    views = np.load(tmp_path / "clf" / "support_views.npy")
    np.save(tmp_path / "clf" / "support_views.npy", views[:, :4])
    with pytest.raises(ClassifierFileError, match="support_views.npy is corrupt"):
        FewShotClassifier.load(tmp_path / "clf", embedder=emb)


def test_folder_saved_before_views_loads_with_its_behaviour(emb, tmp_path):
    """A classifier.json without support_views (and no views file) keeps classifying as saved."""
    support = np.concatenate([rings(3, 1), stripes(3, 1)])
    clf = FewShotClassifier(emb, rule="mean_distance", support_views="none").fit(support, ["ring"] * 3 + ["stripe"] * 3)
    clf.save(tmp_path / "old")
    (tmp_path / "old" / "support_views.npy").unlink()
    meta = json.loads((tmp_path / "old" / "classifier.json").read_text())
    del meta["params"]["support_views"], meta["files"]["support_views.npy"]
    (tmp_path / "old" / "classifier.json").write_text(json.dumps(meta))
    loaded = FewShotClassifier.load(tmp_path / "old", embedder=emb)
    assert (loaded.rule, loaded.support_views, loaded.support_view_embeddings_) == ("mean_distance", "none", None)
    q = rings(2, 8)
    np.testing.assert_allclose(loaded.decision_distances(q), clf.decision_distances(q))
    loaded.set_params(rule="logistic")                             # no views stored: trains on the supports
    assert loaded.predict(q).tolist() == ["ring", "ring"]


# ----------------------------------------------------------------------------- views of the queries
def test_view_averaged_distances_equal_the_mean_probability_oracle():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 5))
    y = np.repeat([0, 1], 8)
    x[y == 1] += 1.0
    model = fit_logistic(x, y, 2)
    q = rng.normal(size=(6, 8, 5))
    d = logistic_distances(model, q, 2)
    oracle = np.mean([model.predict_proba(q[:, v]) for v in range(8)], axis=0)
    np.testing.assert_allclose(d, -np.log(oracle), rtol=1e-12)
    np.testing.assert_allclose(logistic_distances(model, q[:, :1], 2), logistic_distances(model, q[:, 0], 2), rtol=1e-12)
    index = SupportIndex(5)
    index.add(x.astype(np.float32), y)
    np.testing.assert_allclose(logistic(index, q.astype(np.float32)), d, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(m, d\) or \(m, n_views, d\)"):
        logistic_distances(model, q[None], 2)


def test_query_views_classify_from_the_mean_probability_of_the_views(emb, tmp_path):
    support = np.concatenate([rings(3, 1), stripes(3, 1)])
    labels = ["ring"] * 3 + ["stripe"] * 3
    queries = np.concatenate([rings(3, 2), stripes(3, 2)])
    plain = FewShotClassifier(emb).fit(support, labels)
    clf = FewShotClassifier(emb, query_views="d4").fit(support, labels)
    assert "query_views='d4'" in repr(clf) and "query_views" not in repr(plain)
    oracle = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(
        clf.support_view_embeddings_.reshape(48, 32).astype(np.float64), np.repeat([0, 1], 24))
    mean_p = np.mean([oracle.predict_proba(emb.embed(queries, view=v).astype(np.float64)) for v in range(8)], axis=0)
    np.testing.assert_allclose(clf.predict_proba(queries), mean_p, atol=1e-8)
    assert clf.predict(queries).tolist() == ["ring"] * 3 + ["stripe"] * 3
    res = clf.classify(queries)
    np.testing.assert_allclose(res.proba, mean_p, atol=1e-8)
    assert res.empty.shape == (6,) and not res.empty.any()
    assert not np.allclose(plain.predict_proba(queries), mean_p)   # the views change the answer
    np.testing.assert_allclose(clf.transform(queries), plain.transform(queries))  # embeddings: view 0
    clf.save(tmp_path / "clf")
    loaded = FewShotClassifier.load(tmp_path / "clf", embedder=emb)
    assert loaded.query_views == "d4"
    np.testing.assert_allclose(loaded.predict_proba(queries), mean_p, atol=1e-8)
    with pytest.raises(ValueError, match="needs rule='logistic'"):
        FewShotClassifier(emb, rule="prototype", query_views="d4").fit(support, labels)
    with pytest.raises(ValueError, match="support_views must be one of"):
        FewShotClassifier(emb, query_views="all").fit(support, labels)


def test_episode_distances_with_query_views():
    from speckle_embed.fewshot.episodes import Episode, episode_distances
    rng = np.random.default_rng(5)
    views = rng.normal(size=(10, 8, 4)).astype(np.float32)
    views[5:] += 0.8
    z = np.ascontiguousarray(views[:, 0])
    ep = Episode(support_idx=np.array([0, 1, 5, 6]), support_labels=np.array([0, 0, 1, 1]),
                 query_idx=np.array([2, 3, 7, 8]), query_labels=np.array([0, 0, 1, 1]), structure=0, classes=(1, 2))
    d = episode_distances(z, ep, "logistic", support_views=views, query_views=True)
    model = fit_logistic(views[ep.support_idx].reshape(-1, 4), np.repeat(ep.support_labels, 8), 2)
    np.testing.assert_allclose(d, logistic_distances(model, views[ep.query_idx], 2), rtol=1e-6)
    with pytest.raises(ValueError, match="query_views=True needs"):
        episode_distances(z, ep, "prototype", support_views=views, query_views=True)
