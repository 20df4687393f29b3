"""Classify every frame of an HDF5/CXI file with a saved few-shot classifier.

What it shows
-------------
1. ``speckle_embed.cli.run_classify(cfg)``: the Python side of ``speckle-embed classify``. It
   takes the keys of ``conf/classify/classify.yaml`` as a plain dict, reads the file ``chunk_size`` frames
   at a time (files may exceed the memory), and writes ``<output_dir>/predictions.h5`` and
   ``.csv`` (label, per-class distances and probabilities of every frame).
2. The equivalent command line, printed by the script.
3. Reading the predictions back.

Inputs: ``--input`` (frames at ``/entry_1/data_1/data``, else the first 3-D dataset; the CXI
mask is used when present) and ``--classifier`` (a folder written by ``clf.save``, e.g. by
``examples/register_new_sample.py``). Without ``--input`` a small run of mixed shots (single,
multi, no hit, non-sample) is simulated first; without ``--classifier`` one is fitted on the
shipped embedding from 5 labelled frames per class of the input (which then needs hit classes
at ``/entry_1/truth/hit_class``, as simulated files have).

Run it (about 30 s on 2 CPU cores; outputs under ``outputs/examples/classify_file``)::

    python examples/classify_file.py
    python examples/classify_file.py --input run_0042.cxi \\
        --classifier outputs/examples/register_new_sample/classifier

Full size: a whole run directory, on a GPU, 512 frames per read::

    speckle-embed classify classifier=my_classifier 'inputs=[runs/*.cxi]' output_dir=preds \\
        chunk_size=512 device=cuda
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import h5py
import numpy as np

import speckle_embed as se

LABELS_PATH = "/entry_1/truth/hit_class"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, default=None,
                   help="HDF5/CXI file to classify (default: simulate one)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="saved FewShotClassifier folder (default: fit one on the input's labels)")
    p.add_argument("--out", type=Path, default=Path("outputs/examples/classify_file"),
                   help="output folder: the simulated run, the classifier, predictions/")
    p.add_argument("--n-frames", type=int, default=120, help="shots to simulate (without --input)")
    p.add_argument("--k-shot", type=int, default=5, help="labelled frames per class (without --classifier)")
    p.add_argument("--chunk-size", type=int, default=64, help="frames read from the file at a time")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def simulate_run(args) -> Path:
    """A small 'experiment run': every hit class, one procedural particle, the paper detector."""
    from simulate.generate import generate_dataset
    from simulate.geometry import default_geometry
    from simulate.sources import resolve_sources

    specs = resolve_sources({"kind": "procedural", "n_structures": 1, "seed": args.seed,
                             "kinds": ["cage"], "n_atoms_min": 10000, "n_atoms_max": 10000})
    report = generate_dataset(specs, default_geometry(), out_dir=args.out / "run",
                              n_frames=args.n_frames, chunk=args.n_frames, seed=args.seed,
                              mix={"single": 0.3, "multi": 0.3, "no_hit": 0.2, "non_sample": 0.2},
                              progress=False)
    if not report.ok:
        raise SystemExit(f"simulation failed:\n{report.table()}")
    return report.shard_paths[0]


def fit_classifier(args, path: Path) -> Path:
    """Fit and save a classifier from ``k_shot`` labelled frames per hit class of ``path``."""
    from speckle_embed.data import HIT_CLASSES  # ("no_hit", "single", "multi", "non_sample")

    with h5py.File(path, "r") as f:
        if LABELS_PATH not in f:
            raise SystemExit(f"{path} has no labels at {LABELS_PATH}: give --classifier")
        hit = f[LABELS_PATH][()]
        mask = f["/entry_1/data_1/mask"][()] if "/entry_1/data_1/mask" in f else None
        rng = np.random.default_rng(args.seed)
        support, labels = [], []
        for code in np.unique(hit):
            members = np.flatnonzero(hit == code)
            take = np.sort(rng.choice(members, min(args.k_shot, members.size), replace=False))
            support.extend(take)
            labels += [HIT_CLASSES[code]] * take.size
        order = np.argsort(support)             # h5py reads increasing indices
        frames = f["/entry_1/data_1/data"][np.asarray(support)[order]]
        labels = np.asarray(labels)[order]

    emb = se.load_pretrained(device="cpu")
    clf = se.FewShotClassifier(emb).fit(frames, labels, mask=mask)
    print(f"fitted {clf} on classes {clf.classes_.tolist()} ({args.k_shot} frames each)")
    return clf.save(args.out / "classifier")


def hydra_override(item) -> str:
    """``key=value`` as a Hydra command-line override (lists in brackets, lower-case booleans)."""
    key, value = item
    if isinstance(value, list):
        return f"'{key}=[{','.join(value)}]'"
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    path = args.input if args.input is not None else simulate_run(args)
    if args.input is None:
        print(f"simulated {args.n_frames} shots in {time.perf_counter() - t0:.0f} s -> {path}")
    classifier = args.classifier if args.classifier is not None else fit_classifier(args, path)

    # The keys of conf/classify/classify.yaml; those left out take their defaults.
    cfg = {
        "classifier": str(classifier),
        "inputs": [str(path)],                 # files, folders or glob patterns
        "output_dir": str(args.out / "predictions"),
        "output_name": "predictions",
        "chunk_size": args.chunk_size,
        "device": "cpu",
        "progress": False,
    }
    print("equivalent command:\n  speckle-embed classify " + " ".join(map(hydra_override, cfg.items())))

    from speckle_embed.cli import run_classify

    summary = run_classify(cfg)
    print(f"classified {summary['n_frames']} frames in {summary['seconds']:.1f} s "
          f"({summary['patterns_per_s']:.0f} patterns/s)")
    for label, count in sorted(summary["counts"].items()):
        print(f"  {label:<12s}{count:5d}")
    print(f"predictions: {summary['h5']}\n             {summary['csv']}")

    # Reading them back: one row per frame, in file order.
    with h5py.File(summary["h5"], "r") as f:
        pred = f["predictions/label"].asstr()[()]
        frame_index = f["predictions/frame_index"][()]
        names = f.attrs["class_names"]
        proba = f["predictions/probabilities"][()]
    print(f"classes {names}; first frame: {pred[0]} (p = {proba[0].max():.3f})")
    with open(summary["csv"], newline="") as f:
        print("CSV header:", ", ".join(next(csv.reader(f))))

    # A simulated file knows the truth: how many frames did the classifier get right?
    with h5py.File(path, "r") as f:
        if LABELS_PATH in f:
            from speckle_embed.data import HIT_CLASSES

            truth = np.asarray(HIT_CLASSES)[f[LABELS_PATH][()][frame_index]]
            print(f"agreement with the true hit classes: {np.mean(pred == truth):.3f} "
                  f"(supports included)")


if __name__ == "__main__":
    main()
