"""The ``realism`` section and the wider zoom of the training augmentation (speckle_embed.train.augment)."""
from __future__ import annotations

import math

import pytest
import torch

from speckle_embed.train.augment import AugmentConfig, SpeckleAugment


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def only(**sections) -> AugmentConfig:
    return AugmentConfig.disabled().replace(**sections)


OFF = {"background": None, "detector": None, "layout": None}


def test_realism_off_reproduces_the_previous_augmentation_bit_for_bit():
    # Golden values from the augmentation before the realism section existed (commit a40461c),
    # same inputs and generator: equal there with torch.equal (checked when the section was added).
    x = torch.poisson(torch.full((16, 40, 40), 2.0), generator=gen(0))
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[:, 19:21] = True
    y, bad = SpeckleAugment(None, out_size=32)(x, mask, generator=gen(3))
    assert float(y.double().sum()) == pytest.approx(24451.311068978976, rel=1e-6)
    assert int(bad.sum()) == 3159
    # realism at p = 0 draws no random numbers whatever its sections hold
    cfg = AugmentConfig().replace(realism={"p": 0.0, "background": {"gas_photons": [5.0, 5.0]}})
    y2, bad2 = SpeckleAugment(cfg, out_size=32)(x, mask, generator=gen(3))
    assert torch.equal(y, y2) and torch.equal(bad, bad2)


def test_background_through_augment_matches_the_formula_at_the_beam_centre():
    a, r0, alpha = 0.8, 6.0, 3.0
    bg = {"p": 1.0, "gas_photons": [a, a], "amplitude_spread": 0.0, "gas_r0_px": [r0, r0],
          "gas_alpha": [alpha, alpha], "streak_p": 0.0, "halo_p": 0.0, "stray_photons": [0.0, 0.0]}
    shift = (3.0, -5.0)
    cfg = only(realism={**OFF, "p": 1.0, "background": bg}, shift={"p": 1.0, "fraction": 0.0})
    aug = SpeckleAugment(cfg, out_size=33)
    n = 400
    # no shift: beam centre = window centre
    y, bad = aug(torch.zeros(n, 41, 41), generator=gen(1))
    assert not bad.any()
    yy, xx = torch.meshgrid(torch.arange(33.0) - 16, torch.arange(33.0) - 16, indexing="ij")
    expected = a * (1 + (yy**2 + xx**2) / r0**2) ** (-alpha / 2)
    torch.testing.assert_close(y.mean(0), expected, atol=5 * math.sqrt(a / n), rtol=0)
    assert float(y.var(0).mean()) == pytest.approx(float(expected.mean()), rel=0.05)  # Poisson: var = mean
    assert torch.all(y == y.round())
    # with a beam-centre shift the background follows the beam inside the window
    centre = SpeckleAugment.beam_center_in_window((1, 33, 33), torch.zeros(1), torch.ones(1),
                                                  torch.tensor([shift]))
    assert centre[0].tolist() == [16 - 3.0, 16 + 5.0]
    dot = torch.zeros(1, 41, 41)
    dot[0, 20, 20] = 1.0
    moved, _ = aug.geometry(dot, torch.zeros_like(dot, dtype=torch.bool), out_size=(33, 33),
                            shift=torch.tensor([shift]))
    assert moved[0, 13, 21] == 1.0  # the beam (frame centre of the input) lands where predicted


def test_beam_centre_in_window_under_rotation_and_zoom_follows_the_geometry():
    aug = SpeckleAugment(AugmentConfig.disabled(), out_size=41)
    dot = torch.zeros(1, 61, 61)
    dot[0, 30, 30] = 100.0
    for angle, zoom, shift in ((0.7, 1.3, (4.0, -2.0)), (-2.0, 0.8, (-3.0, 5.0))):
        args = dict(angle=torch.tensor([angle]), zoom=torch.tensor([zoom]), shift=torch.tensor([shift]))
        out, _ = aug.geometry(dot, torch.zeros_like(dot, dtype=torch.bool), out_size=(41, 41), **args)
        w = out[0] / out[0].sum()
        r = float((w * torch.arange(41.0)[:, None]).sum())
        c = float((w * torch.arange(41.0)[None, :]).sum())
        pred = SpeckleAugment.beam_center_in_window((1, 41, 41), **args)[0]
        assert abs(r - float(pred[0])) < 0.6 and abs(c - float(pred[1])) < 0.6


