"""Classification-time adaptation: prototypes oracle, BatchNorm statistics, fine-tuning budget, classifier API."""
import numpy as np
import pytest
import torch

from speckle_embed import FewShotClassifier, SpeckleEmbedder
from speckle_embed.adaptation import (
    finetune_on_supports,
    parse_adapt,
    prototype_distances,
    reestimate_batchnorm,
    refine_prototypes,
)
from speckle_embed.adaptation.inputs import model_inputs


def test_refine_prototypes_matches_direct_soft_kmeans():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4))
    y = np.array([0, 0, 0, 1, 1, 1])
    u = rng.normal(size=(30, 4))
    got = refine_prototypes(z, y, u, 2, temperature=0.5, n_iter=3, support_weight=2.0)
    p = np.stack([z[y == c].mean(0) for c in range(2)])
    for _ in range(3):  # brute force, one unlabelled frame at a time
        w = np.array([[np.exp(-np.sum((ui - pc) ** 2) / 0.5) for pc in p] for ui in u])
        w /= w.sum(1, keepdims=True)
        p = np.stack([(2.0 * z[y == c].sum(0) + sum(w[i, c] * u[i] for i in range(len(u))))
                      / (2.0 * 3 + w[:, c].sum()) for c in range(2)])
    np.testing.assert_allclose(got, p, rtol=1e-10)
    np.testing.assert_allclose(refine_prototypes(z, y, u, 2, n_iter=0), [z[:3].mean(0), z[3:].mean(0)])
    d = prototype_distances(u[:2], p)
    np.testing.assert_allclose(d, ((u[:2, None] - p[None]) ** 2).sum(-1), rtol=1e-9)


def test_refined_prototypes_move_towards_unlabelled_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    u = np.concatenate([centres[0] + 0.05 * rng.normal(size=(200, 2)), centres[1] + 0.05 * rng.normal(size=(200, 2))])
    z = np.array([[0.7, 0.3], [0.3, 0.7]])  # biased supports, one per class
    p = refine_prototypes(z, [0, 1], u, 2, temperature=0.1, n_iter=20)
    assert np.abs(p - centres).max() < 0.05 < np.abs(z - centres).max()


def test_parse_adapt_orders_and_validates():
    assert parse_adapt(None) == ()
    assert parse_adapt(["prototypes", "batchnorm"]) == ("batchnorm", "prototypes")
    with pytest.raises(ValueError, match="unknown adapt option 'bn'"):
        parse_adapt("bn")


def _frames(rng, n, mean):
    return rng.poisson(mean, size=(n, 100, 100)).astype(np.float32)


def test_batchnorm_statistics_are_those_of_the_unlabelled_frames_and_original_untouched():
    emb = SpeckleEmbedder.random_init(device="cpu")
    before = {k: v.clone() for k, v in emb.model.state_dict().items()}
    frames = _frames(np.random.default_rng(0), 12, 3.0)
    new = reestimate_batchnorm(emb, frames, batch_size=12)
    for k, v in emb.model.state_dict().items():
        assert torch.equal(v, before[k])  # the original is unchanged
    bn = next(m for m in new.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_conv = next(m for m in new.model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        act = first_conv(model_inputs(emb, frames))  # the first BatchNorm follows the first conv
    np.testing.assert_allclose(bn.running_mean.numpy(), act.mean((0, 2, 3)).numpy(), atol=1e-5)
    assert new.checkpoint_hash is None and not new.model.training


def test_finetune_respects_budget_and_changes_a_copy():
    emb = SpeckleEmbedder.random_init(device="cpu")
    rng = np.random.default_rng(0)
    X = np.concatenate([_frames(rng, 3, 0.5), _frames(rng, 3, 5.0)])
    tuned, log = finetune_on_supports(emb, X, [0, 0, 0, 1, 1, 1], budget_s=600.0, max_steps=3, lr=1e-3)
    assert log["steps"] == 3
    _, short = finetune_on_supports(emb, X, [0, 0, 0, 1, 1, 1], budget_s=1e-3, max_steps=50)
    assert short["steps"] == 1  # the budget stops it after the first step
    assert tuned.model is not emb.model
    changed = any(not torch.equal(a, b) for a, b in zip(tuned.model.state_dict().values(),
                                                       emb.model.state_dict().values()))
    assert changed


def test_classifier_adapt_prototypes_saves_and_loads(tmp_path):
    emb = SpeckleEmbedder.random_init(device="cpu")
    rng = np.random.default_rng(3)
    X = np.concatenate([_frames(rng, 3, 0.5), _frames(rng, 3, 5.0)])
    U = np.concatenate([_frames(rng, 10, 0.5), _frames(rng, 10, 5.0)])
    y = ["a"] * 3 + ["b"] * 3
    with pytest.raises(ValueError, match="unlabelled"):
        FewShotClassifier(emb, adapt="prototypes").fit(X, y)
    clf = FewShotClassifier(emb, adapt=["prototypes", "batchnorm"]).fit(X, y, unlabelled=U)
    assert clf.adaptation_.prototypes.shape == (2, 128) and clf.adaptation_.embedder is not None
    ref = clf.decision_distances(U)
    np.testing.assert_allclose(ref, prototype_distances(clf.adaptation_.embedder.embed(U), clf.adaptation_.prototypes))
    np.testing.assert_allclose(clf.classify(U).distances, ref)   # classify() embeds with the adapted copy too
    loaded = FewShotClassifier.load(clf.save(tmp_path / "clf"))
    np.testing.assert_allclose(loaded.decision_distances(U), ref, atol=1e-5)
    assert loaded.adapt == ["batchnorm", "prototypes"]
    with pytest.raises(ValueError, match="refit"):
        loaded.register("c", U[:2])
    plain = FewShotClassifier(emb).fit(X, y)  # default: no adaptation, rule distances
    assert plain.adaptation_ is None
    assert not np.allclose(plain.decision_distances(U), ref)
