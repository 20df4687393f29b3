"""Dataset generation: sources, the generation loop (resume, failures, determinism), the Hydra
app (config composition, joblib multirun) and example rendering.

Everything runs on a tiny detector (48x48 pixels of the paper's pixel size) with ~2000-atom
procedural particles and 8 frames per structure; outputs go under ``tmp_path``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

pytest.importorskip("finufft")
pytest.importorskip("gemmi")
pytest.importorskip("scipy")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from simulate.__main__ import CONFIG_DIR  # noqa: E402
from simulate.app import EXAMPLES_NAME, REPORT_NAME, geometry_from_config, run  # noqa: E402
from simulate.dataset_io import DATA_PATH, MASK_PATH, TRUTH_GROUP, shard_is_complete  # noqa: E402
from simulate.errors import GeometryError, StructureError  # noqa: E402
from simulate.generate import generate_dataset, shot_seed  # noqa: E402
from simulate.geometry import (MASK_INVALID, MASK_SHADOWED, default_geometry,  # noqa: E402
                               pnccd_geometry)
from simulate.labels import HIT_CLASSES  # noqa: E402
from simulate.procedural import procedural_library, procedural_particle  # noqa: E402
from simulate.render import render_examples  # noqa: E402
from simulate.shots import ShotGenerator  # noqa: E402
from simulate.sources import SourceConfigError, resolve_sources  # noqa: E402

REPO = Path(CONFIG_DIR).parents[1]
N_PIX = 48
#: Tiny but physical settings: the paper's pixel size on a 48x48 detector, 8 frames each.
TINY = [
    "dataset=tiny",
    f"geometry.n_pixels={N_PIX}",
    f"geometry.detector_side_m={0.1 * N_PIX / 172!r}",
    "geometry.beamstop_px=[2,2]",
    "geometry.gap_px=1",
    "source=procedural",
    "source.n_structures=2",
    "source.n_atoms_min=1500",
    "source.n_atoms_max=2000",
    "progress=false",
    "render_after=false",
    "threads=1",
]


def compose_cfg(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR, job_name="test"):
        return compose(config_name="simulate", overrides=list(overrides))


def tiny_cfg(out_dir, *overrides):
    return compose_cfg(*TINY, f"out_dir={out_dir}", *overrides)


def read_shard(path):
    with h5py.File(path, "r") as f:
        frames = f[DATA_PATH][()]
        truth = {k: f[TRUTH_GROUP][k][()] for k in f[TRUTH_GROUP]}
        attrs = dict(f.attrs)
        mask = f[MASK_PATH][()]
    return frames, truth, attrs, mask


def assert_same_data(dir_a, dir_b, names):
    for name in names:
        fa, ta, _, ma = read_shard(Path(dir_a) / f"{name}.h5")
        fb, tb, _, mb = read_shard(Path(dir_b) / f"{name}.h5")
        np.testing.assert_array_equal(fa, fb, err_msg=name)
        np.testing.assert_array_equal(ma, mb)
        assert ta.keys() == tb.keys()
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k], err_msg=f"{name}: truth {k}")


def write_pdb(path, structure, n_max=400):
    """A plain PDB file holding the first ``n_max`` atoms of ``structure``."""
    lines = []
    for i, (xyz, el) in enumerate(zip(structure.positions[:n_max], structure.elements[:n_max])):
        x, y, z = xyz
        lines.append(f"{'ATOM':<6}{i + 1:>5} {el:<4} ALA A{i // 8 + 1:>4}    "
                     f"{x:>8.3f}{y:>8.3f}{z:>8.3f}{1.0:>6.2f}{20.0:>6.2f}          {el:>2}")
    Path(path).write_text("\n".join(lines + ["END", ""]))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """The tiny procedural dataset generated once through ``run`` (2 structures)."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = tiny_cfg(root / "data")
    report = run(cfg, output_dir=root / "run", base_dir=root)
    return root, cfg, report


# ============================================================================ configs
def test_config_groups_compose():
    cfg = compose_cfg()
    assert cfg.mode == "generate" and cfg.run.num_shards == 1 and cfg.run.shard_index == 0
    assert geometry_from_config(OmegaConf.to_container(cfg.geometry)) == default_geometry()
    pn = compose_cfg("geometry=pnccd")
    assert geometry_from_config(OmegaConf.to_container(pn.geometry)) == pnccd_geometry(8)
    for name in ("tiny", "small", "paper"):
        ds = compose_cfg(f"dataset={name}").dataset
        assert ds.n_frames >= 1 and ds.chunk >= 1 and set(ds.mix) >= set(HIT_CLASSES)
    exp = compose_cfg("experiment=pr772")
    assert exp.geometry.n_pixels == 128 and exp.source.kind == "continuum"
    assert exp.oversampling == 6.0
    assert exp.out_dir == "data/simulated/continuum_pr772"


