"""`speckle-embed classify`: Hydra composition, dataset discovery, chunked reading, HDF5 + CSV outputs."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from speckle_embed.__main__ import main
from speckle_embed.classifier import FewShotClassifier
from speckle_embed.cli import find_frames_dataset, resolve_inputs, run_classify
from speckle_embed.embedder import SpeckleEmbedder

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}
YY, XX = np.mgrid[:128, :128] - 63.5


def rings(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.poisson(50 * (1 + np.cos(np.hypot(YY, XX) / rng.uniform(2.9, 3.1))))
                     for _ in range(n)]).astype(np.float32)


def stripes(n, seed):
    rng = np.random.default_rng(seed + 1000)
    return np.stack([rng.poisson(50 * (1 + np.cos(XX / rng.uniform(2.9, 3.1)))) for _ in range(n)]).astype(np.float32)


def write_frames(path, frames, mask=None):
    """A CXI-layout shard via simulate.dataset_io.write_shard when importable, else plain h5py."""
    try:
        from simulate.dataset_io import write_shard
    except ImportError:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("/entry_1/data_1/data", data=frames, chunks=(1,) + frames.shape[1:])
            f.create_dataset("/entry_1/data_1/mask", data=np.zeros(frames.shape[1:], np.uint16)
                             if mask is None else mask)
        return path
    return write_shard(path, frames, None, mask, None, durable=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    emb = SpeckleEmbedder.random_init(model=SMALL, device="cpu")
    clf = FewShotClassifier(emb).fit(np.concatenate([rings(4, 0), stripes(4, 0)]), ["ring"] * 4 + ["stripe"] * 4)
    clf.save(root / "clf")
    mask = np.zeros((128, 128), np.uint16)
    mask[:, 62:66] = 1
    a = write_frames(root / "data" / "a.h5", np.concatenate([rings(5, 1), stripes(2, 1)]), mask)
    b = write_frames(root / "data" / "b.h5", stripes(4, 2), mask)
    # a facility-style file: frames elsewhere, uint16, no mask
    c = root / "other" / "run.cxi"
    c.parent.mkdir()
    with h5py.File(c, "w") as f:
        f.create_dataset("/instrument/det/frames", data=rings(3, 3).astype(np.uint16))
        f.create_dataset("/instrument/det/x", data=np.zeros(4))
    return root, a, b, c


def read_outputs(out):
    with h5py.File(out / "predictions.h5", "r") as f:
        g = f["predictions"]
        res = {k: g[k][()] for k in g}
        res["files"] = [s.decode() if isinstance(s, bytes) else s for s in f["files"][()]]
        res["attrs"] = dict(f.attrs)
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    res["label"] = np.array([s.decode() if isinstance(s, bytes) else s for s in res["label"]])
    return res, rows


def test_classify_cli_writes_h5_and_csv(setup, tmp_path, capsys):
    root, a, b, _ = setup
    out = tmp_path / "out"
    rc = main(["classify", f"classifier={root / 'clf'}", f"inputs=[{root / 'data'}]", f"output_dir={out}",
               "chunk_size=3", "batch_size=2", "progress=false"])
    assert rc == 0, capsys.readouterr().err
    assert "classified 11 frames from 2 file(s)" in capsys.readouterr().out
    res, rows = read_outputs(out)
    assert res["files"] == [str(a), str(b)]
    np.testing.assert_array_equal(res["file_index"], [0] * 7 + [1] * 4)
    np.testing.assert_array_equal(res["frame_index"], list(range(7)) + list(range(4)))
    assert res["label"].tolist() == ["ring"] * 5 + ["stripe"] * 6
    np.testing.assert_array_equal(res["code"], [0] * 5 + [1] * 6)
    assert res["distances"].shape == res["probabilities"].shape == (11, 2)
    np.testing.assert_allclose(res["probabilities"].sum(1), 1.0, rtol=1e-5)
    assert json.loads(res["attrs"]["class_names"]) == ["ring", "stripe"]
    assert res["attrs"]["n_frames"] == 11 and res["attrs"]["rule"] == "mean_distance"
    assert rows[0] == ["file", "frame", "prediction", "distance_ring", "distance_stripe", "proba_ring", "proba_stripe"]
    assert len(rows) == 12
    assert rows[1][:3] == [str(a), "0", "ring"] and rows[-1][:3] == [str(b), "3", "stripe"]
    assert not list(out.glob("*.tmp"))
    # same answers as the library
    clf = FewShotClassifier.load(root / "clf")
    with h5py.File(a, "r") as f:
        direct = clf.classify(f["/entry_1/data_1/data"][()], f["/entry_1/data_1/mask"][()])
    np.testing.assert_allclose(res["distances"][:7], direct.distances, rtol=1e-5, atol=1e-6)


def test_discovered_dataset_and_glob(setup, tmp_path):
    root, a, _, c = setup
    with h5py.File(c, "r") as f:
        assert find_frames_dataset(f).name == "/instrument/det/frames"
    assert resolve_inputs([str(root / "other" / "*.cxi"), str(a), str(a)]) == [c, a]
    summary = run_classify({"classifier": str(root / "clf"), "inputs": [str(root / "other" / "*.cxi")],
                            "output_dir": str(tmp_path / "o"), "progress": False, "write_csv": False})
    assert summary["n_frames"] == 3 and summary["counts"] == {"ring": 3} and summary["csv"] is None
    assert (tmp_path / "o" / "predictions.h5").exists() and not (tmp_path / "o" / "predictions.csv").exists()


def test_cli_errors(setup, tmp_path, capsys):
    root, _, _, _ = setup
    assert main(["classify", f"inputs=[{root / 'data'}]"]) == 2
    assert "classifier" in capsys.readouterr().err
    assert main(["classify", f"classifier={root / 'clf'}", f"inputs=[{tmp_path / 'missing.h5'}]",
                 f"output_dir={tmp_path}", "progress=false"]) == 1
    assert "missing.h5" in capsys.readouterr().err
    assert main(["classify", f"classifier={root / 'clf'}", f"inputs=[{root / 'data'}]",
                 "data_path=/nope", "progress=false", f"output_dir={tmp_path}"]) == 1
    assert "/nope" in capsys.readouterr().err
    assert main(["classify", "--cfg", "classifier=x", "inputs=[y]"]) == 0
    assert "chunk_size: 1024" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert not list(tmp_path.glob("*.h5"))


def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "speckle_embed", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "classify" in res.stdout and "train" in res.stdout
