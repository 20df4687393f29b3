"""Selection metrics and PSD contrast (speckle_embed.evaluation.selection)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from speckle_embed.evaluation import selection as sel_mod
from speckle_embed.evaluation.selection import (plot_psd, psd_contrast, radial_profile, selection_iou,
                                                selection_metrics, selection_report)

#: Sphere scattering variable per detector pixel, x = q R; puts the first three minima of
#: |3 (sin x - x cos x) / x^3|^2 at 18.0, 30.9 and 43.6 px on a 128 x 128 grid.
X_PER_PX = 0.25
SPHERE_MINIMA_X = np.array([4.493, 7.725, 10.904])
SPHERE_MAXIMA_X = np.array([5.763, 9.095, 12.323])
N_PX = 128


def _radius(n=N_PX):
    yy, xx = np.mgrid[0:n, 0:n]
    return np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)


def sphere_pattern(n=N_PX, x_per_px=X_PER_PX):
    x = np.maximum(_radius(n) * x_per_px, 1e-6)
    return (3 * (np.sin(x) - x * np.cos(x)) / x ** 3) ** 2


def smooth_background(n=N_PX, x_per_px=X_PER_PX):
    """Non-oscillating pattern with the sphere's Porod envelope (stands in for non-single hits)."""
    x = _radius(n) * x_per_px
    return 4.5 / (1 + x ** 2) ** 2


# --------------------------------------------------------------------------- selection_metrics

def test_metrics_hand_computed():
    m = selection_metrics([1, 1, 0, 0, 1, 0], np.array([1, 0, 1, 0, 1, 0], dtype=bool))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert (m["n_predicted"], m["n_true"], m["n_frames"]) == (3, 3, 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)

    m = selection_metrics(np.array([True, True, True, True, False]), [1, 0, 0, 0, 1])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 3, 1, 0)
    assert m["precision"] == pytest.approx(1 / 4)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * 0.25 * 0.5 / 0.75)  # harmonic mean
    assert m["accuracy"] == pytest.approx(1 / 5)
    json.dumps(m)


def test_metrics_agree_with_sklearn_style_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, true = rng.random(50) < 0.4, rng.random(50) < 0.5
        m = selection_metrics(pred, true)
        tp = sum(p and t for p, t in zip(pred, true))
        fp = sum(p and not t for p, t in zip(pred, true))
        fn = sum(t and not p for p, t in zip(pred, true))
        assert (m["tp"], m["fp"], m["fn"]) == (tp, fp, fn)
        assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == 50
        prec, rec = tp / (tp + fp), tp / (tp + fn)
        assert m["f1"] == pytest.approx(2 * prec * rec / (prec + rec))


def test_metrics_zero_division_convention():
    empty = selection_metrics([0, 0, 0, 0], [1, 1, 0, 0])  # nothing selected
    assert empty["precision"] == 0.0 and empty["recall"] == 0.0 and empty["f1"] == 0.0
    assert empty["n_predicted"] == 0 and empty["accuracy"] == 0.5
    no_true = selection_metrics([1, 0, 0, 0], [0, 0, 0, 0])  # no single hits in the run
    assert no_true["recall"] == 0.0 and no_true["precision"] == 0.0 and no_true["f1"] == 0.0
    both = selection_metrics([0, 0], [0, 0])
    assert both["precision"] == both["recall"] == both["f1"] == 0.0 and both["accuracy"] == 1.0
    assert not any(isinstance(v, float) and np.isnan(v) for v in both.values())


@pytest.mark.parametrize("pred, truth, message", [
    ([1, 0, 1], [1, 0], "differ in length"),
    ([[1, 0], [0, 1]], [[1, 0], [0, 1]], "1-D"),
    ([1, 2, 0], [1, 0, 0], "0/1"),
    ([0.5, 1, 0], [1, 0, 0], "0/1"),
    ([np.nan, 1, 0], [1, 0, 0], "0/1"),
    (["a", "b"], [1, 0], "dtype"),
    ([], [], "empty"),
])
def test_metrics_bad_inputs(pred, truth, message):
    with pytest.raises(ValueError, match=message):
        selection_metrics(pred, truth)


# --------------------------------------------------------------------------- selection_iou

