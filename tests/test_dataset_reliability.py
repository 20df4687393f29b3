"""Datasets that must not silently mix (issue 12, items 5-10): identity, locks, own temporaries,
checksums, exit codes and memory checks of ``python -m simulate``."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("finufft")
pytest.importorskip("gemmi")

from simulate.app import run  # noqa: E402
from simulate.dataset_io import (DATA_PATH, cleanup_partial, shard_is_complete,  # noqa: E402
                                 verify_shard, write_shard)
from simulate.engine import PatternEngine  # noqa: E402
from simulate.generate import generate_dataset  # noqa: E402
from simulate.geometry import default_geometry  # noqa: E402
from simulate.preflight import (InsufficientMemoryError, RunSettingsError, check_memory,  # noqa: E402
                                estimate_shard_bytes, grid_side)
from simulate.procedural import procedural_particle  # noqa: E402
from simulate.resume import MANIFEST_NAME, DatasetMismatchError, identity_differences  # noqa: E402
from simulate.shots import ShotGenerator  # noqa: E402
from simulate.sources import resolve_sources  # noqa: E402
from speckle_embed.formats import tmp_name  # noqa: E402
from test_dataset_io import dead_pid, make_shard  # noqa: E402
from test_generate import N_PIX, REPO, TINY, read_shard, tiny_cfg, write_pdb  # noqa: E402

ONE = ["source.n_structures=1"]


def shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.h5"))


# ============================================================================ item 5: identity
def test_identity_differences_name_nested_keys():
    a = {"seed": 0, "noise": {"gaussian_sigma": 0.15, "poisson": True}, "geometry": {"x": (1, 2)}}
    b = {"seed": 1, "noise": {"gaussian_sigma": 0.3, "poisson": True}, "geometry": {"x": [1, 2]}}
    assert identity_differences(a, b) == ["noise.gaussian_sigma: 0.15 -> 0.3", "seed: 0 -> 1"]
    assert identity_differences(a, a) == []


def test_rerun_with_other_settings_is_refused_then_overwritten(tmp_path):
    out = tmp_path / "data"
    first = run(tiny_cfg(out, *ONE), base_dir=tmp_path)
    name = first.done[0].name
    before = read_shard(out / f"{name}.h5")[0]
    for override, key in [("seed=1", "seed"), ("dataset.noise.gaussian_sigma=0.5", "noise.gaussian_sigma"),
                          ("dataset.mix.single=0.9", "hit_mix.single")]:
        with pytest.raises(DatasetMismatchError, match=key) as info:
            run(tiny_cfg(out, *ONE, override), base_dir=tmp_path)
        assert "overwrite=true" in str(info.value)
    np.testing.assert_array_equal(read_shard(out / f"{name}.h5")[0], before)

    again = run(tiny_cfg(out, *ONE, "seed=1", "overwrite=true"), base_dir=tmp_path)
    assert [o.name for o in again.done] == [name] and not again.skipped
    frames, _, attrs, _ = read_shard(out / f"{name}.h5")
    assert attrs["seed"] == 1 and not np.array_equal(frames, before)
    # The same settings again: reused.
    third = run(tiny_cfg(out, *ONE, "seed=1"), base_dir=tmp_path)
    assert [o.name for o in third.skipped] == [name]


def test_shard_with_other_settings_is_refused_even_without_manifest(tmp_path):
    """A shard copied in (or left by an older version) is compared on its own attributes."""
    out = tmp_path / "data"
    name = run(tiny_cfg(out, *ONE), base_dir=tmp_path).done[0].name
    (out / MANIFEST_NAME).unlink()
    report = run(tiny_cfg(out, *ONE, "seed=3"), base_dir=tmp_path)
    assert [o.name for o in report.failed] == [name]
    assert "seed: 0 -> 3" in report.failed[0].error and "overwrite=true" in report.failed[0].error
    assert read_shard(out / f"{name}.h5")[2]["seed"] == 0


# ============================================================================ item 6: two writers
def test_concurrent_run_with_other_seed_is_refused_before_any_structure(tmp_path, monkeypatch):
    out = tmp_path / "data"
    started, release = threading.Event(), threading.Event()
    original = ShotGenerator.generate

    def slow(self, n):
        started.set()
        assert release.wait(60)
        return original(self, n)

    monkeypatch.setattr(ShotGenerator, "generate", slow)
    result = {}
    first = threading.Thread(target=lambda: result.setdefault("a", run(tiny_cfg(out, *ONE),
                                                                       base_dir=tmp_path)))
    first.start()
    try:
        assert started.wait(60)
        with pytest.raises(DatasetMismatchError, match="seed: 0 -> 1"):
            run(tiny_cfg(out, *ONE, "seed=1"), base_dir=tmp_path)
    finally:
        release.set()
        first.join(60)
    assert len(result["a"].done) == 1
    assert all(read_shard(p)[2]["seed"] == 0 for p in out.glob("*.h5"))


def test_second_writer_waits_for_the_shard_lock(tmp_path):
    """Another process holding a shard's lock: this run waits, then writes after it let go."""
    out = tmp_path / "data"
    out.mkdir()
    spec = resolve_sources({"kind": "procedural", "n_structures": 1, "n_atoms_min": 300,
                            "n_atoms_max": 300})
    target = out / f"{spec[0].name}.h5"
    released = tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from simulate.resume import shard_lock\n"
         f"with shard_lock({str(target)!r}):\n"
         "    print('held', flush=True); time.sleep(2.0)\n"
         f"    open({str(released)!r}, 'w').write(repr(time.time()))\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    geometry = default_geometry().replace(n_pixels=N_PIX, detector_side_m=0.1 * N_PIX / 172,
                                          beamstop_px=(2, 2), gap_px=1)
    report = generate_dataset(spec, geometry, out_dir=out, n_frames=2, chunk=2, progress=False)
    assert holder.wait(30) == 0
    assert [o.status for o in report.outcomes] == ["done"]
    assert target.stat().st_mtime >= float(released.read_text())


