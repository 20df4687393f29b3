"""Supervised comparison heads: ResNet / Shi 2019 models, SupervisedHead, EnsembleHead."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from speckle_embed.classifier import NotFittedError
from speckle_embed.heads import (
    RECIPES,
    ClassFractionSampler,
    EnsembleHead,
    HeadFileError,
    SupervisedHead,
    head_from_config,
    load_head,
    poly_lr_lambda,
    stratified_folds,
)
from speckle_embed.models import build_model, model_config
from speckle_embed.models.resnet import PreActBlock, PreActResNetClassifier
from speckle_embed.models.shi2019 import SHI2019_THRESHOLD, Shi2019CNN

CONF = Path(__file__).resolve().parents[1] / "conf" / "evaluate"
# A small ResNet of the same family for speed (one block per stage, narrow).
TINY = {"name": "preact_resnet", "input_size": [32, 16], "channels": [8, 16], "blocks": [1, 1]}
FAST = dict(recipe=None, lr=3e-3, batch_size=32, iterations_per_epoch=20, progress=False, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions are fastest (and unaffected by a busy machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rings_and_stripes(n_per_class: int, seed: int, size: int = 32):
    """Frames (photons) of a bright ring (label 1 = single) or bright stripes (labels 0/2/3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    frames, labels = [], []
    for i in range(n_per_class):
        r = rng.uniform(3.5, 7.0)
        frames.append(40.0 * (np.abs(np.hypot(yy, xx) - r) < 1.2))
        labels.append(1)
        period = rng.uniform(2.0, 4.0)
        angle = rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.2, 0.2)
        u = yy * np.cos(angle) + xx * np.sin(angle)
        frames.append(40.0 * (np.cos(2 * np.pi * u / period + rng.uniform(0, 6)) > 0.6))
        labels.append(int(rng.choice([0, 2, 3])))
    frames = rng.poisson(np.stack(frames) + 0.5).astype(np.float32)
    return frames, np.array(labels)


# ----------------------------------------------------------------------------- models
def test_resnet_default_architecture():
    model = PreActResNetClassifier()
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 8
    assert [b.conv1.out_channels for b in blocks] == [16, 32, 32, 64, 64, 128, 128, 256]
    assert [b.conv1.stride[0] for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert [b.shortcut is None for b in blocks] == [True, False, True, False, True, False, True, False]
    assert model.stem.out_channels == 16 and model.fc.in_features == 256
    assert sum(isinstance(m, nn.LeakyReLU) for m in model.modules()) == 2 * 8 + 1
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 3_000_000
    for mode in (model.train, model.eval):
        mode()
        assert model(torch.randn(3, 1, 192, 96)).shape == (3, 2)
    with pytest.raises(ValueError, match="192, 96"):
        model(torch.zeros(1, 1, 96, 192))


@pytest.mark.parametrize("cls, kwargs", [
    (PreActResNetClassifier, {}),
    (PreActResNetClassifier, {"input_size": (32, 16), "n_classes": 4, "channels": [8, 16], "blocks": [1, 2]}),
    (Shi2019CNN, {}),
    (Shi2019CNN, {"input_size": 32, "channels": [4], "hidden_sizes": [8, 8], "n_outputs": 3}),
])
def test_model_config_round_trip(cls, kwargs):
    torch.manual_seed(0)
    model = cls(**kwargs)
    cfg = json.loads(json.dumps(model_config(model)))  # plain JSON types
    rebuilt = build_model(cfg)
    assert type(rebuilt) is cls and rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, *model.input_size)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_resnet_small_input_and_shi_shapes():
    assert PreActResNetClassifier(input_size=(32, 16))(torch.randn(2, 1, 32, 16)).shape == (2, 2)
    shi = Shi2019CNN()
    assert shi(torch.randn(5, 1, 64, 64)).shape == (5, 1)
    assert shi.feature_size == 64 * 8 * 8
    assert SHI2019_THRESHOLD == 0.9
    with pytest.raises(ValueError, match="too small"):
        Shi2019CNN(input_size=4)


