"""Single vs not-single K-shot on labelled HDF5 files: frozen embedding, each adaptation, baselines.

A thin command over the leave-one-domain-out protocol (:func:`speckle_embed.evaluation.domains.
domain_protocol`, docs/domains.md) for any labelled files taken as one domain, with a ``--mask``
for files without a usable one. Every method is scored on the SAME episodes (per file: ``k_shot``
supports per class and label-balanced queries, seeded):

* ``frozen``: the embedding as shipped (or ``--checkpoint``), ``--rule``;
* ``prototypes``: prototypes refined by soft k-means over the file's unlabelled frames (all its
  frames but the episode's supports, in their natural class proportions);
* ``batchnorm``: BatchNorm statistics re-estimated on the file's frames (label-free);
* ``batchnorm+prototypes``;
* the classical baselines (radial profile, photon count), no learning;
* ``finetune (subset)``: fine-tuned on the episode's supports within ``--finetune-budget``
  seconds, on the first ``--finetune-tasks`` episodes of each file, with ``frozen`` and the
  baselines on the same episodes beside (``... (same subset)``; the protocol draws a file's
  episodes in order, so these are the first episodes of the full run).

Cells: accuracy and F1 (single positive), mean over episodes with a 95 % bootstrap interval over
episodes (the pooled figures are in the JSON too). ``--labels-path`` reads other label datasets.

Usage (the held-out PR772-like set of the README; ~12 min on 2 cores)::

    python -m simulate experiment=pr772 dataset=online_pr772 threads=1 seed=12345 \\
        out_dir=data/heldout/pr772_online
    python scripts/evaluate_adaptation.py --data data/heldout/pr772_online --seed 0 \\
        --out reports/adaptation_pr772.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from speckle_embed.evaluation.app import load_embedder
from speckle_embed.evaluation.domains import Domain, domain_protocol
from speckle_embed.evaluation.labelled import load_labelled_sets
from speckle_embed.evaluation.report import to_jsonable

#: Rows of the protocol (embedding label "frozen") under this script's names.
ROW_NAMES = {"frozen + prototypes": "prototypes", "frozen + batchnorm": "batchnorm",
             "frozen + batchnorm + prototypes": "batchnorm+prototypes", "frozen + finetune": "finetune (subset)"}


def read_mask_arg(spec: str) -> np.ndarray:
    """``file.npy`` or ``file.h5:/path/in/file`` -> (H, W) mask (non-zero = bad)."""
    if spec.endswith(".npy"):
        return np.load(spec)
    path, _, key = spec.partition(":")
    if not key:
        raise SystemExit(f"--mask {spec!r}: give a .npy file or file.h5:/path/to/mask")
    with h5py.File(path, "r") as f:
        if key not in f:
            raise SystemExit(f"--mask: {path} has no dataset {key!r}")
        return np.asarray(f[key][()])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="labelled HDF5 files or folders")
    p.add_argument("--labels-path", default="/entry_1/truth/hit_class")
    p.add_argument("--mask", default=None, help="mask for every file: .npy or file.h5:/path (default: each file's)")
    p.add_argument("--checkpoint", default="pretrained")
    p.add_argument("--classes", type=int, nargs="+", default=[1, 2, 3],
                   help="labelled classes used; 1 (single) against all the others")
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--n-query", type=int, default=50, help="queries per class and episode (at most)")
    p.add_argument("--n-tasks", type=int, default=60, help="episodes per file")
    p.add_argument("--rule", default="logistic", help="few-shot rule (logistic: with the D4 support views)")
    p.add_argument("--finetune-tasks", type=int, default=5, help="episodes per file fine-tuned (0: skip)")
    p.add_argument("--finetune-budget", type=float, default=60.0, help="seconds per fine-tuning")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON of every number")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.perf_counter()

    sets = load_labelled_sets(a.data, labels_path=a.labels_path)
    if a.mask is not None:
        mask = read_mask_arg(a.mask)
        sets = [dataclasses.replace(s, mask=mask) for s in sets]
    emb = load_embedder(a.checkpoint, device="cpu")
    domain = Domain("data", tuple(a.data))
    common = {"k_shots": [a.k_shot], "n_query": a.n_query, "seed": a.seed, "rule": a.rule, "classes": a.classes,
              "progress": False}
    runs = [("", domain_protocol({domain.name: sets}, [domain], {"frozen": emb}, n_tasks=a.n_tasks * len(sets),
                                 adapt=("prototypes", "batchnorm", "batchnorm+prototypes"), **common))]
    if a.finetune_tasks > 0:
        runs.append((" (same subset)", domain_protocol(
            {domain.name: sets}, [domain], {"frozen": emb}, n_tasks=a.finetune_tasks * len(sets), adapt=("finetune",),
            finetune={"budget_s": a.finetune_budget}, **common)))
    results, timing = {}, {}
    for suffix, res in runs:
        row = res["domains"][0]
        for name, score in row["by_k"][str(a.k_shot)]["methods"].items():
            results[ROW_NAMES.get(name, name + suffix)] = to_jsonable(score)
        timing.update(row.get("finetune", {}))
    timing["total_s"] = time.perf_counter() - t_start

    out = {"data": [s.path for s in sets], "checkpoint": a.checkpoint, "checkpoint_hash": emb.checkpoint_hash,
           "seed": a.seed, "k_shot": a.k_shot, "n_query": a.n_query, "n_tasks_per_file": a.n_tasks,
           "rule": a.rule, "classes": a.classes, "mask": a.mask, "finetune_budget_s": a.finetune_budget,
           "finetune_tasks_per_file": a.finetune_tasks, "threads": a.threads,
           "protocol": to_jsonable(runs[0][1]["settings"]), "results": results, "timing": timing}
    print(f"{'method':45s} accuracy [95 % CI]       F1(single)  episodes  queries")
    for name, r in results.items():
        lo, hi = r["accuracy_ci"]
        print(f"{name:45s} {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]  {r['f1']:.3f}       {r['n_tasks']:5d}  "
              f"{r['n_queries']}")
    print(json.dumps(timing))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
