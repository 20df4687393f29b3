"""The evaluation suite: labelled sets, offline and online protocols, report, `speckle-embed evaluate`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.evaluation.labelled import LabelledSet, load_labelled_sets, photon_frames
from speckle_embed.evaluation.offline import (PAPER_FLUENCE_FACTORS, embed_sets, fluence_scan, kshot_protocol,
                                              size_table, tsne_embeddings)
from speckle_embed.evaluation.online import (detector_fraction_mask, head_config_for, online_protocol,
                                             split_labelled_pool)
from speckle_embed.evaluation.report import Report, to_jsonable

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- synthetic data
def _patterns(hit: np.ndarray, size: int = 96, seed: int = 0, photons: float = 20.0) -> np.ndarray:
    """Expected photons: singles = Airy-like rings, multis = rings x fringes, non-sample = smooth blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    out = np.empty((hit.size, size, size), np.float32)
    for i, h in enumerate(hit):
        period = rng.uniform(5.0, 7.0)
        rings = (1 + np.cos(2 * np.pi * r / period)) * np.exp(-r / 30)
        if h == 2:
            theta = rng.uniform(0, np.pi)
            fringe = 1 + np.cos(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 2.5)
            rings = rings * fringe
        elif h == 3:
            rings = 2 * np.exp(-(r / 12) ** 2)
        out[i] = photons * rings
    return out


def _write_shard(path: Path, hit, *, clean: bool, n_atoms: int = 1000, seed: int = 0, size: int = 96) -> Path:
    hit = np.asarray(hit)
    frames = _patterns(hit, size, seed)
    if not clean:
        frames = np.random.default_rng(seed).poisson(frames).astype(np.float32)
    mask = np.zeros((size, size), np.uint16)
    mask[size // 2 - 2:size // 2 + 2, :] = 1  # a gap
    noise = {"poisson": not clean, "gaussian_sigma": 0.0 if clean else 0.15}
    fluence = {"kind": "constant", "pulse_sigma": 0.0} if clean else {"kind": "loguniform", "pulse_sigma": 0.1}
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=frames)
        f.create_dataset("/entry_1/data_1/mask", data=mask)
        f.create_dataset("/entry_1/truth/hit_class", data=hit.astype(np.int8))
        f.attrs["noise"] = json.dumps(noise)
        f.attrs["fluence"] = json.dumps(fluence)
        f.attrs["structure_name"] = path.stem
        f.attrs["structure_n_atoms"] = n_atoms
        f.attrs["structure_radius_angstrom"] = 50.0
    return path


class FeatureEmbedder:
    """A transparent 'embedding': relative total variation of the frame (fringes vary fastest) as an angle."""

    checkpoint_hash = "feature"

    def embed(self, frames, mask=None, **_):
        x = np.asarray(frames, np.float64)
        tv = (np.abs(np.diff(x, axis=1)).mean((1, 2)) + np.abs(np.diff(x, axis=2)).mean((1, 2)))
        a = np.clip(tv / np.maximum(x.mean((1, 2)), 1e-9), 0, 3) * np.pi / 3
        return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    rng = np.random.default_rng(0)
    for i, name in enumerate(["AAAA", "BBBB"]):
        _write_shard(d / f"{name}.h5", rng.permutation([1] * 30 + [2] * 30), clean=True, n_atoms=1000 * (i + 1),
                     seed=i)
    return d


# ----------------------------------------------------------------------------- labelled sets
def test_load_labelled_sets_reads_labels_size_and_cleanliness(clean_dir, tmp_path):
    sets = load_labelled_sets(clean_dir)
    assert [s.name for s in sets] == ["AAAA", "BBBB"]
    assert all(s.clean for s in sets) and sets[1].n_atoms == 2000
    assert sets[0].class_counts() == {1: 30, 2: 30}
    noisy = _write_shard(tmp_path / "NOIS.h5", [1, 2, 1, 2], clean=False)
    assert not load_labelled_sets(noisy)[0].clean
    with pytest.raises(FileNotFoundError, match="ZZZZ"):
        load_labelled_sets(clean_dir, ["ZZZZ"])


def test_load_labelled_sets_names_a_file_without_labels(tmp_path):
    p = tmp_path / "nolabels.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="nolabels.h5.*no hit-class labels"):
        load_labelled_sets(p)


