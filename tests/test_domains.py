"""Leave-one-domain-out protocol (speckle_embed.evaluation.domains) and its `speckle-embed evaluate` section."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from speckle_embed.adaptation import finetune_on_supports, prototype_distances, reestimate_batchnorm, refine_prototypes
from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.evaluation.baselines import baseline_features, baseline_predictions
from speckle_embed.evaluation.domains import (
    VALIDATION_MARK,
    Domain,
    DomainDataError,
    binary_labels,
    domain_episodes,
    domain_protocol,
    episode_interval,
    load_domain,
    parse_domains,
    score_methods,
)
from speckle_embed.evaluation.episodes import Episode
from speckle_embed.evaluation.labelled import LabelledSet
from speckle_embed.fewshot.index import SupportIndex
from speckle_embed.fewshot.episodes import episode_distances
from speckle_embed.fewshot.rules import get_rule
from speckle_embed.inference.views import embed_views

PHOTON = "photon count (no learning)"
ROOT = Path(__file__).resolve().parents[1]


def _frames(hit: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Singles: rings; multis: rings x fringes; non-sample: a blob (photons)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    out = np.empty((hit.size, size, size), np.float32)
    for i, h in enumerate(hit):
        f = 20 * (1 + np.cos(2 * np.pi * r / rng.uniform(4, 6))) * np.exp(-r / 15)
        if h == 2:
            f = f * (1 + np.cos(2 * np.pi * xx / 2.5)) * 1.5
        elif h == 3:
            f = 30 * np.exp(-(r / 6) ** 2)
        out[i] = rng.poisson(f)
    return out


def _write(path: Path, hit, size: int = 48, seed: int = 0) -> Path:
    hit = np.asarray(hit)
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=_frames(hit, size, seed))
        f.create_dataset("/entry_1/data_1/mask", data=np.zeros((size, size), np.uint16))
        f.create_dataset("/entry_1/truth/hit_class", data=hit.astype(np.int8))
        f.attrs["structure_name"] = path.stem
    return path


@pytest.fixture(scope="module")
def domain_root(tmp_path_factory):
    """Three tiny labelled domains (two files in one) and a reference folder."""
    root = tmp_path_factory.mktemp("domains")
    rng = np.random.default_rng(0)
    for j, (name, files, size) in enumerate([("val", 1, 64), ("tst", 2, 56), ("ref", 1, 64)]):
        (root / name).mkdir()
        for i in range(files):
            _write(root / name / f"s{i}.h5", rng.permutation([1] * 12 + [2] * 6 + [3] * 6), size, seed=10 * j + i)
    return root


def _domains(root: Path) -> list[Domain]:
    return parse_domains([
        {"name": "val", "role": "validation", "dirs": [str(root / "val")], "held_out": {"preset": ["A"]}},
        {"name": "tst", "role": "test", "dirs": [str(root / "tst")],
         "held_out": {"preset": [], "family": "capsids", "artefacts": ["streaks", "halos"]}}])


class TinyEmbedder:
    """Deterministic 'embedding': mean and spread of the frame (no training)."""

    checkpoint_hash = "tiny"

    def embed(self, frames, mask=None, **_):
        x = np.log1p(np.asarray(frames, np.float64))
        z = np.stack([x.mean((1, 2)), x.std((1, 2))], 1)
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def test_parse_domains_validates_entries():
    d = parse_domains([{"name": "a", "dirs": "x", "held_out": {"family": "capsids"}}])[0]
    assert d.role == "test" and d.dirs == ("x",) and d.held_out["family"] == ["capsids"] and d.preset_seen
    assert d.role_label == "test (detector preset seen in training)"
    for bad, msg in [({"name": "a", "dirs": ["x"], "role": "train"}, r"domains.sets\[0\] \(a\).role"),
                     ({"name": "a"}, "dirs must list"),
                     ({"name": "a", "dirs": ["x"], "held_out": {"detector": []}}, "unknown keys"),
                     ({"name": "a", "dirs": ["x"], "size": 3}, "unknown keys")]:
        with pytest.raises(ValueError, match=msg):
            parse_domains([bad])
    with pytest.raises(ValueError, match="used twice"):
        parse_domains([{"name": "a", "dirs": ["x"]}, {"name": "a", "dirs": ["y"]}])


def test_episodes_are_balanced_split_over_files_and_seeded():
    sets = [LabelledSet(f"f{i}", np.zeros((24, 4, 4), np.float32), [1] * 12 + [2] * 6 + [3] * 6) for i in range(2)]
    labels, files = binary_labels(sets, classes=(1, 2))
    assert (labels[18:24] == -1).all() and (labels[:12] == 1).all() and (labels[12:18] == 0).all()
    eps = domain_episodes(labels, files, k_shot=2, n_query=5, n_tasks=7, seed=3)
    assert len(eps) == 8 and {e.structure for e in eps} == {0, 1}  # ceil(7 / 2) per file
    for e in eps:
        assert np.bincount(e.query_labels).tolist() == [4, 4]  # not single: 6 frames - 2 supports
        assert (labels[e.query_idx] >= 0).all()
        assert len(set(e.support_idx) & set(e.query_idx)) == 0
    again = domain_episodes(labels, files, k_shot=2, n_query=5, n_tasks=7, seed=3)
    assert all(np.array_equal(a.query_idx, b.query_idx) for a, b in zip(eps, again))
    other = domain_episodes(labels, files, k_shot=2, n_query=5, n_tasks=7, seed=3, domain_index=1)
    assert not all(np.array_equal(a.query_idx, b.query_idx) for a, b in zip(eps, other))


def test_episode_interval_matches_a_brute_force_bootstrap():
    v = np.random.default_rng(1).uniform(0.5, 1.0, 60)
    lo, hi = episode_interval(v, 0.95, n_resamples=4000, seed=0)
    rng = np.random.default_rng(7)
    means = v[rng.integers(0, v.size, (4000, v.size))].mean(1)
    assert abs(lo - np.quantile(means, 0.025)) < 0.01 and abs(hi - np.quantile(means, 0.975)) < 0.01
    assert lo < v.mean() < hi
    assert episode_interval(np.full(5, 0.8)) == (0.8, 0.8)


def test_score_methods_per_episode_means_and_pooled():
    ep = [Episode(0, (1, 0), np.array([0, 1]), np.array([0, 1]), np.array([2, 3, 4, 5]), np.array([0, 0, 1, 1]))] * 2
    answers = iter([np.array([0, 0, 1, 1]), np.array([1, 1, 1, 1])])
    res = score_methods({"m": lambda e: next(answers)}, ep)["m"]
    assert res["accuracy"] == pytest.approx(0.75) and res["accuracy_pooled"] == pytest.approx(0.75)
    assert res["f1"] == pytest.approx(0.5)  # episode F1s 1.0 and 0.0 (single = label 0)
    assert res["n_tasks"] == 2 and res["n_queries"] == 8


def test_protocol_one_row_per_domain_same_episodes_for_baselines(domain_root):
    doms = _domains(domain_root)
    sets = {d.name: load_domain(d) for d in doms}
    seen = []

    def fake_photon_count(sets_, labels, file_index):
        """A deterministic copy of the photon-count baseline that records its episodes."""
        est, feats = baseline_features(sets_)[PHOTON]

        def predict(ep):
            seen.append(ep)
            return baseline_predictions(est, feats, ep)
        return predict

    ref = parse_domains([{"name": "ref", "dirs": [str(domain_root / "ref")]}], "domains.reference")[0]
    res = domain_protocol(sets, doms, {"tiny": TinyEmbedder()}, k_shots=[1, 3], n_query=4, n_tasks=10, seed=0,
                          extra_methods={"fake": fake_photon_count}, reference=ref, reference_sets=load_domain(ref),
                          progress=False)
    assert [d["name"] for d in res["domains"]] == ["val", "tst"] and res["reference"]["role"] == "reference"
    assert res["methods"] == ["tiny", "radial profile (no learning)", PHOTON, "fake"]
    for d in res["domains"]:
        for k in ("1", "3"):
            m = d["by_k"][k]["methods"]
            assert d["by_k"][k]["n_tasks"] == 10
            # the fake copy and the real baseline agree episode by episode: the same episodes
            np.testing.assert_array_equal(m["fake"]["_episode_accuracy"], m[PHOTON]["_episode_accuracy"])
            assert m["tiny"]["n_queries"] == m[PHOTON]["n_queries"]
            lo, hi = m["tiny"]["accuracy_ci"]
            assert lo <= m["tiny"]["accuracy"] <= hi
            gap = d["by_k"][k]["gap"]["tiny"]["accuracy"]
            assert gap == pytest.approx(res["reference"]["by_k"][k]["methods"]["tiny"]["accuracy"]
                                        - m["tiny"]["accuracy"])
    tst_eps = res["domains"][1]["by_k"]["3"]["_episodes"]
    assert any(all(np.array_equal(a.query_idx, b.query_idx) for a, b in zip(tst_eps, seen[i:i + 10]))
               for i in range(0, len(seen), 10))
    assert {e.structure for e in tst_eps} == {0, 1}
    assert res["domains"][0]["role_label"] == VALIDATION_MARK
    assert res["domains"][1]["preset_seen"]


def test_load_domain_one_line_errors(domain_root, tmp_path):
    d = Domain("agipd", ("nowhere/agipd",), "test", {}, "", ("geometry=agipd", "dataset=realistic_agipd"))
    with pytest.raises(DomainDataError) as e:
        load_domain(d, str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "does not exist" in msg and \
        "python -m simulate geometry=agipd dataset=realistic_agipd out_dir=nowhere/agipd" in msg
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / ".pr772.h5.lock").touch()
    with pytest.raises(DomainDataError, match="still being generated"):
        load_domain(Domain("busy", (str(tmp_path / "busy"),)))
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "x.h5", "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DomainDataError, match="domain 'bad'.*no hit-class labels"):
        load_domain(Domain("bad", (str(bad),)))


def _evaluate(tmp_path, root, *extra):
    ckpt = tmp_path / "model.pt"
    if not ckpt.exists():
        SpeckleEmbedder.random_init(seed=0, device="cpu").save_checkpoint(ckpt)
    sets = (f"domains.sets=[{{name:val,role:validation,dirs:[{root / 'val'}],held_out:{{preset:[A]}}}},"
            f"{{name:tst,role:test,dirs:[{root / 'tst'}],held_out:{{preset:[B],family:[capsids]}}}}]")
    cmd = [sys.executable, "-m", "speckle_embed.evaluation", f"checkpoint={ckpt}", "offline.enabled=false",
           "domains.enabled=true", sets, f"domains.reference={{name:ref,dirs:[{root / 'ref'}]}}",
           "domains.k_shots=[1,3]", "domains.n_query=4", "domains.n_tasks=6", "progress=false", "threads=1",
           "report_format=both", f"hydra.run.dir={tmp_path / 'run'}", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def test_evaluate_command_writes_the_domain_table(domain_root, tmp_path):
    proc = _evaluate(tmp_path, domain_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run"
    md = (out / "report.md").read_text()
    assert "Held-out realistic domains" in md and (out / "report.html").is_file()
    assert (out / "domains.png").stat().st_size > 1000
    table = md.split("### 3-shot")[1].split("\n\n")[1].splitlines()
    rows = [r for r in table if r.startswith("| ") and not r.startswith("| domain")]
    assert [r.split(" | ")[0] for r in rows] == ["| ref", "| val", "| tst"]  # reference, then one row per domain
    assert VALIDATION_MARK in rows[1] and VALIDATION_MARK not in rows[2]
    assert "photon count (no learning): accuracy" in table[0] and "gap " in table[0]
    data = json.loads((out / "report.json").read_text())
    assert [d["name"] for d in data["domains"]["domains"]] == ["val", "tst"]
    assert "_episodes" not in data["domains"]["domains"][0]["by_k"]["1"]
    info = data["domains"]["embeddings"][f"{tmp_path.name}/model.pt"]  # column label: <folder>/<file>
    assert info["checkpoint"] == str(tmp_path / "model.pt") and info["checkpoint_hash"]


def test_evaluate_command_bad_domain_folder_is_one_line(domain_root, tmp_path):
    proc = _evaluate(tmp_path, domain_root, f"domains.sets=[{{name:gone,dirs:[{tmp_path / 'gone'}]}}]")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "domain 'gone'" in ln]
    assert len(lines) == 1 and "does not exist" in lines[0] and "domains.missing=skip" in lines[0]


def test_evaluate_command_skips_a_missing_domain_when_asked(domain_root, tmp_path):
    proc = _evaluate(tmp_path, domain_root, "domains.missing=skip",
                     f"domains.sets=[{{name:gone,dirs:[{tmp_path / 'gone'}]}},{{name:tst,dirs:[{domain_root / 'tst'}]}}]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Skipped: domain 'gone'" in (tmp_path / "run" / "report.md").read_text()


def test_evaluate_command_scores_only_the_roles_asked_with_the_same_episodes(domain_root, tmp_path):
    """domains.roles=[test]: the validation domain is not scored (not even loaded), and the test
    domain's episodes (seeded by its declared position) are those of the full run."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    full = _evaluate(tmp_path / "a", domain_root)
    assert full.returncode == 0, full.stderr[-3000:]
    only = _evaluate(tmp_path / "b", domain_root, "domains.roles=[test]")
    assert only.returncode == 0, only.stderr[-3000:]
    a = json.loads((tmp_path / "a" / "run" / "report.json").read_text())["domains"]
    b = json.loads((tmp_path / "b" / "run" / "report.json").read_text())["domains"]
    assert [d["name"] for d in b["domains"]] == ["tst"]
    def scores(row, k):  # per method in order (the embedding's column is named after its folder)
        return [(m["accuracy"], m["f1"], m["confusion"]) for m in row["by_k"][k]["methods"].values()]
    for k in ("1", "3"):
        assert scores(b["domains"][0], k) == scores(a["domains"][1], k)
    assert scores(b["reference"], "3") == scores(a["reference"], "3")
    only = _evaluate(tmp_path / "c", domain_root, "domains.roles=[validation]")  # the last declared domain left out
    assert only.returncode == 0, only.stderr[-3000:]
    c = json.loads((tmp_path / "c" / "run" / "report.json").read_text())["domains"]
    assert [d["name"] for d in c["domains"]] == ["val"]
    assert scores(c["domains"][0], "3") == scores(a["domains"][0], "3")
    assert scores(c["reference"], "3") == scores(a["reference"], "3")
    bad = _evaluate(tmp_path / "c", domain_root, "domains.roles=[training]")
    assert bad.returncode != 0 and "domains.roles must be a list from" in bad.stderr


