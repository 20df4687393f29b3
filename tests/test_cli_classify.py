"""`speckle-embed classify`: Hydra composition, dataset discovery, chunked reading, HDF5 + CSV outputs."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from speckle_embed.classify import writer as writer_module
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
    assert res["attrs"]["n_frames"] == 11 and res["attrs"]["rule"] == "logistic"
    assert rows[0] == ["file", "frame", "prediction", "distance_ring", "distance_stripe", "proba_ring", "proba_stripe",
                       "empty"]
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


# ----------------------------------------------------------------------------- issue 12: write errors
class _FailingFile:
    """A file object whose ``write`` raises ``OSError(code)`` (a full disk, an I/O error...)."""

    def __init__(self, real, code):
        self._real, self._code = real, code

    def write(self, data):
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES])
@pytest.mark.parametrize("target", [".csv.", ".h5."])
def test_write_error_gives_one_line_and_leaves_no_temporary(setup, tmp_path, capsys, monkeypatch, code, target):
    """Issue 12 item 2: the CSV rows (streamed) or the HDF5 file (written at the end) fail to write."""
    root = setup[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.tmp").write_text("a user's file")

    def failing_open(path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        return _FailingFile(real, code) if target in os.fspath(path) and "w" in mode else real

    monkeypatch.setattr(writer_module, "open", failing_open, raising=False)
    rc = main(["classify", f"classifier={root / 'clf'}", f"inputs=[{root / 'data'}]", f"output_dir={out}",
               "progress=false"])
    err = capsys.readouterr().err
    assert rc == 1
    assert len(err.strip().splitlines()) == 1, err
    final = out / ("predictions.csv" if target == ".csv." else "predictions.h5")
    assert f"cannot write {final}: {os.strerror(code)}" in err and "output_dir=" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.tmp"]  # no temporary, no result


def test_write_error_keeps_earlier_results(setup, tmp_path, monkeypatch):
    root = setup[0]
    out = tmp_path / "out"
    cfg = {"classifier": str(root / "clf"), "inputs": [str(root / "data")], "output_dir": str(out),
           "progress": False}
    run_classify(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_open(path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        return _FailingFile(real, errno.ENOSPC) if ".h5." in os.fspath(path) and "w" in mode else real

    monkeypatch.setattr(writer_module, "open", failing_open, raising=False)
    with pytest.raises(OSError, match="No space left on device"):
        run_classify(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    d = tmp_path / "full"
    d.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"mount not permitted here: {res.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_full_disk_subprocess_exits_1_without_temporaries(setup, tiny_tmpfs):
    """Issue 12 item 2 end to end: a real full disk (was: segfault, exit 139, temporaries left)."""
    root = setup[0]
    for _ in range(2):  # a retry adds nothing either
        res = subprocess.run([sys.executable, "-m", "speckle_embed", "classify", f"classifier={root / 'clf'}",
                              f"inputs=[{root / 'data'}]", f"output_dir={tiny_tmpfs}", "progress=false"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "No space left on device" in res.stderr and str(tiny_tmpfs) in res.stderr
        assert list(tiny_tmpfs.iterdir()) == []


def test_stale_temporaries_of_dead_writers_are_removed(setup, tmp_path):
    root = setup[0]
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    killed = [out / f"predictions.h5.{dead}-0badc0de.tmp", out / f"predictions.csv.{dead}-0badc0de.tmp"]
    alive = out / f"predictions.h5.{os.getpid()}-12345678.tmp"  # a running writer's
    other = [out / "notes.tmp", out / f"other.h5.{dead}-0badc0de.tmp"]
    for p in killed + [alive] + other:
        p.write_text("x")
    run_classify({"classifier": str(root / "clf"), "inputs": [str(root / "data")], "output_dir": str(out),
                  "progress": False})
    assert not any(p.exists() for p in killed)
    assert alive.exists() and all(p.exists() for p in other)


# ----------------------------------------------------------------------------- issue 12: discovery
def _model_frames(n=3):
    return rings(n, 7)


@pytest.mark.parametrize("layout, expected", [
    ({"/aaa/quats": (12, 4, 4), "/entry_1/data_1/data": "frames"}, "/entry_1/data_1/data"),
    ({"/aaa/quats": (12, 4, 4), "/aab/other": "frames", "/entry_1/instrument_1/detector_1/data": "frames"},
     "/entry_1/instrument_1/detector_1/data"),
    ({"/aaa/quats": (12, 4, 4), "/zz/frames": "frames"}, "/zz/frames"),
])
def test_discovery_prefers_cxi_paths_and_skips_small_datasets(tmp_path, layout, expected):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        for key, what in layout.items():
            f[key] = _model_frames() if what == "frames" else np.ones(what, np.float32)
    with h5py.File(path, "r") as f:
        assert find_frames_dataset(f, min_side=96).name == expected


def test_quaternions_are_not_classified_as_frames(setup, tmp_path, capsys):
    """Issue 12 item 3: the first 3-D dataset is /aaa/quats (12, 4, 4) (was: twelve 4x4 'frames')."""
    root = setup[0]
    path = tmp_path / "quats.h5"
    with h5py.File(path, "w") as f:
        f["/aaa/quats"] = np.random.default_rng(0).normal(size=(12, 4, 4)).astype(np.float32)
    args = ["classify", f"classifier={root / 'clf'}", f"inputs=[{path}]", f"output_dir={tmp_path / 'o'}",
            "progress=false"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "/aaa/quats (12, 4, 4)" in err and "48x48" in err and "data_path=" in err
    assert main(args + ["data_path=/aaa/quats"]) == 1
    err = capsys.readouterr().err
    assert "4x4 pixels, smaller than the smallest frame the model takes (48x48 pixels" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_ambiguous_frames_are_refused_with_the_candidates(setup, tmp_path, capsys):
    root = setup[0]
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["/aaa/quats"] = np.ones((12, 4, 4), np.float32)
        f["/det/raw"] = _model_frames()
        f["/det/corrected"] = _model_frames()
    args = ["classify", f"classifier={root / 'clf'}", f"inputs=[{path}]", f"output_dir={tmp_path / 'o'}",
            "progress=false"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "several 3-D datasets" in err and "/det/corrected (3, 128, 128)" in err
    assert "/det/raw (3, 128, 128)" in err and "data_path=" in err
    assert main(args + ["data_path=/det/raw"]) == 0


def test_small_frames_at_the_cxi_path_are_refused(setup, tmp_path, capsys):
    root = setup[0]
    path = tmp_path / "small.cxi"
    with h5py.File(path, "w") as f:
        f["/entry_1/data_1/data"] = np.ones((5, 1, 1), np.float32)
    assert main(["classify", f"classifier={root / 'clf'}", f"inputs=[{path}]", f"output_dir={tmp_path / 'o'}",
                 "progress=false"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "1x1 pixels" in err and "48x48" in err


# ----------------------------------------------------------------------------- issue 12: empty frames
def test_empty_frames_are_flagged_in_csv_and_h5(setup, tmp_path, capsys):
    """Issue 12 item 4: all-zero and constant frames (was: 0.995 'single', no warning)."""
    root = setup[0]
    frames = rings(4, 5)
    frames[1] = 0
    frames[3] = 7.0
    path = write_frames(tmp_path / "data" / "e.h5", frames)
    out = tmp_path / "out"
    assert main(["classify", f"classifier={root / 'clf'}", f"inputs=[{path}]", f"output_dir={out}",
                 "progress=false", "chunk_size=3"]) == 0
    captured = capsys.readouterr()
    assert "2 frame(s) have no photons" in captured.out and "EmptyFrameWarning" not in captured.err
    res, rows = read_outputs(out)
    assert res["empty"].dtype == bool and res["empty"].tolist() == [False, True, False, True]
    assert res["attrs"]["n_empty"] == 2
    assert rows[0][-1] == "empty" and [r[-1] for r in rows[1:]] == ["0", "1", "0", "1"]


# ----------------------------------------------------------------------------- issue 12 item 13
@pytest.mark.parametrize("value", ["0", "-3", "abc"])
def test_bad_batch_size_names_the_key_and_range(setup, tmp_path, capsys, value):
    root = setup[0]
    assert main(["classify", f"classifier={root / 'clf'}", f"inputs=[{root / 'data'}]",
                 f"output_dir={tmp_path}", "progress=false", f"batch_size={value}"]) == 1
    err = capsys.readouterr().err
    assert f"batch_size must be an integer >= 1 (frames per forward pass); got {value if value != 'abc' else repr(value)}" in err
    assert "got None" not in err


def test_embedder_batch_size_attribute_error_names_the_value(setup):
    emb = FewShotClassifier.load(setup[0] / "clf").embedder
    emb.batch_size = 0
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer .*got 0 \(the embedder's"):
        emb.embed(rings(1, 0))


def test_damaged_input_names_the_file(setup, tmp_path, capsys):
    """Issue 12 item 13: bytes flipped inside a compressed chunk of the frames."""
    root = setup[0]
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=rings(3, 9), chunks=(1, 128, 128), compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["/entry_1/data_1/data"].id.get_chunk_info(1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        chunk = bytearray(fh.read(16))
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    out = tmp_path / "o"
    assert main(["classify", f"classifier={root / 'clf'}", f"inputs=[{path}]", f"output_dir={out}",
                 "progress=false", "chunk_size=1"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"cannot read frames 1:2 of /entry_1/data_1/data of {path}: the file is damaged" in err
    assert "copy it again" in err
    assert not out.exists() or not list(out.iterdir())
