"""Procedural protein-like particles: an embedded structure source that needs no download.

A particle is built in three steps:

1. **Shape.** The asymmetric unit is a union of "blobs": ellipsoids whose radius is
   perturbed by a few smooth random bumps (von Mises lobes), each with an approximate signed
   distance function. A point group (cyclic, dihedral, tetrahedral, octahedral or
   icosahedral) turns the asymmetric unit into the whole particle, so rings, cages and
   oligomers are made of identical copies as real ones are.
2. **Chains.** The shape is scaled so that its volume holds the requested atoms at protein
   density. One Calpha per residue is spread uniformly through it and relaxed to an
   amorphous packing (no two closer than 4.2 angstrom, no lattice that would give Bragg
   peaks), then the Calpha are linked into chains of about 150 residues by a
   nearest-neighbour walk (links of 4-7 angstrom, a little longer than the real 3.8).
3. **Atoms.** Each residue gets backbone atoms (C, O, N on the peptide plane between
   successive Calpha) and a side chain that walks 1.53 angstrom bonds at the tetrahedral
   angle. Elements follow protein composition (no hydrogens). Finally atom pairs closer
   than 1.25 angstrom are pushed apart (a few rounds, which keeps the symmetry exact).

The residues give the particles internal structure at 1.2-5 angstrom, so that patterns
keep speckle at high q, while the electron density stays homogeneous on the 10 angstrom
scale as in a real protein (a gas of overlapping random-walk chains would be lumpy).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import StructureError
from .structure import Structure

KINDS = ("globular", "elongated", "ring", "cage", "oligomer", "dumbbell")
"""Particle kinds, in the order :func:`procedural_library` cycles through them."""

PROTEIN_ATOM_DENSITY = 0.0577
"""Heavy atoms per cubic angstrom in protein: 1.35 g/cm^3 (0.813 Da/A^3) divided by the
mean mass per heavy atom including its hydrogens (about 14.1 Da: 110 Da per residue,
7.8 heavy atoms per residue)."""

COMPOSITION = {"C": 0.63, "N": 0.17, "O": 0.19, "S": 0.01}
"""Fractions of heavy atoms per element in an average protein."""

ATOMS_PER_RESIDUE = 7.8
"""Mean heavy atoms per residue."""
BOND = 1.53
"""Side-chain bond length, in angstrom."""
CHAIN_LENGTH = 150
"""Typical residues per chain (one domain)."""
MIN_ATOM_DISTANCE = 1.25
"""Closer atom pairs are pushed apart (angstrom); a few remain where pushes conflict."""


# ---------------------------------------------------------------------------- public API
def procedural_particle(kind: str, n_atoms: int, seed: int) -> Structure:
    """One procedural protein-like particle.

    Parameters
    ----------
    kind : {"globular", "elongated", "ring", "cage", "oligomer", "dumbbell"}
        ``globular``: irregular blob with satellite lobes. ``elongated``: aspect ratio 2-4.
        ``ring``: 6-8 subunits around an axis, one ring or two stacked (GroEL-like).
        ``cage``: hollow shell of 12, 24 or 60 subunits (T, O or I symmetry, ferritin-like).
        ``oligomer``: 2-6 copies of one globular subunit with C_n or D_n symmetry.
        ``dumbbell``: two unequal lobes joined by a neck.
    n_atoms : int
        Requested heavy atoms. Symmetric kinds have a multiple of the group order: at most
        ``group order - 1`` atoms fewer.
    seed : int
        Seed of the numpy Generator; the same ``(kind, n_atoms, seed)`` gives the same atoms.

    Returns
    -------
    Structure
        Named ``proc-<kind>-s<seed>`` (e.g. ``proc-ring-s0003``), source
        ``procedural:<kind>:seed=<seed>``, positions in angstrom.

    Raises
    ------
    StructureError
        Unknown ``kind``, ``n_atoms`` smaller than the number of subunits, negative ``seed``.

    Examples
    --------
    >>> s = procedural_particle("ring", 20_000, seed=3)
    >>> s.name, s.n_atoms <= 20_000
    ('proc-ring-s0003', True)
    """
    _check_arguments(kind, n_atoms, seed)
    rng = np.random.default_rng([KINDS.index(kind), seed])
    design = _DESIGNERS[kind](rng)
    n_sub = int(n_atoms) // len(design.group)
    if n_sub < 1:
        raise StructureError(f"n_atoms={n_atoms}: the {kind} particle has {len(design.group)} "
                             "subunits and needs at least one atom each")
    blobs = _scale_to_volume(design.blobs, n_sub / PROTEIN_ATOM_DENSITY, rng)
    positions, elements = _fill_with_chains(blobs, n_sub, rng)
    positions = np.einsum("gij,nj->gni", design.group, positions).reshape(-1, 3)
    positions = _relax(positions, MIN_ATOM_DISTANCE, n_iter=6)   # keeps the symmetry exact
    elements = np.tile(elements, len(design.group))
    return Structure.from_atoms(positions, elements, name=f"proc-{kind}-s{seed:04d}",
                                source=f"procedural:{kind}:seed={seed}")


def procedural_library(n_structures: int, seed: int,
                       n_atoms_range: tuple[int, int] = (10_000, 100_000)) -> list[Structure]:
    """A list of procedural particles cycling through :data:`KINDS`.

    Parameters
    ----------
    n_structures : int
        Number of particles.
    seed : int
        Library seed. Particle ``i`` uses seed ``seed * 10_000 + i`` (names stay unique
        within a library) and a size drawn log-uniformly from ``n_atoms_range``.
    n_atoms_range : (int, int)
        Smallest and largest atom count (inclusive).

    Returns
    -------
    list of Structure
        ``kind = KINDS[i % len(KINDS)]`` for particle ``i``.
    """
    lo, hi = (int(v) for v in n_atoms_range)
    if not _is_count(n_structures, 0) or n_structures > 10_000:
        raise StructureError(f"n_structures={n_structures!r}: must be an integer in 0..10000")
    if not _is_count(seed, 0):
        raise StructureError(f"seed={seed!r}: must be a non-negative integer")
    if not 1 <= lo <= hi:
        raise StructureError(f"n_atoms_range={n_atoms_range!r}: need 1 <= low <= high")
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(lo), np.log(hi + 1), size=n_structures)).astype(int)
    return [procedural_particle(KINDS[i % len(KINDS)], int(min(sizes[i], hi)), seed * 10_000 + i)
            for i in range(n_structures)]


def _is_count(value, minimum: int) -> bool:
    return (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            and value >= minimum)


def _check_arguments(kind, n_atoms, seed) -> None:
    if kind not in KINDS:
        raise StructureError(f"kind={kind!r}: unknown procedural kind; choose from {KINDS}")
    if not _is_count(n_atoms, 1):
        raise StructureError(f"n_atoms={n_atoms!r}: must be a positive integer")
    if not _is_count(seed, 0):
        raise StructureError(f"seed={seed!r}: must be a non-negative integer")


# ---------------------------------------------------------------------------- geometry
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _random_unit(rng, *shape) -> np.ndarray:
    return _unit(rng.normal(size=(*shape, 3)))


def _random_rotation(rng) -> np.ndarray:
    """Uniformly random rotation matrix, shape (3, 3)."""
    w, x, y, z = _unit(rng.normal(size=4))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _axis_rotation(axis, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about ``axis`` (Rodrigues), shape (3, 3)."""
    k = _unit(np.asarray(axis, dtype=float))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _frame_with_z(direction, spin: float) -> np.ndarray:
    """Rotation whose third column is ``direction``, spun by ``spin`` radians about it."""
    z = _unit(np.asarray(direction, dtype=float))
    helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = _unit(np.cross(helper, z))
    frame = np.stack([x, np.cross(z, x), z], axis=1)
    return frame @ _axis_rotation([0, 0, 1], spin)