def test_finetune_row_scores_each_episode_with_a_copy_tuned_on_its_supports(domain_root):
    """domains.adapt=finetune: per episode, finetune_on_supports on the supports then the rule, on the
    same episodes as the frozen row (checked against the same steps done by hand)."""
    dom = _domains(domain_root)[0]
    sets = {dom.name: load_domain(dom)}
    emb = SpeckleEmbedder.random_init(seed=0, device="cpu")
    opts = {"budget_s": 60.0, "max_steps": 1, "lr": 1e-3}
    kw = dict(k_shots=[2], n_query=3, n_tasks=2, seed=0, baselines=False, progress=False)
    res = domain_protocol(sets, [dom], {"net": emb}, adapt=["finetune"], finetune={**opts, "temperature": None},
                          **kw)  # None: the default (as domains.finetune's nulls)
    row = res["domains"][0]
    assert res["methods"] == ["net", "net + finetune"] and row["kinds"]["net + finetune"] == "adapted"
    assert res["settings"]["finetune"] == {"budget_s": 60.0, "max_steps": 1, "lr": 1e-3, "temperature": 0.1}
    assert row["finetune"]["net + finetune"]["fine_tunings"] == 2
    assert row["finetune"]["net + finetune"]["steps_mean"] == 1  # max_steps reached it (default 200)
    m, eps = row["by_k"]["2"]["methods"], row["by_k"]["2"]["_episodes"]
    assert m["net + finetune"]["n_tasks"] == m["net"]["n_tasks"] == 2
    assert m["net + finetune"]["n_queries"] == m["net"]["n_queries"] == 2 * 2 * 3
    s = sets[dom.name][0]
    for ep, acc in zip(eps, m["net + finetune"]["_episode_accuracy"]):
        tuned, _ = finetune_on_supports(emb, s.frames[ep.support_idx], ep.support_labels, s.mask, seed=0, **opts)
        index = SupportIndex(128, use_gpu=False)
        index.add(tuned.embed(s.frames[ep.support_idx], s.mask), ep.support_labels)
        pred = get_rule("mean_distance")(index, tuned.embed(s.frames[ep.query_idx], s.mask), n_classes=2).argmin(1)
        assert acc == pytest.approx(np.mean(pred == ep.query_labels))
    frozen = domain_protocol(sets, [dom], {"net": emb}, **kw)["domains"][0]["by_k"]["2"]["methods"]["net"]
    np.testing.assert_array_equal(frozen["_episode_accuracy"], m["net"]["_episode_accuracy"])


