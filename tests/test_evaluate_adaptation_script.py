"""scripts/evaluate_adaptation.py: every method on the same episodes of any labelled file, with a --mask."""
import dataclasses
import json
import runpy
import sys
from pathlib import Path

import numpy as np

from speckle_embed.evaluation.app import load_embedder
from speckle_embed.evaluation.domains import Domain, domain_protocol
from speckle_embed.evaluation.labelled import load_labelled_sets
from speckle_embed.evaluation.online import write_labelled_pool

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_adaptation.py"


def run_script(tmp_path, monkeypatch, hit, mask, *args, seed: int = 0) -> dict:
    """Write 8 ringing then 8 flat 64 x 64 frames labelled ``hit`` (photons) and ``mask`` (.npy), run the
    script on them with ``args``; returns its JSON."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*(np.mgrid[:64, :64] - 31.5))
    single = 30 * (1 + np.cos(r / 1.5)) * np.exp(-r / 8)
    frames = np.concatenate([rng.poisson(single, (8, 64, 64)), rng.poisson(single.mean(), (8, 64, 64))])
    write_labelled_pool(tmp_path / "run.h5", frames.astype(np.float32), np.asarray(hit), np.zeros((64, 64), np.uint16))
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "res.json"
    monkeypatch.setattr(sys, "argv", ["x", "--data", str(tmp_path / "run.h5"), "--mask", str(tmp_path / "mask.npy"),
                                      *args, "--threads", "1", "--out", str(out)])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0
    return json.loads(out.read_text())


def test_script_scores_every_method_on_the_same_episodes(tmp_path, monkeypatch):
    mask = np.zeros((64, 64), np.uint16)
    mask[30:34] = 1
    res = run_script(tmp_path, monkeypatch, [1] * 8 + [2] * 4 + [3] * 4, mask, "--k-shot", "2", "--n-query", "3",
                     "--n-tasks", "3", "--finetune-tasks", "1", "--finetune-budget", "0.01")["results"]
    for name in ("frozen", "prototypes", "batchnorm", "batchnorm+prototypes", "radial profile (no learning)",
                 "photon count (no learning)"):
        assert res[name]["n_queries"] == 3 * 2 * 3 and 0 <= res[name]["accuracy"] <= 1, name
    assert res["finetune (subset)"]["n_tasks"] == res["frozen (same subset)"]["n_tasks"] == 1
    assert res["radial profile (no learning)"]["accuracy"] == 1.0  # ringing vs flat frames: separable


def test_script_is_the_domain_protocol_on_the_files_with_the_mask(tmp_path, monkeypatch):
    mask = np.zeros((64, 64), np.uint16)
    mask[:, :40] = 1
    got = run_script(tmp_path, monkeypatch, [1] * 8 + [2] * 8, mask, "--k-shot", "2", "--n-query", "3",
                     "--n-tasks", "4", "--finetune-tasks", "0", "--seed", "3", seed=1)["results"]
    assert "finetune (subset)" not in got
    sets = [dataclasses.replace(s, mask=mask) for s in load_labelled_sets([tmp_path / "run.h5"])]
    want = domain_protocol({"d": sets}, [Domain("d", ("run.h5",))], {"frozen": load_embedder("pretrained")},
                           k_shots=[2], n_query=3, n_tasks=4, seed=3, adapt=["prototypes"],
                           progress=False)["domains"][0]["by_k"]["2"]["methods"]
    for script_name, name in (("frozen", "frozen"), ("prototypes", "frozen + prototypes"),
                              ("photon count (no learning)", "photon count (no learning)")):
        assert got[script_name]["accuracy"] == want[name]["accuracy"], name
        assert got[script_name]["accuracy_ci"] == list(want[name]["accuracy_ci"]), name
