"""Sample variety (simulate.sample_variety, dataset.sample): size polydispersity, aggregates with
unequal members and gaps, debris and capsid fragments as non-sample hits, non-spherical virions.

Physics is checked against independent references: the analytic sphere and spheroid form
factors, the direct sum over the scaled atoms, a pseudo-atom sampling of the debris beads, and
sizes measured from the patterns (first minimum of the radial profile, ``x = 4.4934``).
Everything runs on the 48x48 test detector (the paper's pixel pitch) and takes a few seconds.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from simulate.aggregates import contact_positions
from simulate.continuum import (ellipsoidal_capsid, icosahedral_capsid, sphere,
                                spherocylinder_capsid)
from simulate.engine import PatternEngine, direct_amplitude
from simulate.errors import StructureError
from simulate.form_factors import form_factor
from simulate.geometry import Geometry, detector_mask
from simulate.parasitic import beads_amplitude, debris_beads, fragment_beads, sphere_form_factor
from simulate.sample_variety import NON_SAMPLE_KINDS, NonSample, Polydispersity, SampleConfig
from simulate.shots import FluenceConfig, HitMix, NoiseConfig, ShotGenerator
from simulate.sources import resolve_sources
from simulate.structure import Structure

SMALL = Geometry(n_pixels=48, detector_side_m=0.1 * 48 / 172, beamstop_px=(2, 2), gap_px=2)
#: The paper's q-range (0.08 1/A at the corner) on 48 coarse pixels.
WIDE = Geometry(n_pixels=48, detector_side_m=0.1, beamstop_px=(2, 2), gap_px=2)
#: First zero of the sphere form factor, tan x = x.
X1 = 4.493409457909064
QUIET = dict(noise=NoiseConfig(poisson=False, gaussian_sigma=0.0),
             fluence=FluenceConfig(kind="constant", pulse_sigma=0.0))
GOOD = detector_mask(SMALL) == 0
ROT0 = torch.eye(3, dtype=torch.float64)[None]


def first_minimum_q(frame, q_norm, good, q_lo, q_hi, n_bins=40):
    """|q| (1/A) of the first local minimum of the azimuthal average in [q_lo, q_hi]
    (parabola through the minimum bin and its neighbours; empty bins dropped)."""
    edges = np.linspace(q_lo, q_hi, n_bins + 1)
    idx = np.digitize(q_norm[good], edges) - 1
    sel = (idx >= 0) & (idx < n_bins)
    count = np.bincount(idx[sel], minlength=n_bins)
    keep = count > 0
    prof = np.bincount(idx[sel], weights=frame[good][sel], minlength=n_bins)[keep] / count[keep]
    qc = np.bincount(idx[sel], weights=q_norm[good][sel], minlength=n_bins)[keep] / count[keep]
    k = next(k for k in range(1, len(prof) - 1) if prof[k] < prof[k - 1] and prof[k] <= prof[k + 1])
    coef = np.polyfit(qc[k - 1:k + 2] - qc[k], prof[k - 1:k + 2], 2)
    return qc[k] - coef[1] / (2 * coef[0])


def carbon_ratio(q_norm):
    """f_C(|q|) / f_C(0): the pseudo-atoms' form factor relative to their electrons."""
    return torch.as_tensor(form_factor("C", np.asarray(q_norm)) / form_factor("C", 0.0))


@pytest.fixture(scope="module")
def sphere100():
    return sphere(100.0, voxel_angstrom=10.0, seed=0)


@pytest.fixture(scope="module")
def fast100(sphere100):
    """Fast engine of the 100 A sphere covering sizes up to 1.3."""
    return PatternEngine(sphere100, SMALL, max_size_scale=1.3)


