"""FewShotClassifier.save/load (issue 12, items 11-13): the weights in use are saved, a user's
files in the folder survive a re-save, and an edited classifier.json is refused naming the key."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speckle_embed.checkpoint import file_hash, sha256_file
from speckle_embed.classifier import ClassifierFileError, FewShotClassifier
from speckle_embed.embedder import SpeckleEmbedder

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}
YY, XX = np.mgrid[:128, :128] - 63.5


def frames(n, seed):
    rng = np.random.default_rng(seed)
    rings = [rng.poisson(50 * (1 + np.cos(np.hypot(YY, XX) / rng.uniform(2.9, 3.1)))) for _ in range(n)]
    stripes = [rng.poisson(50 * (1 + np.cos(XX / rng.uniform(2.9, 3.1)))) for _ in range(n)]
    return np.stack(rings + stripes).astype(np.float32), ["ring"] * n + ["stripe"] * n


@pytest.fixture()
def from_file(tmp_path):
    """An embedder loaded from a checkpoint file, and a classifier fitted with it."""
    SpeckleEmbedder.random_init(model=SMALL, seed=2, device="cpu").save_checkpoint(tmp_path / "emb.pt")
    emb = SpeckleEmbedder.from_checkpoint(tmp_path / "emb.pt", device="cpu")
    X, y = frames(5, 0)
    return emb, FewShotClassifier(emb, reject_quantile=0.9).fit(X, y), X


def test_save_copies_the_checkpoint_while_weights_are_unchanged(from_file, tmp_path):
    emb, clf, X = from_file
    clf.save(tmp_path / "clf")
    assert sha256_file(tmp_path / "clf" / "embedder.pt") == sha256_file(tmp_path / "emb.pt")
    assert FewShotClassifier.load(tmp_path / "clf", device="cpu").checkpoint_hash_ == file_hash(tmp_path / "emb.pt")


def test_save_writes_the_weights_in_use_after_an_in_memory_change(from_file, tmp_path):
    emb, clf, X = from_file
    original = file_hash(tmp_path / "emb.pt")
    with torch.no_grad():
        for p in emb.model.parameters():
            p.mul_(1.3).add_(0.01)
    assert not emb.weights_match_checkpoint()
    Xq, _ = frames(4, 7)
    before = clf.predict_proba(Xq)
    clf.save(tmp_path / "clf")
    loaded = FewShotClassifier.load(tmp_path / "clf", device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(Xq), before)
    # the changed weights got a new identity; the original file is untouched
    assert loaded.checkpoint_hash_ == clf.checkpoint_hash_ == emb.checkpoint_hash != original
    assert file_hash(tmp_path / "emb.pt") == original
    assert emb.weights_match_checkpoint()
    clf.save(tmp_path / "clf")  # a second save of the same weights is a plain copy again
    assert loaded.checkpoint_hash_ == FewShotClassifier.load(tmp_path / "clf", device="cpu").checkpoint_hash_


def test_resave_keeps_the_users_files(from_file, tmp_path):
    emb, clf, X = from_file
    folder = tmp_path / "clf"
    clf.save(folder)
    (folder / "notes.txt").write_text("beamtime 42: run 17 labelled by hand\n")
    (folder / "plots").mkdir()
    (folder / "plots" / "a.png").write_bytes(b"png")
    clf.register("stripe", frames(1, 9)[0][1:])
    clf.save(folder)
    assert (folder / "notes.txt").read_text() == "beamtime 42: run 17 labelled by hand\n"
    assert (folder / "plots" / "a.png").read_bytes() == b"png"
    assert FewShotClassifier.load(folder, device="cpu").n_supports_.tolist() == [5, 6]
    assert not list(tmp_path.glob("*.tmp"))
    other = tmp_path / "not_a_classifier"
    other.mkdir()
    (other / "data.h5").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not_a_classifier.*does not hold a saved FewShotClassifier"):
        clf.save(other)
    assert (other / "data.h5").read_bytes() == b"x"


def edit(folder, **changes):
    meta = json.loads((folder / "classifier.json").read_text())
    meta.update(changes)
    (folder / "classifier.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("changes, key", [
    ({"threshold": "0.5"}, "threshold"), ({"threshold": float("nan")}, "threshold"), ({"threshold": True}, "threshold"),
    ({"label_kind": "float"}, "label_kind"), ({"label_kind": None}, "label_kind"),
    ({"label_kind": "int"}, "classes"), ({"classes": ["ring", "ring"]}, "classes"),
])
def test_edited_json_names_the_file_and_key(from_file, tmp_path, changes, key):
    emb, clf, X = from_file
    clf.save(tmp_path / "clf")
    edit(tmp_path / "clf", **changes)
    with pytest.raises(ClassifierFileError, match=rf"clf/classifier\.json: key '{key}'.*re-save"):
        FewShotClassifier.load(tmp_path / "clf", device="cpu")


def test_classes_that_do_not_match_the_supports_say_which(from_file, tmp_path):
    emb, clf, X = from_file
    clf.save(tmp_path / "clf")
    edit(tmp_path / "clf", classes=["multi"])  # the index holds supports of 2 classes
    with pytest.raises(ClassifierFileError, match=r"key 'classes' lists 1 class\(es\) \['multi'\].*2 classes.*"
                                                  r"no class name for label code\(s\) \[1\].*missing"):
        FewShotClassifier.load(tmp_path / "clf", device="cpu")
    edit(tmp_path / "clf", classes=["ring", "stripe", "multi"], n_supports=[5, 5, 0])
    with pytest.raises(ClassifierFileError, match=r"key 'classes' lists \['multi'\], which have no supports"):
        FewShotClassifier.load(tmp_path / "clf", device="cpu")
    edit(tmp_path / "clf", classes=["ring", "stripe"], n_supports=[5, 4])
    with pytest.raises(ClassifierFileError, match=r"key 'n_supports'.*'stripe': 5 in index\.npz, 4 in classifier\.json"):
        FewShotClassifier.load(tmp_path / "clf", device="cpu")