# ----------------------------------------------------------------------------- sampler & recipe
@pytest.mark.parametrize("fraction", [0.02, 0.05])
def test_sampler_positive_fraction_per_batch(fraction):
    labels = np.r_[np.zeros(2000, int), np.ones(60, int)]
    sampler = ClassFractionSampler(labels, 64, fraction, seed=1)
    counts = np.array([labels[b].sum() for b in sampler.batches(4000)])
    lo = math.floor(fraction * 64)
    assert set(np.unique(counts)) <= {lo, lo + 1}
    assert abs(counts.mean() / 64 - fraction) < 0.001
    # positives are cycled through evenly (no positive starved or over-used)
    used = np.bincount(np.concatenate(list(ClassFractionSampler(labels, 64, fraction, seed=1).batches(4000))),
                       minlength=labels.size)[2000:]
    assert used.max() - used.min() <= 1


def test_sampler_uniform_and_validation():
    labels = np.r_[np.zeros(50, int), np.ones(14, int)]
    batches = list(ClassFractionSampler(labels, 32, None, seed=0).batches(2))
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(64))  # one shuffled pass
    with pytest.raises(ValueError, match="no positive"):
        ClassFractionSampler(np.zeros(10, int), 8, 0.05)


def test_recipes_and_weighted_cross_entropy():
    assert RECIPES["maxf1"] == {"positive_fraction": 0.02, "class_weights": None}
    assert RECIPES["moresh"] == {"positive_fraction": 0.05, "class_weights": (0.1, 0.9)}
    X, y = rings_and_stripes(16, seed=0)
    common = dict(FAST, n_iterations=1, model=TINY)
    common.pop("recipe")
    head = SupervisedHead(recipe="moreSH", **common).fit(X, y)
    assert head.positive_fraction_ == 0.05 and head.class_weights_ == [0.1, 0.9]
    torch.testing.assert_close(head.criterion_.weight, torch.tensor([0.1, 0.9]))
    logits, target = torch.randn(16, 2), torch.randint(0, 2, (16,))
    w = torch.tensor([0.1, 0.9])[target]
    nll = -torch.log_softmax(logits, 1)[torch.arange(16), target]
    torch.testing.assert_close(head.criterion_(logits, target), (w * nll).sum() / w.sum())
    head = SupervisedHead(recipe="MaxF1", **common).fit(X, y)
    assert head.positive_fraction_ == 0.02 and head.class_weights_ is None
    assert head.criterion_.weight is None


def test_class_weights_steer_training():
    """Weighting one class 100x makes the head call every frame that class: weights reach the loss."""
    X, y = rings_and_stripes(16, seed=1)
    params = dict(FAST, model=TINY, n_iterations=25, lr=1e-2, augment_mirror=False)
    p_pos = SupervisedHead(class_weights=[0.01, 1.0], **params).fit(X, y).predict_proba(X)[:, 1]
    p_neg = SupervisedHead(class_weights=[1.0, 0.01], **params).fit(X, y).predict_proba(X)[:, 1]
    assert p_pos.min() > 0.5 > p_neg.max()
    with pytest.raises(ValueError, match="positive numbers"):
        SupervisedHead(class_weights=[0.0, 1.0], **params).fit(X, y)


def test_poly_learning_rate_schedule():
    X, y = rings_and_stripes(8, seed=2)
    head = SupervisedHead(model=TINY, **dict(FAST, iterations_per_epoch=5, n_epochs=4, lr=1e-3)).fit(X, y)
    assert [h["iteration"] for h in head.history_] == [5, 10, 15, 20]
    for h in head.history_:  # lr used at the last iteration of each epoch
        assert h["lr"] == pytest.approx(1e-3 * (1 - (h["iteration"] - 1) / 20) ** 0.9)
    assert poly_lr_lambda(10)(10) == 0.0


