"""scripts/evaluate_adaptation.py: every method on the same episodes of any labelled file, with a --mask."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np

from speckle_embed.evaluation.online import write_labelled_pool

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_adaptation.py"


def test_script_scores_every_method_on_the_same_episodes(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    r = np.hypot(*(np.mgrid[:64, :64] - 31.5))
    single = 30 * (1 + np.cos(r / 1.5)) * np.exp(-r / 8)
    frames = np.concatenate([rng.poisson(single, (8, 64, 64)), rng.poisson(single.mean(), (8, 64, 64))])
    hit = np.array([1] * 8 + [2] * 4 + [3] * 4)
    write_labelled_pool(tmp_path / "run.h5", frames.astype(np.float32), hit, np.zeros((64, 64), np.uint16))
    mask = np.zeros((64, 64), np.uint16)
    mask[30:34] = 1
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "res.json"
    monkeypatch.setattr(sys, "argv", ["x", "--data", str(tmp_path / "run.h5"), "--mask", str(tmp_path / "mask.npy"),
                                      "--k-shot", "2", "--n-query", "3", "--n-tasks", "3", "--finetune-tasks", "1",
                                      "--finetune-budget", "0.01", "--threads", "1", "--out", str(out)])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0
    res = json.loads(out.read_text())["results"]
    for name in ("frozen", "prototypes", "batchnorm", "batchnorm+prototypes", "radial profile (no learning)",
                 "photon count (no learning)"):
        assert res[name]["n_queries"] == 3 * 2 * 3 and 0 <= res[name]["accuracy"] <= 1, name
    assert res["finetune (subset)"]["n_tasks"] == res["frozen (same subset)"]["n_tasks"] == 1
    assert res["radial profile (no learning)"]["accuracy"] == 1.0  # ringing vs flat frames: separable
