"""Detector response (speckle_embed.realism.detector_response): ADU round trip statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speckle_embed.realism import (DetectorResponseConfig, adu_to_photons, common_mode_correct, detector_round_trip,
                                   photons_to_adu, sample_detector, share_charge)

IDEAL = dict(gain_spread=[0.0, 0.0], dark_noise_photons=[0.0, 0.0], common_mode_photons=[0.0, 0.0],
             saturation_p=0.0, dead_fraction=[0.0, 0.0], hot_fraction=[0.0, 0.0], charge_sharing=[0.0, 0.0],
             threshold=[0.5, 0.5], correct_common_mode_p=0.0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def cfg(**kw):
    return DetectorResponseConfig(**{**IDEAL, **kw})


def nobad(x):
    return torch.zeros_like(x, dtype=torch.bool)


def test_zero_noise_round_trip_recovers_photon_counts_exactly():
    x = torch.poisson(torch.full((10, 32, 32), 4.0), generator=gen(1))
    for t in (0.3, 0.5, 0.9):
        y, bad = detector_round_trip(x, nobad(x), cfg(threshold=[t, t]), generator=gen(2))
        assert torch.equal(y, x) and not bad.any()


def test_threshold_error_rates_match_the_gaussian_tail():
    sigma, t = 0.25, 0.5
    n = (64, 64, 64)
    phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    zero, _ = detector_round_trip(torch.zeros(n), torch.zeros(n, dtype=torch.bool),
                                  cfg(dark_noise_photons=[sigma, sigma], threshold=[t, t]), generator=gen(3))
    assert float((zero > 0).float().mean()) == pytest.approx(1 - phi(t / sigma), rel=0.05)
    one, _ = detector_round_trip(torch.ones(n), torch.zeros(n, dtype=torch.bool),
                                 cfg(dark_noise_photons=[sigma, sigma], threshold=[t, t]), generator=gen(4))
    assert float((one == 0).float().mean()) == pytest.approx(phi((t - 1) / sigma), rel=0.05)
    assert float((one == 2).float().mean()) == pytest.approx(1 - phi((1 + t - 1) / sigma), rel=0.05)


def test_gain_spread_gives_the_relative_std_of_the_adu():
    x = torch.full((20, 64, 64), 200.0)
    p = sample_detector(20, cfg(gain_spread=[0.03, 0.03], adu_per_photon=[50.0, 50.0]), generator=gen(5))
    adu = photons_to_adu(x, p, generator=gen(6))
    rel = adu / (50.0 * 200.0)
    assert float(rel.mean()) == pytest.approx(1.0, abs=1e-3)
    assert float(rel.std()) == pytest.approx(0.03, rel=0.03)


def test_common_mode_per_row_is_recovered_by_the_correction():
    a = 40.0
    p = sample_detector(8, cfg(adu_per_photon=[a, a], common_mode_photons=[0.2, 0.2], common_mode="row",
                               dark_noise_photons=[0.05, 0.05]), generator=gen(7))
    x = torch.poisson(torch.full((8, 48, 48), 0.05), generator=gen(8))  # sparse frames, as in SPI
    adu = photons_to_adu(x, p, generator=gen(9))
    no_noise = sample_detector(8, cfg(adu_per_photon=[a, a]), generator=gen(0))
    clean = photons_to_adu(x, no_noise, generator=gen(9))
    offsets = (adu - clean).median(-1).values  # true per-row offsets (+ noise)
    assert float(offsets.std()) / a == pytest.approx(0.2, rel=0.15)
    corrected = common_mode_correct(adu, a)
    residual = ((corrected - clean).median(-1).values / a).abs()
    assert float(residual.max()) < 0.05  # rows back to 0 within a twentieth of a photon
    corrected_errors = float((adu_to_photons(corrected, a) != x).float().mean())
    # without the correction the rows with |offset| > 0.5 photon (2.5 sigma: ~1 %) are misread
    raw_errors = float((adu_to_photons(adu, a) != x).float().mean())
    assert raw_errors > 0.004 and corrected_errors < raw_errors / 10


def test_panel_common_mode_is_constant_per_panel():
    p = sample_detector(3, cfg(common_mode_photons=[0.3, 0.3], common_mode="panel", panels=4), generator=gen(1))
    adu = photons_to_adu(torch.zeros(3, 32, 32), p, panels=4, generator=gen(2))
    blocks = adu.reshape(3, 4, 8, 4, 8)
    assert float(blocks.std((2, 4)).max()) < 1e-4 and float(blocks.mean((2, 4)).std()) > 0


def test_saturation_clips_and_dead_hot_pixels():
    a = 10.0
    x = torch.full((4, 32, 32), 500.0)
    p = sample_detector(4, cfg(adu_per_photon=[a, a], saturation_p=1.0, saturation_photons=[100.0, 100.0]),
                        generator=gen(3))
    assert float(photons_to_adu(x, p, generator=gen(4)).max()) == pytest.approx(100 * a)
    y, _ = detector_round_trip(x, nobad(x), cfg(adu_per_photon=[a, a], saturation_p=1.0,
                                                 saturation_photons=[100.0, 100.0]), generator=gen(5))
    assert float(y.max()) == 100.0
    z = torch.zeros(50, 64, 64)
    y, bad = detector_round_trip(z, nobad(z), cfg(hot_fraction=[0.01, 0.01], hot_photons=[20.0, 20.0],
                                                  flag_bad_p=0.0), generator=gen(6))
    hot = y > 0
    assert float(hot.float().mean()) == pytest.approx(0.01, rel=0.05) and not bad.any()
    assert float(y[hot].mean()) == pytest.approx(20.0, rel=0.03)
    one = torch.ones(50, 64, 64)
    y, bad = detector_round_trip(one, nobad(one), cfg(dead_fraction=[0.02, 0.02], flag_bad_p=0.5), generator=gen(7))
    dead = y == 0
    assert float(dead.float().mean()) == pytest.approx(0.02, rel=0.05)
    assert float(bad.float().mean()) == pytest.approx(0.01, rel=0.08)  # half of them known
    assert torch.all(dead[bad])


def test_charge_sharing_conserves_charge_and_spreads_to_the_4_neighbours():
    x = torch.zeros(1, 9, 9)
    x[0, 4, 4] = 10.0
    y = share_charge(x, 0.2)
    assert float(y.sum()) == pytest.approx(10.0)
    assert float(y[0, 4, 4]) == pytest.approx(8.0) and float(y[0, 3, 4]) == pytest.approx(0.5)
    assert float(y[0, 3, 3]) == 0.0


def test_adu_to_photons_accepts_numpy_and_per_frame_gain():
    adu = np.array([[[0.0, 24.0, 26.0, 150.0]], [[0.0, 48.0, 52.0, 300.0]]], dtype=np.float32)
    out = adu_to_photons(adu, torch.tensor([50.0, 100.0]), threshold=0.5)
    assert out.tolist() == [[[0.0, 0.0, 1.0, 3.0]], [[0.0, 0.0, 1.0, 3.0]]]
    assert adu_to_photons(np.full((3, 3), 90.0), 60.0).tolist() == [[2.0] * 3] * 3


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="detector.common_mode"):
        DetectorResponseConfig(common_mode="column")
    with pytest.raises(ValueError, match="detector.threshold"):
        DetectorResponseConfig(threshold=[0.0, 0.5])
    with pytest.raises(ValueError, match="below 1 photon"):
        DetectorResponseConfig(threshold=[0.5, 1.0])


def test_common_mode_correction_keeps_the_dense_rows_of_a_strong_pattern():
    # a bright pattern: rows through the centre are mostly lit, a plain row median would remove photons
    yy, xx = torch.meshgrid(torch.arange(64.0) - 31.5, torch.arange(64.0) - 31.5, indexing="ij")
    rate = 6.0 * torch.exp(-(yy**2 + xx**2) / (2 * 14.0**2))
    x = torch.poisson(rate.expand(20, 64, 64).contiguous(), generator=gen(11))
    lit = (x > 0).float().mean(-1)
    assert float(lit.max()) > 0.6  # some rows are more than half lit
    a = 50.0
    assert torch.equal(adu_to_photons(common_mode_correct(x * a, a), a), x)
    off = 0.3 * a * torch.randn(20, 64, 1, generator=gen(12)).clamp(-2, 2)  # per-row offsets, <= 0.6 photon
    fixed = adu_to_photons(common_mode_correct(x * a + off, a), a)
    assert float((fixed != x).float().mean()) < 0.002


def test_panel_common_mode_is_removed_by_the_per_panel_correction():
    a = 40.0
    p = sample_detector(6, cfg(adu_per_photon=[a, a], common_mode_photons=[0.4, 0.4], common_mode="panel",
                               dark_noise_photons=[0.05, 0.05]), generator=gen(13))
    x = torch.poisson(torch.full((6, 48, 50), 0.05), generator=gen(14))  # 50 columns: uneven panels
    adu = photons_to_adu(x, p, panels=4, generator=gen(15))
    per_row = float((adu_to_photons(common_mode_correct(adu, a), a) != x).float().mean())
    per_panel = float((adu_to_photons(common_mode_correct(adu, a, segments=4), a) != x).float().mean())
    assert per_panel < 0.002 < per_row  # a row spans 4 panels with different offsets
    y, _ = detector_round_trip(x, nobad(x), cfg(adu_per_photon=[a, a], common_mode_photons=[0.4, 0.4],
                                                common_mode="panel", dark_noise_photons=[0.05, 0.05],
                                                correct_common_mode_p=1.0), generator=gen(16))
    assert float((y != x).float().mean()) < 0.002