# ============================================================================ item 7: temporaries
def test_cleanup_removes_only_our_temporaries_of_dead_writers(tmp_path):
    users = [tmp_path / "notes.tmp", tmp_path / "a.h5.tmp", tmp_path / "b.h5.12-xyz.tmp"]
    for p in users:
        p.write_text("mine")
    live = tmp_path / tmp_name("live.h5")                      # this process: alive
    dead = tmp_path / f"dead.h5.{dead_pid()}-0123abcd.tmp"     # writer exited
    old = tmp_path / f"old.h5.{os.getpid()}-89abcdef.tmp"       # alive pid but a day old
    for p in (live, dead, old):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert cleanup_partial(tmp_path) == sorted([dead, old])
    assert all(p.exists() for p in users) and live.exists()


def test_run_keeps_user_tmp_and_live_temporaries(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    notes, live = out / "notes.tmp", out / tmp_name("other.h5")
    notes.write_text("keep me")
    live.write_bytes(b"being written by this live process")
    report = run(tiny_cfg(out, *ONE), base_dir=tmp_path)
    assert report.removed_tmp == [] and notes.read_text() == "keep me" and live.exists()


# ============================================================================ item 8: checksum
def _flip_inside_chunk(path: Path, index: int = 0) -> None:
    with h5py.File(path, "r") as f:
        info = f[DATA_PATH].id.get_chunk_info(index)
    assert info.size > 16
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(4)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0x5A for b in byte))


def test_damage_inside_a_compressed_chunk_is_detected(tmp_path):
    frames, truth, mask = make_shard(n=4, h=32, w=32)
    path = write_shard(tmp_path / "s.h5", frames, truth, mask, {}, durable=False)
    assert verify_shard(path) is None
    _flip_inside_chunk(path, 1)
    assert shard_is_complete(path)           # the structural check alone misses it...
    assert verify_shard(path) is not None    # ...the checksum does not