# ============================================================================ polydispersity: engine
@pytest.mark.parametrize("method", ["direct", "fast"])
def test_scaled_sphere_matches_the_analytic_sphere(sphere100, method):
    """s * R sphere: I = (rho V s^3 Phi(2 pi q s R) f_C(q)/6)^2, forward amplitude s^3 N_e."""
    eng = PatternEngine(sphere100, SMALL, method=method, max_size_scale=1.3)
    qn = torch.linalg.vector_norm(eng.q, dim=-1)
    for s in (0.8, 1.0, 1.25):
        field = eng.shot_field(ROT0, scales=torch.tensor([s], dtype=torch.float64))
        analytic = (0.43 * 4 / 3 * math.pi * (100.0 * s) ** 3 * carbon_ratio(qn)
                    * sphere_form_factor(2 * math.pi * qn * 100.0 * s))
        i, ia = field.abs().double() ** 2, analytic ** 2
        assert float(torch.linalg.norm(i - ia) / torch.linalg.norm(ia)) < 0.01, s   # measured 0.3-0.5 %
        f0 = eng.shot_field(ROT0, q=torch.zeros(1, 1, 3, dtype=torch.float64),
                            scales=torch.tensor([s], dtype=torch.float64))
        assert abs(complex(f0[0, 0])) == pytest.approx(s ** 3 * sphere100.n_electrons, rel=1e-3)  # I(0) ~ s^6


def small_molecule(n=200, seed=0, spread=12.0):
    rng = np.random.default_rng(seed)
    elements = rng.choice(["C", "N", "O", "S", "FE"], size=n, p=[0.6, 0.17, 0.18, 0.03, 0.02])
    return Structure.from_atoms(rng.normal(size=(n, 3)) * spread, elements, name="tiny")


@pytest.mark.parametrize("structure, bound", [(lambda: small_molecule(), 2e-4),
                                              (lambda: sphere(60.0, voxel_angstrom=6.0), 1e-5)],
                         ids=["C-N-O-S-Fe molecule", "carbon pseudo-atoms"])
def test_scaled_field_equals_the_direct_sum_of_the_scaled_atoms(structure, bound):
    """Oracle: positions s r, weights s^3 w, direct sum. Exact for one element (table
    interpolation only), the documented bound for several (docs: < 1e-4, measured 7e-5)."""
    s0 = structure()
    eng = PatternEngine(s0, WIDE, method="direct", max_size_scale=1.2)
    rot = torch.as_tensor(np.array([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]]))
    for s in (0.9, 1.2):
        field = eng.shot_field(rot, scales=torch.tensor([s], dtype=torch.float64))
        big = Structure.from_atoms(s0.positions * s @ rot[0].numpy().T, s0.elements,
                                   weights=s0.weights * s ** 3, center=False)
        oracle = direct_amplitude(big, eng.q.reshape(-1, 3)).reshape(field.shape)
        i, io = field.abs() ** 2, oracle.abs() ** 2
        assert float(torch.linalg.norm(i - io) / torch.linalg.norm(io)) < bound


def test_scales_beyond_the_engine_range_are_refused(sphere100):
    eng = PatternEngine(sphere100, SMALL, method="direct", max_size_scale=1.1)
    with pytest.raises(ValueError, match="max_size_scale"):
        eng.shot_field(ROT0, scales=torch.tensor([1.2], dtype=torch.float64))
    sample = SampleConfig.from_dict({"polydispersity": {"sigma_rel": 0.05}})
    with pytest.raises(ValueError, match="max_size_scale=1.15"):
        ShotGenerator(eng, sample=sample)
    with pytest.raises(ValueError, match="max_size_scale"):
        PatternEngine(sphere100, SMALL, max_size_scale=0.5)


# ============================================================================ polydispersity: statistics
def test_size_draws_are_a_truncated_normal():
    p = Polydispersity(sigma_rel=0.08, max_sigmas=3.0)
    s = p.draw(40000, np.random.default_rng(0))
    assert s.mean() == pytest.approx(1.0, abs=0.002)
    assert s.std() == pytest.approx(0.08 * 0.98658, rel=0.02)       # std of N(0,1) cut at +-3
    assert np.abs(s - 1).max() <= 3 * 0.08 + 1e-12
    assert p.max_scale == pytest.approx(1.24)