def _group_closure(generators) -> np.ndarray:
    """All products of the generator rotations, shape (g, 3, 3), identity first."""
    group = [np.eye(3)]
    seen = {tuple(np.round(np.eye(3), 6).ravel())}
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for b in generators:
                c = b @ a
                key = tuple(np.round(c, 6).ravel() + 0.0)
                if key not in seen:
                    seen.add(key)
                    new.append(c)
        group += new
        frontier = new
    return np.array(group)


def point_group(name: str) -> np.ndarray:
    """Rotation matrices of a point group, shape (g, 3, 3).

    Parameters
    ----------
    name : str
        ``"C<n>"`` (about z), ``"D<n>"`` (C_n plus a 2-fold about x), ``"T"`` (12),
        ``"O"`` (24) or ``"I"`` (60).
    """
    phi = (1 + 5 ** 0.5) / 2
    kind, digits = str(name)[:1], str(name)[1:]
    order = int(digits) if digits.isdigit() else 0
    gens = {"C": lambda: [_axis_rotation([0, 0, 1], 2 * np.pi / order)],
            "D": lambda: [_axis_rotation([0, 0, 1], 2 * np.pi / order),
                          _axis_rotation([1, 0, 0], np.pi)],
            "T": lambda: [_axis_rotation([0, 0, 1], np.pi), _axis_rotation([1, 1, 1], 2 * np.pi / 3)],
            "O": lambda: [_axis_rotation([0, 0, 1], np.pi / 2), _axis_rotation([1, 0, 0], np.pi / 2)],
            "I": lambda: [_axis_rotation([0, 1, phi], 2 * np.pi / 5),
                          _axis_rotation([1, 1, 1], 2 * np.pi / 3)]}
    if kind not in gens or (kind in "CD") != (order >= 1):
        raise StructureError(f"point group {name!r}: use C<n>, D<n>, T, O or I")
    return _group_closure(gens[kind]())