def test_detector_round_trip_through_augment_keeps_photons_at_zero_noise_and_thresholds_noise():
    exact = {"p": 1.0, "gain_spread": [0.0, 0.0], "dark_noise_photons": [0.0, 0.0],
             "common_mode_photons": [0.0, 0.0], "saturation_p": 0.0, "dead_fraction": [0.0, 0.0],
             "hot_fraction": [0.0, 0.0], "charge_sharing": [0.0, 0.0], "threshold": [0.5, 0.5],
             "correct_common_mode_p": 0.0}  # (the correction of dense rows: test_realism_detector)
    x = torch.poisson(torch.full((8, 24, 24), 3.0), generator=gen(2))
    y, bad = SpeckleAugment(only(realism={**OFF, "p": 1.0, "detector": exact}))(x, generator=gen(3))
    assert torch.equal(y, x) and not bad.any()
    sigma = 0.2
    noisy = {**exact, "dark_noise_photons": [sigma, sigma]}
    y, _ = SpeckleAugment(only(realism={**OFF, "p": 1.0, "detector": noisy}))(torch.zeros(64, 64, 64),
                                                                              generator=gen(4))
    q = 0.5 * math.erfc(0.5 / sigma / math.sqrt(2))  # P(N(0, sigma) > 0.5 photon)
    rate = float((y > 0).float().mean())
    assert rate == pytest.approx(q, rel=0.1)


def test_realism_p_selects_frames_and_layouts_mask_pixels():
    cfg = only(realism={"p": 0.5, "background": None, "detector": None,
                        "layout": {"p": 1.0, "beamstop_p": 1.0, "gap_p": 1.0}})
    x = torch.ones(200, 32, 32)
    y, bad = SpeckleAugment(cfg)(x, generator=gen(5))
    changed = bad.any((1, 2))
    assert 70 < int(changed.sum()) < 130  # p = 0.5 per frame
    assert torch.all(bad[changed][:, 15:17, 15:17])  # every masked frame has its beam stop at the centre
    assert torch.all(y[bad] == 0) and torch.all(y[~bad] == 1)


def test_zoom_min_max_is_log_uniform_masks_the_outside_and_bins_on_zoom_out():
    cfg = only(zoom={"p": 1.0, "min": 0.5, "max": 2.5})
    n = 33
    yy, xx = torch.meshgrid(torch.arange(n) - 16.0, torch.arange(n) - 16.0, indexing="ij")
    disk = ((yy**2 + xx**2) <= 6.0**2).float().expand(300, n, n)
    out, bad = SpeckleAugment(cfg)(disk, generator=gen(6))
    zoom = (out.sum((1, 2)) / disk[0].sum()).sqrt()
    assert zoom.min() > 0.5 * 0.9 and zoom.max() < 2.5 * 1.1
    assert float((zoom < 1).float().mean()) == pytest.approx(math.log(2) / math.log(5), abs=0.1)
    # zoom-out: the window reaches beyond the detector, and those pixels are bad
    shrunk = zoom < 0.7
    assert torch.all(bad[shrunk][:, 0, :]) and not bad[~shrunk & (zoom > 1.05)].any()
    # zoom 0.5 box-filters 2x2: Poisson(4) frames keep mean 4, variance ~4/4 (no aliasing)
    x = torch.poisson(torch.full((64, 64, 64), 4.0), generator=gen(7))
    aug = SpeckleAugment(AugmentConfig.disabled())
    z, zbad = aug.geometry(x, torch.zeros_like(x, dtype=torch.bool), out_size=(24, 24), zoom=torch.full((64,), 0.5))
    assert not zbad.any()
    assert float(z.mean()) == pytest.approx(4.0, rel=0.02)
    assert float(z.var()) == pytest.approx(1.0, rel=0.1)


def test_realism_config_validation_and_plain_data():
    with pytest.raises(ValueError, match="realism.beam must be null"):
        AugmentConfig.from_dict({"realism": {"beam": {}}})
    with pytest.raises(ValueError, match="unknown key"):
        AugmentConfig.from_dict({"realism": {"background": {"amplitude": 1}}})
    with pytest.raises(ValueError, match="zoom.min and augment.zoom.max"):
        AugmentConfig.from_dict({"zoom": {"min": 0.5}})
    with pytest.raises(ValueError, match="gas_photons"):
        AugmentConfig.from_dict({"realism": {"background": {"gas_photons": [0.2, 0.1]}}})
    cfg = AugmentConfig.from_dict({"realism": {"p": 0.7, "layout": None}, "zoom": {"min": 0.5, "max": 2.5}})
    d = cfg.to_dict()
    assert d["realism"]["layout"] is None and d["realism"]["p"] == 0.7
    assert AugmentConfig.from_dict(d) == cfg
    assert AugmentConfig().realism.p == 0.0
