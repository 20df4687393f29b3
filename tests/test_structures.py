"""Structure sources: PDB/mmCIF reader, procedural particles, continuum objects.

The reader tests write their own tiny files (no network, nothing from shared folders).
"""
from __future__ import annotations

import gzip
import time

import numpy as np
import pytest

pytest.importorskip("gemmi")
pytest.importorskip("scipy")

from simulate.continuum import (  # noqa: E402
    core_shell, icosahedral_capsid, icosahedron_face_normals, icosahedron_vertices, sphere,
)
from simulate.errors import StructureError  # noqa: E402
from simulate.pdb_io import list_structure_files, read_structure  # noqa: E402
from simulate.procedural import (  # noqa: E402
    COMPOSITION, KINDS, PROTEIN_ATOM_DENSITY, point_group, procedural_library,
    procedural_particle,
)


# ============================================================================ tiny files
def atom_line(serial, name, resname, chain, resseq, xyz, element, *, altloc=" ",
              record="ATOM", occupancy=1.0) -> str:
    """One fixed-column PDB ATOM/HETATM record."""
    x, y, z = xyz
    return (f"{record:<6}{serial:>5} {name:<4}{altloc}{resname:>3} {chain}{resseq:>4}    "
            f"{x:>8.3f}{y:>8.3f}{z:>8.3f}{occupancy:>6.2f}{20.0:>6.2f}          {element:>2}")


# Two alanines (5 heavy atoms each) and one hydrogen: 11 protein atoms.
PROTEIN = [("N", "N", 1, (0.0, 0.0, 0.0)), ("CA", "C", 1, (1.46, 0.0, 0.0)),
           ("C", "C", 1, (2.0, 1.42, 0.0)), ("O", "O", 1, (1.3, 2.4, 0.0)),
           ("CB", "C", 1, (2.0, -0.8, 1.2)), ("H", "H", 1, (-0.5, -0.8, 0.0)),
           ("N", "N", 2, (3.3, 1.5, 0.0)), ("CA", "C", 2, (4.0, 2.8, 0.0)),
           ("C", "C", 2, (5.5, 2.6, 0.0)), ("O", "O", 2, (6.1, 1.6, 0.3)),
           ("CB", "C", 2, (3.6, 3.6, 1.2))]
N_PROTEIN = len(PROTEIN)


def protein_lines(chain="A", shift=(0.0, 0.0, 0.0), start=1) -> list[str]:
    return [atom_line(start + i, name, "ALA", chain, res, np.add(xyz, shift), el)
            for i, (name, el, res, xyz) in enumerate(PROTEIN)]


def ligand_and_water_lines(start=100) -> list[str]:
    return [atom_line(start, "ZN", "ZN", "A", 101, (8.0, 0.0, 0.0), "ZN", record="HETATM"),
            atom_line(start + 1, "O", "HOH", "A", 201, (9.0, 0.0, 0.0), "O", record="HETATM"),
            atom_line(start + 2, "O", "DOD", "A", 202, (9.0, 3.0, 0.0), "O", record="HETATM")]


BIOMT = """\
REMARK 350 BIOMOLECULE: 1
REMARK 350 AUTHOR DETERMINED BIOLOGICAL UNIT: DIMERIC
REMARK 350 APPLY THE FOLLOWING TO CHAINS: A
REMARK 350   BIOMT1   1  1.000000  0.000000  0.000000        0.00000
REMARK 350   BIOMT2   1  0.000000  1.000000  0.000000        0.00000
REMARK 350   BIOMT3   1  0.000000  0.000000  1.000000        0.00000
REMARK 350   BIOMT1   2 -1.000000  0.000000  0.000000       40.00000
REMARK 350   BIOMT2   2  0.000000 -1.000000  0.000000        0.00000
REMARK 350   BIOMT3   2  0.000000  0.000000  1.000000        0.00000
"""

