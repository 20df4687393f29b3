"""The package layout of issue 13: moved modules keep their old import path (the same module object),
and the one standardisation (preprocess.normalise, in place) equals the plain formula."""
from __future__ import annotations

import importlib

import pytest
import torch

from speckle_embed.preprocess import normalise

MOVED = {
    "speckle_embed.embedder": "speckle_embed.inference.embedder",
    "speckle_embed.quantize": "speckle_embed.inference.int8",
    "speckle_embed.transfer": "speckle_embed.inference.transfer",
    "speckle_embed.export": "speckle_embed.inference.export",
    "speckle_embed.pretrained": "speckle_embed.inference.pretrained",
    "speckle_embed.index": "speckle_embed.fewshot.index",
    "speckle_embed.fewshot_rules": "speckle_embed.fewshot.rules",
    "speckle_embed.classifier": "speckle_embed.fewshot.classifier",
    "speckle_embed.evaluation.episodes": "speckle_embed.fewshot.episodes",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_path_is_the_moved_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_public_names_resolve_to_the_new_modules():
    import speckle_embed as se

    assert se.SpeckleEmbedder.__module__ == "speckle_embed.inference.embedder"
    assert se.FewShotClassifier.__module__ == "speckle_embed.fewshot.classifier"
    assert se.SupportIndex.__module__ == "speckle_embed.fewshot.index"


def _plain(x, valid, log, eps):
    """The straightforward formula (what preprocess.normalise computed before it went in place)."""
    x = torch.where(valid, x.clamp_min(0.0), torch.zeros_like(x))
    if log:
        x = torch.log1p(x)
    v = valid.to(x.dtype)
    count = v.sum((-2, -1), keepdim=True).clamp_min(1.0)
    mean = (x * v).sum((-2, -1), keepdim=True) / count
    var = (((x - mean) * v) ** 2).sum((-2, -1), keepdim=True) / count
    return torch.where(valid, (x - mean) / (var.sqrt() + eps), torch.zeros_like(x))


@pytest.mark.parametrize("valid_kind", ["none", "plane", "per_frame"])
@pytest.mark.parametrize("log", [True, False])
def test_normalise_matches_the_plain_formula(valid_kind, log):
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((5, 17, 13), 3.0), generator=g) - 0.3  # negatives are clipped
    x_before = x.clone()
    full = torch.ones(5, 17, 13, dtype=torch.bool)
    valid = {"none": None, "plane": torch.rand(17, 13, generator=g) > 0.2,
             "per_frame": torch.rand(5, 17, 13, generator=g) > 0.2}[valid_kind]
    ref_valid = full if valid is None else valid.expand(5, 17, 13)
    got = normalise(x, valid, log=log, eps=1e-3)
    torch.testing.assert_close(got, _plain(x, ref_valid, log, 1e-3), atol=2e-5, rtol=1e-5)
    assert torch.equal(x, x_before)  # the input is not modified
