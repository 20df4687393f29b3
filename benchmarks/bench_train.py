"""Training throughput: patterns per second of one optimizer step, stage by stage.

One step is exactly what :mod:`speckle_embed.train.loop` does per batch: on-device
augmentation of raw photon frames (:class:`~speckle_embed.train.augment.SpeckleAugment`, all
operations at their default probabilities), preprocessing, forward pass, semi-hard mining with
the (structure, hit) rule, triplet loss, backward pass, gradient clipping and an AdamW step.
Frames are synthetic Poisson patterns of the paper detector (172 x 172 with a gap and a beam
stop) held in memory, so disk reading is left out; ``--data DIR`` also times reading batches of
real shards (done by a background thread during training, so it overlaps the step).

The default model is the published SpeckleNN (96 x 96 input) at P x K = 16 x 8. Each
configuration (threads x memory format) runs ``--warmup`` steps, then ``--steps`` timed steps;
the median step time is reported.

Usage::

    python benchmarks/bench_train.py                       # threads 1 and all, channels_last off/on
    python benchmarks/bench_train.py --model tiny --steps 20
    python benchmarks/bench_train.py --data data/simulated/procedural
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from speckle_embed.losses import SemiHardMiner, TripletLoss
from speckle_embed.models import build_model
from speckle_embed.preprocess import Preprocessing, preprocess
from speckle_embed.train.augment import SpeckleAugment

MODELS = {
    "specklenn": {"name": "specklenn"},
    "tiny": {"name": "specklenn", "channels": [8, 16], "hidden_size": 64, "embedding_size": 32},
}


def synthetic_batch(p: int, k: int, size: int = 172, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size) - size / 2, np.arange(size) - size / 2, indexing="ij")
    r = np.hypot(yy, xx) + 1
    frames = np.stack([rng.poisson(200.0 / r**1.5 * (1 + np.cos(r / (3 + i % 5)))) for i in range(p * k)])
    mask = np.zeros((size, size), dtype=bool)
    mask[:, size // 2 - 2:size // 2 + 2] = True
    mask[size // 2 - 3:size // 2 + 3, size // 2 - 4:size // 2 + 4] = True
    structure = np.repeat(np.arange(p) // 2, k)
    hit = np.repeat(1 + np.arange(p) % 2, k)
    return (torch.as_tensor(frames, dtype=torch.float32), torch.as_tensor(mask),
            torch.as_tensor(structure), torch.as_tensor(hit))


def run(model_name: str, p: int, k: int, threads: int, channels_last: bool, steps: int, warmup: int,
        device: torch.device) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    prep = Preprocessing(input_size=96, crop=96)
    model = build_model({**MODELS[model_name], "input_size": prep.input_size}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    aug = SpeckleAugment(out_size=prep.crop)
    gen = torch.Generator(device=device)
    miner = SemiHardMiner(0.5, generator=torch.Generator(device=device))
    loss_fn = TripletLoss(0.5)
    frames, mask, structure, hit = (t.to(device) for t in synthetic_batch(p, k))
    stages = {"augment+preprocess": [], "forward": [], "mining+loss": [], "backward+step": [], "total": []}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(warmup + steps):
        gen.manual_seed(i)
        t0 = time.perf_counter()
        with torch.no_grad():
            x, bad = aug(frames, mask, generator=gen)
            inp = preprocess(x, prep, mask=bad)
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        sync()
        t1 = time.perf_counter()
        model.train()
        emb = model(inp)
        sync()
        t2 = time.perf_counter()
        loss, _ = loss_fn(emb, *miner(emb, structure, hit))
        sync()
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sync()
        t4 = time.perf_counter()
        if i >= warmup:
            for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                stages[key].append(dt)
    med = {key: statistics.median(v) for key, v in stages.items()}
    return {"patterns_per_s": p * k / med["total"], **{f"{k}_ms": 1e3 * v for k, v in med.items()}}


def bench_reading(path: str, p: int, k: int, batches: int) -> float:
    from speckle_embed.data.h5dataset import open_dataset, read_mask
    from speckle_embed.train.data import BatchReader

    index = open_dataset(path)
    masks = torch.from_numpy(np.stack([(read_mask(s.path) if read_mask(s.path) is not None
                                        else np.zeros(index.frame_shape)) != 0 for s in index.shards]))
    reader = BatchReader(index, masks)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(batches):
        reader(rng.choice(len(index), p * k, replace=len(index) < p * k))
    return batches * p * k / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="specklenn")
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="torch thread counts to try (default: 1 and all cores)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=None, help="shard folder: also time batch reading")
    args = ap.parse_args()
    device = torch.device(args.device)
    ncpu = os.cpu_count() or 1
    threads = args.threads or sorted({1, ncpu})
    print(f"# {platform.processor() or platform.machine()}, {ncpu} cores, torch {torch.__version__}, "
          f"device {device}, model {args.model}, batch P x K = {args.p} x {args.k}")
    print("threads  channels_last  patterns/s  augment+prep_ms  forward_ms  mining+loss_ms  backward+step_ms  total_ms")
    for t in threads:
        for cl in (False, True):
            r = run(args.model, args.p, args.k, t, cl, args.steps, args.warmup, device)
            print(f"{t:7d}  {str(cl):>13}  {r['patterns_per_s']:10.1f}  {r['augment+preprocess_ms']:15.1f}  "
                  f"{r['forward_ms']:10.1f}  {r['mining+loss_ms']:14.1f}  {r['backward+step_ms']:16.1f}  "
                  f"{r['total_ms']:8.1f}", flush=True)
    if args.data:
        print(f"reading {args.data}: {bench_reading(args.data, args.p, args.k, 10):.1f} patterns/s "
              "(background thread during training)")


if __name__ == "__main__":
    main()