def test_batchnorm_plus_prototypes_row_refines_prototypes_on_the_batchnorm_embedding(domain_root):
    dom = _domains(domain_root)[1]  # two files: statistics and prototypes per file
    sets = {dom.name: load_domain(dom)}
    emb = SpeckleEmbedder.random_init(seed=0, device="cpu")

    def by_hand(sets_, labels, file_index):
        z = np.concatenate([reestimate_batchnorm(emb, s.frames[labels[file_index == i] >= 0], s.mask, seed=0)
                            .embed(s.frames, s.mask) for i, s in enumerate(sets_)])

        def predict(ep):
            pool = np.setdiff1d(np.flatnonzero((file_index == ep.structure) & (labels >= 0)), ep.support_idx)
            protos = refine_prototypes(z[ep.support_idx], ep.support_labels, z[pool], 2)
            return prototype_distances(z[ep.query_idx], protos).argmin(1)
        return predict

    res = domain_protocol(sets, [dom], {"net": emb}, adapt=["batchnorm", "batchnorm+prototypes"],
                          extra_methods={"by hand": by_hand}, k_shots=[2], n_query=3, n_tasks=4, baselines=False,
                          progress=False)
    assert res["methods"] == ["net", "net + batchnorm", "net + batchnorm + prototypes", "by hand"]
    m = res["domains"][0]["by_k"]["2"]["methods"]
    np.testing.assert_array_equal(m["net + batchnorm + prototypes"]["_episode_accuracy"],
                                  m["by hand"]["_episode_accuracy"])
    assert "finetune" not in res["settings"] and "finetune" not in res["domains"][0]


