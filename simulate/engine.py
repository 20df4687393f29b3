"""The diffraction engine: scattering amplitudes and noise-free intensities, in torch (CPU or CUDA).

Two ways to get the amplitude ``F(q) = sum_j w_j f_j(|q|) exp(2 pi i q . r_j)`` (electrons):

* ``"direct"`` -- the exact direct sum over atoms, chunked; the reference the fast path is
  checked against, and itself checked against skopi's numba direct sum.
* ``"fast"`` -- ``F`` is computed once per structure on a cubic reciprocal-space grid with a
  type-1 non-uniform FFT (finufft, exact to ``eps``), then every pattern is a trilinear
  interpolation of that grid at the rotated pixel vectors (8 gathers per pixel, in torch),
  the approach of skopi's own ``Experiment`` (its 151^3 volume), with an oversampling chosen
  from the particle size so that the interpolation error stays below 1%.

Several particles in one shot: their fields are summed coherently,
``F_shot(q) = sum_p F(R_p^T q) exp(2 pi i q . t_p)``, with ``R_p`` the rotation of particle ``p``
and ``t_p`` its position (angstrom), exactly as skopi's ``Experiment`` does.

Size scaling (polydispersity, :mod:`simulate.sample_variety`): the particle scaled by ``s`` in
real space at constant density (positions ``s r_j``, weights ``s^3 w_j``) has
``F_s(q) = s^3 sum_j w_j f_j(|q|) exp(2 pi i s q . r_j)``. The engine returns
``s^3 F(s q) fbar(|q|) / fbar(s |q|)``, with ``fbar`` the weight-averaged form factor of the
structure: exact for single-element structures (every continuum object, carbon pseudo-atoms)
and, for real atoms, exact up to the spread of ``f_e(q) / f_e(s q)`` between elements (see
:meth:`PatternEngine.size_factor`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import GeometryError
from .form_factors import form_factor
from .geometry import Geometry, check_sampling, intensity_scale, reciprocal_vectors
from .rotations import quaternion_to_matrix
from .structure import Structure

#: Default grid oversampling: grid step ``1 / (oversampling * D)`` with ``D`` the particle
#: diameter. 12 keeps the trilinear error of |F|^2 below 1% on real entries, hollow cages
#: (the worst case: most power at the period ``1/D``) included; see scripts/check_fidelity.py.
DEFAULT_OVERSAMPLING = 12.0
#: Refuse grids larger than this many voxels per side (memory: N^3 * 8 bytes).
MAX_GRID_SIDE = 640


def _elements(structure: Structure):
    """Yield ``(element, positions (k,3) A, weights (k,))`` per element of the structure."""
    for element in np.unique(structure.elements):
        sel = structure.elements == element
        yield str(element), structure.positions[sel], structure.weights[sel]


def direct_amplitude(structure: Structure, q: torch.Tensor, *, chunk_atoms: int = 2048,
                     chunk_q: int = 16384) -> torch.Tensor:
    """Exact scattering amplitude by direct summation over atoms.

    Parameters
    ----------
    structure : Structure
        The particle (unrotated, at the origin).
    q : Tensor, shape (M, 3), float64
        Scattering vectors in 1/angstrom, on any device.

    Returns
    -------
    Tensor, shape (M,), complex128
        ``F(q)`` in electrons.
    """
    q = q.to(torch.float64)
    device = q.device
    qnorm = torch.linalg.vector_norm(q, dim=-1).cpu().numpy()
    out = torch.zeros(q.shape[0], dtype=torch.complex128, device=device)
    for element, pos, w in _elements(structure):
        f = torch.as_tensor(form_factor(element, qnorm), device=device)
        pos_t = torch.as_tensor(pos, device=device) * (2 * math.pi)
        w_t = torch.as_tensor(w, device=device, dtype=torch.float64)
        for q0 in range(0, q.shape[0], chunk_q):
            qc = q[q0:q0 + chunk_q]
            acc = torch.zeros(qc.shape[0], dtype=torch.complex128, device=device)
            for a0 in range(0, pos_t.shape[0], chunk_atoms):
                phase = qc @ pos_t[a0:a0 + chunk_atoms].T            # (m, k)
                acc += torch.polar(w_t[a0:a0 + chunk_atoms].expand_as(phase), phase).sum(1)
            out[q0:q0 + chunk_q] += f[q0:q0 + chunk_q] * acc
    return out


def form_factor_basis(elements, q_max: float, *, tol: float = 1e-5, n_table: int = 4096):
    """Low-rank separation of the form factors of several elements.

    ``f_e(q) ~= sum_r coeff[e, r] * basis[r](q)`` on ``0 <= q <= q_max`` with the smallest
    rank whose worst relative error is below ``tol`` (rank 3 reaches ~3e-6 for the common
    biological elements at these resolutions). The engine then needs one NUFFT per rank
    instead of one per element.

    Returns
    -------
    coeffs : dict[str, ndarray (r,)]
    q_table : ndarray (n_table,), 1/angstrom
    basis : ndarray (r, n_table)
    max_rel_error : float
    """
    elements = sorted(set(elements))
    q_table = np.linspace(0.0, q_max, n_table)
    table = np.array([form_factor(e, q_table) for e in elements])      # (n_e, n_table)
    u, sv, vt = np.linalg.svd(table, full_matrices=False)
    for rank in range(1, len(elements) + 1):
        approx = (u[:, :rank] * sv[:rank]) @ vt[:rank]
        err = float(np.max(np.abs(approx - table) / np.abs(table)))
        if err < tol:
            break
    coeffs = {e: u[i, :rank] * sv[:rank] for i, e in enumerate(elements)}
    return coeffs, q_table, vt[:rank], err


class ReciprocalVolume:
    """``F(q)`` of one structure on a cubic grid, for fast slicing at any orientation.

    Grid points are ``q = k * dq`` for integer ``k`` in ``[-K, K]`` per axis, with
    ``dq = 1 / (oversampling * D)`` (``D`` = particle diameter) and ``K dq >= q_max``.
    The grid is built with ``rank`` single-precision type-1 NUFFTs (finufft), one per term
    of the low-rank form-factor separation (:func:`form_factor_basis`).

    Parameters
    ----------
    structure : Structure
    q_max : float
        Largest ``|q|`` that will be sampled (1/angstrom), e.g. ``geometry.q_max(g)``.
    oversampling : float
        Grid points per speckle (``1/D``); the trilinear error falls as ``oversampling**-2``.
    eps : float
        Requested finufft precision.
    device : str or torch.device
        Where the grid lives; sampling runs there.
    nthreads : int, optional
        finufft threads (default 1: bit-reproducible grids; more threads are faster but sum
        in a varying order).
    """

    def __init__(self, structure: Structure, q_max: float, *,
                 oversampling: float = DEFAULT_OVERSAMPLING, eps: float = 1e-5,
                 device="cpu", nthreads: int | None = None):
        import finufft  # lazy: only the simulator needs it

        diameter = max(2.0 * structure.radius, 10.0)
        dq = 1.0 / (oversampling * diameter)
        half = int(math.ceil(q_max / dq)) + 2
        side = 2 * half + 1
        if side > MAX_GRID_SIDE:
            raise GeometryError(
                f"structure {structure.name!r}: diameter {diameter:.0f} A needs a {side}^3 "
                f"reciprocal grid at oversampling {oversampling} (max {MAX_GRID_SIDE}); lower "
                "the oversampling or the detector q-range")
        self.dq, self.half, self.side = dq, half, side
        k2 = (np.arange(-half, half + 1, dtype=np.float32) * np.float32(dq)) ** 2
        knorm = np.sqrt(k2[:, None, None] + k2[None, :, None] + k2[None, None, :])
        coeffs, q_table, basis, self.form_factor_error = form_factor_basis(
            structure.elements, float(knorm.max()) * 1.0001)
        # Nearest entry of a fine |q| table: form factors vary by <1e-6 between entries.
        table_index = np.rint(knorm * ((len(q_table) - 1) / q_table[-1])).astype(np.int32)
        del knorm
        # exp(i k x) is 2 pi-periodic in x for integer k: folding the points is exact.
        xyz = np.mod(2 * np.pi * dq * structure.positions + np.pi, 2 * np.pi) - np.pi
        xyz = np.ascontiguousarray(xyz.T, dtype=np.float32)
        # One thread by default: multi-threaded finufft sums in a varying order, and datasets
        # must be bit-reproducible from their seed.
        opts = {"upsampfac": 1.25, "nthreads": nthreads or 1, "showwarn": 0}
        uniq, inverse = np.unique(structure.elements, return_inverse=True)
        atom_coeffs = np.array([coeffs[e] for e in uniq])[inverse] * structure.weights[:, None]
        grid = np.zeros((side, side, side), dtype=np.complex64)
        for r in range(basis.shape[0]):
            strengths = atom_coeffs[:, r]
            partial = finufft.nufft3d1(*xyz, strengths.astype(np.complex64),
                                       n_modes=(side, side, side), eps=eps, isign=1, **opts)
            partial *= basis[r].astype(np.float32)[table_index]
            grid += partial
            del partial
        # Store as [z, y, x], flattened, so that a trilinear sample is 8 gathers of
        # adjacent real/imaginary pairs.
        vol = np.ascontiguousarray(grid.transpose(2, 1, 0))
        del grid
        self.volume = torch.as_tensor(vol, device=device).reshape(-1)
        # Flat-index offsets of the 8 voxels of a cell, ordered (dz, dy, dx).
        self._corner_offsets = torch.tensor(
            [dz * side * side + dy * side + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)],
            dtype=torch.int32, device=device)

    @property
    def device(self):
        return self.volume.device

    def to(self, device) -> "ReciprocalVolume":
        self.volume = self.volume.to(device)
        self._corner_offsets = self._corner_offsets.to(device)
        return self

    def sample(self, q: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation of ``F`` at ``q``.

        Parameters
        ----------
        q : Tensor, shape (..., 3)
            Scattering vectors in the particle frame (1/angstrom); points outside the grid
            are clamped to its edge (the grid covers the detector's q-range with margin).

        Returns
        -------
        Tensor, shape (...), complex64
        """
        side = self.side
        c = (q.to(torch.float32) * (1.0 / self.dq) + self.half).clamp_(0, side - 1.001)
        corner = c.floor()
        frac = (c - corner).reshape(-1, 3)
        i0 = corner.to(torch.int32)
        base = (i0[..., 2] * side + i0[..., 1]) * side + i0[..., 0]
        # One gather of the 8 surrounding voxels, ordered (z, y, x), then three lerps.
        v = self.volume.index_select(0, (base.reshape(-1, 1) + self._corner_offsets).reshape(-1))
        v = v.reshape(-1, 2, 2, 2)
        v = v[..., 0] + (v[..., 1] - v[..., 0]) * frac[:, 0, None, None]
        v = v[..., 0] + (v[..., 1] - v[..., 0]) * frac[:, 1, None]
        v = v[..., 0] + (v[..., 1] - v[..., 0]) * frac[:, 2]
        return v.reshape(q.shape[:-1])


