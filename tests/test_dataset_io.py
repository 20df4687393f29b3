"""HDF5 shard writer (simulate.dataset_io) and lazy reader (speckle_embed.data.h5dataset)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from simulate import dataset_io
from simulate.dataset_io import (MASK_INVALID, MASK_SHADOWED, SHARD_FORMAT, ShardValidationError,
                                 cleanup_partial, shard_is_complete, write_shard)
from simulate.labels import HIT_CLASSES, hit_class_index, hit_class_name
from speckle_embed.data import h5dataset
from speckle_embed.data.h5dataset import (CorruptShardError, DatasetError, ShardIndex,
                                          SpeckleH5Dataset, open_dataset, read_frames, read_mask)

H, W = 8, 6


def make_shard(n=5, name="1ABC", seed=0, hit=None, h=H, w=W):
    rng = np.random.default_rng(seed)
    frames = rng.poisson(3.0, size=(n, h, w)).astype(np.float32)
    hit = np.array([i % 4 for i in range(n)] if hit is None else hit, dtype=np.int8)
    npart = np.where(hit == 2, 2, np.where(hit == 1, 1, 0)).astype(np.int8)
    quats = np.full((n, 4, 4), np.nan, dtype=np.float32)
    for i in range(n):
        quats[i, : max(npart[i], 0)] = [1, 0, 0, 0]
    truth = {
        "hit_class": hit,
        "n_particles": npart,
        "structure_id": np.array([name] * n),
        "quaternions": quats,
        "positions_m": np.full((n, 4, 3), np.nan, dtype=np.float32),
        "fluence_multiplier": np.ones(n, dtype=np.float32),
        "beam_center_offset_px": np.zeros((n, 2), dtype=np.float32),
    }
    mask = np.zeros((h, w), dtype=np.uint16)
    mask[0, :] = MASK_INVALID
    mask[h // 2, w // 2] = MASK_SHADOWED
    return frames, truth, mask


def write(tmp_path, n=5, name="1ABC", **kw):
    frames, truth, mask = make_shard(n=n, name=name, **{k: v for k, v in kw.items() if k in ("seed", "hit", "h", "w")})
    path = tmp_path / f"{name}.h5"
    write_shard(path, frames, truth, mask, {"seed": 7}, durable=False)
    return path, frames, truth, mask


# ----------------------------------------------------------------------------- labels
def test_labels_round_trip():
    assert HIT_CLASSES == ("no_hit", "single", "multi", "non_sample")
    assert HIT_CLASSES == h5dataset.HIT_CLASSES
    for i, name in enumerate(HIT_CLASSES):
        assert hit_class_index(name) == i
        assert hit_class_name(i) == name
        assert hit_class_name(np.int8(i)) == name
    assert hit_class_index(" Non-Sample ") == 3
    with pytest.raises(ValueError, match="valid names"):
        hit_class_index("double")
    with pytest.raises(ValueError, match="out of range"):
        hit_class_name(4)
    with pytest.raises(ValueError):
        hit_class_name(-1)
    with pytest.raises(TypeError):
        hit_class_name(True)


# ----------------------------------------------------------------------------- writer
def test_round_trip_layout(tmp_path):
    frames, truth, mask = make_shard(n=6)
    attrs = {"seed": 3, "distance_m": 0.2, "config": {"a": [1, 2], "b": None}, "tags": ["x", "y"],
             "note": None, "config_yaml": "a: 1\nb: 2\n", "pixels": np.arange(3)}
    path = tmp_path / "s.h5"
    out = write_shard(path, frames, truth, mask, attrs, chunk_frames=2)
    assert out == path and path.exists()
    assert not list(tmp_path.glob("*.tmp"))
    with h5py.File(path, "r") as f:
        d = f["/entry_1/data_1/data"]
        assert d.dtype == np.float32 and d.shape == (6, H, W)
        assert d.chunks == (2, H, W) and d.compression == "gzip" and d.compression_opts == 4 and d.shuffle
        assert d.attrs["units"] == "photons"
        np.testing.assert_array_equal(d[()], frames)
        m = f["/entry_1/data_1/mask"]
        assert m.dtype == np.uint16
        np.testing.assert_array_equal(m[()], mask)
        assert m[0, 0] & MASK_INVALID and m[H // 2, W // 2] & MASK_SHADOWED and m[1, 0] == 0
        assert f["/cxi_version"][()] == 150
        assert f["/entry_1/data_1"].attrs["axes"] == "experiment_identifier:y:x"
        assert isinstance(f["/entry_1/instrument_1/detector_1"].get("data", getlink=True), h5py.SoftLink)
        np.testing.assert_array_equal(f["/entry_1/instrument_1/detector_1/data"][()], frames)
        np.testing.assert_array_equal(f["/entry_1/instrument_1/detector_1/mask"][()], mask)
        t = f["/entry_1/truth"]
        assert t["hit_class"].dtype == np.int8 and t["n_particles"].dtype == np.int8
        np.testing.assert_array_equal(t["hit_class"][()], truth["hit_class"])
        assert h5py.check_string_dtype(t["structure_id"].dtype).encoding == "utf-8"
        assert list(t["structure_id"].asstr()[()]) == ["1ABC"] * 6
        q = t["quaternions"][()]
        assert q.dtype == np.float32 and q.shape == (6, 4, 4)
        np.testing.assert_array_equal(np.isnan(q), np.isnan(truth["quaternions"]))
        assert t["positions_m"].attrs["units"] == "m"
        a = f.attrs
        assert a["n_frames"] == 6 and a["format"] == SHARD_FORMAT and a["seed"] == 3
        assert a["created_utc"].endswith("Z")
        assert json.loads(a["config"]) == {"a": [1, 2], "b": None}
        assert json.loads(a["tags"]) == ["x", "y"]
        assert a["note"] == "" and a["config_yaml"] == "a: 1\nb: 2\n"
        assert json.loads(a["hit_class_names"]) == list(HIT_CLASSES)
        np.testing.assert_array_equal(a["pixels"], np.arange(3))
    assert shard_is_complete(path)


def test_unicode_strings_and_extra_truth(tmp_path):
    frames, truth, mask = make_shard(n=3)
    truth["structure_id"] = np.array(["ångström", "β-lactamase", "x"], dtype=object)
    truth["custom"] = np.arange(3, dtype=np.int32)
    path = write_shard(tmp_path / "u.cxi", frames, truth, mask, {}, compression=None, durable=False)
    with h5py.File(path, "r") as f:
        assert list(f["/entry_1/truth/structure_id"].asstr()[()]) == ["ångström", "β-lactamase", "x"]
        assert f["/entry_1/truth/custom"].dtype == np.int32
        assert f["/entry_1/data_1/data"].compression is None


@pytest.mark.parametrize("bad_index", [0, 3])
def test_nonfinite_frame_names_index(tmp_path, bad_index):
    frames, truth, mask = make_shard(n=5)
    frames[bad_index, 2, 1] = np.nan if bad_index else np.inf
    with pytest.raises(ShardValidationError, match=f"frame {bad_index} of 5"):
        write_shard(tmp_path / "x.h5", frames, truth, mask, {})
    assert list(tmp_path.iterdir()) == []


def test_validation_errors_name_the_culprit(tmp_path):
    frames, truth, mask = make_shard(n=4)
    p = tmp_path / "x.h5"
    with pytest.raises(ShardValidationError, match=r"\(n, H, W\)"):
        write_shard(p, frames[0], truth, mask, {})
    bad = dict(truth, quaternions=truth["quaternions"][:3])
    with pytest.raises(ShardValidationError, match="quaternions.*first dimension n = 4"):
        write_shard(p, frames, bad, mask, {})
    with pytest.raises(ShardValidationError, match=r"mask must have the frame shape"):
        write_shard(p, frames, truth, mask[:, :-1], {})
    with pytest.raises(ShardValidationError, match="boolean"):
        write_shard(p, frames, truth, mask.astype(bool), {})
    with pytest.raises(ShardValidationError, match=r"hit_class'\]\[2\]"):
        write_shard(p, frames, dict(truth, hit_class=np.array([0, 1, 7, 0])), mask, {})
    with pytest.raises(ShardValidationError, match="n_frames"):
        write_shard(p, frames, truth, mask, {"n_frames": 3})
    with pytest.raises(ShardValidationError, match="structure_id"):
        write_shard(p, frames, dict(truth, structure_id=np.array([object(), "a", "b", "c"], dtype=object)), mask, {})
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_atomic_on_failure_mid_write(tmp_path, monkeypatch):
    frames, truth, mask = make_shard(n=4)
    calls = {"n": 0}
    real_setitem = h5py.Dataset.__setitem__

    def flaky(self, key, value):
        calls["n"] += 1
        if calls["n"] == 2:  # second frame write: the file is half written
            raise OSError(28, "No space left on device")
        return real_setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", flaky)
    path = tmp_path / "s.h5"
    with pytest.raises(OSError, match="could not write shard .*s.h5.*No space left"):
        write_shard(path, frames, truth, mask, {})
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []  # neither final nor temporary file

    # A non-OSError bug mid-way also leaves nothing behind and keeps its type.
    def buggy(self, key, value):
        raise KeyError("boom")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", buggy)
    with pytest.raises(KeyError):
        write_shard(path, frames, truth, mask, {})
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_file_removes_tmp(tmp_path, monkeypatch):
    frames, truth, mask = make_shard(n=3)
    seen = []

    def full_disk(fd):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match=r"could not write shard .*s.h5.*No space left") as info:
        write_shard(tmp_path / "s.h5", frames, truth, mask, {})
    assert info.value.errno == 28
    assert len(seen[0]) == 1 and seen[0][0].startswith("s.h5.") and seen[0][0].endswith(".tmp")
    assert list(tmp_path.iterdir()) == []


def test_existing_shard_replaced_only_when_complete(tmp_path, monkeypatch):
    path, frames, _, _ = write(tmp_path, n=3)
    f2, t2, m2 = make_shard(n=4, seed=1)
    monkeypatch.setattr(h5py.Dataset, "__setitem__",
                        lambda self, k, v: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_shard(path, f2, t2, m2, {})
    monkeypatch.undo()
    assert shard_is_complete(path)
    np.testing.assert_array_equal(read_frames(path), frames)  # old shard intact


def test_unwritable_destination_raises_clear_oserror(tmp_path):
    frames, truth, mask = make_shard(n=2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    target = blocker / "sub" / "s.h5"  # parent is a file: creation must fail, even for root
    with pytest.raises(OSError, match="could not write shard .*a_file"):
        write_shard(target, frames, truth, mask, {})
    assert blocker.read_text() == "not a directory"


def test_read_only_directory(tmp_path):
    frames, truth, mask = make_shard(n=2)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions")
        with pytest.raises(OSError, match="could not write shard .*ro"):
            write_shard(ro / "s.h5", frames, truth, mask, {})
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def dead_pid() -> int:
    """The pid of a process that has exited (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cleanup_partial_and_completeness(tmp_path):
    good, *_ = write(tmp_path, n=2, name="good")
    stale = tmp_path / f"x.h5.{dead_pid()}-0000abcd.tmp"
    stale.write_bytes(b"\x89HDF partial")
    (tmp_path / "x.h5").write_bytes(b"")  # empty file under a final name (foreign damage)
    (tmp_path / "notes.txt").write_text("keep")
    assert not shard_is_complete(tmp_path / "x.h5")
    assert not shard_is_complete(stale)
    assert not shard_is_complete(tmp_path / "missing.h5")
    assert cleanup_partial(tmp_path, min_age_s=3600) == []  # too recent
    assert cleanup_partial(tmp_path) == [stale]
    assert not stale.exists() and good.exists() and (tmp_path / "notes.txt").exists()
    assert cleanup_partial(tmp_path / "nope") == []
    with pytest.raises(NotADirectoryError):
        cleanup_partial(tmp_path / "notes.txt")


def test_shard_is_complete_detects_inconsistent_n_frames(tmp_path):
    path, *_ = write(tmp_path, n=3)
    with h5py.File(path, "a") as f:
        f.attrs["n_frames"] = 4
    assert not shard_is_complete(path)


def test_truncated_file_under_final_name(tmp_path):
    path, *_ = write(tmp_path, n=20)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not shard_is_complete(path)
    with pytest.raises(CorruptShardError, match=str(path.name)) as info:
        open_dataset(path)
    assert isinstance(info.value, OSError)


# ----------------------------------------------------------------------------- reader
def test_reader_lazy_access_and_labels(tmp_path, monkeypatch):
    pa, fa, ta, mask = write(tmp_path, n=5, name="AAAA")
    pb, fb, tb, _ = write(tmp_path, n=3, name="BBBB", seed=1, hit=[1, 1, 2])
    (tmp_path / "CCCC.h5.99-beef.tmp").write_bytes(b"junk")  # unfinished write: skipped

    reads = []
    real_getitem = h5py.Dataset.__getitem__

    def counting(self, key):
        if self.name == "/entry_1/data_1/data":
            reads.append(key)
        return real_getitem(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    index = open_dataset(tmp_path)
    assert isinstance(index, ShardIndex) and reads == []  # indexing reads no frames
    assert len(index) == 8 and index.paths == (pa.resolve(), pb.resolve())
    assert index.frame_shape == (H, W) and index.has_truth
    assert index.structure_names == ("AAAA", "BBBB")
    np.testing.assert_array_equal(index.labels.hit_class, [0, 1, 2, 3, 0, 1, 1, 2])
    np.testing.assert_array_equal(index.labels.structure_index, [0] * 5 + [1] * 3)
    np.testing.assert_array_equal(index.labels.n_particles, [0, 1, 2, 0, 0, 1, 1, 2])
    assert list(index.labels.structure_id) == ["AAAA"] * 5 + ["BBBB"] * 3
    assert index.locate(6) == (1, 1) and index.locate(-1) == (1, 2)

    np.testing.assert_array_equal(index.read_frame(6), fb[1])
    assert len(reads) == 1
    np.testing.assert_array_equal(index.read_frames([7, 0, 7, 2]), np.stack([fb[2], fa[0], fb[2], fa[2]]))
    with pytest.raises(IndexError):
        index.read_frame(8)

    ds = SpeckleH5Dataset(index, indices=[6, 1], transform=lambda x: x * 2)
    assert len(ds) == 2
    frame, hit, sidx = ds[0]
    assert frame.dtype == torch.float32 and frame.shape == (H, W)
    torch.testing.assert_close(frame, torch.from_numpy(fb[1] * 2))
    assert (hit, sidx) == (1, 1)
    assert ds[-1][1:] == (1, 0)
    np.testing.assert_array_equal(ds.hit_class, [1, 1])
    assert ds.get_labels("structure_index") == [1, 0]
    np.testing.assert_array_equal(read_mask(pa), mask)
    np.testing.assert_array_equal(read_frames(pa, 2), fa[2])
    np.testing.assert_array_equal(read_frames(pa, [4, 1]), fa[[4, 1]])
    np.testing.assert_array_equal(read_frames(pa, slice(1, 3)), fa[1:3])
    index.close()

    # a fixed structure mapping (test split indexed like the training split)
    idx2 = open_dataset([pb], structure_names=["BBBB", "AAAA"])
    np.testing.assert_array_equal(idx2.labels.structure_index, [0, 0, 0])
    with pytest.raises(DatasetError, match="BBBB.h5: frame 0 has structure_id 'BBBB'"):
        open_dataset([pb], structure_names=["AAAA"])


def test_facility_cxi_without_truth(tmp_path):
    path = tmp_path / "run0042.cxi"
    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/instrument_1/detector_1/data", data=frames)
        f.create_dataset("/entry_1/instrument_1/detector_1/mask", data=np.ones((4, 5), np.uint16))
    with pytest.raises(DatasetError, match=r"run0042.cxi has no dataset '/entry_1/data_1/data'.*detector_1/data"):
        open_dataset(path)
    ds = SpeckleH5Dataset(path, data_path="/entry_1/instrument_1/detector_1/data")
    assert len(ds) == 3 and not ds.index.has_truth
    frame, hit, sidx = ds[1]
    assert frame.dtype == torch.float32
    np.testing.assert_array_equal(frame.numpy(), frames[1].astype(np.float32))
    assert (hit, sidx) == (-1, -1)
    assert list(ds.labels.structure_id) == [None] * 3 and ds.structure_names == ()
    np.testing.assert_array_equal(read_mask(path), np.ones((4, 5)))
    assert read_mask(tmp_path / "run0042.cxi", "/entry_1/instrument_1/detector_1/mask").dtype == np.uint16
    with pytest.raises(DatasetError, match="run0042.cxi has no mask dataset '/nope'"):
        read_mask(path, "/nope")


def test_reader_errors_name_file_and_index(tmp_path):
    # empty file
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(CorruptShardError, match="empty.h5 is empty"):
        open_dataset(empty)
    # not HDF5 at all
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"hello world" * 100)
    with pytest.raises(CorruptShardError, match="junk.h5"):
        open_dataset(junk)
    # missing file / directory without shards / explicit tmp file
    with pytest.raises(FileNotFoundError, match="nothere.h5"):
        open_dataset(tmp_path / "nothere.h5")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DatasetError, match="no shard files"):
        open_dataset(tmp_path / "emptydir")
    tmpf = tmp_path / "a.h5.1-2.tmp"
    tmpf.write_bytes(b"x")
    with pytest.raises(DatasetError, match="unfinished"):
        open_dataset(tmpf)

    # truth length mismatch
    d = tmp_path / "d"
    d.mkdir()
    p, *_ = write(d, n=4, name="T")
    with h5py.File(p, "a") as f:
        del f["/entry_1/truth/fluence_multiplier"]
        f["/entry_1/truth/fluence_multiplier"] = np.ones(3, np.float32)
    with pytest.raises(DatasetError, match=r"T.h5: truth array /entry_1/truth/fluence_multiplier has length 3 but the file has 4 frames"):
        open_dataset(p)

    # mixed frame sizes
    d2 = tmp_path / "d2"
    d2.mkdir()
    write(d2, n=2, name="A")
    write(d2, n=2, name="B", h=H + 1)
    with pytest.raises(DatasetError, match=r"mixed sizes.*A.h5.*B.h5 has \(9, 6\)"):
        open_dataset(d2)

    # NaN frame (written behind the writer's back) with check_finite
    d3 = tmp_path / "d3"
    d3.mkdir()
    write(d3, n=2, name="A")
    pn, *_ = write(d3, n=4, name="N")
    with h5py.File(pn, "a") as f:
        f["/entry_1/data_1/data"][2, 0, 0] = np.nan
    loose = open_dataset(d3)
    assert np.isnan(loose.read_frame(4)).any()  # not checked by default
    strict = open_dataset(d3, check_finite=True)
    with pytest.raises(DatasetError, match=r"frame 2 of .*N.h5 \(dataset index 4\) contains NaN"):
        strict.read_frame(4)
    with pytest.raises(DatasetError, match=r"frame 2 of .*N.h5"):
        SpeckleH5Dataset(strict)[4]
    with pytest.raises(DatasetError, match=r"frame 2 of .*N.h5"):
        loose.verify_finite()
    with pytest.raises(DatasetError, match=r"frame 2 of .*N.h5 contains NaN"):
        read_frames(pn, check_finite=True)
    strict.read_frame(0)  # clean frames still fine