def test_measured_sphere_sizes_have_the_requested_spread(fast100):
    """Sizes measured from the first minimum of each frame follow the drawn sizes and their spread."""
    sample = SampleConfig.from_dict({"polydispersity": {"sigma_rel": 0.06}})
    eng = fast100
    batch = ShotGenerator(eng, mix=HitMix(1, 0), seed=0, sample=sample, **QUIET).generate(200)
    qn = torch.linalg.vector_norm(eng.q, dim=-1).numpy()
    # window: the first minimum of every size in 1 +- 3 sigma, and no second minimum
    q1 = np.array([first_minimum_q(f, qn, GOOD, 0.004, 0.012) for f in batch.frames])
    measured = X1 / (2 * math.pi * q1) / 100.0
    drawn = batch.truth["size_scale"][:, 0]
    assert np.all(np.isnan(batch.truth["size_scale"][:, 1:]))
    assert np.abs(measured - drawn).max() < 0.015                  # per shot, measured 0.8 %
    assert measured.std() == pytest.approx(0.06 * 0.98658, rel=0.12)  # 200 shots: 5 % sampling error
    assert measured.mean() == pytest.approx(1.0, abs=0.015)


# ============================================================================ aggregates
def test_contact_positions_with_unequal_radii_and_gaps():
    rng = np.random.default_rng(3)
    gaps = []
    for _ in range(300):
        radii = rng.uniform(20, 40, 2)
        pos = contact_positions(2, radii, rng, gap_rel=(0.0, 0.1))
        gaps.append(np.linalg.norm(pos[0] - pos[1]) / radii.sum() - 1)
    gaps = np.array(gaps)
    assert gaps.min() >= -1e-12 and gaps.max() <= 0.1 + 1e-12
    assert gaps.mean() == pytest.approx(0.05, abs=0.006) and gaps.std() == pytest.approx(0.1 / 12 ** 0.5, rel=0.1)
    for n in (3, 4):
        radii = rng.uniform(10, 50, n)
        pos = contact_positions(n, radii, rng)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        contact = (radii[:, None] + radii[None]) * (1 - 1e-9)
        off = ~np.eye(n, dtype=bool)
        assert np.all(d[off] >= contact[off])                               # no overlap
        assert np.all(np.isclose(d / (radii[:, None] + radii[None]), 1.0)[off].reshape(n, n - 1).any(1))
    with pytest.raises(ValueError, match="radius"):
        contact_positions(3, [1.0, 2.0], rng)


@pytest.mark.parametrize("same_size", [False, True])
def test_multi_hits_have_member_sizes_and_gaps(sphere100, fast100, same_size):
    sample = SampleConfig.from_dict({"polydispersity": {"sigma_rel": 0.08},
                                     "aggregate": {"gap_rel": [0.02, 0.06], "same_size": same_size}})
    batch = ShotGenerator(fast100, mix=HitMix(0, 1, multi_counts=(2,)), seed=2, sample=sample, **QUIET).generate(12)
    t = batch.truth
    s = t["size_scale"][:, :2].astype(np.float64)
    assert np.all(np.isnan(t["size_scale"][:, 2:]))
    if same_size:
        np.testing.assert_array_equal(s[:, 0], s[:, 1])
    else:
        assert np.all(s[:, 0] != s[:, 1])
    d = np.linalg.norm(t["positions_m"][:, 0] - t["positions_m"][:, 1], axis=1) * 1e10
    gap = d / (sphere100.radius * s.sum(1)) - 1
    assert np.all((gap > 0.02 - 1e-5) & (gap < 0.06 + 1e-5))
    assert set(t["non_sample_kind"].tolist()) == {""}


