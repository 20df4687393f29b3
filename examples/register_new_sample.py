"""Register a new sample: few-shot classification of a structure the model never saw.

What it shows
-------------
1. ``se.load_pretrained()``: the embedding shipped inside the package (no download, no training).
2. Simulating ~60 shots of a new structure: a procedural particle from a seed the pretrained
   model was not trained on, or any PDB/mmCIF file (``--pdb``). The shots are written as a
   CXI-flavoured HDF5 shard and read back with h5py, as a user's own file would be.
3. ``se.FewShotClassifier(emb).fit(...)`` with 5 labelled frames per class ("single", "multi"),
   ``predict`` on all the other frames, accuracy and F1 (single hit positive).
4. ``clf.save(dir)`` and ``se.FewShotClassifier.load(dir)``: the saved folder holds its own
   copy of the embedder, so it reloads (or ``speckle-embed classify`` uses it) standalone.

Run it (about 30 s on 2 CPU cores; outputs under ``outputs/examples/register_new_sample``)::

    python examples/register_new_sample.py
    python examples/register_new_sample.py --pdb ../shared/pdb/1BXN.pdb.gz --n-frames 200
    python examples/register_new_sample.py --kind dumbbell --atoms 40000

Full size: the evaluation suite's offline protocol scores this on held-out PDB entries,
1/5/20 shots, 20 episodes of up to 1,000 queries each (README, "Training an embedding")::

    python -m simulate source=pdb_shared 'source.ids=[1BXN,2FHA,3J9I]' dataset=eval_clean \\
        out_dir=data/eval/pdb_clean
    speckle-embed evaluate checkpoint=pretrained
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np

import speckle_embed as se

PROCEDURAL_KINDS = ("globular", "elongated", "ring", "cage", "oligomer", "dumbbell")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/examples/register_new_sample"),
                   help="output folder: data/ (the simulated shard) and classifier/")
    p.add_argument("--pdb", type=Path, default=None,
                   help="a PDB/mmCIF file (.gz allowed) instead of a procedural particle")
    p.add_argument("--kind", choices=PROCEDURAL_KINDS, default="oligomer",
                   help="procedural particle kind (without --pdb)")
    p.add_argument("--atoms", type=int, default=12000, help="procedural particle size (atoms)")
    p.add_argument("--n-frames", type=int, default=60, help="shots to simulate")
    p.add_argument("--k-shot", type=int, default=5, help="labelled frames per class")
    p.add_argument("--seed", type=int, default=2024,
                   help="simulation seed (the shipped model was trained on procedural seed 0)")
    return p.parse_args(argv)


def simulate_shots(args, data_dir: Path) -> Path:
    """Simulate single and multi hits of one new structure; returns the shard path."""
    from simulate.generate import generate_dataset
    from simulate.geometry import default_geometry
    from simulate.sources import resolve_sources

    if args.pdb is not None:
        source = {"kind": "pdb", "files": [str(args.pdb.expanduser().resolve())]}
    else:  # one particle of the chosen kind, from a seed the pretrained model never saw
        source = {"kind": "procedural", "n_structures": 1, "seed": args.seed, "kinds": [args.kind],
                  "n_atoms_min": args.atoms, "n_atoms_max": args.atoms}
    report = generate_dataset(
        resolve_sources(source), default_geometry(),   # the paper's 172x172 detector
        out_dir=data_dir, n_frames=args.n_frames, chunk=args.n_frames,
        mix={"single": 0.5, "multi": 0.5},              # 2-4 touching particles for multi hits
        seed=args.seed, progress=False)
    if not report.ok:
        raise SystemExit(f"simulation failed:\n{report.table()}")
    return report.shard_paths[0]


def main(argv=None) -> None:
    args = parse_args(argv)
    from speckle_embed.evaluation.selection import selection_metrics

    # 1. The shipped embedding (speckle_embed/weights/, int8-compressed, dequantised on load).
    emb = se.load_pretrained(device="cpu")
    print(f"embedder: {emb}")

    # 2. New data. Any CXI-like file reads the same way: frames (n, H, W) in photons, a mask
    #    (non-zero = bad pixel) and, for simulated shards, the true hit class of every frame.
    t0 = time.perf_counter()
    path = simulate_shots(args, args.out / "data")
    print(f"simulated {args.n_frames} shots in {time.perf_counter() - t0:.0f} s -> {path}")
    with h5py.File(path, "r") as f:
        frames = f["/entry_1/data_1/data"][()]
        mask = f["/entry_1/data_1/mask"][()]
        hit = f["/entry_1/truth/hit_class"][()]          # 1 = single, 2 = multi (DESIGN.md)
        structure = str(f.attrs["structure_name"])
    labels = np.where(hit == 1, "single", "multi")

    # 3. A scientist labels k frames of each class; every other frame is a query.
    rng = np.random.default_rng(args.seed)
    support = []
    for name in ("single", "multi"):
        members = np.flatnonzero(labels == name)
        if members.size <= args.k_shot:
            raise SystemExit(f"only {members.size} {name} frames: simulate more (--n-frames)")
        support.extend(rng.choice(members, args.k_shot, replace=False))
    support = np.sort(np.asarray(support))
    query = np.setdiff1d(np.arange(len(labels)), support)

    clf = se.FewShotClassifier(emb)   # rule "logistic" on the supports and their D4 views (rule="mean_distance": SpeckleNN)
    clf.fit(frames[support], labels[support], mask=mask)
    pred = clf.predict(frames[query], mask=mask)

    truth = labels[query]
    accuracy = float(np.mean(pred == truth))
    f1 = selection_metrics(pred == "single", truth == "single")["f1"]   # single hit positive
    print(f"{structure}: {args.k_shot}-shot, {len(query)} queries "
          f"({np.sum(truth == 'single')} single, {np.sum(truth == 'multi')} multi)")
    print(f"  accuracy {accuracy:.3f}   F1 (single positive) {f1:.3f}   (chance 0.5)")

    # Probabilities and nearest supports come from the same index.
    proba = clf.predict_proba(frames[query[:3]], mask=mask)
    print(f"  P({', '.join(clf.classes_)}) of the first 3 queries: {np.round(proba, 3).tolist()}")

    # 4. Save and reload. The folder holds classifier.json, the FAISS index of the supports and a
    #    copy of the embedder: `speckle-embed classify classifier=<dir> inputs=[...]` uses it as is.
    saved = clf.save(args.out / "classifier")
    again = se.FewShotClassifier.load(saved, device="cpu")
    same = np.array_equal(again.predict(frames[query], mask=mask), pred)
    print(f"saved to {saved}; reloaded: {again} (same predictions: {same})")
    if not same:
        raise SystemExit("the reloaded classifier disagrees with the original")


if __name__ == "__main__":
    main()