# ---------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class _Blob:
    """Ellipsoid with a bumpy radius; all lengths in angstrom (or unit scale)."""

    center: np.ndarray      # (3,)
    rotation: np.ndarray    # (3, 3), columns = blob axes in the particle frame
    axes: np.ndarray        # (3,) semi-axes
    bump_dirs: np.ndarray   # (m, 3) unit vectors in the blob frame
    bump_amps: np.ndarray   # (m,) relative radius change at each bump
    kappa: float            # bump sharpness

    def sdf(self, x: np.ndarray) -> np.ndarray:
        """Approximate signed distance of points ``x`` (..., 3): negative inside."""
        y = ((x - self.center) @ self.rotation) / self.axes
        r = np.linalg.norm(y, axis=-1)
        u = y / np.maximum(r, 1e-12)[..., None]
        g = 1 + (self.bump_amps * np.exp(self.kappa * (u @ self.bump_dirs.T - 1))).sum(-1)
        return (r - g) * self.axes.min()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = self.axes.max() * (1 + np.clip(self.bump_amps, 0, None).sum())
        return self.center - reach, self.center + reach

    def scaled(self, s: float) -> "_Blob":
        return replace(self, center=self.center * s, axes=self.axes * s)


@dataclass(frozen=True)
class _Design:
    blobs: tuple            # _Blob of the asymmetric unit
    group: np.ndarray       # (g, 3, 3) rotations making the whole particle


def _blob(rng, center, axes, rotation=None, bumpiness=0.25, n_bumps=6) -> _Blob:
    return _Blob(center=np.asarray(center, dtype=float),
                 rotation=_random_rotation(rng) if rotation is None else rotation,
                 axes=np.asarray(axes, dtype=float),
                 bump_dirs=_random_unit(rng, n_bumps),
                 bump_amps=bumpiness * rng.uniform(-0.6, 1.0, n_bumps),
                 kappa=float(rng.uniform(3, 8)))


def _union_sdf(blobs, x: np.ndarray) -> np.ndarray:
    return np.min([b.sdf(x) for b in blobs], axis=0)


def _union_bounds(blobs) -> tuple[np.ndarray, np.ndarray]:
    lows, highs = zip(*(b.bounds() for b in blobs))
    return np.min(lows, axis=0), np.max(highs, axis=0)


def _sample_inside(blobs, n: int, rng) -> np.ndarray:
    """``n`` points uniformly distributed inside the union of ``blobs``, shape (n, 3)."""
    lo, hi = _union_bounds(blobs)
    out = np.empty((0, 3))
    while out.shape[0] < n:
        x = rng.uniform(lo, hi, size=(max(4 * n, 1024), 3))
        out = np.concatenate([out, x[_union_sdf(blobs, x) <= 0]])
    return out[:n]