class PatternEngine:
    """Noise-free diffraction intensities of one structure on one detector.

    Holds the pixel q-vectors and skopi's intensity scale (fluence x r_e^2 x polarisation x
    solid angle) on ``device``; ``method="fast"`` also holds a :class:`ReciprocalVolume`.

    Parameters
    ----------
    structure : Structure
    geometry : Geometry
    method : {"fast", "direct"}
    device : str or torch.device
    oversampling : float
        Grid oversampling of the fast method.
    max_beam_offset_px : float
        Largest beam-centre offset that will be requested (pads the grid's q-range).
    nthreads : int, optional
        finufft threads for the reciprocal grid (default 1, bit-reproducible).
    max_size_scale : float
        Largest particle size factor ``s`` that :meth:`shot_field` will be asked for
        (polydispersity): the grid covers ``s * q_max`` and the detector must sample the
        speckle of a particle ``s`` times larger. Default 1 (no scaling).
    """

    def __init__(self, structure: Structure, geometry: Geometry, *, method: str = "fast",
                 device="cpu", oversampling: float = DEFAULT_OVERSAMPLING,
                 max_beam_offset_px: float = 0.0, nthreads: int | None = None,
                 max_size_scale: float = 1.0):
        if method not in ("fast", "direct"):
            raise ValueError(f"method must be 'fast' or 'direct', got {method!r}")
        if not (math.isfinite(max_size_scale) and max_size_scale >= 1.0):
            raise ValueError(f"max_size_scale must be a finite number >= 1, got {max_size_scale!r}")
        check_sampling(geometry, 2 * structure.radius * max_size_scale,
                       where=f"structure {structure.name!r}" + (
                           f" grown x{max_size_scale:g} by dataset.sample.polydispersity (lower "
                           "sigma_rel or max_sigmas)" if max_size_scale != 1.0 else ""))
        self.structure, self.geometry, self.method = structure, geometry, method
        self.max_size_scale = float(max_size_scale)
        self._fbar = None       # (table of fbar(|q|), step), built on the first scaled shot
        self._q_norm = None     # |q| of this detector, cached on the first scaled shot
        self.device = torch.device(device)
        self.q = torch.as_tensor(reciprocal_vectors(geometry), device=self.device)   # (H,W,3) f64
        self.scale = torch.as_tensor(intensity_scale(geometry), device=self.device)  # (H,W) f64
        self._q32 = self.q.to(torch.float32)
        self.volume = None
        if method == "fast":
            pad = max_beam_offset_px * 1.5
            qmax = float(torch.linalg.vector_norm(self.q, dim=-1).max()) * (1 + pad / geometry.n_pixels)
            if max_size_scale != 1.0:
                qmax *= max_size_scale
            self.volume = ReciprocalVolume(structure, qmax, oversampling=oversampling,
                                           device=self.device, nthreads=nthreads)

    def amplitude(self, q: torch.Tensor) -> torch.Tensor:
        """``F`` of the unrotated particle at ``q`` (1/angstrom), shape (..., 3) -> complex (...)."""
        if self.method == "fast":
            return self.volume.sample(q)
        return direct_amplitude(self.structure, q.reshape(-1, 3)).reshape(q.shape[:-1])

    def size_factor(self, q_norm: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """``s^3 fbar(|q|) / fbar(s |q|)``: turns ``F(s q)`` into the field of the scaled particle.

        ``fbar(q) = sum_j w_j f_j(q) / sum_j w_j`` is the structure's weight-averaged form factor,
        tabulated once on 4096 points up to ``max_size_scale * |q|max`` (linear interpolation;
        form factors vary by < 1e-6 between points). Exact for one element; with several, the
        residual is ``sum_j w_j f_j(sq) (fbar(q)/fbar(sq) - f_j(q)/f_j(sq))``: against the direct
        sum of the scaled atoms, the relative L2 error of ``|F|^2`` is below 1e-4 for a C/N/O/S/Fe
        molecule at ``|q| <= 0.08 1/A`` (the paper's detector) and ``s`` in 0.9-1.2
        (tests/test_sample_variety.py).

        Parameters
        ----------
        q_norm : Tensor, shape (H, W)
            ``|q|`` in 1/angstrom.
        scales : Tensor, shape (m,)
            Size factors ``s`` (1 = the structure as built).

        Returns
        -------
        Tensor, shape (m, H, W), float64
        """
        if self._fbar is None:
            from .form_factors import form_factor

            top = max(float(torch.linalg.vector_norm(self.q, dim=-1).max()), 1e-6) * self.max_size_scale * 1.5
            table_q = np.linspace(0.0, top, 4096)
            total = np.zeros_like(table_q)
            for element, _, w in _elements(self.structure):
                total += w.sum() * form_factor(element, table_q)
            self._fbar = (torch.as_tensor(total / self.structure.weights.sum(), device=self.device),
                          top / (len(table_q) - 1))
        table, step = self._fbar
        s = scales.to(device=self.device, dtype=torch.float64)
        qn = q_norm.to(device=self.device, dtype=torch.float64)

        def fbar(x):
            pos = (x / step).clamp(0, table.shape[0] - 1.000001)
            i0 = pos.floor().to(torch.long)
            frac = pos - i0
            return table[i0] + (table[i0 + 1] - table[i0]) * frac

        return s[:, None, None] ** 3 * fbar(qn)[None] / fbar(s[:, None, None] * qn[None])

    def shot_field(self, rotations: torch.Tensor, positions_angstrom: torch.Tensor | None = None,
                   q: torch.Tensor | None = None, scales: torch.Tensor | None = None) -> torch.Tensor:
        """Coherent field of one shot with ``m`` particles.

        Parameters
        ----------
        rotations : Tensor, shape (m, 3, 3)
            Particle rotation matrices (``r' = R r``).
        positions_angstrom : Tensor, shape (m, 3), optional
            Particle centres (angstrom); default all at the origin.
        q : Tensor, shape (H, W, 3), optional
            Pixel q-vectors (default: this detector, no beam offset).
        scales : Tensor, shape (m,), optional
            Size factor of each particle (default: all 1, nothing scaled), at most
            ``max_size_scale``; see the module notes.

        Returns
        -------
        Tensor, shape (H, W), complex

        Raises
        ------
        ValueError
            A scale outside ``(0, max_size_scale]``.
        """
        q = self.q if q is None else q
        # float32 is ample to address the grid; the direct sum keeps float64.
        if self.method == "fast":
            qf = self._q32 if q is self.q else q.to(torch.float32)
        else:
            qf = q.to(torch.float64)
        # q in the particle frame: R^T q, i.e. q @ R for row vectors.
        q_body = torch.einsum("hwi,mij->mhwj", qf, rotations.to(qf.dtype))
        if scales is not None:
            scales = torch.as_tensor(scales, device=self.device, dtype=torch.float64)
            if bool((scales <= 0).any()) or float(scales.max()) > self.max_size_scale * (1 + 1e-6):
                raise ValueError(f"size scales {scales.tolist()} must lie in (0, max_size_scale = "
                                 f"{self.max_size_scale}]; build the engine with a larger max_size_scale")
            q_body = q_body * scales.to(qf.dtype)[:, None, None, None]
        field = self.amplitude(q_body)                                 # (m, H, W)
        if scales is not None:
            if q is self.q:
                if self._q_norm is None:
                    self._q_norm = torch.linalg.vector_norm(self.q, dim=-1)
                q_norm = self._q_norm
            else:
                q_norm = torch.linalg.vector_norm(q.to(torch.float64), dim=-1)
            factor = self.size_factor(q_norm, scales)
            field = field * factor.to(field.real.dtype)
        if positions_angstrom is not None:
            phase = 2 * math.pi * torch.einsum("hwi,mi->mhw", qf, positions_angstrom.to(qf.dtype))
            field = field * torch.polar(torch.ones_like(phase), phase).to(field.dtype)
        return field.sum(0)

    def intensity(self, quaternions, positions_angstrom=None) -> torch.Tensor:
        """Photons per pixel (noise-free) for ``n`` single-particle orientations.

        Parameters
        ----------
        quaternions : array_like, shape (n, 4) or (n, m, 4)
            Scalar-first quaternions; with a middle axis, ``m`` particles per shot.
        positions_angstrom : array_like, shape (n, m, 3), optional
            Particle centres per shot (only with ``m`` particles per shot).

        Returns
        -------
        Tensor, shape (n, H, W), float64 for "direct", float32 for "fast"
        """
        quats = np.asarray(quaternions, dtype=np.float64)
        if quats.ndim == 2:
            quats = quats[:, None, :]
        if quats.ndim != 3 or quats.shape[-1] != 4:
            raise ValueError(f"quaternions must have shape (n, 4) or (n, m, 4), got {quats.shape}")
        rots = torch.as_tensor(quaternion_to_matrix(quats), device=self.device)
        pos = None if positions_angstrom is None else torch.as_tensor(
            np.asarray(positions_angstrom, dtype=np.float64), device=self.device)
        out = []
        for i in range(quats.shape[0]):
            field = self.shot_field(rots[i], None if pos is None else pos[i])
            out.append(field.abs() ** 2 * self.scale.to(field.real.dtype))
        return torch.stack(out)


def diffraction_intensity(structure: Structure, quaternions, geometry: Geometry, *,
                          method: str = "fast", device="cpu", **engine_kwargs) -> np.ndarray:
    """Noise-free expected photons per pixel of a single particle in ``n`` orientations.

    Parameters
    ----------
    structure : Structure
    quaternions : array_like, shape (n, 4)
        Scalar-first ``(w, x, y, z)`` quaternions rotating the particle (as skopi).
    geometry : Geometry
    method : {"fast", "direct"}
        ``"direct"``: exact sum over atoms; ``"fast"``: interpolated reciprocal grid.
    device : str
        ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    ndarray, shape (n, H, W), float64
        Photons per pixel (skopi's ``linear_correction * |F|^2``).
    """
    engine = PatternEngine(structure, geometry, method=method, device=device, **engine_kwargs)
    return engine.intensity(quaternions).double().cpu().numpy()