def test_photon_frames_statistics_and_determinism():
    s = LabelledSet("t", np.full((200, 8, 8), 4.0, np.float32), np.ones(200), clean=True)
    a = photon_frames(s, 2.5, gaussian_sigma=0.0, seed=1)
    assert abs(a.mean() - 10.0) < 0.1 and abs(a.var() - 10.0) < 0.5  # Poisson(10)
    np.testing.assert_array_equal(a, photon_frames(s, 2.5, gaussian_sigma=0.0, seed=1))
    noisy = LabelledSet("n", a, np.ones(200), clean=False)
    assert photon_frames(noisy, 1.0) is noisy.frames
    with pytest.raises(ValueError, match="eval_clean"):
        photon_frames(noisy, 10.0)


def test_photon_frames_zero_masked_pixels():
    mask = np.zeros((8, 8), np.uint16)
    mask[0] = 1
    s = LabelledSet("t", np.full((5, 8, 8), 50.0, np.float32), np.ones(5), mask=mask, clean=True)
    out = photon_frames(s, 1.0, seed=0)
    assert np.all(out[:, 0] == 0) and np.all(out[:, 1:] > 0)


# ----------------------------------------------------------------------------- offline protocol
def test_kshot_protocol_separable_features_score_one(clean_dir):
    sets = load_labelled_sets(clean_dir)
    res = kshot_protocol(FeatureEmbedder(), sets, k_shots=(1, 5), n_query=20, n_tasks=4, progress=False)
    for k in ("1", "5"):
        assert res["by_k"][k]["accuracy_mean"] == pytest.approx(1.0)
        assert res["by_k"][k]["f1_mean"] == pytest.approx(1.0)
        assert np.trace(np.asarray(res["by_k"][k]["confusion"])) == res["by_k"][k]["n_queries"]
        base = res["by_k"][k]["baselines"]  # scored on the same episodes
        assert set(base) == {"radial profile (no learning)", "photon count (no learning)"}
        assert all(b["n_queries"] == res["by_k"][k]["n_queries"] and 0 <= b["accuracy_mean"] <= 1
                   for b in base.values())
    rows = size_table(sets, res, k=5)
    assert [r["name"] for r in rows] == ["AAAA", "BBBB"]


def test_kshot_protocol_random_features_are_near_chance(clean_dir):
    class Random:
        def embed(self, frames, mask=None, **_):
            z = np.random.default_rng(len(frames)).normal(size=(len(frames), 8))
            return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)

    res = kshot_protocol(Random(), load_labelled_sets(clean_dir), k_shots=(5,), n_query=25, n_tasks=20,
                         progress=False)
    assert 0.35 < res["by_k"]["5"]["accuracy_mean"] < 0.65


def test_fluence_scan_same_frames_every_level_and_refuses_noisy_sets(clean_dir, tmp_path):
    sets = load_labelled_sets(clean_dir)
    seen = []

    class Recorder(FeatureEmbedder):
        def embed(self, frames, mask=None, **kw):
            seen.append(frames.shape[0])
            return super().embed(frames, mask, **kw)

    scan = fluence_scan(Recorder(), sets, factors=(0.01, 1.0, 100.0), k_shot=2, n_query=10, n_tasks=3,
                        progress=False)
    assert [lv["factor"] for lv in scan["levels"]] == [0.01, 1.0, 100.0]
    assert set(seen) == {24}  # (k + n_query) x 2 classes per structure, every level
    assert scan["levels"][-1]["accuracy_mean"] >= scan["levels"][0]["accuracy_mean"]
    assert len(PAPER_FLUENCE_FACTORS) == 9 and PAPER_FLUENCE_FACTORS[0] == pytest.approx(0.01)
    noisy = load_labelled_sets(_write_shard(tmp_path / "N.h5", [1, 2] * 10, clean=False))
    with pytest.raises(ValueError, match="noise-free"):
        fluence_scan(FeatureEmbedder(), noisy, progress=False)


def test_tsne_marks_the_supports(clean_dir):
    sets = load_labelled_sets(clean_dir)
    z, hit, struct = embed_sets(FeatureEmbedder(), sets, progress=False)
    maps = tsne_embeddings(z, hit, struct, structures=[0, 1], k_shot=3, n_points=30, perplexity=5)
    assert set(maps) == {0, 1}
    assert maps[0]["xy"].shape == (30, 2) and maps[0]["support"].sum() == 6


