"""Trust model: no model file runs code when loaded (issue 12, item 1).

A crafted checkpoint whose pickle would create a marker file is refused, and the marker never
appears, through ``SpeckleEmbedder.from_checkpoint``, ``FewShotClassifier.load``,
``python -m speckle_embed classify`` and ``python -m speckle_embed evaluate``. The explicit
``trust_checkpoint`` opt-in loads a trusted legacy file, and ``convert_checkpoint`` makes it safe.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from speckle_embed.checkpoint import (CHECKPOINT_FORMAT, DEFAULT_PRETRAINED, PRETRAINED_FORMAT, WEIGHTS_DIR,
                                      CheckpointError, UntrustedCheckpointError, convert_checkpoint,
                                      load_checkpoint_file, parse_checkpoint_spec, sha256_file)
from speckle_embed.classifier import FewShotClassifier
from speckle_embed.embedder import SpeckleEmbedder

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}
REPO = pathlib.Path(__file__).resolve().parents[1]
YY, XX = np.mgrid[:128, :128] - 63.5


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def frames(n, seed):
    rng = np.random.default_rng(seed)
    rings = [rng.poisson(50 * (1 + np.cos(np.hypot(YY, XX) / rng.uniform(2.9, 3.1)))) for _ in range(n)]
    stripes = [rng.poisson(50 * (1 + np.cos(XX / rng.uniform(2.9, 3.1)))) for _ in range(n)]
    return np.stack(rings + stripes).astype(np.float32), ["ring"] * n + ["stripe"] * n


@pytest.fixture(scope="module")
def emb():
    return SpeckleEmbedder.random_init(model=SMALL, seed=1, device="cpu")


def write_malicious(emb, path, marker):
    """A complete, valid embedder checkpoint whose training metadata carries the payload."""
    torch.save({**emb.checkpoint_dict(), "training": {"note": Payload(marker)}}, path)
    return path


def write_legacy(emb, path):
    """A benign old-style checkpoint: metadata with objects weights_only=True refuses (a Path)."""
    torch.save({**emb.checkpoint_dict(), "training": {"data": pathlib.PurePosixPath("/data/run1"),
                                                     "epoch": np.int64(3)}}, path)
    return path


def swap_embedder(folder, checkpoint):
    """Put ``checkpoint`` into a saved classifier folder and fix its sha256 list (as an attacker would)."""
    (folder / "embedder.pt").write_bytes(checkpoint.read_bytes())
    meta = json.loads((folder / "classifier.json").read_text())
    meta["files"]["embedder.pt"] = sha256_file(folder / "embedder.pt")
    (folder / "classifier.json").write_text(json.dumps(meta))


def test_the_payload_is_real(emb, tmp_path):
    """Control: unpickling the crafted file in full does run the command (what the loaders must avoid)."""
    marker = tmp_path / "pwned"
    path = write_malicious(emb, tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_from_checkpoint_refuses_and_payload_never_runs(emb, tmp_path):
    marker = tmp_path / "pwned"
    path = write_malicious(emb, tmp_path / "evil.pt", marker)
    with pytest.raises(UntrustedCheckpointError, match=r"evil\.pt.*NOT loaded.*posix\.system.*trust_checkpoint=True"):
        SpeckleEmbedder.from_checkpoint(path, device="cpu")
    with pytest.raises(CheckpointError):  # the documented base class
        load_checkpoint_file(path)
    with pytest.raises(UntrustedCheckpointError):  # the deprecated spelling is no fallback either
        SpeckleEmbedder.from_checkpoint(path, device="cpu", weights_only=True)
    assert not marker.exists()


def test_classifier_load_refuses_a_crafted_folder(emb, tmp_path):
    marker = tmp_path / "pwned"
    X, y = frames(3, 0)
    FewShotClassifier(emb).fit(X, y).save(tmp_path / "clf")
    swap_embedder(tmp_path / "clf", write_malicious(emb, tmp_path / "evil.pt", marker))
    with pytest.raises(UntrustedCheckpointError, match=r"embedder\.pt.*trust_checkpoint"):
        FewShotClassifier.load(tmp_path / "clf", device="cpu")
    assert not marker.exists()


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "speckle_embed", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_classify_cli_refuses_a_crafted_folder(emb, tmp_path):
    marker = tmp_path / "pwned"
    X, y = frames(3, 0)
    FewShotClassifier(emb).fit(X, y).save(tmp_path / "clf")
    swap_embedder(tmp_path / "clf", write_malicious(emb, tmp_path / "evil.pt", marker))
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=frames(1, 5)[0])
    res = run_cli("classify", f"classifier={tmp_path / 'clf'}", f"inputs=[{tmp_path / 'run.h5'}]",
                  f"output_dir={tmp_path / 'out'}", "progress=false", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NOT loaded" in res.stderr and "trust_checkpoint=true" in res.stderr
    assert not marker.exists() and not (tmp_path / "out" / "predictions.h5").exists()


def test_evaluate_cli_refuses_a_crafted_checkpoint(emb, tmp_path):
    marker = tmp_path / "pwned"
    write_malicious(emb, tmp_path / "evil.pt", marker)
    res = run_cli("evaluate", "checkpoint=evil.pt", f"hydra.run.dir={tmp_path / 'out'}", "progress=false",
                  cwd=tmp_path)
    assert res.returncode != 0
    assert "NOT loaded" in res.stderr + res.stdout
    assert not marker.exists() and not (tmp_path / "out" / "report.json").exists()


def test_opt_in_loads_a_trusted_legacy_file_and_convert_makes_it_safe(emb, tmp_path):
    old = write_legacy(emb, tmp_path / "old.pt")
    with pytest.raises(UntrustedCheckpointError, match="PurePosixPath"):
        SpeckleEmbedder.from_checkpoint(old, device="cpu")
    trusted = SpeckleEmbedder.from_checkpoint(old, device="cpu", trust_checkpoint=True)
    X, _ = frames(2, 1)
    np.testing.assert_array_equal(trusted.embed(X), emb.embed(X))
    assert trusted.metadata == {"data": "/data/run1", "epoch": 3}  # converted to plain data
    convert_checkpoint(old, tmp_path / "new.pt", trust_checkpoint=True)
    torch.load(tmp_path / "new.pt", weights_only=True)  # plain now
    again = SpeckleEmbedder.from_checkpoint(tmp_path / "new.pt", device="cpu")
    np.testing.assert_array_equal(again.embed(X), emb.embed(X))
    with pytest.raises(UntrustedCheckpointError):  # converting also needs the explicit opt-in
        convert_checkpoint(old, tmp_path / "x.pt")


def test_opt_in_for_a_trusted_legacy_classifier_folder_and_resave_converts(emb, tmp_path):
    X, y = frames(3, 0)
    clf = FewShotClassifier(emb).fit(X, y)
    clf.save(tmp_path / "clf")
    swap_embedder(tmp_path / "clf", write_legacy(emb, tmp_path / "old.pt"))
    with pytest.raises(UntrustedCheckpointError):
        FewShotClassifier.load(tmp_path / "clf", device="cpu")
    loaded = FewShotClassifier.load(tmp_path / "clf", device="cpu", trust_checkpoint=True)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    loaded.save(tmp_path / "clf2")  # rewritten as plain data, same weights and identity
    torch.load(tmp_path / "clf2" / "embedder.pt", weights_only=True)
    again = FewShotClassifier.load(tmp_path / "clf2", device="cpu")
    assert again.checkpoint_hash_ == clf.checkpoint_hash_
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_classify_cli_trust_flag_must_be_boolean(tmp_path):
    from speckle_embed.cli import run_classify

    (tmp_path / "a.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="trust_checkpoint must be true or false"):
        run_classify({"classifier": str(tmp_path), "inputs": [str(tmp_path / "a.h5")], "trust_checkpoint": "no"})


@pytest.mark.parametrize("path", [WEIGHTS_DIR / f"{DEFAULT_PRETRAINED}.pt", REPO / "weights" / "specklenn-offline-v1.pt"])
def test_shipped_weights_are_plain_data(path):
    """The shipped files load with weights_only=True and refer to no global beyond torch's allow-list."""
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    assert torch.load(path, weights_only=True)["format"] == PRETRAINED_FORMAT
    loaded = load_checkpoint_file(path)
    assert loaded.checkpoint["format"] == CHECKPOINT_FORMAT and not loaded.trusted


