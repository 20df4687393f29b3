"""A supervised ResNet head against the few-shot classifier, on the same labelled frames.

What it shows
-------------
1. PR772-like labelled shots (as in ``examples/online_training.py``; or ``--data`` with hit
   classes 1 single, 2 multi, 3 non-sample) split into a labelled pool of ``n_train`` +
   ``n_val`` frames per class and queries (``split_labelled_pool``, the online protocol's split).
2. The pre-activation ResNet of Assalauova et al. (2022), recipe ``conf/evaluate/heads/resnet_maxf1.yaml``
   read with OmegaConf and turned into one 3-way ``SupervisedHead`` (``head_config_for``: the
   5-fold ensemble becomes a single member, the binary "single vs rest" recipe a 3-class head,
   as ``speckle-embed evaluate`` does), built by ``se.head_from_config`` and trained for a few
   iterations only (the recipe: 100 epochs x 50 iterations of 64 frames).
3. ``se.FewShotClassifier`` on the shipped embedding with supports from the same pool: 5 per
   class, and all ``n_train`` per class. No training at all.
4. Accuracy (3-way) and F1 (single hit positive) of both on the same queries, side by side.

Run it (about 2 min on 2 CPU cores, most of it training the ResNet; outputs under
``outputs/examples/compare_resnet_head``)::

    python examples/compare_resnet_head.py
    python examples/compare_resnet_head.py --iterations 150 --batch-size 32   # fairer, ~15 min

Full size (``conf/evaluate/evaluate.yaml``: the ResNet and Shi et al. 2019 heads, 6 epochs x 50 iterations
x 64 frames on a CPU budget, SpeckleNN few-shot and fine-tuned, whole detector and one quadrant,
single-hit selection metrics; about an hour on 2 CPU cores)::

    python -m simulate experiment=pr772 dataset=online_pr772 out_dir=data/eval/pr772_online
    speckle-embed evaluate checkpoint=pretrained offline.enabled=false online.enabled=true
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import speckle_embed as se
from _pr772 import simulate_pr772  # the data step the online examples share (examples/_pr772.py)

CLASS_NAMES = np.array(["no_hit", "single", "multi", "non_sample"])   # hit-class codes 0..3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="labelled HDF5/CXI file (default: simulate PR772-like shots)")
    p.add_argument("--labels-path", default="/entry_1/truth/hit_class")
    p.add_argument("--out", type=Path, default=Path("outputs/examples/compare_resnet_head"))
    p.add_argument("--n-frames", type=int, default=240, help="shots to simulate (without --data)")
    p.add_argument("--n-train", type=int, default=40, help="labelled training frames per class")
    p.add_argument("--n-val", type=int, default=20,
                   help="labelled validation frames per class (pick the ResNet's best epoch)")
    p.add_argument("--iterations", type=int, default=24, help="ResNet training iterations")
    p.add_argument("--batch-size", type=int, default=16, help="ResNet batch size")
    p.add_argument("--lr", type=float, default=None, help="ResNet learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Accuracy and F1 with "single" as the positive class."""
    from speckle_embed.evaluation.selection import selection_metrics

    return float(np.mean(pred == truth)), selection_metrics(pred == "single", truth == "single")["f1"]


def main(argv=None) -> None:
    args = parse_args(argv)
    from omegaconf import OmegaConf

    from speckle_embed.cli import CONFIG_DIR                 # the repository's conf/ folder
    from speckle_embed.evaluation.labelled import load_labelled_sets
    from speckle_embed.evaluation.online import head_config_for, split_labelled_pool

    t0 = time.perf_counter()
    path = args.data if args.data is not None else simulate_pr772(args.out / "data", args.n_frames, args.seed)
    if args.data is None:
        print(f"simulated {args.n_frames} PR772-like shots in {time.perf_counter() - t0:.0f} s -> {path}")
    data = load_labelled_sets([path], labels_path=args.labels_path)[0]
    frames, mask, labels = data.frames, data.mask, CLASS_NAMES[data.hit]

    # The labelled pool (n_train + n_val per class of single, multi, non_sample) and the queries.
    train, val, query = split_labelled_pool(data.hit, args.n_train, args.n_val, seed=args.seed)
    print(f"labelled pool {args.n_train} + {args.n_val} frames per class; {query.size} queries")
    rows = []

    # --- the supervised head -------------------------------------------------------------------
    recipe = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "evaluate" / "heads" / "resnet_maxf1.yaml"))
    overrides = {"n_iterations": args.iterations, "iterations_per_epoch": max(1, args.iterations // 2),
                 "batch_size": args.batch_size, "seed": args.seed, "progress": False, "device": "cpu"}
    if args.lr is not None:
        overrides["lr"] = args.lr
    head = se.head_from_config(head_config_for(recipe, n_classes=3, overrides=overrides, single_model=True))
    print(f"ResNet head: {head}, {head.total_iterations} iterations x {head.batch_size} frames")
    t0 = time.perf_counter()
    head.fit(frames[train], labels[train], val=(frames[val], labels[val]), mask=mask)  # val picks the epoch
    fit_s = time.perf_counter() - t0
    pred = head.predict(frames[query], mask=mask)
    rows.append((f"ResNet head ({args.n_train}/class, trained)", pred, fit_s))

    # --- the few-shot classifier: no training, supports from the same labelled pool -----------
    emb = se.load_pretrained(device="cpu")
    rng = np.random.default_rng(args.seed)
    five = np.concatenate([rng.choice(train[labels[train] == c], 5, replace=False)
                           for c in ("single", "multi", "non_sample")])
    for name, support in (("SpeckleNN few-shot (5/class)", five),
                          (f"SpeckleNN few-shot ({args.n_train}/class)", train)):
        t0 = time.perf_counter()
        clf = se.FewShotClassifier(emb).fit(frames[support], labels[support], mask=mask)
        fit_s = time.perf_counter() - t0               # embedding the supports: the whole "training"
        rows.append((name, clf.predict(frames[query], mask=mask), fit_s))

    # --- side by side ----------------------------------------------------------------------------
    truth = labels[query]
    print(f"\n{'method':<36s}  accuracy  F1 (single)  fit time")
    for name, pred, seconds in rows:
        acc, f1 = scores(pred, truth)
        print(f"{name:<36s}  {acc:8.3f}  {f1:11.3f}  {seconds:6.1f} s")
    print(f"(3-way: single, multi, non_sample; chance 0.33; {query.size} queries)")

    saved = head.save(args.out / "resnet_head")      # reload with se.load_head(dir)
    print(f"ResNet head saved to {saved}")


if __name__ == "__main__":
    main()