def test_finetune_options_are_checked_with_one_line_errors(domain_root):
    dom = _domains(domain_root)[0]
    sets = {dom.name: load_domain(dom)}
    emb = SpeckleEmbedder.random_init(seed=0, device="cpu")
    kw = dict(k_shots=[2], n_query=3, n_tasks=2, baselines=False, progress=False)
    for embedders, extra, msg in [
            ({"net": emb}, {"finetune": {"budget": 3}}, r"domains.finetune: unknown key\(s\) \['budget'\]; allowed"),
            ({"net": emb}, {"finetune": {"budget_s": 0}}, "budget_s > 0"),
            ({"net": emb}, {"embed_kwargs": {"scale": 1.5}}, "domains.embed.scale=null"),
            ({"tiny": TinyEmbedder()}, {}, r"network to train.*\['tiny'\]")]:
        with pytest.raises(ValueError, match=msg):
            domain_protocol(sets, [dom], embedders, adapt=["finetune"], **kw, **extra)
    with pytest.raises(ValueError, match="choose from"):
        domain_protocol(sets, [dom], {"net": emb}, adapt=["finetune_all"], **kw)


def test_evaluate_app_passes_the_finetune_options_to_the_protocol(domain_root, monkeypatch, tmp_path):
    import speckle_embed.evaluation.app as app

    seen = {}

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(app, "domain_protocol", spy)
    cfg = {"sets": [{"name": "val", "dirs": [str(domain_root / "val")]}], "adapt": ["finetune"],
           "finetune": {"budget_s": 5.0}, "rule": "mean_distance", "checkpoint": "x.pt"}
    with pytest.raises(Stop):
        app._domains(cfg, TinyEmbedder(), None, {}, tmp_path, 0, False, None, "cpu", False)
    assert seen["adapt"] == ["finetune"] and seen["finetune"] == {"budget_s": 5.0}


