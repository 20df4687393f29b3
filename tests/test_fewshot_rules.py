"""Few-shot decision rules against numpy brute force, on synthetic and hand-built embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from speckle_embed.fewshot_rules import (
    UNKNOWN,
    calibrate_rejection_threshold,
    class_prototypes,
    get_rule,
    knn,
    leave_one_out_distances,
    mean_distance,
    predict,
    predict_with_rejection,
    prototype,
    scores_to_proba,
)
from speckle_embed.index import SupportIndex

N_WAY, N_SHOT, N_QUERY, DIM = 4, 6, 10, 16


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def episode():
    """Gaussian clusters on the unit sphere: well separated, so every rule is 100% right."""
    rng = np.random.default_rng(7)
    centres = unit(rng.standard_normal((N_WAY, DIM)))
    support_labels = np.repeat(np.arange(N_WAY), N_SHOT)
    query_labels = np.repeat(np.arange(N_WAY), N_QUERY)
    support = unit(centres[support_labels] + 0.15 * rng.standard_normal((len(support_labels), DIM)))
    query = unit(centres[query_labels] + 0.15 * rng.standard_normal((len(query_labels), DIM)))
    return support.astype(np.float32), support_labels, query.astype(np.float32), query_labels


def make_index(x, y, metric="l2"):
    index = SupportIndex(x.shape[1], metric=metric, use_gpu=False)
    index.add(x, y)
    return index


# ----------------------------------------------------------------------------- numpy references
def sq_l2(q, x):
    return ((q.astype(np.float64)[:, None, :] - x.astype(np.float64)[None]) ** 2).sum(-1)


def ref_mean_distance(x, y, q):
    d = sq_l2(q, x)
    return np.stack([d[:, y == c].mean(1) for c in range(y.max() + 1)], axis=1)


def ref_prototype(x, y, q):
    protos = np.stack([x[y == c].astype(np.float64).mean(0) for c in range(y.max() + 1)])
    return sq_l2(q, protos)


def ref_knn_predict(x, y, q, k):
    """Majority vote of the k nearest; ties by smaller summed distance, then smaller label."""
    out = []
    for row in sq_l2(q, x):
        nn = np.argsort(row, kind="stable")[:k]
        best = None
        for c in sorted(set(y[nn].tolist())):
            votes = int((y[nn] == c).sum())
            summed = float(row[nn][y[nn] == c].sum())
            key = (-votes, summed, c)
            best = key if best is None or key < best else best
        out.append(best[2])
    return np.array(out)


def ref_knn_scores(x, y, q, k):
    n_classes = y.max() + 1
    scores = np.full((len(q), n_classes), k + 1.0)
    for i, row in enumerate(sq_l2(q, x)):
        nn = np.argsort(row, kind="stable")[:k]
        total = row[nn].sum()
        for c in set(y[nn].tolist()):
            sel = nn[y[nn] == c]
            scores[i, c] = (k - len(sel)) + 0.5 * row[sel].sum() / total
    return scores


# ----------------------------------------------------------------------------- rules vs numpy
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_rules_match_numpy_on_gaussian_clusters(episode, metric):
    x, y, q, qy = episode
    index = make_index(x, y, metric)
    md, pr, kn = mean_distance(index, q), prototype(index, q), knn(index, q, k=5)
    for scores in (md, pr, kn):
        assert scores.shape == (len(q), N_WAY) and scores.dtype == np.float64
        np.testing.assert_array_equal(scores.argmin(1), qy)  # known answers
    np.testing.assert_allclose(md, ref_mean_distance(x, y, q), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pr, ref_prototype(x, y, q), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kn, ref_knn_scores(x, y, q, 5), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(predict(index, q, "knn", k=5), ref_knn_predict(x, y, q, 5))


def test_rules_on_noisy_overlapping_clusters_match_numpy():
    """Harder episode (rules make mistakes, and not the same ones): still equal to brute force."""
    rng = np.random.default_rng(3)
    centres = unit(rng.standard_normal((3, 8)))
    y = rng.integers(0, 3, 40)
    y[:3] = [0, 1, 2]
    x = unit(centres[y] + 0.9 * rng.standard_normal((40, 8))).astype(np.float32)
    q = unit(rng.standard_normal((200, 8))).astype(np.float32)
    index = make_index(x, y)
    np.testing.assert_array_equal(predict(index, q, "mean_distance"), ref_mean_distance(x, y, q).argmin(1))
    np.testing.assert_array_equal(predict(index, q, "prototype"), ref_prototype(x, y, q).argmin(1))
    for k in (1, 4, 7):
        np.testing.assert_array_equal(predict(index, q, "knn", k=k), ref_knn_predict(x, y, q, k))


def test_mean_distance_and_prototype_disagree_hand_built():
    """Unit circle: class 0 spread at +-60 deg, class 1 tight at 40 deg, query at 0 deg.

    prototype:     |q - (cos60, 0)|^2 = 0.25   vs  2 - 2 cos40 = 0.468  -> class 0
    mean_distance: 2 - 2 cos60       = 1.0    vs  0.468                -> class 1
    """
    deg = np.deg2rad
    angles = deg(np.array([60.0, -60.0, 40.0, 40.0]))
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    y = np.array([0, 0, 1, 1])
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    index = make_index(x, y)
    md, pr = mean_distance(index, q), prototype(index, q)
    np.testing.assert_allclose(md, [[1.0, 2 - 2 * np.cos(deg(40))]], atol=1e-6)
    np.testing.assert_allclose(pr, [[0.25, 2 - 2 * np.cos(deg(40))]], atol=1e-6)
    assert md.argmin() == 1 and pr.argmin() == 0
    np.testing.assert_allclose(md, ref_mean_distance(x, y, q), atol=1e-6)
    np.testing.assert_allclose(pr, ref_prototype(x, y, q), atol=1e-6)
    # the prototype of unit vectors is not unit norm, and it is not renormalised
    np.testing.assert_allclose(np.linalg.norm(class_prototypes(index), axis=1), [0.5, 1.0], atol=1e-6)


def test_mean_distance_is_prototype_plus_spread(episode):
    x, y, q, _ = episode
    index = make_index(x, y)
    protos = class_prototypes(index)
    spread = np.array([((x[y == c] - protos[c]) ** 2).sum(1).mean() for c in range(N_WAY)])
    np.testing.assert_allclose(mean_distance(index, q), prototype(index, q) + spread, atol=1e-5)


def test_rules_follow_removals(episode):
    x, y, q, _ = episode
    index = make_index(x, y)
    gone = [0, 1, 13, 23]
    index.remove(gone)
    keep = np.setdiff1d(np.arange(len(y)), gone)
    np.testing.assert_allclose(mean_distance(index, q), ref_mean_distance(x[keep], y[keep], q), atol=1e-5)
    np.testing.assert_allclose(prototype(index, q), ref_prototype(x[keep], y[keep], q), atol=1e-5)


def test_mean_distance_chunking(episode, monkeypatch):
    import speckle_embed.fewshot_rules as rules

    x, y, q, _ = episode
    index = make_index(x, y)
    full = mean_distance(index, q)
    monkeypatch.setattr(rules, "_CHUNK_BYTES", 1)
    np.testing.assert_allclose(mean_distance(index, q), full, rtol=1e-6)  # BLAS path differs by batch


# ----------------------------------------------------------------------------- knn ties
def line(points):
    """1-D points embedded in 2-D."""
    return np.stack([np.asarray(points, dtype=np.float32), np.zeros(len(points), np.float32)], 1)


def test_knn_vote_tie_broken_by_summed_distance():
    # query at 0, k=4: class 0 at 1 and 4 (sum 1+16=17), class 1 at -2 and -3 (sum 4+9=13)
    x, y = line([1, 4, -2, -3, 50]), np.array([0, 0, 1, 1, 0])
    index = make_index(x, y)
    s = knn(index, line([0]), k=4)
    assert s.argmin() == 1
    np.testing.assert_allclose(s, [[2 + 0.5 * 17 / 30, 2 + 0.5 * 13 / 30]], rtol=1e-6)
    # mirror it: now class 0 is closer in sum
    index2 = make_index(x, 1 - np.array([0, 0, 1, 1, 1]))
    assert knn(index2, line([0]), k=4).argmin() == 0


def test_knn_majority_beats_distance():
    # k=5: three far class-0 neighbours outvote two very close class-1 neighbours
    x, y = line([0.0, 0.0, 3, 3.5, 4]), np.array([1, 1, 0, 0, 0])
    index = make_index(x, y)
    s = knn(index, line([0]), k=5)
    assert s.argmin() == 0  # even though class 1's summed distance is exactly 0
    assert s[0, 0] < s[0, 1]
    assert predict(index, line([0]), "knn", k=2) == 1


def test_knn_exact_tie_goes_to_smaller_label_and_absent_class_scores_k_plus_1():
    x, y = line([1, -1, 10]), np.array([1, 0, 2])
    index = make_index(x, y)
    s = knn(index, line([0]), k=2)
    assert s[0, 0] == s[0, 1] and s.argmin() == 0
    assert s[0, 2] == 3.0


# ----------------------------------------------------------------------------- probabilities
def test_scores_to_proba(episode):
    x, y, q, _ = episode
    index = make_index(x, y)
    for rule, kw in (("mean_distance", {}), ("prototype", {}), ("knn", {"k": 3})):
        d = get_rule(rule)(index, q, **kw)
        for t in (0.05, 1.0, 10.0):
            p = scores_to_proba(d, temperature=t)
            assert p.shape == d.shape and np.all(p >= 0)
            np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
            np.testing.assert_array_equal(p.argmax(1), d.argmin(1))
            np.testing.assert_allclose(p, np.exp(-d / t) / np.exp(-d / t).sum(1, keepdims=True), rtol=1e-9)
    # temperature sharpens / flattens; huge distances do not overflow; +inf gets zero probability
    d = np.array([[1.0, 2.0, np.inf], [1000.0, 1001.0, 5000.0]])
    p = scores_to_proba(d, 1.0)
    assert p[0, 2] == 0 and np.all(np.isfinite(p))
    assert scores_to_proba(d, 0.01)[0, 0] > p[0, 0] > scores_to_proba(d, 100.0)[0, 0]
    with pytest.raises(ValueError, match="temperature"):
        scores_to_proba(d, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        scores_to_proba([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="every class"):
        scores_to_proba([[np.inf, np.inf]])


# ----------------------------------------------------------------------------- rejection
def brute_force_loo(x, y, rule, **kw):
    """Leave each support out, rebuild, score it against its own class (numpy only for mean/proto)."""
    out = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        xi, xs, ys = x[i:i + 1], x[keep], y[keep]
        if rule == "mean_distance":
            out.append(ref_mean_distance(xs, ys, xi)[0, y[i]])
        elif rule == "prototype":
            out.append(ref_prototype(xs, ys, xi)[0, y[i]])
        else:
            out.append(ref_knn_scores(xs, ys, xi, kw["k"])[0, y[i]])
    return np.array(out)


@pytest.mark.parametrize("rule,kw", [("mean_distance", {}), ("prototype", {}), ("knn", {"k": 3})])
def test_leave_one_out_threshold_matches_brute_force(episode, rule, kw):
    x, y, _, _ = episode
    loo = leave_one_out_distances(x, y, rule, use_gpu=False, **kw)
    ref = brute_force_loo(x, y, rule, **kw)
    np.testing.assert_allclose(loo, ref, rtol=1e-5, atol=1e-6)
    for qt in (0.5, 0.95, 1.0):
        thr = calibrate_rejection_threshold(x, y, rule=rule, quantile=qt, **kw)
        np.testing.assert_allclose(thr, np.quantile(ref, qt), rtol=1e-5)


def test_leave_one_out_generic_loop_for_custom_rule(episode):
    x, y, _, _ = episode

    def my_prototype(index, queries, *, n_classes=None):
        return prototype(index, queries, n_classes=n_classes)

    np.testing.assert_allclose(leave_one_out_distances(x, y, my_prototype),
                               leave_one_out_distances(x, y, "prototype"), rtol=1e-5)


def test_predict_with_rejection(episode):
    x, y, q, qy = episode
    index = make_index(x, y)
    rng = np.random.default_rng(11)
    outliers = unit(rng.standard_normal((5, DIM))).astype(np.float32)
    queries = np.concatenate([q, outliers])
    for rule, kw in (("mean_distance", {}), ("prototype", {})):
        thr = calibrate_rejection_threshold(x, y, rule=rule, quantile=1.0, **kw)
        pred, scores = predict_with_rejection(index, queries, thr, rule, return_scores=True, **kw)
        expected = np.where(scores.min(1) > thr, UNKNOWN, scores.argmin(1))
        np.testing.assert_array_equal(pred, expected)
        assert np.all(pred[-5:] == UNKNOWN)  # random directions are far from every cluster
        assert np.mean(pred[:-5] == qy) > 0.8  # most in-distribution queries are accepted
        assert np.all((pred[:-5] == qy) | (pred[:-5] == UNKNOWN))
    # threshold +inf never rejects; -inf always does
    assert np.all(predict_with_rejection(index, queries, np.inf) >= 0)
    assert np.all(predict_with_rejection(index, queries, -np.inf) == UNKNOWN)


# ----------------------------------------------------------------------------- bad inputs
def test_class_without_supports_is_named(episode):
    x, y, q, _ = episode
    index = make_index(x, np.where(y == 2, 3, y))  # labels 0, 1, 3: class 2 missing
    for rule in (mean_distance, prototype, knn):
        with pytest.raises(ValueError, match=r"class 2 has no supports"):
            rule(index, q)
    with pytest.raises(ValueError, match="class 4 has no supports"):
        prototype(make_index(x, y), q, n_classes=5)
    with pytest.raises(ValueError, match="label 3 is out of range for n_classes=2"):
        mean_distance(make_index(x, y), q, n_classes=2)


def test_bad_inputs_raise_clearly(episode):
    x, y, q, _ = episode
    index = make_index(x, y)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, ntotal=24\]"):
        knn(index, q, k=25)
    with pytest.raises(ValueError, match="k must be"):
        knn(index, q, k=0)
    with pytest.raises(ValueError, match="queries has dimension 3"):
        mean_distance(index, q[:, :3])
    with pytest.raises(ValueError, match="empty"):
        prototype(SupportIndex(DIM, use_gpu=False), q)
    with pytest.raises(TypeError, match="SupportIndex"):
        mean_distance(x, q)
    with pytest.raises(ValueError, match="unknown rule 'nearest'"):
        predict(index, q, "nearest")
    with pytest.raises(ValueError, match="quantile"):
        calibrate_rejection_threshold(x, y, quantile=0.0)
    with pytest.raises(ValueError, match="quantile"):
        calibrate_rejection_threshold(x, y, quantile=1.5)
    y1 = y.copy()
    y1[y1 == 3] = 2
    y1[-1] = 3  # class 3 keeps a single support
    with pytest.raises(ValueError, match="class 3 has a single support"):
        calibrate_rejection_threshold(x, y1)
    with pytest.raises(ValueError, match="leave-one-out"):
        calibrate_rejection_threshold(x, y, rule="knn", k=len(y))
    with pytest.raises(ValueError, match="2-D"):
        calibrate_rejection_threshold(x[0], y[:1])
    bad = x.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="support_embeddings.*row 5"):
        calibrate_rejection_threshold(bad, y)
    with pytest.raises(ValueError, match="threshold"):
        predict_with_rejection(index, q, float("nan"))
