"""Shots: hit classes, noise statistics, fluence, masks and determinism."""
import numpy as np
import pytest

from simulate.engine import PatternEngine
from simulate.geometry import Geometry, detector_mask
from simulate.labels import HIT_CLASSES
from simulate.shots import FluenceConfig, HitMix, NoiseConfig, ShotGenerator
from simulate.structure import Structure

SMALL = Geometry(n_pixels=48, detector_side_m=0.1 * 48 / 172, beamstop_px=(2, 4), gap_px=2)


@pytest.fixture(scope="module")
def engine():
    rng = np.random.default_rng(0)
    s = Structure.from_atoms(rng.normal(size=(400, 3)) * 12, ["C"] * 400, name="blob")
    return PatternEngine(s, SMALL)


def test_no_hit_frames_are_gaussian_read_noise(engine):
    gen = ShotGenerator(engine, mix=HitMix(single=0, multi=0, no_hit=1), seed=0,
                        noise=NoiseConfig(gaussian_sigma=0.15))
    frames = gen.generate(50).frames
    good = detector_mask(SMALL) == 0
    values = frames[:, good]
    assert abs(values.mean()) < 0.005
    assert values.std() == pytest.approx(0.15, rel=0.03)
    assert np.all(frames[:, ~good] == 0)  # masked pixels read 0


def test_poisson_statistics_on_a_flat_background(engine):
    gen = ShotGenerator(engine, mix=HitMix(single=0, multi=0, no_hit=1), seed=1,
                        noise=NoiseConfig(gaussian_sigma=0.0, background_photons=3.0))
    values = gen.generate(40).frames[:, detector_mask(SMALL) == 0]
    assert values.mean() == pytest.approx(3.0, rel=0.02)
    assert values.var() == pytest.approx(3.0, rel=0.05)
    assert np.all(values == np.round(values))  # photon counts are integers


def test_fluence_multiplier_distribution():
    rng = np.random.default_rng(0)
    m = FluenceConfig(kind="loguniform", low=0.1, high=1.0, pulse_sigma=0.0).sample(20000, rng)
    assert m.min() >= 0.1 and m.max() <= 1.0
    # log-uniform: log10 m uniform on [-1, 0]
    assert np.mean(np.log10(m)) == pytest.approx(-0.5, abs=0.01)
    assert np.all(FluenceConfig(kind="constant", pulse_sigma=0.0).sample(5, rng) == 1)
    with pytest.raises(ValueError, match="fluence.kind"):
        FluenceConfig(kind="bogus").sample(1, rng)


def test_fluence_scales_expected_photons(engine):
    """Noise-free frames scale linearly with the fluence multiplier."""
    noise = NoiseConfig(poisson=False, gaussian_sigma=0.0)
    const = FluenceConfig(kind="loguniform", low=1.0, high=1.0, pulse_sigma=0.0)
    a = ShotGenerator(engine, mix=HitMix(1, 0), noise=noise, fluence=const, seed=3).generate(3)
    doubled = FluenceConfig(kind="loguniform", low=2.0, high=2.0, pulse_sigma=0.0)
    b = ShotGenerator(engine, mix=HitMix(1, 0), noise=noise, fluence=doubled, seed=3).generate(3)
    np.testing.assert_allclose(b.frames, 2 * a.frames, rtol=1e-5, atol=1e-12)


def test_hit_classes_and_truth(engine):
    mix = HitMix(single=0.25, multi=0.25, no_hit=0.25, non_sample=0.25)
    batch = ShotGenerator(engine, mix=mix, seed=4).generate(80)
    t = batch.truth
    counts = np.bincount(t["hit_class"], minlength=4)
    assert np.all(counts > 8)
    single, multi = t["hit_class"] == 1, t["hit_class"] == 2
    assert np.all(t["n_particles"][single] == 1)
    assert set(t["n_particles"][multi].tolist()) <= {2, 3, 4}
    assert np.all(t["n_particles"][~(single | multi)] == 0)
    # quaternions are unit for each particle and NaN beyond n_particles
    for i in np.flatnonzero(multi):
        m = t["n_particles"][i]
        assert np.allclose(np.linalg.norm(t["quaternions"][i, :m], axis=1), 1.0)
        assert np.all(np.isnan(t["quaternions"][i, m:]))
    # parasitic scattering is far brighter than the sample's
    totals = batch.frames.reshape(80, -1).sum(1)
    assert np.median(totals[t["hit_class"] == 3]) > 10 * np.median(totals[single])
    assert len(HIT_CLASSES) == 4


def test_same_seed_same_frames(engine):
    mix = HitMix(single=0.5, multi=0.5)
    noise = NoiseConfig(beam_center_jitter_px=1.0)
    a = ShotGenerator(engine, mix=mix, noise=noise, seed=7).generate(6)
    b = ShotGenerator(engine, mix=mix, noise=noise, seed=7).generate(6)
    c = ShotGenerator(engine, mix=mix, noise=noise, seed=8).generate(6)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert np.any(a.truth["beam_center_offset_px"] != 0)


def test_bad_mix_is_rejected(engine):
    with pytest.raises(ValueError, match="probabilities"):
        ShotGenerator(engine, mix=HitMix(single=0, multi=0)).generate(1)
    with pytest.raises(ValueError, match="multi_counts"):
        ShotGenerator(engine, mix=HitMix(multi_counts=(2, 7))).generate(1)