def test_source_configs_resolve(tmp_path, monkeypatch):
    proc = OmegaConf.to_container(compose_cfg("source=procedural").source, resolve=True)
    specs = resolve_sources(proc)
    assert len(specs) == 12 and len({s.name for s in specs}) == 12

    pr772 = OmegaConf.to_container(compose_cfg("source=continuum_pr772").source, resolve=True)
    assert [s.name for s in resolve_sources(pr772)] == ["pr772", "pr772-empty"]

    write_pdb(tmp_path / "1ABC.pdb", procedural_particle("globular", 300, 0))
    write_pdb(tmp_path / "2XYZ.pdb", procedural_particle("globular", 300, 1))
    monkeypatch.setenv("SPECKLE_PDB_DIR", str(tmp_path))
    pdb = OmegaConf.to_container(compose_cfg("source=pdb_shared").source, resolve=True)
    assert pdb["directory"] == str(tmp_path)
    assert [s.name for s in resolve_sources(pdb)] == ["1ABC", "2XYZ"]
    only = resolve_sources({**pdb, "ids": ["2xyz"]})
    assert [s.name for s in only] == ["2XYZ"] and only[0].load().name == "2XYZ"
    monkeypatch.delenv("SPECKLE_PDB_DIR")
    rel = OmegaConf.to_container(compose_cfg("source=pdb_shared").source, resolve=True)
    assert rel["directory"] == "../shared/pdb"     # relative to the directory of the command


def test_procedural_specs_match_library():
    specs = resolve_sources({"kind": "procedural", "n_structures": 2, "seed": 3,
                             "n_atoms_min": 1000, "n_atoms_max": 1500})
    lib = procedural_library(2, 3, (1000, 1500))
    assert [s.name for s in specs] == [s.name for s in lib]
    loaded = specs[1].load()
    np.testing.assert_array_equal(loaded.positions, lib[1].positions)


def test_source_config_errors(tmp_path):
    with pytest.raises(SourceConfigError, match="kind"):
        resolve_sources({"kind": "nope"})
    with pytest.raises(SourceConfigError, match="n_atom_min"):
        resolve_sources({"kind": "procedural", "n_structures": 1, "n_atom_min": 5})
    with pytest.raises(SourceConfigError, match="duplicate structure name"):
        resolve_sources({"kind": "mixed", "sources": [
            {"kind": "procedural", "n_structures": 1}, {"kind": "procedural", "n_structures": 1}]})
    with pytest.raises(SourceConfigError, match="radius"):
        resolve_sources({"kind": "continuum", "objects": [
            {"kind": "sphere", "params": {"radius": 10}}]})
    with pytest.raises(StructureError, match="not a directory"):
        resolve_sources({"kind": "pdb", "directory": str(tmp_path / "missing")})