# ----------------------------------------------------------------------------- online protocol
def test_detector_fraction_mask_keeps_the_fraction():
    for frac in (0.25, 0.5, 1.0):
        kept = (detector_fraction_mask((64, 64), frac) == 0).mean()
        assert kept == pytest.approx(frac, abs=0.02)
    with pytest.raises(ValueError):
        detector_fraction_mask((4, 4), 0.0)


def test_split_labelled_pool_is_disjoint_and_balanced():
    hit = np.repeat([1, 2, 3], 70)
    train, val, query = split_labelled_pool(hit, 40, 20, seed=3)
    assert len(set(train) | set(val) | set(query)) == train.size + val.size + query.size == 210
    assert [int(np.sum(hit[train] == c)) for c in (1, 2, 3)] == [40, 40, 40]
    with pytest.raises(ValueError, match="frames per class"):
        split_labelled_pool(np.repeat([1, 2, 3], [70, 70, 10]), 40, 20)


def test_head_config_for_makes_three_way_heads():
    import yaml

    resnet = yaml.safe_load((ROOT / "conf/evaluate/heads/resnet_maxf1.yaml").read_text())
    shi = yaml.safe_load((ROOT / "conf/evaluate/heads/shi2019.yaml").read_text())
    r = head_config_for(resnet, 3, {"n_epochs": 2})
    assert r["kind"] == "supervised" and r["model"]["n_classes"] == 3
    assert r["positive_class"] is None and r["recipe"] is None and r["n_epochs"] == 2
    assert r["val_metric"] == "accuracy"
    ens = head_config_for(resnet, 3, single_model=False)
    assert ens["kind"] == "ensemble" and ens["head"]["model"]["n_classes"] == 3
    s = head_config_for(shi, 3)
    assert s["model"]["n_outputs"] == 3 and "threshold" not in s


TINY_HEAD = {"kind": "supervised", "model": {"name": "preact_resnet", "input_size": [32, 16],
                                              "channels": [4, 8], "blocks": [1, 1]},
             "preprocessing": {"input_size": 32, "crop": 64}, "lr": 3e-3, "batch_size": 16,
             "n_iterations": 6, "device": "cpu"}


@pytest.fixture(scope="module")
def online_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("online")
    rng = np.random.default_rng(1)
    return _write_shard(d / "run.h5", rng.permutation([1] * 40 + [2] * 40 + [3] * 40), clean=False, seed=5)


def test_online_protocol_rows_and_selections(online_file):
    s = load_labelled_sets(online_file)[0]
    res = online_protocol(FeatureEmbedder(), s, heads={"tiny": TINY_HEAD}, detector_fractions=(1.0, 0.25),
                          n_train=10, n_val=5, k_shot=3, n_query=8, n_tasks=4, progress=False)
    rp, pc = "radial profile (no learning)", "photon count (no learning)"
    assert [(r["detector"], r["method"]) for r in res["rows"]] == [
        ("100%", "SpeckleNN (few-shot)"), ("100%", rp), ("100%", pc), ("100%", "tiny"),
        ("25%", "SpeckleNN (few-shot)"), ("25%", rp), ("25%", pc), ("25%", "tiny")]
    for r in res["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n_queries"] == 4 * 3 * 8
        assert np.asarray(r["confusion"]).sum() == r["n_queries"]
    sel = res["selections"]["100%"]
    assert set(sel) == {"SpeckleNN (few-shot)", rp, pc, "tiny", "truth"}
    assert sel["truth"].sum() == 40 - 15


