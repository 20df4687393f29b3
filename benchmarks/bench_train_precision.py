"""Training step of the default network alone (forward + backward + AdamW), float32 vs bf16 autocast.

The upper end of what the trainer could reach on this CPU with each precision: no data reading,
augmentation or mining, one batch of P x K = 128 random 96x96 inputs in channels-last memory, a
stand-in loss. The trainer itself uses bf16 autocast on CUDA only (``amp``); this measures
whether CPU bf16 (AVX-512 BF16) would be worth enabling there.

Usage::

    python benchmarks/bench_train_precision.py [--threads 2] [--batch 128] [--steps 4] [--rounds 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from speckle_embed.models import build_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per precision")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model({"name": "specklenn", "input_size": 96}).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(args.batch, 1, 96, 96).to(memory_format=torch.channels_last)
    half = args.batch // 2

    def step(amp: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            z = model(x)
            loss = (z[:half] - z[half:2 * half]).pow(2).sum()
        loss.backward()
        opt.step()

    rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        for name, amp in (("float32", False), ("bfloat16", True)):
            step(amp)
            t = time.perf_counter()
            for _ in range(args.steps):
                step(amp)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t))
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, model only:")
    for name, r in rates.items():
        print(f"  {name:<9s} {max(r):6.0f} patterns/s (best of {args.rounds}; all {[round(v) for v in r]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