# ============================================================================ generation
def test_smoke_run_layout_and_attrs(tiny_dataset):
    root, cfg, report = tiny_dataset
    names = [s.name for s in resolve_sources(OmegaConf.to_container(cfg.source))]
    assert report.ok and [o.name for o in report.done] == names
    assert sorted(p.name for p in (root / "data").iterdir() if not p.name.startswith(".")) == sorted(f"{n}.h5" for n in names)
    assert json.loads((root / "run" / REPORT_NAME).read_text())["counts"]["done"] == 2
    assert not (root / "run" / EXAMPLES_NAME).exists()        # render_after=false

    frames, truth, attrs, mask = read_shard(root / "data" / f"{names[0]}.h5")
    assert frames.shape == (8, N_PIX, N_PIX) and frames.dtype == np.float32
    assert mask.dtype == np.uint16 and (mask & MASK_INVALID).any() and (mask & MASK_SHADOWED).any()
    assert set(truth) >= {"hit_class", "n_particles", "structure_id", "quaternions",
                          "positions_m", "fluence_multiplier", "beam_center_offset_px"}
    assert truth["quaternions"].shape == (8, 4, 4) and truth["positions_m"].shape == (8, 4, 3)
    assert {s.decode() if isinstance(s, bytes) else s for s in truth["structure_id"]} == {names[0]}
    single = truth["hit_class"] == HIT_CLASSES.index("single")
    assert np.all(truth["n_particles"][single] == 1)

    geometry = geometry_from_config(OmegaConf.to_container(cfg.geometry))
    assert attrs["n_pixels"] == N_PIX and attrs["distance_m"] == geometry.distance_m
    assert attrs["detector_side_m"] == geometry.detector_side_m
    assert attrs["photon_energy_ev"] == geometry.photon_energy_ev
    np.testing.assert_array_equal(attrs["beamstop_px"], [2, 2])
    assert attrs["seed"] == 0 and attrs["shot_seed"] == shot_seed(0, names[0])
    assert attrs["structure_name"] == names[0] and attrs["structure_n_atoms"] > 1000
    assert attrs["structure_radius_angstrom"] > 10 and attrs["structure_n_electrons"] > 1000
    assert attrs["structure_source"].startswith("procedural:")
    assert str(attrs["code_version"]).startswith("speckle_embed")
    assert json.loads(attrs["hit_class_names"]) == list(HIT_CLASSES)
    assert attrs["n_frames"] == 8
    stored = yaml.safe_load(attrs["config_yaml"])
    assert stored["geometry"]["n_pixels"] == N_PIX and stored["dataset"]["n_frames"] == 8