def test_numpy_scalars_in_metadata_load_without_trust(emb, tmp_path):
    torch.save({**emb.checkpoint_dict(), "training": {"best_metric": np.float64(0.75), "step": np.int64(9)}},
               tmp_path / "np.pt")
    loaded = SpeckleEmbedder.from_checkpoint(tmp_path / "np.pt", device="cpu")
    assert loaded.metadata["best_metric"] == 0.75


@pytest.mark.parametrize("spec, name, path", [
    ("pretrained", DEFAULT_PRETRAINED, None), ("default", DEFAULT_PRETRAINED, None),
    ("pretrained:other-v9", "other-v9", None), ("pretrained:", DEFAULT_PRETRAINED, None),
    ("runs/best.pt", None, "/base/runs/best.pt"), ("/abs/best.pt", None, "/abs/best.pt"),
    ("default:x.pt", None, "/base/default:x.pt"),
])
def test_one_spec_grammar(spec, name, path):
    got = parse_checkpoint_spec(spec, "/base")
    assert got.pretrained == name and (got.path is None if path is None else str(got.path) == path)


def test_evaluation_accepts_pretrained_name():
    """evaluate's checkpoint= takes the same grammar as training's init_checkpoint= (pretrained:<name>)."""
    from speckle_embed.evaluation.app import load_embedder

    emb = load_embedder(f"pretrained:{DEFAULT_PRETRAINED}", device="cpu")
    assert emb.metadata.get("pretrained") == DEFAULT_PRETRAINED
    with pytest.raises(FileNotFoundError, match="no pretrained embedding 'nope'"):
        load_embedder("pretrained:nope")
