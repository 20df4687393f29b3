"""Training's library modules never import the simulator; the app layer hands them a generator."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import speckle_embed.train
from speckle_embed.train import app
from speckle_embed.train.data import DEFAULT_GENERATE, ensure_dataset

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [p for p in (ROOT / "speckle_embed" / "train").glob("*.py") if p.name not in ("app.py", "__main__.py")]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_library_modules_do_not_import_simulate(path):
    assert not {m for m in _imported_modules(path) if m == "simulate" or m.startswith("simulate.")}


def test_public_train_is_the_app_one():
    assert speckle_embed.train.train is app.train


def test_ensure_dataset_calls_the_generator_it_is_given(tmp_path):
    calls = []
    ensure_dataset([tmp_path / "d"], {"n_frames": 5}, enabled=True, generator=lambda t, s: calls.append((t, s)))
    assert calls == [(tmp_path / "d", {**DEFAULT_GENERATE, "n_frames": 5})]
    ensure_dataset([tmp_path / "d"], None, enabled=False, generator=lambda t, s: calls.append(t))
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="needs a dataset generator"):
        ensure_dataset([tmp_path / "d"], None, enabled=True)
    with pytest.raises(ValueError, match="unknown key"):
        ensure_dataset([tmp_path / "d"], {"bogus": 1}, enabled=True, generator=lambda t, s: None)
