"""Simulator throughput: patterns per second, noise and masks included, beside skopi's CPU direct sum.

For a 20k- and a 60k-atom procedural particle on the paper geometry (172x172):

* set-up time of the fast engine (reciprocal grid: finufft + form factors);
* patterns/s of ``ShotGenerator`` (single hits: random orientation, fluence jitter, Poisson
  and Gaussian noise, masks) in one process, and with ``--workers`` processes generating
  independently (how ``speckle-simulate`` runs under the joblib launcher);
* seconds per pattern of skopi's numba direct sum over the full detector (its only CPU
  path), and the speed-up ratio.

Usage::

    python benchmarks/bench_simulate.py                 # CPU
    python benchmarks/bench_simulate.py --device cuda   # also on a GPU when one is present
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time

import torch


def _make(n_atoms: int, seed: int):
    from simulate.procedural import procedural_particle

    return procedural_particle("globular", n_atoms, seed)


def _throughput(n_atoms: int, seed: int, n_patterns: int, device: str, threads: int,
                queue=None) -> dict:
    from simulate.engine import PatternEngine
    from simulate.geometry import default_geometry
    from simulate.shots import HitMix, ShotGenerator

    torch.set_num_threads(threads)
    structure = _make(n_atoms, seed)
    t0 = time.perf_counter()
    engine = PatternEngine(structure, default_geometry(), method="fast", device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    setup = time.perf_counter() - t0
    gen = ShotGenerator(engine, mix=HitMix(single=1.0, multi=0.0), seed=seed)
    gen.generate(8)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    gen.generate(n_patterns)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"n_atoms": structure.n_atoms, "radius_A": round(structure.radius, 1),
           "grid_side": engine.volume.side, "setup_s": round(setup, 2),
           "patterns_per_s": n_patterns / elapsed}
    if queue is not None:
        queue.put(out)
    return out


def _parallel(n_atoms, seed, n_patterns, workers) -> float:
    """Aggregate patterns/s of ``workers`` independent single-thread processes."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_throughput, args=(n_atoms, seed + i, n_patterns, "cpu", 1, queue))
             for i in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(r["patterns_per_s"] for r in results)


def _skopi_seconds(n_atoms: int, seed: int) -> float:
    from simulate.geometry import default_geometry
    from simulate.reference import skopi_intensity

    structure = _make(n_atoms, seed)
    skopi_intensity(structure.__class__.from_atoms(structure.positions[:10], structure.elements[:10]),
                    [1, 0, 0, 0], default_geometry(), crop=8)  # numba compilation
    t0 = time.perf_counter()
    skopi_intensity(structure, [1, 0, 0, 0], default_geometry())
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="*", default=[20_000, 60_000])
    parser.add_argument("--patterns", type=int, default=400)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the single-process run (per-shot ops are small: 1 avoids OpenMP overhead)")
    parser.add_argument("--skip-skopi", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write results as JSON")
    args = parser.parse_args(argv)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {args.device}")
    rows = []
    for n_atoms in args.atoms:
        one = _throughput(n_atoms, args.seed, args.patterns, args.device, args.threads)
        row = dict(one, device=args.device)
        if args.device == "cpu" and args.workers > 1:
            row["patterns_per_s_parallel"] = _parallel(n_atoms, args.seed, args.patterns, args.workers)
        if not args.skip_skopi:
            row["skopi_s_per_pattern"] = _skopi_seconds(n_atoms, args.seed)
            best = row.get("patterns_per_s_parallel", row["patterns_per_s"])
            row["speedup_vs_skopi"] = best * row["skopi_s_per_pattern"]
        rows.append(row)

    print(f"\n{'atoms':>7s} {'R(A)':>6s} {'grid':>5s} {'setup':>7s} {'pat/s 1 proc':>13s} "
          f"{'pat/s ' + str(args.workers) + ' proc':>13s} {'skopi s/pat':>12s} {'speed-up':>9s}")
    for r in rows:
        print(f"{r['n_atoms']:7d} {r['radius_A']:6.1f} {r['grid_side']:5d} {r['setup_s']:6.1f}s "
              f"{r['patterns_per_s']:13.1f} {r.get('patterns_per_s_parallel', float('nan')):13.1f} "
              f"{r.get('skopi_s_per_pattern', float('nan')):12.2f} {r.get('speedup_vs_skopi', float('nan')):9.0f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