# ============================================================================ non-sample hits
def test_bead_amplitude_matches_a_pseudo_atom_sampling():
    """Oracle: carbon pseudo-atoms on a fine jittered lattice filling the beads, direct sum."""
    centres = np.array([[0.0, 0.0, 0.0], [55.0, 0.0, 0.0], [20.0, 45.0, 10.0]])
    radii = np.array([30.0, 25.0, 20.0])
    rng = np.random.default_rng(0)
    axis = np.arange(-40, 90, 3.0)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    grid = grid + rng.uniform(-1.5, 1.5, grid.shape)
    inside = (np.linalg.norm(grid[:, None] - centres[None], axis=-1) <= radii).any(1)
    electrons = 0.43 * 4 / 3 * math.pi * radii ** 3
    cloud = Structure.from_atoms(grid[inside], ["C"] * int(inside.sum()),
                                 weights=np.full(inside.sum(), electrons.sum() / inside.sum() / 6), center=False)
    q = torch.as_tensor(PatternEngine(cloud, SMALL, method="direct").q)
    oracle = direct_amplitude(cloud, q.reshape(-1, 3)).reshape(q.shape[:-1]) / carbon_ratio(
        torch.linalg.vector_norm(q, dim=-1))
    amp = beads_amplitude(q, centres, radii, electrons)
    i, io = amp.abs() ** 2, oracle.abs() ** 2
    assert float(torch.linalg.norm(i - io) / torch.linalg.norm(io)) < 0.03
    assert abs(complex(beads_amplitude(torch.zeros(1, 3, dtype=torch.float64), centres, radii, electrons)[0])) \
        == pytest.approx(electrons.sum(), rel=1e-6)   # float32 trigonometry


def test_debris_and_fragment_beads():
    cfg = NonSample(debris_beads=(2, 8), debris_radius_rel=(0.1, 0.5), fragment_angle_deg=(60.0, 60.0),
                    fragment_thickness_rel=0.1)
    rng = np.random.default_rng(4)
    counts = []
    for _ in range(100):
        c, r, n = debris_beads(100.0, cfg, rng)
        counts.append(len(r))
        assert np.all((r >= 10.0) & (r <= 50.0))
        np.testing.assert_allclose(n, 0.43 * 4 / 3 * math.pi * r ** 3)
        d = np.linalg.norm(c[:, None] - c[None], axis=-1) + np.eye(len(r)) * 1e9
        assert np.all(d >= (r[:, None] + r[None]) * (1 - 1e-9))           # touching, no overlap
    assert set(counts) == set(range(2, 9))
    c, r, n = fragment_beads(100.0, cfg, rng)
    cap = 0.43 * 2 / 3 * math.pi * (1 - math.cos(math.radians(60))) * (100.0 ** 3 - 90.0 ** 3)
    assert n.sum() == pytest.approx(cap, rel=1e-12) and np.allclose(r, 5.0)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 95.0)
    axis = c.mean(0) / np.linalg.norm(c.mean(0))
    assert np.degrees(np.arccos(np.clip(c @ axis / 95.0, -1, 1))).max() < 60.0 + 3.0
    # beads about one diameter apart: the cap's share of the sphere's 2/(sqrt(3) t^2) per area
    assert len(r) == pytest.approx(4 * math.pi * 95.0 ** 2 * 2 / (3 ** 0.5 * 10.0 ** 2) * 0.25, rel=0.05)


def test_non_sample_kinds_follow_their_probabilities():
    blob = Structure.from_atoms(np.random.default_rng(0).normal(size=(300, 3)) * 12, ["C"] * 300, name="blob")
    eng = PatternEngine(blob, SMALL, method="direct")
    sample = SampleConfig.from_dict({"non_sample": {"debris_p": 0.3, "fragment_p": 0.2}})
    batch = ShotGenerator(eng, mix=HitMix(0, 0, 0, 1), seed=5, sample=sample, **QUIET).generate(200)
    kinds = batch.truth["non_sample_kind"]
    assert set(kinds.tolist()) == set(NON_SAMPLE_KINDS)
    frac = {k: float(np.mean(kinds == k)) for k in NON_SAMPLE_KINDS}
    tol = 3 * math.sqrt(0.25 / 200)
    assert frac["debris"] == pytest.approx(0.3, abs=tol) and frac["fragment"] == pytest.approx(0.2, abs=tol)
    assert frac["droplet"] + frac["droplet+streak"] == pytest.approx(0.5, abs=tol)
    assert np.all(batch.frames.reshape(200, -1).sum(1) > 0)
    assert np.all(batch.truth["n_particles"] == 0) and np.all(np.isnan(batch.truth["size_scale"]))