# ----------------------------------------------------------------------------- training
def test_supervised_head_learns_rings_vs_stripes():
    X, y = rings_and_stripes(48, seed=3)
    Xt, yt = rings_and_stripes(40, seed=4)
    Xv, yv = rings_and_stripes(12, seed=5)
    # the full 8-block / 4-downsampling layout at half width, on a 32 x 16 patch
    model = {"name": "preact_resnet", "input_size": [32, 16], "channels": [8, 16, 32, 64, 128]}
    params = dict(FAST, model=model, n_iterations=60)
    head = SupervisedHead(**params).fit(X, y, val=(Xv, yv))
    assert head.classes_.tolist() == ["non-single", "single"]
    assert head.transform(Xt[:3]).shape == (3, 1, 32, 16)
    pred = head.predict(Xt)
    assert set(pred.tolist()) <= {"single", "non-single"}
    assert head.score(Xt, yt) > 0.9
    assert np.array_equal(head.encode_labels([1, 0, 2, 3]), ["single", "non-single", "non-single", "non-single"])
    assert len(head.history_) == 3 and "val_f1" in head.history_[0] and head.best_epoch_ in (1, 2, 3)
    # string labels work the same, and training is deterministic for a seed
    names = np.array(["no_hit", "single", "multi", "non_sample"])
    again = SupervisedHead(**params).fit(X, names[y], val=(Xv, names[yv]))
    np.testing.assert_array_equal(again.predict_proba(Xt), head.predict_proba(Xt))
    assert again.score(Xt, yt) == head.score(Xt, names[yt])  # binary mode takes codes or names


def test_shi2019_head_threshold():
    X, y = rings_and_stripes(32, seed=6)
    Xt, yt = rings_and_stripes(24, seed=7)
    model = {"name": "shi2019", "input_size": [32, 32], "channels": [8, 16], "hidden_sizes": [16], "dropout": 0.0}
    head = SupervisedHead(model=model, threshold=SHI2019_THRESHOLD, **dict(FAST, n_iterations=60)).fit(X, y)
    proba = head.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(head.predict(Xt) == "single", proba[:, 1] >= 0.9)
    assert head.score(Xt, yt) > 0.9


def test_multiclass_mode():
    X, y = rings_and_stripes(12, seed=8)
    names = np.array(["no_hit", "single", "multi", "non_sample"])[y]
    head = SupervisedHead(model=TINY, positive_class=None, **dict(FAST, n_iterations=3)).fit(X, names)
    assert head.classes_.tolist() == sorted(set(names.tolist()))
    assert head.model_.n_classes == len(head.classes_)
    assert head.predict_proba(X).shape == (len(X), len(head.classes_))
    assert set(head.predict(X).tolist()) <= set(head.classes_.tolist())
    with pytest.raises(ValueError, match="recipe=None"):
        SupervisedHead(model=TINY, positive_class=None, **dict(FAST, n_iterations=3, recipe="maxf1")).fit(X, names)


# ----------------------------------------------------------------------------- ensemble
class FlipSensitive(nn.Module):
    """Logits ``[0, gain * (mean(left half) - mean(right half)) + bias]``: mirroring flips the sign."""

    def __init__(self, bias: float, gain: float = 3.0, input_size=(32, 16)):
        super().__init__()
        self.input_size = tuple(input_size)
        self.bias, self.gain = bias, gain

    def forward(self, x):
        w = x.shape[-1] // 2
        z = self.gain * (x[..., :w].mean((1, 2, 3)) - x[..., w:].mean((1, 2, 3))) + self.bias
        return torch.stack([torch.zeros_like(z), z], 1)


def test_ensemble_averages_members_with_mirror_tta():
    frames = np.random.default_rng(9).poisson(5.0, (6, 32, 32)).astype(np.float32)
    frames[:, :, :12] += 30  # left-bright frames: the unmirrored score is large
    members = [SupervisedHead.from_model(FlipSensitive(b), device="cpu") for b in (-0.5, 0.0, 1.0)]
    x = members[0].transform(frames)
    d = (x[..., :8].mean((1, 2, 3)) - x[..., 8:].mean((1, 2, 3))).double().numpy()
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    want = np.mean([0.5 * (sig(3 * d + b) + sig(-3 * d + b)) for b in (-0.5, 0.0, 1.0)], axis=0)
    ens = EnsembleHead.from_members(members)
    proba = ens.predict_proba(frames)
    np.testing.assert_allclose(proba[:, 1], want, rtol=1e-5)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    no_tta = EnsembleHead.from_members(members, mirror_tta=False).predict_proba(frames)[:, 1]
    np.testing.assert_allclose(no_tta, np.mean([sig(3 * d + b) for b in (-0.5, 0.0, 1.0)], axis=0), rtol=1e-5)
    assert np.all(np.abs(no_tta - proba[:, 1]) > 0.05)  # the mirror really changed the answer
    np.testing.assert_array_equal(ens.predict(frames) == "single", proba[:, 1] >= 0.5)


