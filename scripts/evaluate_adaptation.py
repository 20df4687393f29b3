"""Single vs not-single K-shot on labelled HDF5 sets: frozen embedding, each adaptation, baselines.

Every method is scored on the SAME episodes (per set: ``k_shot`` supports per class and
label-balanced queries, :func:`speckle_embed.evaluation.sample_episodes`, seeded):

* ``frozen``: the embedding as shipped (or ``--checkpoint``), ``--rule``;
* ``prototypes``: prototypes refined by soft k-means over the run's unlabelled frames (all frames of
  the set but the episode's supports, in their natural class proportions);
* ``batchnorm``: BatchNorm statistics re-estimated on all the set's frames (label-free);
* ``batchnorm+prototypes``;
* ``finetune``: fine-tuned on the episode's supports within ``--finetune-budget`` seconds, on the
  first ``--finetune-tasks`` episodes of each set (with ``frozen`` on the same episodes beside);
* the classical baselines (radial profile, photon count), no learning.

Accuracy and F1 (single positive) are pooled over the episodes' queries. Any labelled HDF5 file
or folder works (``--labels-path``; ``--mask`` replaces the files' masks, a ``.npy`` file or
``file.h5:/path``).

Usage (the held-out PR772-like set of the README; ~10 min on 2 cores)::

    python -m simulate experiment=pr772 dataset=online_pr772 threads=1 seed=12345 \\
        out_dir=data/heldout/pr772_online
    python scripts/evaluate_adaptation.py --data data/heldout/pr772_online --seed 0 \\
        --out reports/adaptation_pr772.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from speckle_embed.adaptation import (
    finetune_on_supports,
    prototype_distances,
    reestimate_batchnorm,
    refine_prototypes,
)
from speckle_embed.evaluation import evaluate_episodes, sample_episodes
from speckle_embed.evaluation.app import load_embedder
from speckle_embed.evaluation.baselines import baseline_features, evaluate_baselines
from speckle_embed.fewshot.episodes import evaluate_predictions
from speckle_embed.evaluation.labelled import load_labelled_sets
from speckle_embed.fewshot.rules import get_rule
from speckle_embed.fewshot.index import SupportIndex

SINGLE, NOT_SINGLE = 1, 0


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


def summary(res: dict) -> dict:
    return {"accuracy": res["accuracy"], "f1": res["f1"], "n_tasks": res["n_tasks"], "n_queries": res["n_queries"],
            "per_set": res["per_structure"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="labelled HDF5 files or folders")
    p.add_argument("--labels-path", default="/entry_1/truth/hit_class")
    p.add_argument("--mask", default=None, help="mask for every set: .npy or file.h5:/path (default: each file's)")
    p.add_argument("--checkpoint", default="pretrained")
    p.add_argument("--classes", type=int, nargs="+", default=[1, 2, 3],
                   help="labelled classes used; 1 (single) against all the others")
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--n-query", type=int, default=50, help="queries per class and episode (at most)")
    p.add_argument("--n-tasks", type=int, default=60, help="episodes per set")
    p.add_argument("--rule", default="mean_distance")
    p.add_argument("--finetune-tasks", type=int, default=5, help="episodes per set fine-tuned (0: skip)")
    p.add_argument("--finetune-budget", type=float, default=60.0, help="seconds per fine-tuning")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON of every number")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.perf_counter()

    sets = load_labelled_sets(a.data, labels_path=a.labels_path)
    mask = None if a.mask is None else read_mask_arg(a.mask)
    masks = [s.mask if mask is None else mask for s in sets]
    emb = load_embedder(a.checkpoint, device="cpu")
    names = [s.name for s in sets]
    hit, struct, keep = [], [], []
    for i, s in enumerate(sets):
        use = np.isin(s.hit, a.classes)
        hit.append(np.where(use, np.where(s.hit == 1, SINGLE, NOT_SINGLE), -1))
        struct.append(np.full(len(s), i))
        keep.append(use)
    hit, struct = np.concatenate(hit), np.concatenate(struct)
    offsets = np.cumsum([0] + [len(s) for s in sets])
    episodes = sample_episodes(hit, struct, n_way=2, k_shot=a.k_shot, n_query=a.n_query, n_tasks=a.n_tasks,
                               seed=a.seed, classes=(SINGLE, NOT_SINGLE))
    results, timing = {}, {}

    def embed_all(e):
        return np.concatenate([e.embed(s.frames, masks[i]) for i, s in enumerate(sets)])

    def pool_of(ep):  # the run's unlabelled frames: every labelled-class frame of the set but the supports
        lo, hi = offsets[ep.structure], offsets[ep.structure + 1]
        pool = np.arange(lo, hi)[hit[lo:hi] >= 0]
        return np.setdiff1d(pool, ep.support_idx)

    def with_prototypes(z):
        def predict(ep):
            protos = refine_prototypes(z[ep.support_idx], ep.support_labels, z[pool_of(ep)], 2)
            return prototype_distances(z[ep.query_idx], protos).argmin(1)
        return predict

    t0 = time.perf_counter()
    z = embed_all(emb)
    timing["embed_s"] = time.perf_counter() - t0
    results["frozen"] = summary(evaluate_episodes(z, episodes, rule=a.rule, structure_names=names))
    results["prototypes"] = summary(evaluate_predictions(with_prototypes(z), episodes, structure_names=names))
    t0 = time.perf_counter()
    bn = [reestimate_batchnorm(emb, s.frames[keep[i]], masks[i], seed=a.seed) for i, s in enumerate(sets)]
    timing["batchnorm_s_per_set"] = (time.perf_counter() - t0) / len(sets)
    zb = np.concatenate([bn[i].embed(s.frames, masks[i]) for i, s in enumerate(sets)])
    results["batchnorm"] = summary(evaluate_episodes(zb, episodes, rule=a.rule, structure_names=names))
    results["batchnorm+prototypes"] = summary(evaluate_predictions(with_prototypes(zb), episodes,
                                                                   structure_names=names))
    feats = baseline_features(sets, masks=masks)
    for name, res in evaluate_baselines(feats, episodes, structure_names=names).items():
        results[name] = summary(res)

    if a.finetune_tasks > 0:
        sub = [ep for i in range(len(sets)) for ep in [e for e in episodes if e.structure == i][:a.finetune_tasks]]
        frames_all = np.concatenate([s.frames for s in sets])
        logs = []

        def predict_ft(ep):
            m = masks[ep.structure]
            tuned, log = finetune_on_supports(emb, frames_all[ep.support_idx], ep.support_labels, m,
                                              budget_s=a.finetune_budget, seed=a.seed)
            logs.append(log)
            zs, zq = tuned.embed(frames_all[ep.support_idx], m), tuned.embed(frames_all[ep.query_idx], m)
            index = SupportIndex(zs.shape[1], use_gpu=False)
            index.add(zs, ep.support_labels)
            return get_rule(a.rule)(index, zq, n_classes=2).argmin(1)

        results["finetune (subset)"] = summary(evaluate_predictions(predict_ft, sub, structure_names=names))
        results["frozen (same subset)"] = summary(evaluate_episodes(z, sub, rule=a.rule, structure_names=names))
        for name, res in evaluate_baselines(feats, sub, structure_names=names).items():
            results[f"{name} (same subset)"] = summary(res)
        timing["finetune"] = {"steps_mean": float(np.mean([g["steps"] for g in logs])),
                              "seconds_mean": float(np.mean([g["seconds"] for g in logs]))}

    timing["total_s"] = time.perf_counter() - t_start
    out = {"data": [s.path for s in sets], "checkpoint": a.checkpoint, "checkpoint_hash": emb.checkpoint_hash,
           "seed": a.seed, "k_shot": a.k_shot, "n_query": a.n_query, "n_tasks_per_set": a.n_tasks,
           "rule": a.rule, "classes": a.classes, "mask": a.mask, "finetune_budget_s": a.finetune_budget,
           "threads": a.threads, "results": results, "timing": timing}
    print(f"{'method':45s} accuracy  F1(single)  episodes  queries")
    for name, r in results.items():
        print(f"{name:45s} {r['accuracy']:.3f}     {r['f1']:.3f}       {r['n_tasks']:5d}  {r['n_queries']}")
    print(json.dumps(timing))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