def test_droplet_radii_measured_from_the_patterns_follow_the_range():
    """Default droplet radii, uniform on [1.5, 4] particle radii: measured from each pattern's first
    minimum (spherical droplets, no streak)."""
    pair = Structure.from_atoms([[-40.0, 0, 0], [40.0, 0, 0]], ["C", "C"], name="pair")  # R = 40 A
    eng = PatternEngine(pair, SMALL, method="direct")
    sample = SampleConfig.from_dict({"non_sample": {"droplet_aspect": [1, 1], "streak_p": 0.0,
                                                    "debris_p": 0.0, "fragment_p": 0.0}})
    batch = ShotGenerator(eng, mix=HitMix(0, 0, 0, 1), seed=1, sample=sample, **QUIET).generate(200)
    qn = torch.linalg.vector_norm(eng.q, dim=-1).numpy()
    q1 = np.array([first_minimum_q(f, qn, GOOD, 0.002, 0.016, 60) for f in batch.frames])
    rel = X1 / (2 * math.pi * q1) / pair.radius
    assert rel.min() > 1.5 - 0.05 and rel.max() < 4.0 + 0.05
    assert rel.mean() == pytest.approx(2.75, abs=0.15)                 # 3 standard errors
    assert rel.std() == pytest.approx(2.5 / 12 ** 0.5, rel=0.1)


# ============================================================================ off = unchanged
def test_neutral_sections_leave_the_frames_unchanged():
    blob = Structure.from_atoms(np.random.default_rng(0).normal(size=(300, 3)) * 12, ["C"] * 300, name="blob")
    eng = PatternEngine(blob, SMALL)
    mix = HitMix(0.25, 0.25, 0.25, 0.25)
    noise = NoiseConfig(beam_center_jitter_px=1.0)
    off = ShotGenerator(eng, mix=mix, noise=noise, seed=9).generate(24)
    for sample in ({}, {"aggregate": {"gap_rel": [0, 0]}, "non_sample": {"debris_p": 0, "fragment_p": 0}}):
        on = ShotGenerator(eng, mix=mix, noise=noise, seed=9, sample=sample).generate(24)
        np.testing.assert_array_equal(on.frames, off.frames)
        for key, value in off.truth.items():
            np.testing.assert_array_equal(on.truth[key], value)
        assert set(on.truth) - set(off.truth) == {"size_scale", "non_sample_kind"}
    multi = off.truth["n_particles"] > 1
    assert multi.any() and (off.truth["hit_class"] == 3).any()


@pytest.mark.parametrize("value, word", [
    ({"polydispersity": {"sigma_rel": 0.5}}, "sigma_rel"),
    ({"polydispersity": {"sigma": 0.1}}, "unknown key"),
    ({"aggregate": {"gap_rel": [0.1, 0.0]}}, "gap_rel"),
    ({"non_sample": {"debris_p": 0.7, "fragment_p": 0.5}}, "debris_p \\+ fragment_p"),
    ({"non_sample": {"debris_beads": [1.5, 3]}}, "debris_beads"),
    ({"non_sample": {"droplet_radius_rel": [0, 2]}}, "droplet_radius_rel"),
    ({"droplets": {}}, "unknown section"),
])
def test_bad_sample_options_name_the_key(value, word):
    with pytest.raises(ValueError, match=word):
        SampleConfig.from_dict(value)


