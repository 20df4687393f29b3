"""The shipped embedding: loading offline, compression, and classifiers built on it."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import speckle_embed as se
from speckle_embed.embedder import CheckpointError, SpeckleEmbedder
from speckle_embed.pretrained import (DEFAULT_PRETRAINED, WEIGHTS_DIR, _dequantise, _quantise, available_pretrained,
                                      compress_checkpoint, load_pretrained)


def test_the_default_embedding_ships_and_fits_the_size_limit():
    path = WEIGHTS_DIR / f"{DEFAULT_PRETRAINED}.pt"
    assert DEFAULT_PRETRAINED in available_pretrained()
    assert path.stat().st_size <= 20 * 1024 ** 2


def test_load_pretrained_gives_a_working_embedder():
    emb = se.load_pretrained(device="cpu")
    path = WEIGHTS_DIR / f"{DEFAULT_PRETRAINED}.pt"
    assert emb.checkpoint_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert emb.reference_speckle_px is not None and emb.reference_speckle_px > 1
    assert emb.metadata["pretrained"] == DEFAULT_PRETRAINED
    # the validation structures chose the checkpoint; they never trained (v3: the AMO domain's capsids)
    val = set(emb.metadata["val_structures"])
    assert val and not val & set(emb.metadata.get("train_structures") or [])
    frames = np.random.default_rng(0).poisson(3.0, (4, 172, 172)).astype(np.uint16)
    z = emb.embed(frames)
    assert z.shape == (4, 128) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    # the same file through the generic loader
    again = SpeckleEmbedder.from_checkpoint(path, device="cpu")
    np.testing.assert_allclose(again.embed(frames), z, atol=1e-6)


def test_unknown_name_and_damaged_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=DEFAULT_PRETRAINED):
        load_pretrained("no-such-model")
    bad = tmp_path / "bad.pt"
    bad.write_bytes((WEIGHTS_DIR / f"{DEFAULT_PRETRAINED}.pt").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pretrained(path=bad)


def test_group_quantisation_error_is_half_a_step():
    w = torch.randn(7, 300) * torch.linspace(0.01, 3, 300)
    entry = _quantise(w, 128)
    assert entry["int8"].dtype == torch.int8 and entry["scale"].shape == (7, 3)
    err = (_dequantise(entry) - w).abs()
    step = entry["scale"].repeat_interleave(128, dim=1)[:, :300]
    assert torch.all(err <= step / 2 + 1e-7)


def test_compress_checkpoint_round_trip(tmp_path):
    emb = SpeckleEmbedder.random_init(seed=3, device="cpu")
    src = tmp_path / "model.pt"
    emb.save_checkpoint(src)
    info = compress_checkpoint(src, tmp_path / "small.pt", name="toy", provenance={"seed": 3})
    assert info["bytes"] < src.stat().st_size / 3
    small = load_pretrained(path=tmp_path / "small.pt", device="cpu")
    assert small.metadata["seed"] == 3 and small.metadata["source_hash"] == emb.checkpoint_hash
    frames = np.random.default_rng(1).poisson(5.0, (6, 96, 96)).astype(np.float32)
    dz = np.linalg.norm(small.embed(frames) - emb.embed(frames), axis=1)
    assert dz.max() < 0.05  # int8 weights move unit-norm embeddings by well under 5%


def test_classifier_on_the_shipped_embedding_saves_and_loads(tmp_path):
    emb = se.load_pretrained(device="cpu")
    rng = np.random.default_rng(2)
    frames = rng.poisson(4.0, (6, 128, 128)).astype(np.float32)
    clf = se.FewShotClassifier(emb).fit(frames, ["single"] * 3 + ["multi"] * 3)
    clf.save(tmp_path / "clf")
    back = se.FewShotClassifier.load(tmp_path / "clf", device="cpu")
    assert back.embedder.checkpoint_hash == emb.checkpoint_hash
    assert (tmp_path / "clf" / "embedder.pt").stat().st_size < 20 * 1024 ** 2  # the compressed copy
    np.testing.assert_array_equal(back.predict(frames), clf.predict(frames))


def test_training_can_start_from_the_shipped_weights(tmp_path):
    """init_checkpoint=pretrained: fine-tuning starts from the dequantised shipped embedding."""
    from test_train_loop import compose_cfg, write_dataset

    from speckle_embed.pretrained import pretrained_checkpoint
    from speckle_embed.train import load_checkpoint, train

    write_dataset(tmp_path / "d", n_structures=3, per_class=4, size=100, hits=(1, 2))
    cfg = compose_cfg(tmp_path / "d", tmp_path / "run", epochs=1, steps_per_epoch=1,
                      init_checkpoint="pretrained", **{"optim.lr": 0.0, "augment.enabled": False})
    train(cfg)
    shipped = pretrained_checkpoint()
    got = load_checkpoint(tmp_path / "run" / "last.pt")
    assert got["model"] == shipped["model"] and got["preprocessing"]["input_size"] == 96
    # lr 0: the weights are still the shipped ones (BatchNorm running statistics move)
    for k, v in shipped["state_dict"].items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(got["state_dict"][k], v), k
    with pytest.raises(FileNotFoundError, match="no pretrained embedding 'nope'"):
        pretrained_checkpoint("nope")
    # a compressed file given by path (e.g. an older shipped version from git history)
    from speckle_embed.train.loop import _load_init
    by_path = _load_init(str(WEIGHTS_DIR / f"{DEFAULT_PRETRAINED}.pt"), tmp_path)
    assert all(torch.equal(by_path["state_dict"][k], v) for k, v in shipped["state_dict"].items())
