"""Detector layouts (speckle_embed.realism.layouts): random masks and instrument presets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speckle_embed.realism import PRESETS, LayoutConfig, get_preset, random_layout

NONE = dict(gap_p=0.0, cross_p=0.0, beamstop_p=0.0, arm_p=0.0, panel_p=0.0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gap_widths_follow_the_configured_range():
    cfg = LayoutConfig(**{**NONE, "gap_p": 1.0, "gap_width_px": [2.0, 6.0], "gap_offset_px": [0.0, 0.0]})
    m = random_layout(torch.Size([300, 64, 64]), cfg, generator=gen(1))
    rows_full = m.all(2).sum(1)  # a horizontal gap fills whole rows
    cols_full = m.all(1).sum(1)
    width = torch.maximum(rows_full, cols_full)
    assert torch.all((rows_full == 0) | (cols_full == 0))  # one orientation per frame
    assert int(width.min()) >= 2 and int(width.max()) <= 6
    assert float(width.float().mean()) == pytest.approx(4.0, abs=0.3)  # pixels whose centre is inside
    assert 0.35 < float((rows_full > 0).float().mean()) < 0.65  # horizontal or vertical at random
    assert torch.all(m[:, 31:33, 31:33].any((1, 2)))  # through the beam centre


def test_beamstop_area_and_arm_and_missing_panels():
    disc = LayoutConfig(**{**NONE, "beamstop_p": 1.0, "disc_p": 1.0, "beamstop_half_px": [8.0, 8.0]})
    m = random_layout(torch.Size([4, 64, 64]), disc, generator=gen(2), center=(30.0, 33.0))
    assert float(m[0].sum()) == pytest.approx(math.pi * 64, rel=0.05)
    assert m[:, 30, 33].all() and not m[:, 30, 42].any()
    arm = LayoutConfig(**{**NONE, "beamstop_p": 1.0, "arm_p": 1.0, "beamstop_half_px": [3.0, 3.0],
                          "arm_width_px": [2.0, 2.0]})
    m = random_layout(torch.Size([20, 64, 64]), arm, generator=gen(3))
    assert torch.all(m.float().mean((1, 2)) * 64 * 64 > 2 * 28)  # the arm reaches the frame edge
    edge = m[:, 0, :].any(1) | m[:, -1, :].any(1) | m[:, :, 0].any(1) | m[:, :, -1].any(1)
    assert edge.all()
    panels = LayoutConfig(**{**NONE, "panel_p": 1.0, "panels": 4, "missing_panels": [2, 2]})
    m = random_layout(torch.Size([30, 64, 64]), panels, generator=gen(4))
    torch.testing.assert_close(m.float().mean((1, 2)), torch.full((30,), 2 / 16))
    off = random_layout(torch.Size([5, 16, 16]), LayoutConfig(p=0.0), generator=gen(5))
    assert not off.any()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_their_documented_shape_and_gaps(name):
    preset = get_preset(name)
    m = preset.mask()
    assert m.shape == (preset.n_pixels, preset.n_pixels) and m.dtype == bool
    frac = float(m.mean())
    assert 0.0 < frac < 0.2, frac
    assert m[preset.n_pixels // 2, preset.n_pixels // 2]  # beam stop / central hole
    geo = preset.geometry_dict()
    assert geo["detector_side_m"] == pytest.approx(preset.n_pixels * preset.binning * preset.pixel_m)


def test_pnccd_presets_are_two_halves_with_a_horizontal_gap():
    for name, gap in (("amo_pnccd_front_bin4", 2), ("amo_pnccd_front_bin8", 1), ("amo_pnccd_back_bin4", 2)):
        m = get_preset(name).mask()
        assert len(np.nonzero(m.all(1))[0]) == gap and not m.all(0).any()
    from simulate.geometry import detector_mask, pnccd_geometry  # the simulator's own PR772 pnCCD
    sim = detector_mask(pnccd_geometry(binning=8)) != 0
    np.testing.assert_array_equal(get_preset("pr772_pnccd").mask(), sim)


def test_agipd_has_16_modules_and_gaps():
    m = get_preset("spb_agipd1m_bin4").mask()
    # module rows of 128 native = 32 binned pixels separated by bad rows: 8 module bands
    good_rows = ~m.all(1)
    bands = int(np.sum(good_rows[1:] & ~good_rows[:-1])) + int(good_rows[0])
    assert bands == 8
    with pytest.raises(ValueError, match="unknown detector preset"):
        get_preset("mystery_detector")


def test_cspad_has_8_by_4_sensors_and_pnccd_sized_speckles():
    preset = get_preset("cspad_bin6")
    m = preset.mask()

    def bands(good):
        return int(np.sum(good[1:] & ~good[:-1])) + int(good[0])

    assert bands(~m.all(1)) == 8 and bands(~m.all(0)) == 4  # 185-px sensor rows, 388-px sensor columns
    wavelength_m = 12398.42 / preset.photon_energy_ev * 1e-10
    speckle_px = wavelength_m * preset.distance_m / (70e-9 * preset.binning * preset.pixel_m)
    assert 2.3 < speckle_px < 3.2  # PR772 (70 nm): as small as the blind pnCCD frames' (~2.3 px)