def test_damaged_shard_is_regenerated_on_resume(tmp_path):
    out = tmp_path / "data"
    name = run(tiny_cfg(out, *ONE), base_dir=tmp_path).done[0].name
    reference = read_shard(out / f"{name}.h5")[0]
    _flip_inside_chunk(out / f"{name}.h5", 3)
    resumed = run(tiny_cfg(out, *ONE), base_dir=tmp_path)
    assert [o.name for o in resumed.done] == [name]
    assert verify_shard(out / f"{name}.h5") is None
    np.testing.assert_array_equal(read_shard(out / f"{name}.h5")[0], reference)


# ============================================================================ item 9: settings, exit
@pytest.mark.parametrize("override, words", [
    ("method=bogus", "method = 'bogus'"),
    ("dataset.fluence.low=-1", "dataset.fluence.low/high"),
    ("dataset.noise.gaussian_sigma=-0.1", "dataset.noise.gaussian_sigma"),
    ("geometry.photon_energy_ev=5", "geometry.photon_energy_ev"),
])
def test_run_wide_settings_refused_before_any_structure(tmp_path, override, words, monkeypatch):
    loads = []
    monkeypatch.setattr("simulate.sources.StructureSpec.load", lambda self: loads.append(self))
    with pytest.raises(RunSettingsError, match=words.replace("(", r"\(")) as info:
        run(tiny_cfg(tmp_path / "out", override), base_dir=tmp_path)
    assert "\n" not in str(info.value) and loads == [] and not (tmp_path / "out").exists()


def test_cuda_without_cuda_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RunSettingsError, match="CUDA is not available"):
        run(tiny_cfg(tmp_path / "out", "device=cuda"), base_dir=tmp_path)


@pytest.mark.slow  # two `python -m simulate` processes: ~20 s on 2 busy cores
def test_cli_exits_nonzero_when_a_structure_fails(tmp_path):
    pdbs = tmp_path / "pdb"
    pdbs.mkdir()
    write_pdb(pdbs / "GOOD.pdb", procedural_particle("globular", 300, 7))
    (pdbs / "BAD.pdb").write_text("this is not a PDB file\n")
    overrides = [o for o in TINY if not o.startswith("source")]
    cmd = [sys.executable, "-m", "simulate", *overrides, "source=pdb_shared",
           f"source.directory={pdbs}", "source.ids=[BAD,GOOD]", "progress=true",
           f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "failed: 1" in proc.stdout and "BAD" in proc.stdout
    assert "1 structure(s) failed: BAD" in proc.stderr
    assert shards(tmp_path / "out") == ["GOOD.h5"]

    bogus = subprocess.run(cmd[:-3] + ["method=bogus", f"out_dir={tmp_path / 'o2'}",
                                       f"hydra.run.dir={tmp_path / 'run2'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=180)
    assert bogus.returncode == 1
    assert bogus.stderr.strip().splitlines()[-1].startswith("simulate: error: method = 'bogus'")
    assert "Traceback" not in bogus.stderr


# ============================================================================ item 10: memory
def test_huge_detector_is_refused_fast_without_allocating(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(InsufficientMemoryError, match=r"GiB of memory .* geometry.n_pixels"):
        run(tiny_cfg(tmp_path / "out", "geometry.n_pixels=20000"), base_dir=tmp_path)
    assert time.perf_counter() - t0 < 5.0
    assert not list((tmp_path / "out").glob("*.h5")) if (tmp_path / "out").exists() else True


def test_memory_estimate_matches_the_engine_grid_and_frames():
    geometry = default_geometry().replace(n_pixels=N_PIX, detector_side_m=0.1 * N_PIX / 172,
                                          beamstop_px=(2, 2), gap_px=1)
    structure = procedural_particle("globular", 500, 3)
    engine = PatternEngine(structure, geometry, method="fast", oversampling=4.0)
    assert grid_side(geometry, structure.radius, oversampling=4.0) == engine.volume.side
    need = estimate_shard_bytes(geometry, 10, method="fast", radius_angstrom=structure.radius,
                                oversampling=4.0)
    assert need >= 3 * 10 * N_PIX ** 2 * 4 + 32 * engine.volume.side ** 3
    check_memory(need, "ok", available=need)
    with pytest.raises(InsufficientMemoryError, match="needs about"):
        check_memory(need + 1, "shard", available=need)
