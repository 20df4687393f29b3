"""Realism in the simulator (simulate.shots NoiseConfig.realism / layout_preset)."""
import math

import numpy as np
import pytest

from simulate.engine import PatternEngine
from simulate.geometry import Geometry, detector_mask, pnccd_geometry
from simulate.shots import HitMix, NoiseConfig, ShotGenerator
from simulate.structure import Structure
from speckle_embed.realism import get_preset

SMALL = Geometry(n_pixels=48, detector_side_m=0.1 * 48 / 172, beamstop_px=(2, 4), gap_px=2)


@pytest.fixture(scope="module")
def engine():
    rng = np.random.default_rng(0)
    s = Structure.from_atoms(rng.normal(size=(400, 3)) * 12, ["C"] * 400, name="blob")
    return PatternEngine(s, SMALL)


def test_realism_off_leaves_frames_unchanged(engine):
    a = ShotGenerator(engine, mix=HitMix(1, 0), seed=4, noise=NoiseConfig()).generate(4).frames
    b = ShotGenerator(engine, mix=HitMix(1, 0), seed=4, noise=NoiseConfig(realism=None)).generate(4).frames
    np.testing.assert_array_equal(a, b)


def test_background_section_adds_poisson_photons_with_the_formula(engine):
    a, r0, alpha = 0.5, 8.0, 2.0
    realism = {"background": {"gas_photons": [a, a], "amplitude_spread": 0.0, "gas_r0_px": [r0, r0],
                              "gas_alpha": [alpha, alpha], "streak_p": 0.0, "halo_p": 0.0,
                              "stray_photons": [0.0, 0.0]}}
    gen = ShotGenerator(engine, mix=HitMix(single=0, multi=0, no_hit=1), seed=5,
                        noise=NoiseConfig(gaussian_sigma=0.0, realism=realism))
    frames = gen.generate(300).frames
    good = detector_mask(SMALL) == 0
    yy, xx = np.meshgrid(np.arange(48) - 23.5, np.arange(48) - 23.5, indexing="ij")
    expected = a * (1 + (yy**2 + xx**2) / r0**2) ** (-alpha / 2)
    np.testing.assert_allclose(frames.mean(0)[good], expected[good], atol=5 * math.sqrt(a / 300))
    assert np.all(frames == np.round(frames)) and np.all(frames[:, ~good] == 0)


def test_detector_and_beam_sections_run_and_photon_convert(engine):
    realism = {"detector": {"dark_noise_photons": [0.1, 0.1], "dead_fraction": [0.01, 0.01], "flag_bad_p": 1.0},
               "beam": {"bandwidth": [0.005, 0.005]}}
    gen = ShotGenerator(engine, mix=HitMix(1, 0), seed=6, noise=NoiseConfig(gaussian_sigma=0.0, realism=realism))
    frames = gen.generate(6).frames
    assert np.all(frames == np.round(frames)) and frames.min() >= 0  # photon-converted counts
    assert frames.sum() > 0
    with pytest.raises(ValueError, match="noise.realism.layout must be null"):
        ShotGenerator(engine, noise=NoiseConfig(realism={"layout": {}}))


def test_layout_preset_adds_its_mask_and_checks_the_size():
    geo = pnccd_geometry(binning=8)
    rng = np.random.default_rng(1)
    s = Structure.from_atoms(rng.normal(size=(50, 3)) * 12, ["C"] * 50, name="tiny")
    eng = PatternEngine(s, geo)
    gen = ShotGenerator(eng, noise=NoiseConfig(layout_preset="amo_pnccd_front_bin8"))
    want = (detector_mask(geo) != 0) | get_preset("amo_pnccd_front_bin8").mask()
    np.testing.assert_array_equal(gen.mask != 0, want)
    with pytest.raises(ValueError, match="geometry.n_pixels=256"):
        ShotGenerator(eng, noise=NoiseConfig(layout_preset="amo_pnccd_front_bin4"))
