"""The scikit-learn estimator contract, checked alike for every classifier of frames.

Each case builds an unfitted estimator small enough to fit in about a second; a new estimator
joins by adding one entry to ``CASES``.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import sklearn.exceptions
import torch
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.utils.validation import check_is_fitted

from speckle_embed.classifier import FewShotClassifier
from speckle_embed.classifier import NotFittedError as ClassifierNotFittedError
from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.estimator import FrameClassifier, NotFittedError
from speckle_embed.heads import EnsembleHead, SupervisedHead
from speckle_embed.preprocess import Preprocessing

TINY = {"name": "preact_resnet", "input_size": [32, 16], "channels": [4, 8], "blocks": [1, 1]}
FAST = dict(recipe=None, lr=3e-3, batch_size=16, n_iterations=6, progress=False, device="cpu")


def _supervised():
    return SupervisedHead(model=TINY, **FAST)


def _ensemble():
    return EnsembleHead(head=dict(FAST, model=TINY), n_folds=2, progress=False)


def _few_shot():
    torch.manual_seed(0)
    # a window the 32 x 32 test frames cover (frames below half the window are refused)
    prep = Preprocessing(input_size=32, crop=32)
    return FewShotClassifier(SpeckleEmbedder.random_init(prep, device="cpu"), rule="prototype")


CASES = {"SupervisedHead": _supervised, "EnsembleHead": _ensemble, "FewShotClassifier": _few_shot}
# All three derive from speckle_embed.estimator.FrameClassifier (scikit-learn's BaseEstimator +
# ClassifierMixin): params from the signature, clone, check_is_fitted, one NotFittedError, one score.


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    """Rings (label 1, single) and stripes (label 0, no_hit), 32 x 32 frames in photons."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] - 15.5
    rings = [50.0 * (np.abs(np.hypot(yy, xx) - (4 + i % 4)) < 1.5) for i in range(8)]
    stripes = [50.0 * (np.cos(yy / (1 + i % 4 / 4)) > 0.5) for i in range(8)]
    X = np.stack(rings + stripes) + rng.poisson(0.5, (16, 32, 32))
    y = np.r_[np.ones(8, np.int64), np.zeros(8, np.int64)]
    return X.astype(np.float32), y


def _init_names(cls) -> set[str]:
    sig = inspect.signature(cls.__init__)
    return {n for n, p in sig.parameters.items() if n != "self" and p.kind != p.VAR_KEYWORD}


@pytest.mark.parametrize("name", CASES)
def test_params_from_signature_and_round_trip(name):
    est = CASES[name]()
    assert isinstance(est, FrameClassifier)
    for plumbing in ("get_params", "set_params", "score", "_check_fitted", "__sklearn_is_fitted__"):
        assert getattr(type(est), plumbing) is getattr(FrameClassifier, plumbing), plumbing  # one owner
    params = est.get_params(deep=False)
    assert set(params) == _init_names(type(est))
    assert est.set_params(**params) is est
    assert est.get_params(deep=False).keys() == params.keys()
    new_seed_or_k = {"seed": 7} if "seed" in params else {"k": 7}
    key, value = next(iter(new_seed_or_k.items()))
    assert est.set_params(**new_seed_or_k).get_params(deep=False)[key] == value
    with pytest.raises(ValueError, match="(?i)invalid parameter 'bogus'"):
        est.set_params(bogus=1)


@pytest.mark.parametrize("name", CASES)
def test_clone_gives_an_unfitted_twin(name, data):
    est = CASES[name]().fit(*data)
    twin = clone(est)
    assert type(twin) is type(est) and twin is not est
    assert twin.get_params(deep=False).keys() == est.get_params(deep=False).keys()
    with pytest.raises(NotFittedError):
        twin.predict(data[0])


@pytest.mark.parametrize("name", CASES)
def test_not_fitted_error(name, data):
    est = CASES[name]()
    with pytest.raises(NotFittedError) as info:
        est.predict(data[0])
    assert isinstance(info.value, sklearn.exceptions.NotFittedError)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError)
    assert type(est).__name__ in str(info.value)
    assert ClassifierNotFittedError is NotFittedError


@pytest.mark.parametrize("name", CASES)
def test_check_is_fitted(name, data):
    est = CASES[name]()
    with pytest.raises(sklearn.exceptions.NotFittedError):
        check_is_fitted(est)
    check_is_fitted(est.fit(*data))


@pytest.mark.parametrize("name", CASES)
def test_score_is_the_accuracy_of_predict(name, data):
    X, y = data
    est = CASES[name]().fit(X, y)
    pred = est.predict(X)
    truth = est.encode_labels(y) if hasattr(est, "encode_labels") else y
    assert est.score(X, y) == pytest.approx(float(np.mean(pred == truth)))
    assert 0.0 <= est.score(X, y) <= 1.0
    with pytest.raises(ValueError, match="labels but X has"):
        est.score(X, y[:-1])


@pytest.mark.parametrize("name", CASES)
def test_cross_val_score_on_frame_stacks(name, data):
    X, y = data
    scores = cross_val_score(CASES[name](), X, y, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