CIF = """\
data_TINY
#
loop_
_pdbx_struct_assembly.id
_pdbx_struct_assembly.details
_pdbx_struct_assembly.method_details
_pdbx_struct_assembly.oligomeric_details
_pdbx_struct_assembly.oligomeric_count
1 author_defined_assembly ? dimeric 2
#
_pdbx_struct_assembly_gen.assembly_id 1
_pdbx_struct_assembly_gen.oper_expression 1,2
_pdbx_struct_assembly_gen.asym_id_list A,B
#
loop_
_pdbx_struct_oper_list.id
_pdbx_struct_oper_list.type
_pdbx_struct_oper_list.matrix[1][1]
_pdbx_struct_oper_list.matrix[1][2]
_pdbx_struct_oper_list.matrix[1][3]
_pdbx_struct_oper_list.vector[1]
_pdbx_struct_oper_list.matrix[2][1]
_pdbx_struct_oper_list.matrix[2][2]
_pdbx_struct_oper_list.matrix[2][3]
_pdbx_struct_oper_list.vector[2]
_pdbx_struct_oper_list.matrix[3][1]
_pdbx_struct_oper_list.matrix[3][2]
_pdbx_struct_oper_list.matrix[3][3]
_pdbx_struct_oper_list.vector[3]
1 'identity operation' 1 0 0 0 0 1 0 0 0 0 1 0
2 'point symmetry operation' -1 0 0 40 0 -1 0 0 0 0 1 0
#
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_alt_id
_atom_site.label_comp_id
_atom_site.label_asym_id
_atom_site.label_entity_id
_atom_site.label_seq_id
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
_atom_site.B_iso_or_equiv
_atom_site.auth_seq_id
_atom_site.auth_asym_id
_atom_site.pdbx_PDB_model_num
ATOM 1 N N . ALA A 1 1 0.000 0.000 0.000 1.0 20.0 1 A 1
ATOM 2 C CA . ALA A 1 1 1.460 0.000 0.000 1.0 20.0 1 A 1
ATOM 3 C C . ALA A 1 1 2.000 1.420 0.000 1.0 20.0 1 A 1
ATOM 4 O O A ALA A 1 1 1.300 2.400 0.000 0.6 20.0 1 A 1
ATOM 5 O O B ALA A 1 1 1.300 2.400 0.500 0.4 20.0 1 A 1
HETATM 6 O O . HOH B 2 . 9.000 0.000 0.000 1.0 20.0 201 A 1
"""


def write(path, lines) -> str:
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


@pytest.fixture
def tiny_pdb(tmp_path):
    return write(tmp_path / "tiny.pdb", protein_lines() + ligand_and_water_lines())


# ============================================================================ reader rules
def test_reader_removes_water_keeps_ligand_and_hydrogens(tiny_pdb):
    s = read_structure(tiny_pdb)
    assert s.n_atoms == N_PROTEIN + 1                       # + ZN, - HOH, - DOD
    assert s.composition == {"C": 6, "H": 1, "N": 2, "O": 2, "ZN": 1}
    assert s.name == "tiny" and s.source == str(tiny_pdb)


def test_reader_keeps_first_alternative_conformation(tmp_path):
    lines = protein_lines()
    lines.insert(4, atom_line(40, "O", "ALA", "A", 1, (1.3, 2.4, 0.6), "O", altloc="B",
                              occupancy=0.4))
    lines[3] = atom_line(4, "O", "ALA", "A", 1, (1.3, 2.4, 0.0), "O", altloc="A", occupancy=0.6)
    path = write(tmp_path / "alt.pdb", lines)
    s = read_structure(path)
    assert s.n_atoms == N_PROTEIN
    reference = read_structure(write(tmp_path / "ref.pdb", protein_lines()))
    np.testing.assert_allclose(s.positions, reference.positions, atol=1e-6)


def test_reader_builds_biomt_assembly(tmp_path):
    path = write(tmp_path / "dimer.pdb", BIOMT.splitlines() + protein_lines())
    auto = read_structure(path)
    assert auto.n_atoms == 2 * N_PROTEIN
    assert read_structure(path, assembly="1").n_atoms == 2 * N_PROTEIN
    assert read_structure(path, assembly=None).n_atoms == N_PROTEIN
    # the copy is the 2-fold image about x = 20: the particle spans both
    assert np.ptp(auto.positions[:, 0]) > 30


def test_reader_unknown_assembly_and_too_large_assembly(tmp_path):
    path = write(tmp_path / "dimer.pdb", BIOMT.splitlines() + protein_lines())
    with pytest.raises(StructureError, match="dimer.pdb.*assembly '7'"):
        read_structure(path, assembly="7")
    with pytest.raises(StructureError, match="dimer.pdb.*max_atoms"):
        read_structure(path, assembly="1", max_atoms=N_PROTEIN)
    with pytest.warns(UserWarning, match="asymmetric unit"):
        assert read_structure(path, max_atoms=N_PROTEIN).n_atoms == N_PROTEIN


