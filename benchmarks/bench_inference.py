"""Inference throughput: uint16 detector frames in memory -> embeddings -> few-shot predictions.

Frames are ``uint16`` 172 x 172 Poisson patterns (the SpeckleNN detector), the model is the
default SpeckleNN (96 x 96 input, 128-D; random weights: speed does not depend on them). For
each batch size it reports patterns/s (best of ``--repeats`` passes over ``--frames`` frames) of:

* ``naive``: ``model(preprocess(frames))`` on whole frames: float64-free but converts the whole
  frame to float32 before cropping, NCHW, BatchNorm unfused (the straightforward code);
* ``embed``: :meth:`SpeckleEmbedder.embed` (crop before float conversion, BatchNorm folded into
  the convolutions, PReLU after max-pooling, channels-last, ``torch.inference_mode``);
* ``embed-bf16``: the same under bf16 autocast (CPUs with AVX512-BF16/AMX, or CUDA);
* ``embed-bf16-compile`` (``--compile``): plus ``torch.compile``;
* ``classify``: ``FewShotClassifier(rule="mean_distance").predict`` (embedding + FAISS rule)
  with 2 classes x 10 supports;

and, at one batch size, where the time goes (preprocessing alone, model alone).

Usage::

    python benchmarks/bench_inference.py                       # CPU, torch.set_num_threads(2)
    python benchmarks/bench_inference.py --device cuda --compile --frames 16384
    python benchmarks/bench_inference.py --batch-sizes 256 --frames 1024 --threads 1
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from speckle_embed.classifier import FewShotClassifier
from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.preprocess import preprocess


def best_rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up (builds the inference copy, compiles, allocates)
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (bf16)")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    rng = np.random.default_rng(0)
    frames = rng.poisson(3.0, size=(args.frames, 172, 172)).astype(np.uint16)
    emb32 = SpeckleEmbedder.random_init(device=dev)
    emb16 = SpeckleEmbedder.random_init(device=dev, precision="bfloat16")
    variants = {"embed": emb32, "embed-bf16": emb16}
    if args.compile:
        variants["embed-bf16-compile"] = SpeckleEmbedder.random_init(device=dev, precision="bfloat16", compile=True)
    supports = rng.poisson(3.0, size=(20, 172, 172)).astype(np.uint16)
    clf = FewShotClassifier(emb32, rule="mean_distance", use_gpu=False).fit(supports, ["a"] * 10 + ["b"] * 10)

    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {args.frames} uint16 172x172 frames, SpeckleNN default model (96x96 -> 128), device={dev} "
          f"({name}), torch {torch.__version__}, threads={torch.get_num_threads()}")
    print(f"{'variant':<22}" + "".join(f"{'bs=' + str(b):>10}" for b in args.batch_sizes) + "   (patterns/s)")

    model = emb32.model

    def naive(bs):
        def run():
            with torch.inference_mode():
                for s in range(0, args.frames, bs):
                    x = preprocess(frames[s:s + bs], emb32.preprocessing, device=dev)
                    model(x).cpu()
        return run

    rows = {}
    if not args.skip_naive:
        rows["naive"] = [best_rate(naive(b), args.frames, args.repeats) for b in args.batch_sizes]
    for key, e in variants.items():
        rows[key] = [best_rate(lambda e=e, b=b: e.embed(frames, batch_size=b), args.frames, args.repeats)
                     for b in args.batch_sizes]
    rows["classify"] = []
    for b in args.batch_sizes:
        emb32.batch_size = b
        rows["classify"].append(best_rate(lambda: clf.predict(frames), args.frames, args.repeats))
    for key, rates in rows.items():
        print(f"{key:<22}" + "".join(f"{r:>10.0f}" for r in rates))

    # where the time goes, at batch size 256
    bs = 256
    x = frames[:bs]

    def prep_only():
        with torch.inference_mode():
            preprocess(torch.from_numpy(np.ascontiguousarray(x[:, 36:136, 36:136], dtype=np.float32)).to(dev),
                       emb32.preprocessing, center=(49.5, 49.5))

    inputs = preprocess(x, emb32.preprocessing, device=dev).contiguous(memory_format=torch.channels_last)
    folded = emb32._inference_model()

    def model_only(m, autocast=False):
        def run():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                m(inputs)
        return run

    print(f"\n# breakdown at batch size {bs} (patterns/s)")
    print(f"preprocess (crop first)      {best_rate(prep_only, bs, 3):>10.0f}")
    print(f"model fp32, as built         {best_rate(model_only(model), bs, 3):>10.0f}")
    print(f"model fp32, folded + NHWC    {best_rate(model_only(folded), bs, 3):>10.0f}")
    print(f"model bf16, folded + NHWC    {best_rate(model_only(folded, True), bs, 3):>10.0f}")
    flops = 2 * (92 * 92 * 32 * 25 + 42 * 42 * 64 * 32 * 25 + 28224 * 512 + 512 * 128)
    print(f"# model cost: {flops / 1e6:.0f} MFLOP per pattern")


if __name__ == "__main__":
    main()