def _scale_to_volume(blobs, volume: float, rng, n_mc: int = 1 << 15) -> tuple:
    """Scale the blobs (centres and axes) so that their union has ``volume`` (A^3)."""
    lo, hi = _union_bounds(blobs)
    x = rng.uniform(lo, hi, size=(n_mc, 3))
    unit_volume = np.prod(hi - lo) * np.mean(_union_sdf(blobs, x) <= 0)
    s = (volume / unit_volume) ** (1 / 3)
    return tuple(b.scaled(s) for b in blobs)


def _design_globular(rng) -> _Design:
    blobs = [_blob(rng, [0, 0, 0], [1, rng.uniform(0.8, 1), rng.uniform(0.7, 0.95)], bumpiness=0.3)]
    for _ in range(rng.integers(0, 3)):
        blobs.append(_blob(rng, 0.75 * _random_unit(rng), rng.uniform(0.4, 0.6, 3), bumpiness=0.2))
    return _Design(tuple(blobs), point_group("C1"))


def _design_elongated(rng) -> _Design:
    axes = [rng.uniform(2, 4), rng.uniform(0.85, 1), 1]
    return _Design((_blob(rng, [0, 0, 0], axes, bumpiness=0.12),), point_group("C1"))


def _design_ring(rng) -> _Design:
    n = int(rng.choice([6, 7, 8]))
    stacked = rng.random() < 0.5
    axes = np.array([0.8, 1.2, 0.9]) * rng.uniform(0.9, 1.1, 3)   # radial, tangential, axial
    center = [0.9 * axes[1] / np.sin(np.pi / n), 0, 0.85 * axes[2] if stacked else 0]
    blob = _blob(rng, center, axes, rotation=np.eye(3), bumpiness=0.15)
    return _Design((blob,), point_group(f"{'D' if stacked else 'C'}{n}"))


def _design_cage(rng) -> _Design:
    name = str(rng.choice(["T", "O", "O", "I"]))
    group = point_group(name)
    radius = np.sqrt(len(group) / 5.2)               # subunit discs cover the sphere ~1.2x
    candidates = _random_unit(rng, 16)
    spread = [_min_orbit_distance(group, d) for d in candidates]
    direction = candidates[int(np.argmax(spread))]
    axes = [1.0, rng.uniform(0.8, 1.0), 0.45]        # two tangential, one radial semi-axis
    rot = _frame_with_z(direction, rng.uniform(0, 2 * np.pi))
    return _Design((_blob(rng, radius * direction, axes, rotation=rot, bumpiness=0.15),), group)


def _min_orbit_distance(group, direction) -> float:
    orbit = group @ direction
    d = np.linalg.norm(orbit[:, None] - orbit[None], axis=-1)
    return float(np.min(d + 10 * np.eye(len(group))))


def _design_oligomer(rng) -> _Design:
    n = int(rng.integers(2, 7))
    dihedral = n <= 4 and rng.random() < 0.35
    center = [0.75 / np.sin(np.pi / n), 0, 0.75 if dihedral else 0]
    axes = [1, rng.uniform(0.8, 1), rng.uniform(0.65, 0.9)]
    blob = _blob(rng, center, axes, bumpiness=0.25)
    return _Design((blob,), point_group(f"{'D' if dihedral else 'C'}{n}"))


def _design_dumbbell(rng) -> _Design:
    axis = _random_unit(rng)
    r2 = rng.uniform(0.6, 1.0)
    sep = 1 + r2 + rng.uniform(0.2, 0.8)
    neck_frame = _frame_with_z(axis, 0.0)
    blobs = (_blob(rng, -0.5 * sep * axis, [1, 1, 1], bumpiness=0.2),
             _blob(rng, 0.5 * sep * axis, [r2, r2, r2], bumpiness=0.2),
             _blob(rng, [0, 0, 0], [0.3, 0.3, 0.5 * sep], rotation=neck_frame, bumpiness=0.0))
    return _Design(blobs, point_group("C1"))