def test_stratified_folds():
    labels = np.r_[np.zeros(23, int), np.ones(7, int), np.full(5, 2)]
    folds = stratified_folds(labels, 5, seed=0)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(labels.size))
    for c, n in ((0, 23), (1, 7), (2, 5)):
        per_fold = [int((labels[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_ensemble_fit_and_save_load(tmp_path):
    X, y = rings_and_stripes(24, seed=10)
    Xt, _ = rings_and_stripes(6, seed=11)
    ens = EnsembleHead(n_folds=3, head=dict(FAST, model=TINY, n_iterations=20)).fit(X, y, val=(Xt, _))
    assert len(ens.members_) == 3 and ens.classes_.tolist() == ["non-single", "single"]
    assert [m.seed for m in ens.members_] == [0, 1, 2]
    assert all(m.mirror_tta and m.threshold == 0.5 for m in ens.members_)
    assert np.array_equal(np.sort(np.concatenate(ens.folds_)), np.arange(len(y)))
    assert ens.oof_proba_.shape == (len(y), 2) and set(ens.val_metrics_) >= {"accuracy", "f1"}
    inputs = ens.transform(Xt)
    want = np.mean([m._proba_inputs(inputs, mirror=True) for m in ens.members_], axis=0)
    np.testing.assert_allclose(ens.predict_proba(Xt), want)
    path = ens.save(tmp_path / "ens")
    loaded = load_head(path, device="cpu")
    assert isinstance(loaded, EnsembleHead) and len(loaded.members_) == 3
    np.testing.assert_array_equal(loaded.predict_proba(Xt), ens.predict_proba(Xt))
    np.testing.assert_array_equal(loaded.predict(Xt), ens.predict(Xt))


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    X, y = rings_and_stripes(12, seed=12)
    head = SupervisedHead(model=TINY, mirror_tta=True, threshold=0.7, **dict(FAST, n_iterations=10)).fit(X, y)
    target = tmp_path / "heads" / "resnet"
    assert head.save(target) == target.absolute()
    assert sorted(p.name for p in target.iterdir()) == ["head.json", "model.pt"]
    loaded = SupervisedHead.load(target, device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))
    assert loaded.classes_.tolist() == head.classes_.tolist() and loaded.threshold == 0.7
    assert loaded.preprocessing_ == head.preprocessing_ and loaded.history_ == head.history_
    assert isinstance(load_head(target), SupervisedHead)
    # overwrite in place (atomic; nothing temporary left behind)
    head.save(target)
    assert not list(tmp_path.glob("**/*.tmp"))
    # multi-class integer labels keep their type
    mc = SupervisedHead(model=TINY, positive_class=None, **dict(FAST, n_iterations=2)).fit(X, y)
    mc.save(tmp_path / "mc")
    back = SupervisedHead.load(tmp_path / "mc", device="cpu")
    assert back.classes_.dtype.kind == "i" and back.classes_.tolist() == sorted(set(y.tolist()))
    np.testing.assert_array_equal(back.predict(X), mc.predict(X))


def test_save_load_errors(tmp_path):
    X, y = rings_and_stripes(6, seed=13)
    head = SupervisedHead(model=TINY, **dict(FAST, n_iterations=2)).fit(X, y)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        head.save(other)
    with pytest.raises(FileNotFoundError):
        SupervisedHead.load(tmp_path / "missing")
    path = head.save(tmp_path / "h")
    (path / "head.json").write_text("{not json")
    with pytest.raises(HeadFileError, match="head.json"):
        SupervisedHead.load(path)
    with pytest.raises(ValueError, match="not registered"):
        SupervisedHead.from_model(FlipSensitive(0.0), device="cpu").save(tmp_path / "flip")


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    X, y = rings_and_stripes(6, seed=14)
    params = dict(FAST, model=TINY, n_iterations=2)
    with pytest.raises(ValueError, match="at least two classes.*non-single"):
        SupervisedHead(**params).fit(X, np.zeros(len(X), int))  # only no_hit -> only non-single
    with pytest.raises(ValueError, match="at least two classes"):
        SupervisedHead(**dict(params, positive_class=None, recipe=None)).fit(X, np.full(len(X), 2))
    bad = X.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"frames\[3\]"):
        SupervisedHead(**params).fit(bad, y)
    part = X.copy()
    part[5, 0, 0] = np.inf
    SupervisedHead(**params).fit(part, y)  # masked by default
    with pytest.raises(ValueError, match=r"frames\[5\].*non-finite"):
        SupervisedHead(**dict(params, nan_policy="raise")).fit(part, y)
    with pytest.raises(ValueError, match="entries but there are"):
        SupervisedHead(**params).fit(X, y[:-1])
    with pytest.raises(NotFittedError):
        SupervisedHead(**params).predict(X)
    head = SupervisedHead(**params).fit(X, y)
    with pytest.raises(ValueError, match=r"frames\[1\]"):
        head.predict(np.stack([X[0], np.full_like(X[0], np.nan)]))
    with pytest.raises(ValueError, match="unknown recipe"):
        SupervisedHead(**dict(params, recipe="most")).fit(X, y)
    with pytest.raises(ValueError, match="outputs shape"):
        SupervisedHead(**dict(params, model=dict(TINY, n_classes=3))).fit(X, y)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name, kind, threshold", [
    ("resnet_maxf1", EnsembleHead, 0.5), ("resnet_moresh", EnsembleHead, 0.5), ("shi2019", SupervisedHead, 0.9)])
