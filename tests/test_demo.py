"""The main job (`speckle-embed demo`, `make demo`) on small settings, and its bad-input behaviour."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("finufft")
pytest.importorskip("gemmi")

from speckle_embed.demo import DemoError, run_demo  # noqa: E402


def small_cfg(run_dir, **new) -> dict:
    return {"run_dir": str(run_dir), "seed": 0, "threads": 1, "progress": False, "k_shot": 3,
            "rule": "mean_distance",
            "new_structure": {"pdb": None, "kind": "globular", "seed": 2026, "n_atoms_min": 3000,
                              "n_atoms_max": 4000, "n_frames": 24,
                              "mix": {"single": 0.5, "multi": 0.5, "no_hit": 0.0, "non_sample": 0.0,
                                      "multi_counts": [2, 3, 4]}, **new},
            "pretrain": {"mode": "shipped", "n_structures": 2, "seed": 1, "n_frames": 16, "epochs": 1,
                         "steps_per_epoch": 2}}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo")
    return run_dir, run_demo(small_cfg(run_dir))


def test_demo_writes_every_output(demo_run):
    run_dir, out = demo_run
    for name in ("demo.png", "results.json", "predictions.csv", "classifier"):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["structure"] == "proc-globular-s20260000" and saved["k_shot"] == 3
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["f1_single"] <= 1.0
    base = saved["baselines"]  # the classical baselines on the same supports and queries
    assert set(base) == {"radial profile (no learning)", "photon count (no learning)"}
    assert all(v["n_queries"] == saved["n_queries"] and 0.0 <= v["accuracy"] <= 1.0 for v in base.values())
    rows = (run_dir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "frame,true,predicted" and len(rows) - 1 == saved["n_queries"] == 24 - 6
    assert (run_dir / "demo.png").stat().st_size > 10_000
    assert not list(run_dir.rglob("*.tmp"))


def test_demo_rerun_reuses_the_simulation_and_agrees(demo_run, capsys):
    run_dir, first = demo_run
    shard = Path(first["data"])
    mtime = shard.stat().st_mtime_ns
    again = run_demo(small_cfg(run_dir))
    assert shard.stat().st_mtime_ns == mtime  # complete shard kept, not simulated again
    assert again["accuracy"] == first["accuracy"]
    assert "complete shard found" in capsys.readouterr().out


def test_demo_rerun_after_an_update_simulates_again(demo_run, tmp_path):
    """A run folder simulated by another code version (e.g. before `git pull`) is simulated again, not refused."""
    import shutil

    import h5py

    run_dir, first = demo_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    older = "speckle_embed 0.0.9 git 000000000000"
    manifest = next(old.rglob(".simulate-dataset.json"))
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "code_version": older}))
    shard = next(old.rglob(Path(first["data"]).name))
    with h5py.File(shard, "r+") as f:
        f.attrs["dataset_identity"] = json.dumps({**json.loads(f.attrs["dataset_identity"]), "code_version": older})
    mtime = shard.stat().st_mtime_ns
    again = run_demo(small_cfg(old))
    assert shard.stat().st_mtime_ns != mtime  # simulated again with this code
    with h5py.File(shard, "r") as f:
        assert json.loads(f.attrs["dataset_identity"])["code_version"] != older
    assert again["accuracy"] == first["accuracy"]  # same seed, same frames


def test_unwritable_run_folder_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(DemoError, match="cannot write to the run folder"):
        run_demo(small_cfg(blocker / "run"))


def test_full_disk_gives_a_clear_message(tmp_path, monkeypatch):
    import speckle_embed.demo as demo

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(demo, "_simulate", no_space)
    with pytest.raises(DemoError, match="disk is full.*rerun"):
        run_demo(small_cfg(tmp_path / "run"))


def test_a_structure_that_fails_is_named(tmp_path):
    bad = tmp_path / "broken.pdb"
    bad.write_text("this is not a PDB file\n")
    with pytest.raises(DemoError, match="could not be simulated.*broken"):
        run_demo(small_cfg(tmp_path / "run", pdb=str(bad)))
    with pytest.raises(DemoError, match="no such file"):
        run_demo(small_cfg(tmp_path / "run2", pdb=str(tmp_path / "missing.cif")))


def test_too_few_frames_for_the_shots(tmp_path):
    cfg = small_cfg(tmp_path / "run", n_frames=4)
    cfg["k_shot"] = 5
    with pytest.raises(DemoError, match="raise new_structure.n_frames"):
        run_demo(cfg)


def test_command_line_reports_errors_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "speckle_embed", "demo", f"hydra.run.dir={tmp_path / 'r'}",
                           f"new_structure.pdb={tmp_path / 'missing.cif'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "speckle-embed demo: new_structure.pdb: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_figure_helper_marks_mistakes(tmp_path):
    from speckle_embed.demo import _figure

    rng = np.random.default_rng(0)
    frames = rng.poisson(5.0, (12, 40, 40)).astype(np.float32)
    labels = np.array(["single", "multi"] * 6)
    sup, qry = np.arange(4), np.arange(4, 12)
    pred = labels[qry].copy()
    pred[0] = "multi" if pred[0] == "single" else "single"
    z = rng.normal(size=(12, 8))
    path = _figure(tmp_path / "f.png", frames, None, sup, qry, labels, pred, z[:4], z[4:], "t")
    assert path.stat().st_size > 5000