_DESIGNERS = {"globular": _design_globular, "elongated": _design_elongated,
              "ring": _design_ring, "cage": _design_cage, "oligomer": _design_oligomer,
              "dumbbell": _design_dumbbell}


# ---------------------------------------------------------------------------- chains
def _turn(d: np.ndarray, angle: np.ndarray, rng) -> np.ndarray:
    """Unit vectors at ``angle`` (radians) from the unit vectors ``d`` (..., 3), random azimuth."""
    perp = _unit(np.cross(d, rng.normal(size=d.shape)))
    return d * np.cos(angle)[..., None] + perp * np.sin(angle)[..., None]


def _close_pairs(x: np.ndarray, min_dist: float, active: np.ndarray | None) -> np.ndarray:
    """Index pairs ``(i, j)``, shape (m, 2), of points closer than ``min_dist``, each pair
    once; with ``active`` (a bool mask), only the pairs that involve an active point."""
    from scipy.spatial import cKDTree  # lazy: scipy is part of the simulator extra

    tree = cKDTree(x)
    if active is None:
        return tree.query_pairs(min_dist, output_type="ndarray")
    idx = np.flatnonzero(active)
    m = cKDTree(x[idx]).sparse_distance_matrix(tree, min_dist, output_type="ndarray")
    i, j = idx[m["i"]], m["j"]
    keep = (i != j) & ((i < j) | ~active[j])
    return np.stack([i[keep], j[keep]], axis=1)


def _relax(x: np.ndarray, min_dist: float, n_iter: int, blobs=None) -> np.ndarray:
    """Push apart points closer than ``min_dist`` (angstrom), ``n_iter`` rounds.

    Each close pair moves apart by half its overlap; with ``blobs``, a move that would leave
    the shape is dropped. After the first round only pairs with a point that moved can be
    too close, so only those are searched. Returns the new positions, shape (n, 3).
    """
    x, active = x.copy(), None
    for _ in range(n_iter):
        pairs = _close_pairs(x, min_dist, active)
        if len(pairs) == 0:
            break
        d = x[pairs[:, 1]] - x[pairs[:, 0]]
        r = np.linalg.norm(d, axis=1, keepdims=True)
        d = np.where(r > 1e-9, d, [1.0, 0.0, 0.0])     # coincident points: any direction
        push = 0.5 * (min_dist - r) * _unit(d)
        delta = np.stack([np.bincount(pairs[:, 1], push[:, k], len(x))
                          - np.bincount(pairs[:, 0], push[:, k], len(x)) for k in range(3)], 1)
        moved = x + delta
        if blobs is not None:
            moved = np.where((_union_sdf(blobs, moved) <= 0)[:, None], moved, x)
        active = np.any(moved != x, axis=1)
        x = moved
    return x