def test_reader_combines_models_that_are_copies(tmp_path):
    lines = (["MODEL        1"] + protein_lines() + ["ENDMDL", "MODEL        2"]
             + protein_lines(shift=(30.0, 0.0, 0.0)) + ["ENDMDL"])
    path = write(tmp_path / "two_copies.pdb", lines)
    assert read_structure(path).n_atoms == 2 * N_PROTEIN
    assert read_structure(path, assembly=None).n_atoms == N_PROTEIN


def test_reader_reads_first_model_of_an_ensemble(tmp_path):
    lines = (["MODEL        1"] + protein_lines() + ["ENDMDL", "MODEL        2"]
             + protein_lines(shift=(0.3, -0.2, 0.1)) + ["ENDMDL"])
    path = write(tmp_path / "nmr.pdb", lines)
    assert read_structure(path).n_atoms == N_PROTEIN


def test_reader_mmcif_assembly_alt_and_water(tmp_path):
    path = tmp_path / "tiny.cif"
    path.write_text(CIF)
    s = read_structure(path)                 # assembly lists the water subchain B too
    assert s.n_atoms == 2 * 4 and s.composition == {"C": 4, "N": 2, "O": 2}
    assert read_structure(path, assembly=None).n_atoms == 4
    gz = tmp_path / "tiny.cif.gz"
    gz.write_bytes(gzip.compress(CIF.encode()))
    assert read_structure(gz).n_atoms == 8 and read_structure(gz).name == "tiny"


def test_reader_gzip_equals_plain(tmp_path, tiny_pdb):
    gz = tmp_path / "tiny.pdb.gz"
    gz.write_bytes(gzip.compress(tiny_pdb.read_bytes()))
    np.testing.assert_array_equal(read_structure(gz).positions, read_structure(tiny_pdb).positions)


# ============================================================================ reader errors
def _gz_truncated(path, tiny_pdb):
    path.write_bytes(gzip.compress(tiny_pdb.read_bytes())[:60])


def _gz_garbage(path, tiny_pdb):
    path.write_bytes(b"this is not gzip data at all" * 4)


@pytest.mark.parametrize("filename, make, message", [
    ("missing.pdb", None, "no such"),
    ("truncated.pdb.gz", _gz_truncated, "corrupt or truncated gzip"),
    ("garbage.pdb.gz", _gz_garbage, "corrupt or truncated gzip"),
    ("empty.pdb", lambda p, _: p.write_text(""), "no atoms"),
    ("empty.cif", lambda p, _: p.write_text(""), "empty.cif"),
    ("water.pdb", lambda p, _: write(p, ligand_and_water_lines()[1:]), "no atoms"),
    ("junk.cif", lambda p, _: p.write_text("data_x\nloop_\n_a.b\n'unterminated\n"), "junk.cif"),
])
def test_reader_bad_files_raise_naming_the_file(tmp_path, tiny_pdb, filename, make, message):
    path = tmp_path / filename
    if make is not None:
        make(path, tiny_pdb)
    with pytest.raises(StructureError, match=message) as info:
        read_structure(path)
    assert filename in str(info.value)


def test_reader_unknown_element_names_file_residue_and_atom(tmp_path):
    lines = protein_lines() + [atom_line(50, "XX1", "LIG", "A", 301, (8, 8, 8), "Xx",
                                         record="HETATM")]
    path = write(tmp_path / "weird.pdb", lines)
    with pytest.raises(StructureError, match=r"weird\.pdb.*'XX1'.*LIG 301"):
        read_structure(path)


def test_list_structure_files(tmp_path):
    names = ["b.cif.gz", "a.pdb", "c.ent", "d.mmcif", "f.pdb.gz", "G.PDB", "e.txt", "h.pdb.bz2"]
    for name in names:
        (tmp_path / name).write_text("")
    (tmp_path / "sub.pdb").mkdir()
    found = [p.name for p in list_structure_files(tmp_path)]
    assert found == ["G.PDB", "a.pdb", "b.cif.gz", "c.ent", "d.mmcif", "f.pdb.gz"]
    with pytest.raises(StructureError, match="nowhere"):
        list_structure_files(tmp_path / "nowhere")


# ============================================================================ procedural
def _gyration_axes(x):
    """Square roots of the gyration-tensor eigenvalues, largest first (angstrom)."""
    return np.sqrt(np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1])


