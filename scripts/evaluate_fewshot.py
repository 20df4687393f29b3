"""Few-shot accuracy of an embedding checkpoint on held-out structures (SpeckleNN section 4.1).

For every structure (one simulated shard each): embed all its frames, draw ``n_tasks``
2-way K-shot episodes (single vs multi; supports and label-balanced queries from that
structure only) and classify the queries by the mean-distance rule. Prints accuracy and F1
(single hit positive) averaged over structures, for each K, and writes a JSON of every number.

Usage::

    python scripts/evaluate_fewshot.py --checkpoint outputs/train/offline_v2/best.pt \\
        --data data/offline/pdb --structures 1BXN 2FHA 3J9I --k 1 5 20 --out reports/fewshot.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

from speckle_embed.data import read_frames, read_mask
from speckle_embed.inference.embedder import SpeckleEmbedder
from speckle_embed.evaluation import evaluate_episodes, sample_episodes


def load_structure(path: Path):
    """Frames, mask and hit classes of one shard."""
    with h5py.File(path, "r") as f:
        hit = np.asarray(f["/entry_1/truth/hit_class"][()], dtype=np.int64)
    return read_frames(path), read_mask(path), hit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", nargs="+", required=True, help="shard folders")
    parser.add_argument("--structures", nargs="+", required=True, help="structure (shard) names")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--n-query", type=int, default=100, help="queries per class and episode (at most)")
    parser.add_argument("--n-tasks", type=int, default=20, help="episodes per structure")
    parser.add_argument("--rule", default="mean_distance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    emb = SpeckleEmbedder.from_checkpoint(args.checkpoint)
    embeddings, hits, structs, names = [], [], [], []
    for s, name in enumerate(args.structures):
        hits_found = [Path(d) / f"{name}.h5" for d in args.data if (Path(d) / f"{name}.h5").is_file()]
        if not hits_found:
            raise SystemExit(f"no shard {name}.h5 in {args.data}")
        frames, mask, hit = load_structure(hits_found[0])
        embeddings.append(emb.embed(frames, mask=mask))
        hits.append(hit)
        structs.append(np.full(hit.shape, s))
        names.append(name)
    z, hit, struct = np.concatenate(embeddings), np.concatenate(hits), np.concatenate(structs)

    results = {"checkpoint": str(args.checkpoint), "checkpoint_hash": emb.checkpoint_hash,
               "structures": names, "seed": args.seed, "n_tasks": args.n_tasks, "n_query": args.n_query,
               "rule": args.rule, "by_k": {}}
    print(f"{'K':>3s} {'accuracy':>9s} {'F1':>7s}   (mean over {len(names)} structures; pooled acc)")
    for k in args.k:
        episodes = sample_episodes(hit, struct, n_way=2, k_shot=k, n_query=args.n_query,
                                   n_tasks=args.n_tasks, seed=args.seed)
        res = evaluate_episodes(z, episodes, rule=args.rule, structure_names=names)
        per = res["per_structure"]
        acc = float(np.mean([v["accuracy"] for v in per.values()]))
        f1 = float(np.mean([v["f1"] for v in per.values()]))
        results["by_k"][str(k)] = {"accuracy_mean": acc, "f1_mean": f1, "pooled": res}
        print(f"{k:3d} {acc:9.4f} {f1:7.4f}   (pooled {res['accuracy']:.4f})")
    print("per structure (K=5 if evaluated):")
    key = "5" if "5" in results["by_k"] else str(args.k[0])
    for name, v in results["by_k"][key]["pooled"]["per_structure"].items():
        print(f"  {name:8s} accuracy {v['accuracy']:.3f}  F1 {v['f1']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