def test_dataset_pickles_without_handles(tmp_path):
    write(tmp_path, n=3)
    ds = SpeckleH5Dataset(tmp_path)
    first = ds[0][0]
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[0][0], first)


def test_dataloader_with_workers(tmp_path):
    write(tmp_path, n=6, name="AAAA")
    write(tmp_path, n=5, name="BBBB", seed=3)
    ds = SpeckleH5Dataset(tmp_path)
    expected = torch.stack([ds[i][0] for i in range(len(ds))])  # parent opens files before fork
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    frames, hits, sids = [], [], []
    for x, h, s in loader:
        frames.append(x)
        hits.append(h)
        sids.append(s)
    torch.testing.assert_close(torch.cat(frames), expected)
    np.testing.assert_array_equal(torch.cat(hits).numpy(), ds.hit_class)
    np.testing.assert_array_equal(torch.cat(sids).numpy(), ds.structure_index)
    assert torch.cat(frames).shape == (11, H, W)


def test_reader_does_not_import_simulator():
    code = ("import sys, speckle_embed.data.h5dataset; "
            "bad = [m for m in ('simulate', 'skopi', 'gemmi') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_writer_imports_only_numpy_h5py_stdlib():
    code = ("import sys, simulate.dataset_io; "
            "bad = [m for m in ('torch', 'skopi', 'gemmi', 'finufft', 'scipy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert dataset_io.DATA_PATH == h5dataset.DEFAULT_DATA_PATH
