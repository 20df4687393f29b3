"""Few-shot episodes over held-out structures (speckle_embed.evaluation.episodes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speckle_embed.evaluation.episodes import evaluate_episodes, sample_episodes


def toy_labels(n_structures=3, per_class=12):
    hit = np.tile(np.repeat([0, 1, 2, 3], per_class), n_structures)
    struct = np.repeat(np.arange(n_structures), 4 * per_class)
    return hit, struct


def test_episode_structure():
    hit, struct = toy_labels()
    eps = sample_episodes(hit, struct, n_way=2, k_shot=5, n_query=4, n_tasks=3, seed=1)
    assert len(eps) == 9
    assert [e.structure for e in eps] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for e in eps:
        assert e.classes == (1, 2)  # single, multi
        assert np.all(struct[e.support_idx] == e.structure) and np.all(struct[e.query_idx] == e.structure)
        assert not set(e.support_idx) & set(e.query_idx)
        assert np.bincount(e.support_labels).tolist() == [5, 5]
        assert np.bincount(e.query_labels).tolist() == [4, 4]  # label-balanced queries
        assert np.array_equal(hit[e.support_idx], np.array(e.classes)[e.support_labels])
        assert np.array_equal(hit[e.query_idx], np.array(e.classes)[e.query_labels])
    again = sample_episodes(hit, struct, n_way=2, k_shot=5, n_query=4, n_tasks=3, seed=1)
    assert all(np.array_equal(a.query_idx, b.query_idx) for a, b in zip(eps, again))
    other = sample_episodes(hit, struct, n_way=2, k_shot=5, n_query=4, n_tasks=3, seed=2)
    assert not all(np.array_equal(a.query_idx, b.query_idx) for a, b in zip(eps, other))


def test_queries_limited_by_smallest_class_and_small_structures_skipped():
    hit = np.array([1] * 8 + [2] * 7 + [1] * 3 + [2] * 10)
    struct = np.array([0] * 15 + [1] * 13)
    eps = sample_episodes(hit, struct, k_shot=5, n_query=10, n_tasks=2)
    assert {e.structure for e in eps} == {0}  # structure 1 has only 3 singles
    assert all(np.bincount(e.query_labels).tolist() == [2, 2] for e in eps)
    with pytest.raises(ValueError, match="no structure has"):
        sample_episodes(hit, struct, k_shot=8)


def test_three_way_and_explicit_classes():
    hit, struct = toy_labels(n_structures=1)
    eps = sample_episodes(hit, struct, n_way=3, k_shot=2, n_query=3, n_tasks=2)
    assert eps[0].classes == (1, 2, 3) and eps[0].n_way == 3
    eps = sample_episodes(hit, struct, n_way=2, classes=[3, 1], k_shot=2, n_query=3, n_tasks=1)
    assert eps[0].classes == (3, 1)
    with pytest.raises(ValueError, match="distinct"):
        sample_episodes(hit, struct, n_way=2, classes=[1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        sample_episodes(hit[:-1], struct)


def test_separable_embeddings_give_accuracy_one():
    hit, struct = toy_labels(n_structures=3)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    emb = centres[hit] + rng.normal(scale=0.1, size=(hit.size, 16))
    eps = sample_episodes(hit, struct, k_shot=5, n_query=5, n_tasks=4, seed=0)
    for rule in ("mean_distance", "prototype", "knn"):
        res = evaluate_episodes(torch.as_tensor(emb, dtype=torch.float32), eps, rule=rule,
                                structure_names=["a", "b", "c"], **({"k": 3} if rule == "knn" else {}))
        assert res["accuracy"] == 1.0 and res["f1"] == 1.0
        assert res["n_tasks"] == 12 and res["n_queries"] == 12 * 10
        assert set(res["per_structure"]) == {"a", "b", "c"}
        assert all(v["accuracy"] == 1.0 and v["n_tasks"] == 4 for v in res["per_structure"].values())


def test_scores_of_a_known_confusion():
    # single and multi well separated, but the single queries of structure 1 sit on multi
    hit, struct = toy_labels(n_structures=2, per_class=10)
    emb = np.zeros((hit.size, 2), dtype=np.float32)
    emb[hit == 1] = [1, 0]
    emb[hit == 2] = [0, 1]
    eps = sample_episodes(hit, struct, k_shot=3, n_query=5, n_tasks=2, seed=0)
    emb_q = emb.copy()
    for e in eps:
        if e.structure == 1:
            q_single = e.query_idx[e.query_labels == 0]
            emb_q[q_single] = [0, 1]  # misclassified as multi
    res = evaluate_episodes(emb_q, eps)
    assert res["per_structure"]["0"]["accuracy"] == 1.0
    assert res["per_structure"]["1"]["accuracy"] == 0.5
    # structure 1: tp 0, fn 10, fp 0 -> F1 0; pooled: tp 10, fn 10, fp 0 -> 2/3
    assert res["per_structure"]["1"]["f1"] == 0.0
    assert res["f1"] == pytest.approx(2 / 3)
    assert res["accuracy"] == 0.75
