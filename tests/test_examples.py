"""The scripts in examples/ run as they are.

Each script is executed in a fresh interpreter (``sys.executable``), with a temporary folder as
the working directory and every output under ``tmp_path``, on small settings (a few structures
and shots, one or two training steps): about 2 minutes for the file on 2 CPU cores. The slow
test runs every script with its own defaults, as the examples README documents them.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))  # _*.py: shared steps


def run_example(name: str, tmp_path: Path, *args, timeout: float = 300) -> str:
    """Run ``examples/<name>`` with ``args``; returns its stdout (fails with its output)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    cmd = [sys.executable, str(EXAMPLES / name), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def number_after(pattern: str, text: str) -> float:
    match = re.search(pattern + r"\s*([0-9.]+)", text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


def test_every_example_has_a_docstring_and_help(tmp_path):
    assert set(SCRIPTS) >= {"pretrain_offline.py", "register_new_sample.py", "classify_file.py",
                            "online_training.py", "compare_resnet_head.py"}
    readme = (EXAMPLES / "README.md").read_text()
    for name in SCRIPTS:
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""'), f"{name} has no module docstring"
        assert "Run it" in text and "Full size" in text, f"{name}: docstring lacks the run commands"
        assert name in readme, f"{name} is not listed in examples/README.md"
    # --help parses (argparse) without importing anything heavy
    out = run_example("register_new_sample.py", tmp_path, "--help", timeout=120)
    assert "--n-frames" in out


def test_pretrain_offline(tmp_path):
    out_dir = tmp_path / "pretrain"
    out = run_example("pretrain_offline.py", tmp_path, "--out", out_dir, "--n-structures", 4,
                      "--n-frames", 20, "--atoms", 1500, 2500, "--epochs", 1, "--steps-per-epoch", 2,
                      "--p", 4, "--k", 3)
    accuracy = number_after(r"validation 2-way 5-shot accuracy:", out)
    assert 0.0 <= accuracy <= 1.0
    assert "python -m speckle_embed.train model=tiny" in out
    run = out_dir / "run"
    for name in ("best.pt", "last.pt", "metrics.csv", "learning_curve.png"):
        assert (run / name).is_file(), name
    assert len(list((out_dir / "data").glob("*.h5"))) == 4


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """register_new_sample.py on 24 shots: (output folder, stdout)."""
    tmp = tmp_path_factory.mktemp("register")
    out = run_example("register_new_sample.py", tmp, "--out", tmp / "out", "--n-frames", 24,
                      "--atoms", 4000)
    return tmp / "out", out


def test_register_new_sample(registered):
    out_dir, out = registered
    accuracy = number_after(r"accuracy", out)
    f1 = number_after(r"F1 \(single positive\)", out)
    assert 0.0 <= f1 <= 1.0
    assert accuracy > 0.5, out                      # the shipped embedding beats chance
    assert "same predictions: True" in out
    assert (out_dir / "classifier" / "classifier.json").is_file()


def test_classify_file_with_a_saved_classifier(registered, tmp_path):
    """The story of the README: a classifier saved by one script classifies a file in another."""
    reg_dir, _ = registered
    shard = next((reg_dir / "data").glob("*.h5"))
    out = run_example("classify_file.py", tmp_path, "--input", shard, "--classifier",
                      reg_dir / "classifier", "--out", tmp_path / "out", "--chunk-size", 10)
    preds = tmp_path / "out" / "predictions" / "predictions.h5"
    assert preds.is_file() and preds.with_suffix(".csv").is_file()
    with h5py.File(preds, "r") as f:
        labels = f["predictions/label"].asstr()[()]
        assert np.array_equal(f["predictions/frame_index"][()], np.arange(24))
    assert set(labels) <= {"single", "multi"}
    assert "speckle-embed classify classifier=" in out
    assert not (tmp_path / "out" / "run").exists()   # nothing simulated


def test_classify_file_simulates_a_run(tmp_path):
    out = run_example("classify_file.py", tmp_path, "--out", tmp_path / "out", "--n-frames", 40,
                      "--k-shot", 2)
    counts = dict(re.findall(r"^\s+(no_hit|single|multi|non_sample)\s+(\d+)$", out, re.M))
    assert sum(int(v) for v in counts.values()) == 40, out
    assert (tmp_path / "out" / "predictions" / "predictions.csv").is_file()
    assert 0.0 <= number_after(r"agreement with the true hit classes:", out) <= 1.0


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    """online_training.py on 75 PR772-like shots: (output folder, stdout)."""
    tmp = tmp_path_factory.mktemp("online")
    out = run_example("online_training.py", tmp, "--out", tmp / "out", "--n-frames", 75,
                      "--n-train", 8, "--n-val", 7, "--epochs", 1, "--steps-per-epoch", 2,
                      "--n-query", 4, "--n-tasks", 2)
    return tmp / "out", out


def test_online_training(online):
    out_dir, out = online
    before = number_after(r"SpeckleNN \(few-shot\)", out)
    after = number_after(r"SpeckleNN \(fine-tuned\)", out)
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    assert (out_dir / "online" / "finetune_100" / "best.pt").is_file()
    assert "fine-tuned embedder:" in out


def test_compare_resnet_head(online, tmp_path):
    """On the labelled file online_training.py simulated (--data; the capsid grid costs 20 s)."""
    data = online[0] / "data" / "pr772.h5"
    out_dir = tmp_path / "compare"
    out = run_example("compare_resnet_head.py", tmp_path, "--data", data, "--out", out_dir,
                      "--n-train", 8, "--n-val", 7, "--iterations", 2, "--batch-size", 8)
    for method in (r"ResNet head \(8/class, trained\)", r"SpeckleNN few-shot \(5/class\)",
                   r"SpeckleNN few-shot \(8/class\)"):
        assert 0.0 <= number_after(method, out) <= 1.0
    assert (out_dir / "resnet_head").is_dir()
    assert not (out_dir / "data").exists()          # nothing simulated


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["pretrain_offline.py", "register_new_sample.py", "classify_file.py",
                                  "online_training.py", "compare_resnet_head.py"])
def test_default_settings(name, tmp_path):
    """Each script with its own defaults (what examples/README.md times): 1-3 min each."""
    out = run_example(name, tmp_path, "--out", tmp_path / "out", timeout=900)
    assert out.strip()