@pytest.fixture
def one_thread():
    """Torch on one thread for this test only (the global setting is restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.timeout(300)
def test_online_protocol_finetunes_from_a_checkpoint(online_file, tmp_path, one_thread):
    emb = SpeckleEmbedder.random_init(seed=0, device="cpu")
    s = load_labelled_sets(online_file)[0]
    res = online_protocol(emb, s, heads={}, detector_fractions=(1.0,), n_train=10, n_val=5, k_shot=3, n_query=8,
                          n_tasks=2, progress=False, run_dir=tmp_path,
                          finetune={"enabled": True, "epochs": 1, "steps_per_epoch": 2, "sampler": {"p": 3, "k": 4},
                                    "model": {"name": "specklenn"}})
    assert [r["method"] for r in res["rows"]] == ["SpeckleNN (few-shot)", "SpeckleNN (fine-tuned)",
                                                  "radial profile (no learning)", "photon count (no learning)"]
    run = tmp_path / "finetune_100"
    assert (run / "best.pt").is_file() and (run / "labelled_pool.h5").is_file()
    with h5py.File(run / "labelled_pool.h5") as f:
        assert f["/entry_1/data_1/data"].shape[0] == 45  # only the labelled pool (15 per class)


# ----------------------------------------------------------------------------- report and command
def test_report_renders_markdown_html_and_json(tmp_path):
    r = Report("T", {"seed": 0, "config_yaml": "a: 1\n"})
    r.heading("H")
    r.table(["x", "y"], [[1, 0.5], ["a", float("nan")]])
    r.text("<b>escaped</b>")
    paths = r.write(tmp_path, {"v": np.float32(0.25), "arr": np.arange(2), "bad": float("nan")}, fmt="both")
    md = paths["markdown"].read_text()
    assert "| 1 | 0.500 |" in md and "| a | n/a |" in md and "a: 1" in md
    assert "&lt;b&gt;escaped" in paths["html"].read_text()
    data = json.loads(paths["json"].read_text())
    assert data["v"] == 0.25 and data["arr"] == [0, 1] and data["bad"] is None
    assert to_jsonable({"_hidden": 1, "k": (1, 2)}) == {"k": [1, 2]}
    with pytest.raises(ValueError, match="markdown, html or both"):
        r.write(tmp_path, {}, fmt="pdf")


def test_evaluate_command_writes_a_stamped_report(clean_dir, online_file, tmp_path):
    ckpt = tmp_path / "model.pt"
    SpeckleEmbedder.random_init(seed=0, device="cpu").save_checkpoint(ckpt)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "speckle_embed.evaluation", f"checkpoint={ckpt}", f"offline.data=[{clean_dir}]",
           "offline.k_shots=[1,5]", "offline.n_query=10", "offline.n_tasks=2", "offline.fluence_scan.factors=[0.1,10]",
           "offline.fluence_scan.n_query=5", "offline.fluence_scan.n_tasks=2", "offline.tsne.n_structures=1",
           "offline.tsne.n_points=20", "offline.tsne.perplexity=5", "online.enabled=true", f"online.data=[{online_file}]",
           "online.n_train=10", "online.n_val=5", "online.n_query=5", "online.n_tasks=2", "online.finetune.enabled=false",
           "~online.heads", "progress=false", "threads=1", "report_format=both", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    for needle in ("checkpoint_hash", "seed", "git", "2-way K-shot", "Fluence scan", "Online protocol",
                   "IoU of selections", "PSD contrast", "radial profile (no learning): accuracy (mean)",
                   "| 100% | photon count (no learning) |"):
        assert needle in md, needle
    for png in ("offline_kshot.png", "offline_fluence.png", "offline_confusion.png", "offline_tsne.png",
                "offline_size.png", "online_run_accuracy.png", "online_run_psd_25.png"):
        assert (out / png).stat().st_size > 1000, png
    data = json.loads((out / "report.json").read_text())
    assert set(data["offline"]["by_k"]) == {"1", "5"}
    assert "radial profile (no learning)" in data["offline"]["by_k"]["5"]["baselines"]
    assert len(data["offline"]["fluence_scan"]["levels"]) == 2
    assert data["online"]["run"]["rows"][0]["detector"] == "100%"
    assert data["stamp"]["seed"] == 0 and "config_yaml" in data["stamp"]


def test_evaluate_command_explains_missing_data(tmp_path):
    ckpt = tmp_path / "model.pt"
    SpeckleEmbedder.random_init(seed=0, device="cpu").save_checkpoint(ckpt)
    proc = subprocess.run([sys.executable, "-m", "speckle_embed.evaluation", f"checkpoint={ckpt}",
                           f"offline.data=[{tmp_path / 'nowhere'}]", f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "nowhere" in proc.stderr and "does not exist" in proc.stderr
