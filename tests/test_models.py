"""SpeckleNN embedding network and the model registry."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from speckle_embed.models import (
    MODEL_REGISTRY,
    SpeckleNNEmbedding,
    build_model,
    model_config,
    register_model,
)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_default_architecture_matches_specklenn():
    model = SpeckleNNEmbedding()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (5, 5), (0, 0)),
        (32, 64, (5, 5), (0, 0)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) == 3
    # 96 -conv-> 92 -pool-> 46 -conv-> 42 -pool-> 21
    assert [(l.in_features, l.out_features) for l in linears] == [(64 * 21 * 21, 512), (512, 128)]


@pytest.mark.parametrize("size", [96, 128, (96, 128)])
@pytest.mark.parametrize("padding", [0, 2])
def test_output_shape_and_unit_norm(size, padding):
    torch.manual_seed(0)
    model = SpeckleNNEmbedding(input_size=size, padding=padding)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(4, 1, h, w) * 10
    for mode in (model.train, model.eval):
        mode()
        emb = model(x)
        assert emb.shape == (4, 128)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    # (N, H, W) input is accepted for single-channel models
    assert model(x[:, 0]).shape == (4, 128)


def test_feature_size_is_computed_from_input_size():
    assert SpeckleNNEmbedding().feature_size == 64 * 21 * 21
    assert SpeckleNNEmbedding(padding=2).feature_size == 64 * 24 * 24
    assert SpeckleNNEmbedding(input_size=128).feature_size == 64 * 29 * 29
    # depth 3, width doubling: 96 -> 46 -> 21 -> 8
    assert SpeckleNNEmbedding(depth=3).feature_size == 128 * 8 * 8
    with pytest.raises(ValueError, match="too small"):
        SpeckleNNEmbedding(input_size=12)  # 12 -> 8 -> 4 -> 0


def test_configurable_width_depth_and_sizes():
    model = SpeckleNNEmbedding(
        input_size=(64, 80), channels=[8, 16, 24], hidden_size=64, embedding_size=32
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 24]
    assert model.depth == 3
    assert model(torch.randn(2, 1, 64, 80)).shape == (2, 32)
    assert SpeckleNNEmbedding(depth=1).channels == [32]
    with pytest.raises(ValueError):
        SpeckleNNEmbedding(channels=[8, 16], depth=3)
    with pytest.raises(ValueError):
        SpeckleNNEmbedding(embedding_size=0)


@pytest.mark.parametrize("kwargs", [
    {},
    {"input_size": 128, "padding": 2},
    {"channels": [16, 32, 64], "hidden_size": 256, "embedding_size": 64},
    {"depth": 3, "input_size": (96, 112)},
])
def test_config_round_trip(kwargs):
    model = SpeckleNNEmbedding(**kwargs)
    config = model.config
    json.dumps(config)  # plain types only
    rebuilt = SpeckleNNEmbedding(**copy.deepcopy(config))
    assert rebuilt.config == config
    assert shapes(rebuilt) == shapes(model)
    rebuilt.load_state_dict(model.state_dict())  # strict by default
    model.eval(); rebuilt.eval()
    x = torch.randn(3, 1, *model.input_size)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_wrong_input_shape_raises():
    model = SpeckleNNEmbedding()
    with pytest.raises(ValueError, match="expected input"):
        model(torch.zeros(2, 1, 128, 128))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.zeros(2, 3, 96, 96))


def test_registry_build_model():
    assert MODEL_REGISTRY["specklenn"] is SpeckleNNEmbedding
    model = build_model({"name": "specklenn", "input_size": 128, "embedding_size": 64})
    assert isinstance(model, SpeckleNNEmbedding) and model.embedding_size == 64
    assert isinstance(build_model({}), SpeckleNNEmbedding)  # default name
    cfg = model_config(model)
    assert cfg["name"] == "specklenn"
    assert shapes(build_model(cfg)) == shapes(model)
    assert "name" in cfg  # build_model did not consume the caller's dict
    with pytest.raises(ValueError, match="unknown model"):
        build_model({"name": "nope"})


def test_register_model_decorator():
    @register_model("tiny-test-head")
    class Tiny(nn.Module):
        def __init__(self, embedding_size: int = 4):
            super().__init__()
            self.fc = nn.Linear(2, embedding_size)

        @property
        def config(self):
            return {"embedding_size": self.fc.out_features}

    try:
        model = build_model({"name": "tiny-test-head", "embedding_size": 3})
        assert isinstance(model, Tiny)
        assert model_config(model) == {"name": "tiny-test-head", "embedding_size": 3}
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny-test-head", SpeckleNNEmbedding)
    finally:
        MODEL_REGISTRY.pop("tiny-test-head", None)


def test_forward_backward_batch_64():
    torch.manual_seed(0)
    model = SpeckleNNEmbedding()
    x = torch.rand(64, 1, 96, 96)
    emb = model(x)
    loss = emb[:32].mul(emb[32:]).sum()  # any scalar of the embeddings
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