def test_same_seed_same_frames(tiny_dataset, tmp_path):
    root, cfg, report = tiny_dataset
    names = [o.name for o in report.done]
    again = run(tiny_cfg(tmp_path / "again"), base_dir=tmp_path)
    assert [o.name for o in again.done] == names
    assert_same_data(root / "data", tmp_path / "again", names)
    other = run(tiny_cfg(tmp_path / "seed1", "seed=1"), base_dir=tmp_path)
    f0 = read_shard(root / "data" / f"{names[0]}.h5")[0]
    f1 = read_shard(Path(other.done[0].path))[0]
    assert not np.array_equal(f0, f1)


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch):
    overrides = ["source.n_structures=3"]
    reference = run(tiny_cfg(tmp_path / "ref", *overrides), base_dir=tmp_path)
    names = [o.name for o in reference.done]
    assert len(names) == 3

    # Interrupted run: Ctrl-C while simulating the second structure...
    out = tmp_path / "resumed"
    original = ShotGenerator.generate

    def interrupt(self, n):
        if self.engine.structure.name == names[1]:
            raise KeyboardInterrupt
        return original(self, n)

    monkeypatch.setattr(ShotGenerator, "generate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(out, *overrides), base_dir=tmp_path)
    assert shard_is_complete(out / f"{names[0]}.h5")
    assert not (out / f"{names[1]}.h5").exists()
    monkeypatch.setattr(ShotGenerator, "generate", original)
    # ... and the temporary file a kill -9 during a shard write would leave behind.
    stale = out / f"{names[1]}.h5.4242-deadbeef.tmp"
    stale.write_bytes(b"partial")

    mtime = (out / f"{names[0]}.h5").stat().st_mtime_ns
    resumed = run(tiny_cfg(out, *overrides), base_dir=tmp_path)
    assert [o.name for o in resumed.skipped] == names[:1]
    assert [o.name for o in resumed.done] == names[1:]
    assert [p.name for p in resumed.removed_tmp] == [stale.name] and not list(out.glob("*.tmp"))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(f"{n}.h5" for n in names)
    assert (out / f"{names[0]}.h5").stat().st_mtime_ns == mtime
    assert_same_data(tmp_path / "ref", out, names)

    third = run(tiny_cfg(out, *overrides), base_dir=tmp_path)
    assert len(third.skipped) == 3 and not third.done and not third.failed


def test_failing_structure_is_reported_and_others_continue(tmp_path, capsys):
    pdbs = tmp_path / "pdb"
    pdbs.mkdir()
    write_pdb(pdbs / "GOOD.pdb", procedural_particle("globular", 400, 7))
    (pdbs / "BAD.pdb").write_text("this is not a PDB file\n")
    source = {"kind": "mixed", "sources": [
        {"kind": "pdb", "directory": "pdb", "ids": ["BAD", "GOOD", "MISSING"]},
        {"kind": "continuum", "objects": [
            {"name": "ball", "kind": "sphere",
             "params": {"radius_angstrom": 40.0, "voxel_angstrom": 5.0}}]},
    ]}
    specs = resolve_sources(source, base_dir=tmp_path)
    geometry = default_geometry().replace(n_pixels=N_PIX, detector_side_m=0.1 * N_PIX / 172,
                                          beamstop_px=(2, 2), gap_px=1)
    report = generate_dataset(specs, geometry, out_dir=tmp_path / "out", n_frames=4, chunk=4,
                              seed=0, progress=True)
    assert [o.name for o in report.done] == ["GOOD", "ball"]
    failed = {o.name: o for o in report.failed}
    assert set(failed) == {"BAD", "MISSING"}
    assert "BAD.pdb" in failed["BAD"].error and failed["BAD"].source.endswith("BAD.pdb")
    assert "MISSING" in failed["MISSING"].error
    assert shard_is_complete(tmp_path / "out" / "GOOD.h5")
    assert not (tmp_path / "out" / "BAD.h5").exists()
    table = capsys.readouterr().out
    assert "failed: 2" in table and "skipped-complete: 0" in table and "BAD.pdb" in table


@pytest.mark.parametrize("override, parameter", [("geometry.n_pixels=0", "n_pixels"),
                                                 ("geometry.distance_m=-1", "distance_m"),
                                                 ("+geometry.pixel_pitch=1", "pixel_pitch")])
def test_nonsense_geometry_names_the_parameter(tmp_path, override, parameter):
    with pytest.raises(GeometryError, match=parameter):
        run(tiny_cfg(tmp_path / "out", override), base_dir=tmp_path)
    assert not (tmp_path / "out").exists()


def test_argument_errors(tmp_path):
    spec = resolve_sources({"kind": "procedural", "n_structures": 1, "n_atoms_min": 500,
                            "n_atoms_max": 500})
    g = default_geometry()
    for kwargs, word in [({"n_frames": 0}, "n_frames"), ({"n_frames": 1, "chunk": 0}, "chunk"),
                         ({"n_frames": 1, "shard_index": 2, "num_shards": 2}, "shard_index"),
                         ({"n_frames": 1, "mix": {"single": 1, "bogus": 2}}, "bogus")]:
        with pytest.raises(ValueError, match=word):
            generate_dataset(spec, g, out_dir=tmp_path, progress=False, **kwargs)


def test_shot_seed_is_stable():
    # crc32 and SeedSequence are fixed algorithms: this value must never change.
    assert shot_seed(0, "1BXN") == 2037199437
    assert len({shot_seed(0, "a"), shot_seed(0, "b"), shot_seed(1, "a")}) == 3
    with pytest.raises(ValueError):
        shot_seed(-1, "a")


# ============================================================================ app / multirun
def test_joblib_multirun_two_shards(tiny_dataset, tmp_path):
    root, _, report = tiny_dataset
    out, sweep = tmp_path / "data", tmp_path / "sweep"
    cmd = [sys.executable, "-m", "simulate", "-m", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", "run.num_shards=2", "run.shard_index=0,1",
           *TINY, f"out_dir={out}", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = [o.name for o in report.done]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(f"{n}.h5" for n in names)
    jobs = [json.loads((sweep / str(k) / REPORT_NAME).read_text()) for k in (0, 1)]
    assert [j["shard_index"] for j in jobs] == [0, 1]
    assert [[o["name"] for o in j["outcomes"]] for j in jobs] == [[names[0]], [names[1]]]
    # Other processes, other partition: the same frames as the in-process run.
    assert_same_data(root / "data", out, names)


def test_render_examples(tiny_dataset, tmp_path):
    root, _, _ = tiny_dataset
    png = render_examples(root / "data", tmp_path / "ex.png", per_class=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    via_app = run(compose_cfg("mode=render", f"render.input={root / 'data'}",
                              "render.output=fig/ex2.png"), base_dir=tmp_path)
    assert via_app == tmp_path / "fig" / "ex2.png" and via_app.stat().st_size > 5000
    with pytest.raises(FileNotFoundError):
        render_examples(tmp_path / "nothing", tmp_path / "x.png")


def test_render_after_generation(tmp_path):
    report = run(tiny_cfg(tmp_path / "data", "render_after=true", "source.n_structures=1"),
                 output_dir=tmp_path / "run", base_dir=tmp_path)
    assert report.ok and (tmp_path / "run" / EXAMPLES_NAME).stat().st_size > 5000