# ============================================================================ non-spherical virions
def _rg2(s):
    return float((s.weights * (s.positions ** 2).sum(1)).sum() / s.weights.sum())


def test_spheroid_and_spherocylinder_hold_their_electrons_and_radius_of_gyration():
    a, c, t = 150.0, 300.0, 30.0
    ell = ellipsoidal_capsid(2 * a, c / a, t, core_density=0.2, shell_density=0.43, voxel_angstrom=8.0)
    v_o, v_i = 4 / 3 * math.pi * a * a * c, 4 / 3 * math.pi * (a - t) ** 2 * (c - t)
    m_i, m_s = 0.2 * v_i, 0.43 * (v_o - v_i)
    assert ell.n_electrons == pytest.approx(m_i + m_s, rel=1e-6)
    # <r^2> of a homogeneous spheroid: (2 a^2 + c^2) / 5; the shell by difference
    s_o, s_i = (2 * a * a + c * c) / 5, (2 * (a - t) ** 2 + (c - t) ** 2) / 5
    rg2 = (m_i * s_i + 0.43 * (v_o * s_o - v_i * s_i)) / (m_i + m_s)
    assert _rg2(ell) == pytest.approx(rg2, rel=0.01)
    assert np.ptp(ell.positions[:, 2]) / np.ptp(ell.positions[:, 0]) == pytest.approx(2.0, rel=0.05)

    r, aspect = 100.0, 2.5
    h = r * (aspect - 1)
    cyl = spherocylinder_capsid(2 * r, aspect, 25.0, core_density=0.43, shell_density=0.43, voxel_angstrom=8.0)
    vc, vs = math.pi * r * r * 2 * h, 4 / 3 * math.pi * r ** 3
    assert cyl.n_electrons == pytest.approx(0.43 * (vc + vs), rel=1e-6)
    # solid spherocylinder: cylinder (R^2/2 + L^2/12), two hemispheres at +-h (3R^2/5 + 3Rh/4 + h^2)
    rg2 = (vc * (r * r / 2 + (2 * h) ** 2 / 12) + vs * (3 * r * r / 5 + 3 * r * h / 4 + h * h)) / (vc + vs)
    assert _rg2(cyl) == pytest.approx(rg2, rel=0.01)
    assert np.ptp(cyl.positions[:, 2]) == pytest.approx(aspect * 2 * r, rel=0.03)


