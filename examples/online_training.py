"""Online training: fine-tune the shipped embedding on a handful of labels from one experiment.

What it shows (SpeckleNN section 4.2)
-------------------------------------
1. PR772-like data, as ``conf/simulate/experiment/pr772.yaml`` + ``conf/simulate/dataset/online_pr772.yaml`` make
   them: 70 nm icosahedral capsids on a pnCCD-like 128x128 detector
   (``simulate.geometry.pnccd_geometry(binning=8)``, grid oversampling 6), single / multi /
   non-sample hits in equal shares, photon noise, a decade of fluence spread. Or your own
   labelled file with ``--data`` (hit classes 1 single, 2 multi, 3 non-sample at
   ``--labels-path``).
2. The labelled pool a scientist would provide: ``n_train`` + ``n_val`` frames per class (the
   paper: 40 + 20); every other frame is a query.
3. ``speckle_embed.evaluation.online.online_protocol`` with ``heads={}`` and ``finetune={...}``:
   3-way 5-shot episodes (supports from the labelled pool, the same queries for every method)
   scored with the shipped embedding as is, then after ``finetune_embedder`` trained it on the
   labelled pool (class-mode triplet training from the shipped weights; run folder under
   ``--out``).
4. Using the fine-tuned weights: ``se.SpeckleEmbedder.from_checkpoint(<run>/best.pt)``.

To fine-tune on your own labelled pool without the evaluation, call
``finetune_embedder(emb, frames, hit, mask, run_dir, {"epochs": 20, "steps_per_epoch": 10})``
directly.

Run it (about 1.5 min on 2 CPU cores; outputs under ``outputs/examples/online_training``)::

    python examples/online_training.py
    python examples/online_training.py --data my_labelled_run.h5 --epochs 20 --steps-per-epoch 10

Full size (the paper's 40 + 20 labels, 20 epochs x 10 steps of 3 x 20 frames, whole detector and
one quadrant, next to the supervised heads; about an hour on 2 CPU cores)::

    python -m simulate experiment=pr772 dataset=online_pr772 out_dir=data/eval/pr772_online
    speckle-embed evaluate checkpoint=pretrained offline.enabled=false online.enabled=true
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


import speckle_embed as se
from _pr772 import simulate_pr772  # the data step the online examples share (examples/_pr772.py)

CLASS_NAMES = {1: "single", 2: "multi", 3: "non_sample"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="labelled HDF5/CXI file (default: simulate PR772-like shots)")
    p.add_argument("--labels-path", default="/entry_1/truth/hit_class",
                   help="HDF5 path of the per-frame hit classes in --data")
    p.add_argument("--out", type=Path, default=Path("outputs/examples/online_training"))
    p.add_argument("--n-frames", type=int, default=300, help="shots to simulate (without --data)")
    p.add_argument("--n-train", type=int, default=40, help="labelled training frames per class")
    p.add_argument("--n-val", type=int, default=20, help="labelled validation frames per class")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (paper: 20)")
    p.add_argument("--steps-per-epoch", type=int, default=5, help="fine-tuning steps per epoch (paper: 10)")
    p.add_argument("--n-query", type=int, default=20, help="queries per class and episode")
    p.add_argument("--n-tasks", type=int, default=10, help="episodes")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0],
                   help="shares of the detector kept (the paper also uses 0.25, one quadrant)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from speckle_embed.evaluation.labelled import load_labelled_sets
    from speckle_embed.evaluation.online import online_protocol

    t0 = time.perf_counter()
    path = args.data if args.data is not None else simulate_pr772(args.out / "data", args.n_frames, args.seed)
    if args.data is None:
        print(f"simulated {args.n_frames} PR772-like shots in {time.perf_counter() - t0:.0f} s -> {path}")
    # frames (N, H, W), hit classes (N,), mask (H, W) of one file
    data = load_labelled_sets([path], labels_path=args.labels_path)[0]
    counts = {CLASS_NAMES.get(c, c): n for c, n in data.class_counts().items()}
    print(f"{data.name}: {len(data)} frames {data.frames.shape[1:]}, per class {counts}")

    emb = se.load_pretrained(device="cpu")     # trained offline on the paper's 172x172 detector
    finetune = {
        "enabled": True,
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        # P x K = 3 classes x up to 20 frames per step (smaller pools repeat frames)
        "sampler": {"p": 3, "k": min(20, args.n_train)},
        "threads": args.threads,
    }
    t0 = time.perf_counter()
    res = online_protocol(
        emb, data, heads={},                   # no supervised heads here: compare_resnet_head.py
        detector_fractions=args.fractions, k_shot=5, n_query=args.n_query, n_tasks=args.n_tasks,
        n_train=args.n_train, n_val=args.n_val, seed=args.seed,
        finetune=finetune, run_dir=args.out / "online", progress=False)
    print(f"online protocol in {time.perf_counter() - t0:.0f} s; labelled pool "
          f"{args.n_train} + {args.n_val} frames per class, {res['split']['query']} query frames")

    print(f"3-way {res['k_shot']}-shot ({res['n_tasks']} episodes x {res['n_query']} queries per class; "
          f"chance {res['chance']:.2f})")
    print(f"{'detector':>8s}  {'method':<24s}  accuracy  F1 (single)")
    for row in res["rows"]:
        print(f"{row['detector']:>8s}  {row['method']:<24s}  {row['accuracy']:8.3f}  {row['f1']:11.3f}")

    # The fine-tuned weights are a regular training run (one per detector fraction).
    for run in sorted((args.out / "online").glob("finetune_*")):
        tuned = se.SpeckleEmbedder.from_checkpoint(run / "best.pt", device="cpu")
        print(f"fine-tuned embedder: {run / 'best.pt'} (metrics: {run / 'metrics.csv'})\n  {tuned}")


if __name__ == "__main__":
    main()