def test_iou_identities():
    rng = np.random.default_rng(1)
    a, b = rng.random(40) < 0.5, rng.random(40) < 0.3
    assert selection_iou(a, a) == 1.0
    assert selection_iou(a, b) == selection_iou(b, a)
    assert 0.0 <= selection_iou(a, b) <= 1.0
    assert selection_iou(a, ~a) == 0.0
    assert selection_iou(np.zeros(5, bool), np.zeros(5, bool)) == 1.0  # both empty
    assert selection_iou(np.zeros(5, bool), [0, 1, 0, 0, 0]) == 0.0
    assert selection_iou(a, b) == pytest.approx(np.sum(a & b) / np.sum(a | b))
    # against the truth: Jaccard = tp / (tp + fp + fn) = F1 / (2 - F1)
    m = selection_metrics(a, b)
    assert selection_iou(a, b) == pytest.approx(m["f1"] / (2 - m["f1"]))


def test_iou_index_arrays_match_masks():
    a_idx, b_idx = np.array([0, 3, 5, 5]), np.array([3, 5, 7])  # repeats count once
    a_mask, b_mask = np.zeros(10, bool), np.zeros(10, bool)
    a_mask[a_idx], b_mask[b_idx] = True, True
    assert selection_iou(a_idx, b_idx, n_frames=10) == selection_iou(a_mask, b_mask) == 0.5
    assert selection_iou(a_mask, b_idx, n_frames=10) == 0.5  # one mask, one index array
    assert selection_iou([], [], n_frames=10) == 1.0
    assert selection_iou([], [2], n_frames=10) == 0.0


