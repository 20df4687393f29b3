"""One owner for small helpers: code_version, absolute_path, resolve_device."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import simulate.app
import simulate.generate
import simulate.sources
import speckle_embed.evaluation.app
import speckle_embed.heads.supervised
import speckle_embed.train.data
import speckle_embed.train.loop
from speckle_embed.device import resolve_device
from speckle_embed.paths import absolute_path
from speckle_embed.provenance import code_version


def test_code_version_is_one_function_with_one_format():
    assert simulate.generate.code_version is code_version
    assert speckle_embed.evaluation.app.code_version is code_version
    assert re.fullmatch(r"speckle_embed \S+( git [0-9a-f]{12}(-dirty)?)?", code_version())


def test_absolute_path_is_shared_and_normalises(tmp_path):
    for module in (simulate.app, simulate.sources, speckle_embed.train.data):
        assert module.absolute_path is absolute_path
        assert not hasattr(module, "_absolute")
    assert not hasattr(speckle_embed.train.loop, "_absolute")  # the loop resolves no path itself now
    assert absolute_path("a/../b", tmp_path) == tmp_path / "b"
    assert absolute_path(tmp_path / "x", "/elsewhere") == tmp_path / "x"
    assert absolute_path("~/x", tmp_path) == Path.home() / "x"


def test_resolve_device_is_shared():
    for module in (speckle_embed.train.loop, speckle_embed.heads.supervised):
        assert module.resolve_device is resolve_device
        assert not hasattr(module, "_resolve_device")


def test_heads_refuse_cuda_without_cuda(monkeypatch):
    """An explicit CUDA device fails at set-up with a clear message (was: at the first tensor)."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    head = speckle_embed.heads.supervised.SupervisedHead(device="cuda", progress=False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        head.fit(torch.zeros(4, 8, 8).numpy(), [0, 1, 0, 1])