def test_spheroid_pattern_is_the_analytic_spheroid_form_factor():
    """Homogeneous prolate spheroid, long axis along the detector x: the pattern is anisotropic
    exactly as F = rho V Phi(2 pi |diag(a, a, c) R^T q|)."""
    a, c = 60.0, 120.0
    ell = ellipsoidal_capsid(2 * a, c / a, 20.0, core_density=0.43, shell_density=0.43, voxel_angstrom=5.0)
    eng = PatternEngine(ell, SMALL, method="direct")
    rot = torch.as_tensor(np.array([[[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]]))   # z -> x
    field = eng.shot_field(rot)
    qb = torch.einsum("hwi,ij->hwj", eng.q, rot[0])
    x = 2 * math.pi * torch.linalg.vector_norm(qb * torch.tensor([a, a, c], dtype=torch.float64), dim=-1)
    analytic = 0.43 * 4 / 3 * math.pi * a * a * c * sphere_form_factor(x) * carbon_ratio(
        torch.linalg.vector_norm(eng.q, dim=-1))
    i, ia = field.abs() ** 2, analytic ** 2
    assert float(torch.linalg.norm(i - ia) / torch.linalg.norm(ia)) < 0.02
    row, col = i[24, 24:].numpy(), i[24:, 24].numpy()          # along detector x and y from the centre
    first_min = [int(np.argmax(np.diff(p) > 0)) for p in (row, col)]
    assert first_min[1] / first_min[0] == pytest.approx(c / a, rel=0.25)   # speckles 2x finer along x


def test_new_continuum_kinds_resolve_and_check_their_parameters():
    specs = resolve_sources({"kind": "continuum", "objects": [
        {"kind": "ellipsoidal_capsid", "name": "rod", "params": {"diameter_angstrom": 200.0, "aspect_ratio": 1.5,
                                                                 "voxel_angstrom": 20.0}},
        {"kind": "spherocylinder_capsid", "params": {"diameter_angstrom": 200.0, "voxel_angstrom": 20.0}}]})
    assert [s.load().n_atoms > 0 for s in specs] == [True, True]
    with pytest.raises(StructureError, match="aspect_ratio"):
        spherocylinder_capsid(200.0, 0.5)
    with pytest.raises(StructureError, match="shell_thickness"):
        ellipsoidal_capsid(200.0, 0.5, shell_thickness=60.0)
    assert icosahedral_capsid(200.0, 20.0, voxel_angstrom=20.0).n_atoms > 0


# ============================================================================ datasets
def test_generated_shards_carry_the_sample_truth_and_identity(tmp_path):
    import h5py

    from simulate.dataset_io import TRUTH_GROUP
    from simulate.generate import generate_dataset
    from simulate.resume import DatasetMismatchError

    specs = resolve_sources({"kind": "continuum", "objects": [
        {"kind": "sphere", "name": "ball", "params": {"radius_angstrom": 60.0, "voxel_angstrom": 10.0}}]})
    mix = {"single": 0.3, "multi": 0.3, "no_hit": 0.1, "non_sample": 0.3}
    sample = {"polydispersity": {"sigma_rel": 0.05}, "aggregate": {}, "non_sample": {"debris_p": 0.5}}
    common = dict(n_frames=16, chunk=16, mix=mix, progress=False, threads=1)
    plain = generate_dataset(specs, SMALL, out_dir=tmp_path / "plain", **common)
    varied = generate_dataset(specs, SMALL, out_dir=tmp_path / "varied", sample=sample, **common)
    assert plain.ok and varied.ok
    with h5py.File(plain.shard_paths[0], "r") as f:
        assert "size_scale" not in f[TRUTH_GROUP] and "sample" not in f.attrs
        assert "sample" not in json.loads(f.attrs["dataset_identity"])
    with h5py.File(varied.shard_paths[0], "r") as f:
        t = {k: f[TRUTH_GROUP][k][()] for k in ("size_scale", "non_sample_kind", "n_particles", "hit_class")}
        identity = json.loads(f.attrs["dataset_identity"])
        assert f[TRUTH_GROUP]["size_scale"].attrs["units"] == "1"
    assert identity["sample"]["polydispersity"] == {"sigma_rel": 0.05, "max_sigmas": 3.0}
    assert identity["sample"]["non_sample"]["fragment_p"] == 0.25           # defaults recorded
    hits = t["n_particles"] > 0
    assert np.all(np.isfinite(t["size_scale"][hits, 0])) and np.any(t["size_scale"][hits, 0] != 1)
    assert {k.decode() if isinstance(k, bytes) else k for k in t["non_sample_kind"][t["hit_class"] == 3]} \
        <= set(NON_SAMPLE_KINDS)
    # resuming with other sample settings is refused, naming the key
    with pytest.raises(DatasetMismatchError, match="sample.polydispersity.sigma_rel"):
        generate_dataset(specs, SMALL, out_dir=tmp_path / "varied", sample={**sample, "polydispersity": {
            "sigma_rel": 0.08}}, **common)


def test_polydispersity_beyond_the_detector_sampling_names_the_option():
    from simulate.errors import GeometryError
    from simulate.geometry import pnccd_geometry

    big = sphere(340.0, voxel_angstrom=40.0)                       # 680 A fits the pnCCD (790 A) ...
    PatternEngine(big, pnccd_geometry(8), method="direct", max_size_scale=1.15)
    with pytest.raises(GeometryError, match="polydispersity"):    # ... 1.2 x 680 A does not
        PatternEngine(big, pnccd_geometry(8), method="direct", max_size_scale=1.2)
