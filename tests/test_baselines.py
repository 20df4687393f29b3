"""Classical baselines: analytic oracles for the features, a separable toy problem for the classifiers."""
import numpy as np
import pytest

from speckle_embed.baselines import (
    PhotonCountClassifier,
    RadialProfileClassifier,
    photon_count_features,
    radial_profile_features,
)


def _radial_frame(fn, h=64, w=64, center=None):
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if center is None else center
    r = np.hypot(np.arange(h)[:, None] - cy, np.arange(w)[None, :] - cx)
    return fn(r), r


def test_radial_profile_of_symmetric_frame_equals_generating_function():
    # f(r) constant within each ring -> the ring mean is f at the ring, the contrast 0
    n_bins, r_max = 16, 30.0
    step = lambda r: 3.0 + np.floor(r / (r_max / n_bins)) ** 2  # noqa: E731
    frame, _ = _radial_frame(step)
    mean, con = radial_profile_features(frame, n_bins=n_bins, r_max=r_max)
    np.testing.assert_allclose(mean[0], 3.0 + np.arange(n_bins) ** 2)
    np.testing.assert_allclose(con[0], 0.0, atol=1e-6)


def test_radial_profile_smooth_function_and_off_centre_beam():
    centre = (20.0, 37.0)
    fn = lambda r: 100 * np.exp(-r / 7.0)  # noqa: E731
    frame, r = _radial_frame(fn, center=centre)
    mean, _ = radial_profile_features(frame, n_bins=10, center=centre, r_max=20.0)
    edges = np.linspace(0, 20, 11)
    oracle = [fn(r[(r >= a) & (r < b)]).mean() for a, b in zip(edges[:-1], edges[1:])]  # brute force
    np.testing.assert_allclose(mean[0], oracle, rtol=1e-12)


def test_ring_contrast_matches_brute_force_and_masked_pixels_are_ignored():
    rng = np.random.default_rng(0)
    frame = rng.poisson(3.0, (48, 48)).astype(float)
    mask = np.zeros((48, 48), np.uint16)
    mask[20:28, :] = 1  # a horizontal gap
    spoiled = frame.copy()
    spoiled[mask != 0] = 1e6  # garbage under the mask must not matter
    mean, con = radial_profile_features(spoiled, mask, n_bins=6, r_max=20.0)
    _, r = _radial_frame(lambda r: r, 48, 48)
    edges = np.linspace(0, 20, 7)
    for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        v = frame[(r >= a) & (r < b) & (mask == 0)]
        if v.size == 0:  # the gap covers the innermost ring
            assert np.isnan(mean[0, j]) and np.isnan(con[0, j])
            continue
        assert mean[0, j] == pytest.approx(v.mean())
        assert con[0, j] == pytest.approx(v.std() / v.mean())


def test_empty_ring_is_nan_and_classifier_still_fits():
    frames = np.ones((4, 32, 32))
    frames[2:] *= 5
    mask = np.zeros((32, 32), np.uint16)
    r = _radial_frame(lambda r: r, 32, 32)[1]
    mask[r < 4] = 1  # beam stop covers the inner rings
    mean, con = radial_profile_features(frames, mask, n_bins=8)
    assert np.isnan(mean[:, 0]).all() and np.isnan(con[:, 0]).all()
    clf = RadialProfileClassifier(n_bins=8).fit(frames, [0, 0, 1, 1], mask=mask)
    assert clf.predict(frames, mask=mask).tolist() == [0, 0, 1, 1]


def test_photon_count_features_oracle():
    x = np.zeros((2, 10, 10))
    x[0, :2, :] = 2.0  # 20 lit pixels, 40 photons
    x[1] = 1.0
    mask = np.zeros((10, 10), np.uint16)
    mask[9] = 1
    f = photon_count_features(x, mask)
    np.testing.assert_allclose(f[0], [np.log1p(40), 20 / 90])
    np.testing.assert_allclose(f[1], [np.log1p(90), 1.0])
    fw = photon_count_features(x, window=4)  # rows 3..6: nothing lit in frame 0
    np.testing.assert_allclose(fw, [[0.0, 0.0], [np.log1p(16), 1.0]])


def _toy(rng, n):
    """Single-like frames (a ringing sphere profile) vs smooth frames of the same photon count."""
    _, r = _radial_frame(lambda r: r, 48, 48)
    single = 20 * (1 + np.cos(r / 1.5)) * np.exp(-r / 10)
    smooth = np.full_like(r, single.mean()) * np.exp(-(r - r.mean()) / 10)
    smooth *= single.sum() / smooth.sum()
    a = rng.poisson(single, (n, 48, 48))
    b = rng.poisson(smooth, (n, 48, 48))
    return np.concatenate([a, b]).astype(float), np.array(["single"] * n + ["other"] * n)


def test_radial_profile_classifier_separates_toy_problem():
    rng = np.random.default_rng(1)
    X, y = _toy(rng, 5)
    Xq, yq = _toy(rng, 20)
    clf = RadialProfileClassifier().fit(X, y)
    assert clf.score(Xq, yq) == 1.0
    p = clf.predict_proba(Xq)
    assert p.shape == (40, 2) and np.allclose(p.sum(1), 1)
    assert clf.classes_.tolist() == ["other", "single"]


def test_photon_count_classifier_separates_by_fluence_and_fails_cleanly():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.poisson(0.2, (5, 20, 20)), rng.poisson(3.0, (5, 20, 20))])
    y = [0] * 5 + [1] * 5
    clf = PhotonCountClassifier().fit(X, y)
    assert clf.score(np.concatenate([rng.poisson(0.2, (10, 20, 20)), rng.poisson(3.0, (10, 20, 20))]),
                     [0] * 10 + [1] * 10) == 1.0
    with pytest.raises(ValueError, match="2 classes"):
        PhotonCountClassifier().fit(X[:5], y[:5])
    with pytest.raises(ValueError, match="mask must have shape"):
        PhotonCountClassifier().fit(X, y, mask=np.zeros((3, 3)))
