"""Physics invariants of the diffraction engine, and agreement with skopi's direct sum."""

import numpy as np
import pytest
import torch

from simulate.engine import PatternEngine, ReciprocalVolume, diffraction_intensity, direct_amplitude
from simulate.errors import GeometryError
from simulate.form_factors import form_factor
from simulate.geometry import (MASK_INVALID, MASK_SHADOWED, Geometry, default_geometry,
                               detector_mask, intensity_scale, q_max, reciprocal_vectors)
from simulate.rotations import quaternion_to_matrix, random_quaternions
from simulate.shots import contact_positions
from simulate.structure import Structure

# A small geometry (same pixel pitch and distance as the paper's) keeps the tests fast.
SMALL = Geometry(n_pixels=48, detector_side_m=0.1 * 48 / 172, beamstop_px=(2, 2), gap_px=2)


def small_molecule(n=60, seed=0, spread=12.0):
    rng = np.random.default_rng(seed)
    elements = rng.choice(["C", "N", "O", "S", "FE"], size=n, p=[0.6, 0.17, 0.18, 0.03, 0.02])
    return Structure.from_atoms(rng.normal(size=(n, 3)) * spread, elements, name="tiny")


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------- invariants
@pytest.mark.parametrize("method", ["direct", "fast"])
def test_friedel_symmetry(method):
    """F(-q) = conj F(q) for real scatterers, so |F(q)|^2 = |F(-q)|^2."""
    s = small_molecule()
    eng = PatternEngine(s, SMALL, method=method)
    q = eng.q.reshape(-1, 3)
    a, b = eng.amplitude(q), eng.amplitude(-q)
    tol = 1e-10 if method == "direct" else 1e-5
    scale = a.abs().max()
    assert torch.allclose(b, a.conj(), atol=float(tol * scale))


def test_forward_scattering_is_squared_electron_count():
    """F(0) = sum of f(0), close to the number of electrons; I(0) scales as N_e^2."""
    s = small_molecule(n=40)
    f0 = complex(direct_amplitude(s, torch.zeros(1, 3, dtype=torch.float64))[0])
    expected = sum(form_factor(e, 0.0) for e in s.elements)
    assert abs(f0.imag) < 1e-9 and f0.real == pytest.approx(expected, rel=1e-12)
    assert f0.real == pytest.approx(s.n_electrons, rel=2e-3)  # f(0) = Z up to table error
    doubled = Structure.from_atoms(np.concatenate([s.positions] * 2), np.concatenate([s.elements] * 2))
    f0_doubled = complex(direct_amplitude(doubled, torch.zeros(1, 3, dtype=torch.float64))[0])
    assert abs(f0_doubled) ** 2 == pytest.approx(4 * abs(f0) ** 2, rel=1e-12)


@pytest.mark.parametrize("method", ["direct", "fast"])
def test_two_atom_pattern_is_analytic(method):
    """Two carbons at +-d/2 along x: I = scale * f(q)^2 * 4 cos^2(pi q_x d).

    All the power sits at the highest spatial frequency (period 1/D): the worst case for
    interpolation, so the fast method gets twice its default oversampling here.
    """
    d = 40.0
    s = Structure.from_atoms([[-d / 2, 0, 0], [d / 2, 0, 0]], ["C", "C"])
    kwargs = {"oversampling": 20.0} if method == "fast" else {}
    got = diffraction_intensity(s, [[1, 0, 0, 0]], SMALL, method=method, **kwargs)[0]
    q = reciprocal_vectors(SMALL)
    f = form_factor("C", np.linalg.norm(q, axis=-1))
    expected = intensity_scale(SMALL) * f ** 2 * 4 * np.cos(np.pi * q[..., 0] * d) ** 2
    assert rel_l2(got, expected) < (1e-10 if method == "direct" else 1e-2)


def test_rotation_convention_matches_rotating_atoms():
    """Rotating the particle by R equals evaluating the unrotated particle at R^T q."""
    s = small_molecule(n=30)
    quat = random_quaternions(1, np.random.default_rng(3))
    R = quaternion_to_matrix(quat)[0]
    rotated = Structure.from_atoms(s.positions @ R.T, s.elements, center=False)
    got = diffraction_intensity(s, quat, SMALL, method="direct")[0]
    expected = diffraction_intensity(rotated, [[1, 0, 0, 0]], SMALL, method="direct")[0]
    assert rel_l2(got, expected) < 1e-10


@pytest.mark.parametrize("method", ["direct", "fast"])
def test_multi_particle_fields_add_coherently(method):
    """A two-particle shot equals the pattern of the combined atom set."""
    s = small_molecule(n=40, spread=8.0)
    rng = np.random.default_rng(5)
    quats = random_quaternions(2, rng)
    pos = contact_positions(2, s.radius, rng)
    eng = PatternEngine(s, SMALL, method=method)
    got = eng.intensity(quats[None], pos[None])[0].double().numpy()
    R = quaternion_to_matrix(quats)
    atoms = np.concatenate([s.positions @ R[i].T + pos[i] for i in range(2)])
    combined = Structure.from_atoms(atoms, np.concatenate([s.elements] * 2), center=False)
    expected = diffraction_intensity(combined, [[1, 0, 0, 0]], SMALL, method="direct")[0]
    assert rel_l2(got, expected) < (1e-10 if method == "direct" else 1e-2)