@pytest.mark.parametrize("a, b, kwargs, message", [
    ([1, 0, 1], [1, 0], {}, "differ in length"),
    ([1, 3, 0], [1, 0, 0], {}, "0/1"),
    ([[1, 0]], [[1, 0]], {}, "1-D"),
    ([0, 10], [1], {"n_frames": 10}, "outside 0 .. 9"),
    ([-1], [1], {"n_frames": 10}, "outside"),
    ([0.5], [1], {"n_frames": 10}, "integer frame indices"),
    (np.ones(4, bool), [1], {"n_frames": 10}, r"expected \(10,\)"),
    ([1], [1], {"n_frames": -2}, "n_frames"),
])
def test_iou_bad_inputs(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        selection_iou(a, b, **kwargs)


# --------------------------------------------------------------------------- radial_profile

def test_radial_profile_matches_pixel_loop():
    rng = np.random.default_rng(2)
    img = rng.random((9, 12))
    mask = (rng.random((9, 12)) < 0.2).astype(np.uint8)
    center = (3.7, 5.2)
    r, p = radial_profile(img, mask, center=center, bin_width_px=1.5)
    sums, counts = {}, {}
    for i in range(9):
        for j in range(12):
            k = int(np.rint(np.hypot(i - center[0], j - center[1]) / 1.5))
            if not mask[i, j]:
                sums[k] = sums.get(k, 0.0) + img[i, j]
                counts[k] = counts.get(k, 0) + 1
    assert np.allclose(r, 1.5 * np.arange(r.size))
    for k in range(r.size):
        if k in counts:
            assert p[k] == pytest.approx(sums[k] / counts[k])
        else:
            assert np.isnan(p[k])


def test_radial_profile_default_center_and_frames_mean():
    img = sphere_pattern(16)
    r, p = radial_profile(img)
    assert np.isnan(p[0])  # even size: the centre falls between pixels, first ring at 0.71 px
    assert r[1] == 1.0 and p[1] == pytest.approx(img[7:9, 7:9].mean())
    frames = np.stack([img * 0.5, img * 1.5, img])
    r3, p3 = radial_profile(frames)
    assert np.array_equal(r3, r) and np.allclose(p3, p, equal_nan=True)


def test_radial_profile_ignores_masked_and_nonfinite_pixels():
    img = sphere_pattern()
    r_ref, p_ref = radial_profile(img)
    spoiled = img.copy()
    mask = np.zeros(img.shape, dtype=np.uint16)
    mask[10:30, 60:90] = 0x1          # CXI "invalid" bit
    mask[100, :] = 0x10               # shadowed
    spoiled[mask != 0] = 1e9
    spoiled[5, 5] = np.nan
    r, p = radial_profile(spoiled, mask)
    assert np.array_equal(r, r_ref)
    both = np.isfinite(p) & np.isfinite(p_ref)
    # masking removes pixels but the rest of a ring of this pattern has the same mean
    assert np.max(np.abs(p[both] - p_ref[both]) / np.maximum(p_ref[both], 1e-12)) < 0.05
    assert np.nanmax(p) < 1.1  # no 1e9 leaked in
    # beam stop: leading nans
    stop = (_radius() < 8).astype(np.uint8)
    _, p_stop = radial_profile(img, stop)
    assert np.all(np.isnan(p_stop[:8])) and np.all(np.isfinite(p_stop[8:60]))


@pytest.mark.parametrize("x, kwargs, message", [
    (np.zeros(5), {}, r"\(H, W\) or \(N, H, W\)"),
    (np.zeros((1, 2, 3, 4)), {}, r"\(H, W\) or \(N, H, W\)"),
    (np.zeros((0, 4, 4)), {}, "no frames"),
    (np.zeros((4, 4), bool), {}, "real numbers"),
    (np.zeros((4, 4)), {"mask": np.zeros((4, 5))}, "mask shape"),
    (np.zeros((4, 4)), {"center": (1.0,)}, "center"),
    (np.zeros((4, 4)), {"bin_width_px": 0}, "bin_width_px"),
])
def test_radial_profile_bad_inputs(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        radial_profile(x, **kwargs)


# --------------------------------------------------------------------------- psd_contrast

def test_sphere_pattern_minima_and_full_contrast():
    r, p = radial_profile(sphere_pattern())
    c = psd_contrast(p, r, n_pairs=3)
    assert c["n_found"] == 3 and len(c["contrast"]) == 3
    assert np.allclose(c["r_min"], SPHERE_MINIMA_X / X_PER_PX, atol=1.0)
    assert np.allclose(c["r_max"], SPHERE_MAXIMA_X / X_PER_PX, atol=1.0)
    assert min(c["contrast"]) > 0.95  # fringes go to zero; 1-px bins blur them slightly
    assert c["mean_contrast"] == pytest.approx(np.mean(c["contrast"]))
    for cm, lo, hi in zip(c["contrast"], c["intensity_min"], c["intensity_max"]):
        assert cm == pytest.approx((hi - lo) / (hi + lo))
    json.dumps(c)


def test_beam_stop_does_not_change_the_pairs():
    img = sphere_pattern()
    stop = (_radius() < 8).astype(np.uint8)
    r, p = radial_profile(img, stop)
    c = psd_contrast(p, r)
    ref = psd_contrast(*radial_profile(img)[::-1])
    assert c["r_min"] == ref["r_min"] and c["contrast"] == pytest.approx(ref["contrast"])


def test_background_mixture_lowers_contrast_monotonically():
    sphere, bg = sphere_pattern(), smooth_background()
    pure = psd_contrast(*radial_profile(sphere)[::-1])["mean_contrast"]
    previous = pure
    for w in (0.1, 0.3):
        r, p = radial_profile((1 - w) * sphere + w * bg)
        c = psd_contrast(p, r)
        assert c["n_found"] == 3
        assert np.allclose(c["r_min"], SPHERE_MINIMA_X / X_PER_PX, atol=1.5)
        assert c["mean_contrast"] < previous
        previous = c["mean_contrast"]
    assert previous < 0.7 < pure


def test_monotonic_and_degenerate_profiles():
    for prof in ([5.0, 4.0, 3.0, 2.0, 1.0], np.exp(-np.arange(50.0)), [np.nan, np.nan], [1.0, 2.0]):
        c = psd_contrast(prof)
        assert c["contrast"] == [] and c["n_found"] == 0 and np.isnan(c["mean_contrast"])
    bg = radial_profile(smooth_background())
    assert psd_contrast(bg[1], bg[0])["n_found"] == 0


def test_fewer_pairs_than_asked_and_leading_maximum_ignored():
    # rises from a beam-stop edge to a maximum (ignored), then one min/max pair, then falls
    prof = [np.nan, 2.0, 6.0, 3.0, 1.0, 4.0, 2.0, 1.0]
    c = psd_contrast(prof, r=np.arange(8) * 0.5, n_pairs=3)
    assert c["n_found"] == 1 and c["r_min"] == [2.0] and c["r_max"] == [2.5]
    assert c["contrast"] == pytest.approx([3 / 5])
    assert psd_contrast(prof, n_pairs=1)["n_found"] == 1


def test_interior_nans_interpolated():
    r, p = radial_profile(sphere_pattern())
    gap = p.copy()
    gap[25:27] = np.nan  # a ring gap between the first minimum and maximum
    c = psd_contrast(gap, r)
    assert c["n_found"] == 3 and np.all(np.isfinite(c["contrast"]))
    assert np.allclose(c["r_min"], SPHERE_MINIMA_X / X_PER_PX, atol=1.0)


def test_smoothing_suppresses_noise_wiggles():
    r, p = radial_profile(sphere_pattern())
    rng = np.random.default_rng(3)
    ripple = 1 + 0.1 * (-1.0) ** np.arange(p.size) + 0.02 * rng.standard_normal(p.size)
    noisy = p * ripple  # bin-to-bin wiggles, as shot noise on a few frames gives
    raw = psd_contrast(noisy, r, n_pairs=3)
    assert raw["r_min"][0] < 10 and raw["mean_contrast"] < 0.5  # spurious pairs on the central peak
    c = psd_contrast(noisy, r, n_pairs=3, smooth=1.0)
    assert np.allclose(c["r_min"], SPHERE_MINIMA_X / X_PER_PX, atol=1.5)
    assert np.allclose(c["r_max"], SPHERE_MAXIMA_X / X_PER_PX, atol=1.5)
    assert min(c["contrast"]) > 0.8


def test_smoothing_short_profiles_and_wide_kernels():
    y = np.array([np.nan, 3.0, 1.0, 2.0, 0.5])
    for sigma in (0.3, 1.0, 10.0):
        smoothed = sel_mod._gaussian_smooth(y[1:], sigma)
        assert smoothed.shape == (4,) and np.all(np.isfinite(smoothed))
        psd_contrast(y, smooth=sigma)  # no shape errors however wide the kernel
    flat = sel_mod._gaussian_smooth(np.full(7, 2.0), 2.0)
    assert np.allclose(flat, 2.0)


def test_numpy_fallback_matches_find_peaks():
    from scipy.signal import find_peaks

    rng = np.random.default_rng(4)
    cases = [radial_profile(sphere_pattern())[1][1:], rng.random(200),
             np.round(rng.random(300) * 4), np.array([1.0, 2, 2, 2, 1, 0, 0, 1, 3, 3, 0])]
    for y in cases:
        mins, maxs = sel_mod._sign_change_extrema(y)
        assert np.array_equal(mins, find_peaks(-y)[0]) and np.array_equal(maxs, find_peaks(y)[0])


def test_psd_contrast_without_scipy(monkeypatch):
    r, p = radial_profile(sphere_pattern())
    with_scipy = psd_contrast(p, r)
    monkeypatch.setitem(sys.modules, "scipy.signal", None)  # import now raises ImportError
    assert psd_contrast(p, r) == with_scipy


def test_module_imports_without_scipy_signal():
    # scipy itself is a dependency now (scikit-learn needs it); the peak finder must not need scipy.signal
    code = ("import sys; sys.modules['scipy.signal'] = None\n"
            "from speckle_embed.evaluation.selection import psd_contrast\n"
            "print(psd_contrast([3.0, 1.0, 2.0, 0.5])['n_found'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("kwargs, message", [
    ({"profile": np.zeros((3, 3))}, "1-D"),
    ({"profile": np.zeros(5), "r": np.zeros(4)}, "must match"),
    ({"profile": np.zeros(5), "n_pairs": 0}, "n_pairs"),
    ({"profile": np.zeros(5), "n_pairs": 1.5}, "n_pairs"),
    ({"profile": np.zeros(5), "smooth": -1}, "smooth"),
])
def test_psd_contrast_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        psd_contrast(**kwargs)


# --------------------------------------------------------------------------- report and plot

def _run():
    """20 frames: 10 single hits (sphere, intensity jitter), 10 non-singles (smooth background)."""
    rng = np.random.default_rng(5)
    sphere, bg = sphere_pattern(), smooth_background()
    truth = np.array([True] * 10 + [False] * 10)
    frames = np.stack([sphere * rng.uniform(0.8, 1.2) if t else bg * rng.uniform(0.8, 1.2)
                       for t in truth]).astype(np.float32)
    return truth, frames


def test_selection_report_metrics_iou_and_psd():
    truth, frames = _run()
    selections = {
        "perfect": truth.copy(),
        "contaminated": np.r_[np.ones(10, bool), np.ones(4, bool), np.zeros(6, bool)],
        "empty": np.zeros(20, bool),
    }
    mask = (_radius() < 6).astype(np.uint8)
    rep = selection_report(selections, truth, frames, mask)
    assert rep["names"] == ["perfect", "contaminated", "empty"]
    assert rep["n_frames"] == 20 and rep["n_true"] == 10
    assert rep["metrics"]["perfect"]["f1"] == 1.0
    assert rep["metrics"]["contaminated"]["precision"] == pytest.approx(10 / 14)
    assert rep["metrics"]["contaminated"] == selection_metrics(selections["contaminated"], truth)
    iou = np.array(rep["iou"])
    assert iou.shape == (3, 3) and np.allclose(iou, iou.T) and np.allclose(np.diag(iou), 1.0)
    assert iou[0, 1] == pytest.approx(10 / 14) and iou[0, 2] == 0.0
    # PSD: perfect selection reproduces the true singles; contamination fills in the fringes
    assert rep["psd"]["perfect"]["contrast"] == pytest.approx(rep["psd_truth"]["contrast"])
    assert rep["psd_truth"]["n_found"] == 3 and rep["psd_truth"]["mean_contrast"] > 0.95
    assert rep["psd"]["contaminated"]["n_found"] == 3
    assert rep["psd"]["contaminated"]["mean_contrast"] < rep["psd_truth"]["mean_contrast"] - 0.2
    assert rep["psd"]["empty"]["n_found"] == 0 and np.all(np.isnan(rep["profiles"]["empty"][1]))
    r, p = rep["profile_truth"]
    assert np.all(np.isnan(p[:6]))  # masked beam stop
    plain = {k: v for k, v in rep.items() if k not in ("profiles", "profile_truth")}
    json.dumps(plain)


def test_selection_report_reads_frames_in_chunks(monkeypatch):
    truth, frames = _run()
    monkeypatch.setattr(sel_mod, "_MEAN_CHUNK", 3)
    chunked = selection_report({"all": np.ones(20, bool)}, truth, frames)
    monkeypatch.setattr(sel_mod, "_MEAN_CHUNK", 256)
    whole = selection_report({"all": np.ones(20, bool)}, truth, frames)
    assert np.allclose(chunked["profiles"]["all"][1], whole["profiles"]["all"][1], equal_nan=True)
    r, p = radial_profile(frames.astype(np.float64).mean(axis=0))
    assert np.allclose(whole["profiles"]["all"][1], p, equal_nan=True)


def test_selection_report_without_frames_and_bad_inputs():
    truth = np.array([1, 0, 1, 0], bool)
    rep = selection_report({"a": [1, 0, 0, 0]}, truth)
    assert set(rep) == {"names", "n_frames", "n_true", "metrics", "iou"}
    with pytest.raises(ValueError, match="selections is empty"):
        selection_report({}, truth)
    with pytest.raises(ValueError, match="selection 'b'.*differ in length"):
        selection_report({"a": [1, 0, 0, 0], "b": [1, 0]}, truth)
    with pytest.raises(ValueError, match="selection 'b'.*0/1"):
        selection_report({"b": [1, 0, 7, 0]}, truth)
    with pytest.raises(ValueError, match=r"frames must have shape \(N, H, W\) with N = 4"):
        selection_report({"a": [1, 0, 0, 0]}, truth, frames=np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"frames must have shape"):
        selection_report({"a": [1, 0, 0, 0]}, truth, frames=np.zeros((4, 8)))


def test_plot_psd_writes_png(tmp_path):
    truth, frames = _run()
    rep = selection_report({"cnn": truth, "all": np.ones(20, bool)}, truth, frames)
    out = plot_psd({**rep["profiles"], "true singles": rep["profile_truth"]}, tmp_path / "psd.png",
                   title="PSD of selections")
    assert out == tmp_path / "psd.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["psd.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="profiles is empty"):
        plot_psd({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="must be 1-D of equal length"):
        plot_psd({"a": (np.arange(3.0), np.ones(4))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"pair \(r, profile\)"):
        plot_psd({"a": np.ones(4)}, tmp_path / "x.png")