def _link_chains(ca: np.ndarray, rng, max_link: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """Order points into chains, each step to a near unvisited point (Warnsdorff's rule).

    The next residue is the unvisited neighbour (within ``max_link`` angstrom) that has the
    fewest unvisited neighbours itself, which keeps the walk from stranding points and so
    gives long chains. A chain ends when it is stuck or reaches a random length between
    half and twice :data:`CHAIN_LENGTH`. Returns the points in chain order, shape (n, 3),
    and the chain index of each, shape (n,).
    """
    from scipy.spatial import cKDTree

    n = len(ca)
    if n < 2:
        return ca, np.zeros(n, dtype=int)
    dist, nbrs = cKDTree(ca).query(ca, k=min(17, n), distance_upper_bound=max_link)
    nbrs = [row[1:][d[1:] < np.inf].tolist() for row, d in zip(nbrs, dist)]
    degree = [len(row) for row in nbrs]
    visited = np.zeros(n, dtype=bool)
    order, chain = [], []
    starts = iter(rng.permutation(n).tolist())
    n_chains = 0
    while len(order) < n:
        i = next(j for j in starts if not visited[j])
        for _ in range(int(rng.integers(CHAIN_LENGTH // 2, 2 * CHAIN_LENGTH))):
            visited[i] = True
            order.append(i)
            chain.append(n_chains)
            free = [j for j in nbrs[i] if not visited[j]]
            for j in free:
                degree[j] -= 1
            if not free:
                break
            i = min(free, key=degree.__getitem__)
        n_chains += 1
    return ca[order], np.asarray(chain)


def _calpha_traces(blobs, n_res: int, rng, min_dist: float = 4.2) -> tuple[np.ndarray, np.ndarray]:
    """Calpha positions in chain order, shape (n_res, 3), and chain index, shape (n_res,).

    The Calpha are first spread uniformly through the shape and relaxed to be at least
    ``min_dist`` apart (an amorphous, homogeneous packing with no lattice to give Bragg
    peaks), then linked into chains.
    """
    ca = _relax(_sample_inside(blobs, n_res, rng), min_dist, n_iter=10, blobs=blobs)
    return _link_chains(ca, rng)


def _backbone(ca: np.ndarray, chain: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Peptide C, O and N atoms between successive Calpha of a chain.

    Returns positions, shape (3 * n_bonds, 3), and their element symbols.
    """
    bond = np.flatnonzero(chain[1:] == chain[:-1])
    e = _unit(ca[bond + 1] - ca[bond])
    p = _unit(np.cross(e, rng.normal(size=e.shape)))
    c = ca[bond] + 1.41 * e + 0.5 * p
    o = c + 1.23 * p
    n = ca[bond + 1] - 1.41 * e - 0.4 * p
    symbols = np.repeat(np.array(["C", "O", "N"]), len(bond))
    return np.concatenate([c, o, n]), symbols


def _side_chains(ca: np.ndarray, chain: np.ndarray, lengths: np.ndarray, rng) -> np.ndarray:
    """Side-chain atoms, ``lengths[i]`` of them walking from Calpha ``i``; shape (sum, 3)."""
    n_res, longest = len(ca), int(lengths.max(initial=0))
    if longest == 0:
        return np.empty((0, 3))
    prev = np.where(np.r_[False, chain[1:] == chain[:-1]][:, None], np.roll(ca, 1, 0), ca)
    nxt = np.where(np.r_[chain[1:] == chain[:-1], False][:, None], np.roll(ca, -1, 0), ca)
    d = _unit(_unit(2 * ca - prev - nxt) + 0.6 * _random_unit(rng, n_res))
    steps = [d]
    for _ in range(longest - 1):
        d = _turn(d, np.full(n_res, np.radians(70.5)), rng)
        steps.append(d)
    atoms = ca[:, None] + BOND * np.cumsum(np.stack(steps, axis=1), axis=1)
    return atoms[np.arange(longest)[None] < lengths[:, None]]


def _side_elements(n_total: int, backbone_symbols: np.ndarray, n_side: int, rng) -> np.ndarray:
    """Side-chain element symbols so that all atoms together follow :data:`COMPOSITION`."""
    symbols = np.array(list(COMPOSITION))
    target = np.round(np.array(list(COMPOSITION.values())) * n_total).astype(int)
    have = np.array([np.count_nonzero(backbone_symbols == s) for s in symbols])
    need = np.clip(target - have, 0, None)
    labels = np.concatenate([np.repeat(symbols, need), np.full(n_side, "C")])[:n_side]
    return rng.permutation(labels)


def _fill_with_chains(blobs, n_atoms: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``n_atoms`` protein-like atoms inside the blobs: positions (n, 3), elements (n,)."""
    n_res = max(1, round(n_atoms / ATOMS_PER_RESIDUE))
    ca, chain = _calpha_traces(blobs, n_res, rng)
    bb_pos, bb_sym = _backbone(ca, chain, rng)
    bb_pos, bb_sym = np.concatenate([ca, bb_pos]), np.concatenate([np.full(n_res, "C"), bb_sym])
    bb_pos, bb_sym = bb_pos[:n_atoms], bb_sym[:n_atoms]
    n_side = n_atoms - len(bb_pos)
    lengths = rng.multinomial(n_side, np.full(n_res, 1 / n_res))
    side = _side_chains(ca, chain, lengths, rng)
    elements = np.concatenate([bb_sym, _side_elements(n_atoms, bb_sym, n_side, rng)])
    return np.concatenate([bb_pos, side]), elements