def test_head_configs(name, kind, threshold):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(overrides=[f"+heads={name}"]).heads
    head = head_from_config(cfg)
    assert type(head) is kind and head.threshold == threshold
    member = head._member(0) if isinstance(head, EnsembleHead) else head
    assert (member.lr, member.batch_size, member.iterations_per_epoch, member.lr_power) == (1e-4, 64, 50, 0.9)
    assert member.positive_class == "single"
    model = member._build_model(2)
    prep, size = member._patch_geometry(model, member.preprocessing)
    if isinstance(head, EnsembleHead):
        assert head.n_folds == 5 and head.mirror_tta
        assert size == (192, 96) and prep.input_size == 192
        assert isinstance(model, PreActResNetClassifier)
        assert member._resolve_sampling(2) == (
            (0.02, None) if name == "resnet_maxf1" else (0.05, [0.1, 0.9]))
    else:
        assert isinstance(model, Shi2019CNN) and size == (64, 64)
    with pytest.raises(ValueError, match="unknown keys"):
        head_from_config({**cfg, "learning_rate": 1})


def test_fit_prelude_is_one_helper_for_both_heads(monkeypatch):
    """SupervisedHead.fit and EnsembleHead.fit take device, patch geometry and patches from one helper
    (_fit_geometry), called once per fit; it leaves the global random state as it was."""
    X, y = rings_and_stripes(6, seed=20)
    params = dict(FAST, model=TINY, n_iterations=2, iterations_per_epoch=2)
    head = SupervisedHead(**params)
    state = torch.random.get_rng_state()
    prep, size, inputs = head._fit_geometry(X, None, 2)
    assert torch.equal(torch.random.get_rng_state(), state) and head.device_ == torch.device("cpu")
    assert size == (32, 16) and inputs.shape == (len(X), 1, 32, 16)
    calls = []
    original = SupervisedHead._fit_geometry

    def spy(self, frames, mask, n_classes):
        calls.append(n_classes)
        return original(self, frames, mask, n_classes)

    monkeypatch.setattr(SupervisedHead, "_fit_geometry", spy)
    fitted = SupervisedHead(**params).fit(X, y)
    assert calls == [2] and fitted.preprocessing_ == prep and fitted.input_size_ == size
    torch.testing.assert_close(fitted.transform(X), inputs)
    ens = EnsembleHead(n_folds=2, head=params).fit(X, y)
    assert calls == [2, 2] and len(ens.members_) == 2
    torch.testing.assert_close(ens.transform(X), inputs)