def test_fast_method_matches_direct_sum():
    s = small_molecule(n=300, spread=15.0, seed=2)
    quats = random_quaternions(3, np.random.default_rng(0))
    fast = diffraction_intensity(s, quats, SMALL, method="fast")
    exact = diffraction_intensity(s, quats, SMALL, method="direct")
    assert rel_l2(fast, exact) < 0.01


def test_reciprocal_volume_error_falls_with_oversampling():
    s = small_molecule(n=200, spread=15.0, seed=4)
    q = torch.as_tensor(reciprocal_vectors(SMALL)).reshape(-1, 3)
    exact = direct_amplitude(s, q).abs().numpy() ** 2
    errs = []
    for ov in (3, 6, 12):
        vol = ReciprocalVolume(s, q_max(SMALL), oversampling=ov)
        errs.append(rel_l2(vol.sample(q).abs().double().numpy() ** 2, exact))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < errs[0] / 8  # second-order interpolation: error ~ oversampling^-2


# ---------------------------------------------------------------------- against skopi
@pytest.mark.parametrize("method", ["direct", "fast"])
def test_agrees_with_skopi_direct_sum(method):
    """Same pattern, units included, as skopi's numba direct sum on a tiny molecule."""
    pytest.importorskip("skopi")
    from simulate.reference import skopi_intensity

    s = small_molecule(n=80, spread=10.0, seed=7)
    quat = random_quaternions(1, np.random.default_rng(11))
    ours = diffraction_intensity(s, quat, SMALL, method=method)[0]
    ref = skopi_intensity(s, quat[0], SMALL)
    assert rel_l2(ours, ref) < (1e-4 if method == "direct" else 1e-2)


def test_geometry_corrections_match_skopi():
    pytest.importorskip("skopi")
    from simulate.reference import skopi_detector

    g = SMALL.replace(polarization=(0.6, 0.8, 0.0))
    det = skopi_detector(g)
    np.testing.assert_allclose(reciprocal_vectors(g) * 1e10, np.asarray(det.pixel_position_reciprocal)[0],
                               rtol=1e-12, atol=1e-3)
    np.testing.assert_allclose(intensity_scale(g), np.asarray(det.linear_correction)[0], rtol=1e-12)


def test_form_factor_table_is_skopis():
    pytest.importorskip("skopi")
    import skopi

    p = skopi.Particle()
    p.create_from_atoms([("C", (0, 0, 0)), ("N", (1, 0, 0)), ("O", (2, 0, 0)), ("S", (3, 0, 0))])
    for row, element in zip(p.ff_table, ["C", "N", "O", "S"]):
        np.testing.assert_allclose(form_factor(element, 2 * p.q_sample), row, rtol=1e-12)


# ---------------------------------------------------------------------- geometry, masks
def test_default_geometry_is_the_papers():
    g = default_geometry()
    assert (g.n_pixels, g.photon_energy_ev, g.photons_per_pulse, g.focus_radius_m) == (172, 1660.0, 1e12, 0.5e-6)
    assert g.wavelength_m == pytest.approx(7.469e-10, rel=1e-3)


def test_masks_have_cxi_bits_and_sizes():
    g = default_geometry()
    m = detector_mask(g)
    assert m.shape == (172, 172) and m.dtype == np.uint16
    assert np.count_nonzero(m & MASK_INVALID) == 172 * 4
    assert np.count_nonzero(m & MASK_SHADOWED) == 6 * 8
    assert np.array_equal(m, m[::-1, ::-1])  # both masks centred
    assert np.count_nonzero(m) == 172 * 4 + 6 * 8 - 6 * 4


@pytest.mark.parametrize("field,value", [("n_pixels", 0), ("distance_m", 0.0), ("distance_m", -1.0),
                                         ("detector_side_m", float("nan")), ("photon_energy_ev", -5.0)])
def test_nonsense_geometry_is_rejected(field, value):
    with pytest.raises(GeometryError, match=field):
        Geometry(**{field: value})


def test_too_large_particle_is_rejected():
    rng = np.random.default_rng(0)
    big = Structure.from_atoms(rng.uniform(-2000, 2000, (500, 3)), ["C"] * 500, name="huge")
    with pytest.raises(GeometryError, match="huge.*too large"):
        PatternEngine(big, default_geometry(), method="direct")


def test_contact_positions_touch_without_overlap():
    rng = np.random.default_rng(1)
    for n in (2, 3, 4):
        pos = contact_positions(n, 30.0, rng)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(n) * 1e9
        assert np.all(d >= 60.0 - 1e-6)
        assert np.allclose(d.min(1), 60.0)  # each particle touches another
        assert np.allclose(pos.mean(0), 0.0)


def test_random_quaternions_are_uniform_unit():
    q = random_quaternions(20000, np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0) and np.all(q[:, 0] >= 0)
    # Uniform rotations send z to a uniform direction: mean of (R z) ~ 0, <z_z^2> = 1/3.
    z = quaternion_to_matrix(q)[:, :, 2]
    assert np.all(np.abs(z.mean(0)) < 0.02) and abs((z[:, 2] ** 2).mean() - 1 / 3) < 0.01
