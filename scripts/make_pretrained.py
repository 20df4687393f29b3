"""Turn a training checkpoint into the embedding shipped in the package (int8-compressed).

1. measures the speckle size of training-like frames (``reference_speckle_px``, used by
   ``embed(..., scale="auto")`` on foreign detectors) on shards of the training structures;
2. writes ``speckle_embed/weights/<name>.pt`` (:func:`speckle_embed.inference.pretrained.compress_checkpoint`);
3. checks the shipped embedding against the float32 checkpoint on held-out frames: embedding
   difference and 2-way 5-shot accuracy of both.

Usage (the shipped default ``specklenn-realistic-v12``, trained at crop 58 and shipped at crop 48,
i.e. input scale 0.5, the scale chosen on the validation domains; its reference speckle size is
measured on the paper-geometry procedural frames only, since spheres show no speckle)::

    python scripts/make_pretrained.py --checkpoint outputs/train/pretrain_realistic_v12/best.pt \
        --name specklenn-realistic-v12 --calibration data/offline/procedural \
        --check data/heldout/pr772_online --crop 48

(``specklenn-realistic-v10``, now in ``weights/``: ``pretrain_realistic_v10``, no ``--crop``,
``--out weights/specklenn-realistic-v10.pt``.)
(``specklenn-realistic-v9`` / ``-v6``, now in ``weights/``: the same with ``pretrain_realistic_v9`` /
``_v6`` and ``--out weights/specklenn-realistic-v9.pt`` / ``-v6.pt``.)

(``specklenn-offline-v2``: ``--checkpoint outputs/train/pretrain_variety/best.pt --name
specklenn-offline-v2 --calibration data/offline/procedural data/offline/pdb --check
data/eval/pdb_clean``.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from speckle_embed.data import discover_shards, read_frames, read_mask
from speckle_embed.inference.embedder import SpeckleEmbedder
from speckle_embed.evaluation.labelled import load_labelled_sets
from speckle_embed.evaluation.offline import embed_sets, kshot_protocol
from speckle_embed.inference.pretrained import DEFAULT_PRETRAINED, WEIGHTS_DIR, compress_checkpoint, load_pretrained


def reference_speckle(emb: SpeckleEmbedder, dirs, train_structures, per_shard: int = 16, seed: int = 0) -> float:
    """Median speckle size (model pixels) over shards of the training structures."""
    rng = np.random.default_rng(seed)
    sizes = []
    for path in discover_shards(dirs):
        if train_structures and path.stem not in train_structures:
            continue
        frames = read_frames(path, np.sort(rng.choice(300, per_shard, replace=False)))
        sizes.append(emb.calibrate_reference_speckle(frames, read_mask(path)))
    if not sizes:
        raise SystemExit(f"no training shards found in {dirs}")
    return float(np.median(sizes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--name", default=DEFAULT_PRETRAINED)
    ap.add_argument("--calibration", nargs="+", required=True, help="shard folders of training structures")
    ap.add_argument("--check", nargs="+", required=True, help="held-out shard folders (noise-free or noisy)")
    ap.add_argument("--out", default=None, help=f"default {WEIGHTS_DIR}/<name>.pt")
    ap.add_argument("--crop", type=int, default=None,
                    help="detector pixels of the model window in the shipped file, i.e. its default input scale "
                         "crop/input_size (chosen on the validation domains); default the checkpoint's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    emb = SpeckleEmbedder.from_checkpoint(args.checkpoint, device="cpu")
    if args.crop is not None:
        print(f"default crop {emb.preprocessing.crop} -> {args.crop} (scale {args.crop / emb.preprocessing.input_size:.3f})")
        emb.preprocessing = dataclasses.replace(emb.preprocessing, crop=args.crop)
    train_structures = set(emb.metadata.get("train_structures") or [])
    ref = reference_speckle(emb, args.calibration, train_structures, seed=args.seed)
    emb.reference_speckle_px = ref
    with tempfile.TemporaryDirectory() as tmp:
        with_ref = Path(tmp) / "with_reference.pt"
        emb.save_checkpoint(with_ref)
        out = Path(args.out) if args.out else WEIGHTS_DIR / f"{args.name}.pt"
        info = compress_checkpoint(with_ref, out, name=args.name, provenance={
            "source_checkpoint": str(args.checkpoint), "source_checkpoint_hash": emb.checkpoint_hash,
            "train_structures": sorted(train_structures),
            "val_structures": emb.metadata.get("val_structures"), "seed": emb.metadata.get("seed")})
    print(f"wrote {out}: {info['bytes'] / 1e6:.2f} MB, max |weight error| {info['max_abs_error']:.2e}, "
          f"reference speckle {ref:.2f} model px")

    shipped = load_pretrained(path=out, device="cpu")
    sets = load_labelled_sets(args.check)
    z32, _, _ = embed_sets(emb, sets, seed=args.seed, progress=False)
    z8, hit, struct = embed_sets(shipped, sets, seed=args.seed, progress=False)
    dz = np.linalg.norm(z32 - z8, axis=1)
    res = {}
    for tag, e, z in (("float32", emb, z32), ("shipped int8", shipped, z8)):
        k = kshot_protocol(e, sets, k_shots=(5,), n_query=100, n_tasks=20, seed=args.seed, progress=False,
                           embeddings=(z, hit, struct))
        res[tag] = k["by_k"]["5"]["accuracy_mean"]
    print(f"embedding difference |z32 - z8|: median {np.median(dz):.2e}, max {dz.max():.2e} "
          f"(unit-norm embeddings, {dz.size} frames)")
    print("2-way 5-shot accuracy (mean over structures): "
          + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
    summary = {"file": str(out), "bytes": info["bytes"], "max_abs_weight_error": info["max_abs_error"],
               "reference_speckle_px": ref, "embedding_diff_median": float(np.median(dz)),
               "embedding_diff_max": float(dz.max()), "accuracy_5shot": res}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
