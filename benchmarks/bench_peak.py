"""What this machine can do at best: GEMM peak against the default model's arithmetic.

Prints (1) the multiply-accumulate count of the default SpeckleNN network per 96x96 pattern
(counted layer by layer with forward hooks), (2) the measured matrix-multiply throughput of
torch on this CPU in float32 and bfloat16 (the best case for any layer), and (3) the resulting
upper bounds on patterns/s for inference (forward) and training (forward + backward, about 3x
the forward arithmetic), next to the brief's targets (1,500 /s inference, 300 /s training).

Usage::

    python benchmarks/bench_peak.py [--threads 2] [--size 2048] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from speckle_embed.models import build_model


def macs_per_pattern(model: nn.Module, input_size: int = 96) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d/Linear layer for one pattern."""
    counts: dict[str, int] = {}

    def hook(name):
        def f(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                counts[name] = int(out[0].numel() * k)
            elif isinstance(mod, nn.Linear):
                counts[name] = int(mod.in_features * mod.out_features)
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 1, input_size, input_size))
    for h in handles:
        h.remove()
    return counts


def gemm_gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = macs_per_pattern(build_model({"name": "specklenn", "input_size": 96}))
    total = sum(counts.values())
    print(f"default SpeckleNN, one 96x96 pattern: {total / 1e6:.1f} M multiply-accumulates "
          f"= {2 * total / 1e6:.0f} MFLOP forward")
    for name, c in counts.items():
        print(f"  {name:<14s} {c / 1e6:7.1f} M MAC ({100 * c / total:4.1f} %)")
    print(f"torch {torch.__version__}, {args.threads} threads, GEMM {args.size}^2 (best of {args.repeats}):")
    for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        g = gemm_gflops(dtype, args.size, args.repeats)
        infer = g * 1e9 / (2 * total)
        train = infer / 3
        print(f"  {label:<9s} {g:7.1f} GFLOP/s -> at most {infer:6.0f} patterns/s forward "
              f"(target 1,500), {train:5.0f} patterns/s training (target 300)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
