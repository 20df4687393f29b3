"""Frames that cannot be diffraction patterns: too small for the model's field of view (refused),
no photons or no contrast in it (flagged: EmptyFrameWarning, ClassificationResult.empty)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from speckle_embed.classifier import ClassificationResult, FewShotClassifier
from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.frame_checks import EmptyFrameWarning, check_frame_size, field_of_view_px, flat_inputs
from speckle_embed.preprocess import Preprocessing, preprocess

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}


@pytest.fixture(scope="module")
def emb():
    return SpeckleEmbedder.random_init(model=SMALL, seed=0, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def clf(emb):
    rng = np.random.default_rng(0)
    sup = rng.poisson(5.0, size=(4, 128, 128)).astype(np.float32)
    return FewShotClassifier(emb).fit(sup, ["a", "a", "b", "b"])


def speckles(n, seed=0, rate=5.0):
    return np.random.default_rng(seed).poisson(rate, size=(n, 128, 128)).astype(np.float32)


# ----------------------------------------------------------------------------- too small
@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 4, 4), (2, 47, 128), (2, 128, 40)])
def test_frames_smaller_than_half_the_field_of_view_are_refused(emb, clf, shape):
    frames = np.ones(shape, np.float32)
    h, w = shape[1:]
    with pytest.raises(ValueError, match=rf"frames of {h}x{w} pixels are smaller than half the model's field "
                                         r"of view of 96x96 pixels .*at least 48x48"):
        emb.embed(frames)
    with pytest.raises(ValueError, match=rf"{h}x{w}.*96x96"):
        clf.predict(frames)
    with pytest.raises(ValueError, match=rf"{h}x{w}.*96x96"):
        clf.classify(frames)


def test_field_of_view_follows_the_scale(emb):
    prep = emb.preprocessing
    assert field_of_view_px(prep) == 96 and field_of_view_px(prep, 2.0) == 192
    assert field_of_view_px(prep, 128 / 96) == 128
    check_frame_size(128, 128, prep, 128 / 96)  # exactly the window: fine
    check_frame_size(64, 64, prep, 128 / 96)    # half the window: fine, the rest counts as masked
    with pytest.raises(ValueError, match="90x90 pixels are smaller .* 192x192 .* scale 2"):
        emb.embed(np.ones((1, 90, 90)), scale=2.0)
    # a frame smaller than the window (large speckles zoomed by scale=2): embedded, window overhang masked
    z = emb.embed(np.random.default_rng(1).poisson(5.0, (1, 128, 128)), scale=2.0)
    assert np.isfinite(z).all() and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-4)


# ----------------------------------------------------------------------------- empty frames
def test_flat_inputs_match_a_brute_force_constant_window_check():
    """Oracle: an input is flat exactly when every pixel of the frame's window has one value."""
    prep = Preprocessing(input_size=16, crop=16)
    rng = np.random.default_rng(3)
    frames = [np.zeros((20, 20)), np.full((20, 20), 7.0), np.full((20, 20), 1e4), -np.ones((20, 20)),
              rng.poisson(5.0, (20, 20)), rng.poisson(0.002, (20, 20))]
    one = np.zeros((20, 20))
    one[10, 9] = 1  # a single photon inside the window
    outside = np.zeros((20, 20))
    outside[0, 0] = 50  # photons only outside the central 16x16 window
    frames += [one, outside]
    x = np.stack(frames).astype(np.float32)
    got = flat_inputs(preprocess(x, prep)).numpy()
    window = np.clip(x[:, 2:18, 2:18], 0, None)  # negative read noise counts as no photon
    expected = np.array([np.all(w == w.flat[0]) for w in window])
    np.testing.assert_array_equal(got, expected)
    assert expected.tolist() == [True, True, True, True, False, not window[5].any(), False, True]


def test_embed_warns_about_empty_frames_with_their_indices(emb):
    frames = speckles(6)
    frames[2] = 0
    frames[4] = 3.0  # constant: no contrast
    with pytest.warns(EmptyFrameWarning, match=r"2 of 6 frames have no photons .*indices \[2, 4\]") as rec:
        z = emb.embed(frames)
    assert z.shape == (6, 32)
    assert [w.message.indices.tolist() for w in rec if w.category is EmptyFrameWarning] == [[2, 4]]
    assert issubclass(EmptyFrameWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z2, empty = emb.embed(frames, return_empty=True)  # flags instead of a warning
        assert np.flatnonzero(empty).tolist() == [2, 4]
        np.testing.assert_array_equal(z2, z)
        emb.embed(speckles(3, rate=0.05))  # sparse but real photons: no warning
    # batches of 4: indices are global, also from a tensor input
    with pytest.warns(EmptyFrameWarning, match=r"indices \[5\]"):
        f = speckles(7)
        f[5] = 0
        emb.embed(torch.from_numpy(f))


def test_classify_flags_empty_frames(clf):
    frames = speckles(4, seed=1)
    frames[1] = 0
    with pytest.warns(EmptyFrameWarning, match=r"1 of 4 frames .*indices \[1\]"):
        res = clf.classify(frames)
    assert res.empty.dtype == bool and res.empty.tolist() == [False, True, False, False]
    assert res[0] is res.labels and len(res) == 5
    with pytest.warns(EmptyFrameWarning):
        clf.predict(frames)
    # the result stays constructible from the four original fields
    old = ClassificationResult(res.labels, res.codes, res.distances, res.proba)
    assert old.empty is None and old.proba is res.proba
