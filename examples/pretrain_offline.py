"""Offline pretraining of a SpeckleNN embedding on freshly simulated structures.

What it shows
-------------
1. The simulator's Python API: a procedural source (``simulate.sources.resolve_sources``), the
   paper's detector (``simulate.geometry.default_geometry``) and ``simulate.generate.
   generate_dataset``, which writes one CXI-flavoured HDF5 shard per structure.
2. Training with ``speckle_embed.train.train(cfg)``, ``cfg`` being composed from ``conf/train/train.yaml``
   exactly as ``python -m speckle_embed.train`` composes it (the script prints the equivalent
   command line). The model is the tiny SpeckleNN of ``conf/train/model/tiny.yaml``; a quarter
   of the structures is held out and scored after every epoch with 2-way (single vs multi)
   5-shot episodes.
3. The run folder (``best.pt``, ``last.pt``, ``metrics.csv``, ``learning_curve.png``) and loading
   ``best.pt`` as a ``speckle_embed.SpeckleEmbedder``.

Run it (about 1 minute on 2 CPU cores; outputs under ``outputs/examples/pretrain_offline``)::

    python examples/pretrain_offline.py
    python examples/pretrain_offline.py --n-structures 12 --epochs 10 --out /tmp/pretrain

Full size (README, "Training an embedding"): the default 14.5 M-parameter network, 16 x 8
batches, 30 epochs on a procedural dataset simulated on first use, then PDB entries::

    python -m speckle_embed.train experiment=offline
    python -m speckle_embed.train experiment=offline name=offline_v2 \\
        'data.dirs=[data/offline/procedural,data/offline/pdb]' \\
        'data.val_structures=[1BXN,2FHA,3J9I,4JSV,6WLB,7Q5B,1M19,3O21,2NIP,6FLR]'

(45 min on this 2-core CPU for 16 x 100 steps; the shipped ``se.load_pretrained()`` weights
come from the second command.)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/examples/pretrain_offline"),
                   help="output folder: data/ (shards) and run/ (training run)")
    p.add_argument("--n-structures", type=int, default=6, help="procedural structures to simulate")
    p.add_argument("--n-frames", type=int, default=32, help="shots per structure")
    p.add_argument("--atoms", type=int, nargs=2, default=(3000, 8000), metavar=("MIN", "MAX"),
                   help="atom-count range of the procedural particles")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-epoch", type=int, default=10)
    p.add_argument("--p", type=int, default=8, help="(structure, hit) groups per batch")
    p.add_argument("--k", type=int, default=4, help="frames per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def simulate_dataset(args, data_dir: Path) -> list[Path]:
    """Simulate ``n_structures`` procedural particles into ``data_dir`` (one shard each)."""
    from simulate.generate import generate_dataset
    from simulate.geometry import default_geometry
    from simulate.sources import resolve_sources

    # A source config is a plain dict (conf/simulate/source/procedural.yaml holds the same keys); nothing
    # is built until generate_dataset needs it.
    specs = resolve_sources({"kind": "procedural", "n_structures": args.n_structures,
                             "seed": args.seed, "n_atoms_min": args.atoms[0],
                             "n_atoms_max": args.atoms[1]})
    report = generate_dataset(
        specs, default_geometry(), out_dir=data_dir, n_frames=args.n_frames, chunk=args.n_frames,
        # every hit class (conf/train/data/procedural.yaml uses 0.4/0.3/0.15/0.15): no_hit and
        # non_sample frames are negatives for the mining rule; validation episodes use single vs
        # multi, so these two get most of the few shots simulated here
        mix={"single": 0.4, "multi": 0.4, "no_hit": 0.1, "non_sample": 0.1},
        seed=args.seed, progress=False)
    if not report.ok:  # a structure that failed is reported, the others go on
        raise SystemExit(f"simulation failed:\n{report.table()}")
    return report.shard_paths  # a rerun skips complete shards (written atomically)


def training_config(args, data_dir: Path, run_dir: Path) -> tuple[dict, list[str]]:
    """``conf/train/train.yaml`` + overrides, composed by Hydra as the training CLI does."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from speckle_embed.train.__main__ import CONFIG_DIR  # training's config tree, conf/train/

    overrides = [
        "model=tiny",                      # 8/16 channels, 32-D embedding
        f"data.dirs=[{data_dir}]",
        "data.generate_if_missing=false",        # we simulated the data ourselves
        "data.val_fraction=0.25",                # hold out a quarter of the structures
        f"epochs={args.epochs}", f"steps_per_epoch={args.steps_per_epoch}",
        f"sampler.p={args.p}", f"sampler.k={args.k}",
        "eval.n_way=2", "eval.k_shot=5", "eval.n_query=10", "eval.n_tasks=10",
        f"seed={args.seed}", "resume=never",     # the CLI's default resume=auto continues a killed run
        "progress=false", "tensorboard=false", "device=cpu",
    ]
    if args.threads:
        overrides.append(f"threads={args.threads}")
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR, job_name="pretrain_offline"):
        cfg = compose(config_name="train", overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["run_dir"] = str(run_dir)              # the CLI uses hydra.run.dir = outputs/train/<name>
    return plain, overrides


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir, run_dir = args.out / "data", args.out / "run"

    t0 = time.perf_counter()
    shards = simulate_dataset(args, data_dir)
    print(f"simulated {len(shards)} structures x {args.n_frames} shots in "
          f"{time.perf_counter() - t0:.0f} s -> {data_dir}")

    from speckle_embed.train import train

    cfg, overrides = training_config(args, data_dir, run_dir)
    print("equivalent command:\n  python -m speckle_embed.train "
          + " ".join(f"'{o}'" if "[" in o else o for o in overrides) + f" hydra.run.dir={run_dir}")
    t0 = time.perf_counter()
    result = train(cfg)
    print(f"trained {result.global_step} steps in {time.perf_counter() - t0:.0f} s")

    # One row per epoch (also in run/metrics.csv): validation 2-way 5-shot accuracy and F1
    # (single hit positive) on the held-out structures.
    print("epoch  loss    active  val_acc  val_f1")
    for row in result.history:
        print(f"{int(row['epoch']):5d}  {row['loss']:.4f}  {row['active_fraction']:.2f}    "
              f"{row['val_accuracy']:.3f}    {row['val_f1']:.3f}")
    last = result.history[-1]
    print(f"validation 2-way 5-shot accuracy: {last['val_accuracy']:.3f} (last epoch), "
          f"{result.best_metric:.3f} (best)")
    print(f"run folder: {result.run_dir}")
    for name in ("best.pt", "last.pt", "metrics.csv", "learning_curve.png"):
        print(f"  {Path(result.run_dir) / name}")

    # best.pt alone rebuilds the embedder (architecture + preprocessing travel with the weights)
    import speckle_embed as se

    emb = se.SpeckleEmbedder.from_checkpoint(result.best_checkpoint, device="cpu")
    print(f"loaded: {emb}")


if __name__ == "__main__":
    main()