@pytest.fixture(scope="module")
def particles():
    return {kind: procedural_particle(kind, 20_000, seed=1) for kind in KINDS}


def test_procedural_atom_count_and_composition(particles):
    for kind, s in particles.items():
        assert 0.99 * 20_000 <= s.n_atoms <= 20_000, kind
        assert set(s.composition) == set(COMPOSITION), kind
        for element, fraction in COMPOSITION.items():
            assert s.composition[element] / s.n_atoms == pytest.approx(fraction, abs=0.005)
        assert np.all(s.weights == 1)


def test_procedural_density(particles):
    from scipy.spatial import ConvexHull, cKDTree

    for kind in ("globular", "elongated"):
        x = particles[kind].positions
        assert len(x) / ConvexHull(x).volume == pytest.approx(PROTEIN_ATOM_DENSITY, rel=0.3)
    for kind, s in particles.items():              # local density inside the material
        counts = cKDTree(s.positions).query_ball_point(s.positions[::20], 8.0, return_length=True)
        local = np.percentile(counts, 75) / (4 / 3 * np.pi * 8.0 ** 3)
        assert local == pytest.approx(PROTEIN_ATOM_DENSITY, rel=0.3), kind


def test_procedural_atoms_are_structured_not_overlapping(particles):
    from scipy.spatial import cKDTree

    for kind, s in particles.items():
        d, _ = cKDTree(s.positions).query(s.positions, k=2)
        nearest = d[:, 1]
        assert np.mean(nearest < 1.1) < 0.01, kind
        # bonded neighbours: most atoms have a partner at covalent distance
        assert np.median(nearest) < 1.7, kind


def test_procedural_is_deterministic():
    a = procedural_particle("oligomer", 3000, seed=7)
    b = procedural_particle("oligomer", 3000, seed=7)
    c = procedural_particle("oligomer", 3000, seed=8)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.elements, b.elements)
    assert a.name == "proc-oligomer-s0007" and a.source == "procedural:oligomer:seed=7"
    assert a.positions.shape != c.positions.shape or not np.allclose(a.positions, c.positions)


def test_procedural_kinds_differ_in_shape(particles):
    ax = {kind: _gyration_axes(s.positions) for kind, s in particles.items()}
    radial = {kind: np.linalg.norm(s.positions, axis=1) for kind, s in particles.items()}
    rg = {kind: np.sqrt(np.mean(r ** 2)) for kind, r in radial.items()}
    assert ax["elongated"][0] / ax["elongated"][2] > 1.8
    assert ax["globular"][0] / ax["globular"][2] < 1.6
    assert ax["cage"][0] / ax["cage"][2] < 1.1                     # isotropic ...
    assert np.mean(radial["cage"] < 0.5 * rg["cage"]) < 0.005       # ... and hollow
    assert np.mean(radial["globular"] < 0.5 * rg["globular"]) > 0.03
    ring = particles["ring"].positions
    assert ax["ring"][0] / ax["ring"][1] < 1.05                     # round about its axis
    in_plane = np.linalg.norm(ring[:, :2], axis=1)                  # axis is z
    assert np.mean(in_plane < 0.4 * rg["ring"]) < 0.005             # with a hole


def test_procedural_library_cycles_kinds():
    lib = procedural_library(7, seed=2, n_atoms_range=(600, 1200))
    assert [s.name.split("-")[1] for s in lib] == list(KINDS) + [KINDS[0]]
    assert len({s.name for s in lib}) == 7
    assert all(500 <= s.n_atoms <= 1200 for s in lib)
    again = procedural_library(7, seed=2, n_atoms_range=(600, 1200))
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(lib, again))


@pytest.mark.parametrize("group, order", [("C1", 1), ("C7", 7), ("D7", 14), ("T", 12),
                                          ("O", 24), ("I", 60)])
def test_point_groups(group, order):
    g = point_group(group)
    assert g.shape == (order, 3, 3)
    np.testing.assert_allclose(g @ g.transpose(0, 2, 1), np.broadcast_to(np.eye(3), g.shape),
                               atol=1e-12)
    assert np.allclose(np.linalg.det(g), 1)