class ViewEmbedder:
    """Deterministic 'embedding' that is not invariant to the D4 views: means of the four
    quadrants of the frame turned by view ``k`` (rot90 ``k % 4``, then a column mirror for k >= 4)."""

    checkpoint_hash = "views"

    def embed(self, frames, mask=None, view=0, **_):
        x = np.rot90(np.log1p(np.asarray(frames, np.float64)), view % 4, axes=(1, 2))
        x = x[:, :, ::-1] if view >= 4 else x
        h, w = x.shape[1] // 2, x.shape[2] // 2
        z = np.stack([x[:, :h, :w].mean((1, 2)), x[:, :h, w:].mean((1, 2)), x[:, h:, :w].mean((1, 2)),
                      x[:, h:, w:].mean((1, 2))], 1)
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def test_query_views_row_averages_the_views_of_each_query(domain_root):
    doms = _domains(domain_root)
    sets = {d.name: load_domain(d) for d in doms}
    emb = ViewEmbedder()
    kw = dict(k_shots=[3], n_query=4, n_tasks=6, seed=0, baselines=False, progress=False)
    res = domain_protocol(sets, doms, {"v": emb}, query_views="d4", **kw)
    assert res["settings"]["query_views"] == "d4"
    for i, d in enumerate(res["domains"]):
        views = np.concatenate([embed_views(emb, s.frames, s.mask, group="d4") for s in sets[d["name"]]])
        z = np.ascontiguousarray(views[:, 0])
        eps = d["by_k"]["3"]["_episodes"]
        acc = [np.mean(episode_distances(z, ep, "logistic", support_views=views, query_views=True).argmin(1)
                       == ep.query_labels) for ep in eps]
        np.testing.assert_allclose(d["by_k"]["3"]["methods"]["v"]["_episode_accuracy"], acc)
    with pytest.raises(ValueError, match="query_views='d4' classifies"):
        domain_protocol(sets, doms, {"v": emb}, rule="prototype", query_views="d4", **kw)
    with pytest.raises(ValueError, match="query_views='d4' classifies"):
        domain_protocol(sets, doms, {"v": emb}, support_views="none", query_views="d4", **kw)
