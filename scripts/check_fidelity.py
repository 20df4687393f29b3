"""Check the engine against skopi's direct sum on real PDB entries.

For each entry: one random orientation (seeded), skopi's numba direct sum over the central
crop (photons per pixel, skopi's own q-vectors, corrections and form-factor splines), our
exact ("direct") and fast methods over the same pixels, and the relative L2 error
``||ours - skopi|| / ||skopi||``. The target is < 1% for both methods.

Usage::

    python scripts/check_fidelity.py                      # default entries from ../shared/pdb
    python scripts/check_fidelity.py --ids 1BXN 6VZ8 --crop 96 --out fidelity.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from simulate.engine import PatternEngine
from simulate.geometry import default_geometry
from simulate.pdb_io import read_structure
from simulate.reference import skopi_intensity
from simulate.rotations import quaternion_to_matrix, random_quaternions

DEFAULT_IDS = ["3SN6", "1VLN", "1BXN", "4JSV", "1OEL", "2FHA", "6VZ8", "3J9I", "4V4R"]


def find_file(pdb_dir: Path, pdb_id: str) -> Path:
    hits = sorted(pdb_dir.glob(f"{pdb_id}.*"))
    if not hits:
        raise FileNotFoundError(f"no file for {pdb_id} in {pdb_dir}")
    return hits[0]


def check_entry(path: Path, crop: int, seed: int) -> dict:
    geometry = default_geometry()
    structure = read_structure(path)
    quat = random_quaternions(1, np.random.default_rng(seed))
    r0 = (geometry.n_pixels - crop) // 2
    sl = (slice(r0, r0 + crop), slice(r0, r0 + crop))

    t0 = time.perf_counter()
    ref = skopi_intensity(structure, quat[0], geometry, crop=crop)
    t_skopi = time.perf_counter() - t0

    row = {"id": structure.name, "n_atoms": structure.n_atoms,
           "radius_angstrom": round(structure.radius, 1), "skopi_s": round(t_skopi, 2)}
    for method in ("direct", "fast"):
        t0 = time.perf_counter()
        engine = PatternEngine(structure, geometry, method=method)
        t_setup = time.perf_counter() - t0
        if method == "direct":  # only the crop: the full-detector direct sum is slow
            rotation = torch.as_tensor(quaternion_to_matrix(quat))
            field = engine.shot_field(rotation, q=engine.q[sl])
            ours = (field.abs() ** 2 * engine.scale[sl]).numpy()
        else:
            ours = engine.intensity(quat)[0].double().numpy()[sl]
            row["grid_side"] = engine.volume.side
            row["fast_setup_s"] = round(t_setup, 2)
        row[f"rel_l2_{method}"] = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
    row["photons_in_crop"] = round(float(ref.sum()), 1)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdb-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "pdb"))
    parser.add_argument("--ids", nargs="*", default=DEFAULT_IDS)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)

    rows = []
    header = f"{'id':6s} {'atoms':>7s} {'R(A)':>6s} {'direct':>9s} {'fast':>9s} {'grid':>5s} {'setup':>6s} {'skopi':>7s} {'photons':>9s}"
    print(header)
    for i, pdb_id in enumerate(args.ids):
        row = check_entry(find_file(Path(args.pdb_dir), pdb_id), args.crop, args.seed + i)
        rows.append(row)
        print(f"{row['id']:6s} {row['n_atoms']:7d} {row['radius_angstrom']:6.1f} "
              f"{row['rel_l2_direct']:9.2e} {row['rel_l2_fast']:9.2e} {row['grid_side']:5d} "
              f"{row['fast_setup_s']:5.1f}s {row['skopi_s']:6.1f}s {row['photons_in_crop']:9.1f}", flush=True)
    worst = max(max(r["rel_l2_direct"], r["rel_l2_fast"]) for r in rows)
    print(f"worst relative L2 error over the {args.crop}x{args.crop} crop: {worst:.2e} "
          f"({'PASS' if worst < 0.01 else 'FAIL'}: target < 1e-2)")
    if args.out:
        Path(args.out).write_text(json.dumps({"crop": args.crop, "seed": args.seed, "rows": rows}, indent=2))
    return 0 if worst < 0.01 else 1


if __name__ == "__main__":
    raise SystemExit(main())