@pytest.mark.parametrize("kwargs, word", [
    (dict(kind="blob", n_atoms=100, seed=0), "kind"),
    (dict(kind="globular", n_atoms=0, seed=0), "n_atoms"),
    (dict(kind="globular", n_atoms=10.5, seed=0), "n_atoms"),
    (dict(kind="globular", n_atoms=100, seed=-1), "seed"),
    (dict(kind="cage", n_atoms=5, seed=0), "n_atoms"),
])
def test_procedural_bad_arguments(kwargs, word):
    with pytest.raises(StructureError, match=word):
        procedural_particle(**kwargs)


@pytest.mark.slow
def test_procedural_speed():
    procedural_particle("globular", 1000, seed=0)
    start = time.perf_counter()
    procedural_particle("globular", 100_000, seed=0)
    assert time.perf_counter() - start < 4.0       # about 1 s on an idle core


# ============================================================================ continuum
def _electrons(s):
    return float((s.weights * 6).sum())


def test_sphere_and_core_shell_hold_their_electrons():
    s = sphere(120.0, density=0.43, voxel_angstrom=8.0)
    volume = 4 / 3 * np.pi * 120.0 ** 3
    assert _electrons(s) == pytest.approx(0.43 * volume, rel=0.02)
    assert s.n_electrons == pytest.approx(0.43 * volume, rel=0.02)
    assert s.n_atoms == pytest.approx(volume / 8.0 ** 3, rel=0.03)   # one point per cell
    assert s.radius < 121.0 and set(s.composition) == {"C"}

    cs = core_shell(100.0, 30.0, core_density=0.55, shell_density=0.43)
    expected = 0.55 * 4 / 3 * np.pi * 100.0 ** 3 + 0.43 * 4 / 3 * np.pi * (130.0 ** 3 - 100.0 ** 3)
    assert _electrons(cs) == pytest.approx(expected, rel=0.02)
    r = np.linalg.norm(cs.positions, axis=1)
    assert np.allclose(cs.weights[r < 90] * 6 / 10.0 ** 3, 0.55, rtol=0.05)
    assert np.allclose(cs.weights[r > 110] * 6 / 10.0 ** 3, 0.43, rtol=0.05)


def test_capsid_is_icosahedral_and_hollow():
    d, t = 400.0, 40.0
    cap = icosahedral_capsid(d, t, core_density=0.2, shell_density=0.43, voxel_angstrom=10.0)
    x = cap.positions
    along_vertices = (x @ icosahedron_vertices().T).max(axis=0).mean()
    along_faces = (x @ icosahedron_face_normals().T).max(axis=0).mean()
    assert along_vertices > 1.15 * along_faces                      # ideal ratio 1.258
    assert along_vertices == pytest.approx(d / 2, rel=0.05)
    r = np.linalg.norm(x, axis=1)
    density = cap.weights * 6 / 10.0 ** 3
    mid = density[(r > 0.3 * d / 2) & (r < 0.5 * d / 2)].mean()
    shell = density[(x @ icosahedron_face_normals().T).max(axis=1) > 0.795 * d / 2 - t + 10].mean()
    assert shell > 1.5 * mid
    # electrons: face-to-face inradius r_in, volume of an icosahedron = 20 r_in^3 * 0.50541...
    r_out = 0.7946544722917662 * d / 2
    unit = 5 / 12 * (3 + 5 ** 0.5) * (1 / np.sin(2 * np.pi / 5)) ** 3 / 0.7946544722917662 ** 3
    v_out, v_in = unit * r_out ** 3, unit * (r_out - t) ** 3
    assert _electrons(cap) == pytest.approx(0.2 * v_in + 0.43 * (v_out - v_in), rel=0.02)


def test_default_capsid_is_pr772_sized():
    cap = icosahedral_capsid()
    assert 5e4 < cap.n_atoms < 2e5
    assert 2 * cap.radius == pytest.approx(700, rel=0.03)


@pytest.mark.parametrize("call, word", [
    (lambda: sphere(-5.0), "radius_angstrom"),
    (lambda: sphere(50.0, density=-1), "density"),
    (lambda: sphere(50.0, voxel_angstrom=0), "voxel_angstrom"),
    (lambda: core_shell(50.0, float("nan")), "shell_thickness"),
    (lambda: icosahedral_capsid(100.0, shell_thickness=60.0), "shell_thickness"),
    (lambda: sphere(1.0, voxel_angstrom=50.0), "voxel_angstrom"),
    (lambda: core_shell(50.0, 10.0, 0.0, 0.0), "empty"),
])
def test_continuum_bad_parameters(call, word):
    with pytest.raises(StructureError, match=word):
        call()
