"""Speed of the training augmentation with and without the realism section (frames/s).

Batches of ``--batch`` Poisson frames of ``--size`` pixels, cropped to ``--crop`` (the training
preprocessing window), on the CPU with ``--threads`` threads; configurations are timed in turn,
``--repeats`` batches each, after one warm-up batch, so that a shared machine's load affects them alike.
Times are CPU seconds of this process (``time.process_time``, all threads; the median of the
rounds), which a shared machine's load disturbs far less than wall-clock time; frames/s assume
those CPU seconds spread over ``--threads`` cores. A training step of the published SpeckleNN network (preprocess + forward + backward of the batch,
``--model-step``) is timed in the same rounds to express the extra augmentation time as a fraction
of a step.

    PYTHONPATH=. python scripts/bench_augment.py --threads 1 --seed 0 --repeats 5
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from speckle_embed.models import build_model
from speckle_embed.preprocess import Preprocessing, preprocess
from speckle_embed.train.augment import AugmentConfig, SpeckleAugment

CONFIGS = {
    "default (realism off)": {},
    "realism p=1 (all sections)": {"realism": {"p": 1.0}},
    "realism p=1 + zoom [0.5, 2.5]": {"realism": {"p": 1.0}, "zoom": {"p": 1.0, "min": 0.5, "max": 2.5}},
    "realism p=0.5 + zoom [0.5, 2.5]": {"realism": {"p": 0.5}, "zoom": {"p": 0.8, "min": 0.5, "max": 2.5}},
    "realism p=0.5, background + detector": {"realism": {"p": 0.5, "layout": None}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=172)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    frames = torch.poisson(torch.full((args.batch, args.size, args.size), 0.3), generator=g)
    mask = torch.zeros(args.size, args.size, dtype=torch.bool)
    mask[:, args.size // 2 - 2:args.size // 2 + 2] = True
    augs = {name: SpeckleAugment(AugmentConfig().replace(**cfg), out_size=args.crop) for name, cfg in CONFIGS.items()}
    model = build_model({"name": "specklenn", "input_size": args.crop})
    prep = Preprocessing(input_size=args.crop, crop=args.crop)
    x0, bad0 = augs["default (realism off)"](frames, mask, generator=g)

    def step():
        inputs = preprocess(x0, prep, mask=bad0)
        model.zero_grad(set_to_none=True)
        model(inputs).square().mean().backward()

    times = {name: [] for name in augs}
    times["model step (no augmentation)"] = []
    for aug in augs.values():
        aug(frames, mask, generator=g)  # warm-up
    step()
    for _ in range(args.repeats):
        for name, aug in augs.items():
            t = time.process_time()
            aug(frames, mask, generator=g)
            times[name].append(time.process_time() - t)
        t = time.process_time()
        step()
        times["model step (no augmentation)"].append(time.process_time() - t)
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    base = med["default (realism off)"]
    model_step = med.pop("model step (no augmentation)")
    train_step = model_step + base
    print(f"batch {args.batch} x {args.size}x{args.size} -> {args.crop}, {args.threads} threads, "
          f"CPU time, median of {args.repeats}; model step {model_step * 1e3:.0f} ms, training step with the "
          f"default augmentation {train_step * 1e3:.0f} ms")
    for name, t in med.items():
        print(f"{name:38s} {t * 1e3:8.1f} CPU ms/batch  {args.batch * args.threads / t:6.0f} frames/s  "
              f"+{(t - base) * 1e3:5.0f} ms = {100 * (t - base) / train_step:+5.1f} % of a training step")


if __name__ == "__main__":
    main()
