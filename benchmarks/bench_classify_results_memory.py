"""Memory of the in-memory HDF5 results of ``speckle-embed classify`` (bytes per frame).

``speckle_embed.classify.writer.PredictionWriter`` builds ``predictions.h5`` in memory and writes it at the end (so a
full disk can never leave an HDF5 file open; docs/reliability.md). This measures the size of that
file image per classified frame, for string labels and ``--classes`` classes, with random
distances/probabilities (seed 0): the memory the results hold until the end of a run.

Usage::

    python benchmarks/bench_classify_results_memory.py                 # 200,000 frames, 4 classes
    python benchmarks/bench_classify_results_memory.py --frames 1000000 --classes 2
"""

from __future__ import annotations

import argparse
import tempfile
import types
from pathlib import Path

import numpy as np

from speckle_embed.classify.writer import PredictionWriter
from speckle_embed.fewshot.classifier import ClassificationResult


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=1024, help="frames per append (classify's chunk_size)")
    args = ap.parse_args()
    names = np.array([f"class_{i}" for i in range(args.classes)], dtype=object)
    clf = types.SimpleNamespace(classes_=names, _label_kind_="str")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        w = PredictionWriter(Path(d), "predictions", clf, [Path("run.h5")], write_csv=False)
        for start in range(0, args.frames, args.chunk):
            k = min(args.chunk, args.frames - start)
            codes = rng.integers(0, args.classes, k)
            w.append(0, Path("run.h5"), start, ClassificationResult(
                names[codes], codes, rng.random((k, args.classes)), rng.random((k, args.classes)),
                np.zeros(k, bool)))
        w.h5.flush()
        size = len(w.h5.id.get_file_image())
        w.abort()
    print(f"{args.frames} frames, {args.classes} classes: {size / 1e6:.1f} MB in memory, "
          f"{size / args.frames:.1f} bytes per frame ({size / args.frames:.0f} MB per million frames)")


if __name__ == "__main__":
    main()
