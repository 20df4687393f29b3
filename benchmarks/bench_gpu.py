"""GPU throughput: uint16 frames in host memory -> few-shot class labels, batch sizes 256 to 8192.

What a beamline veto does: frames arrive as ``uint16`` 172 x 172 detector images in host memory;
each is embedded by the shipped SpeckleNN model and labelled by a :class:`FewShotClassifier`
(2 classes x 10 supports, mean-distance rule, FAISS on the GPU when faiss-gpu is installed).
Timed variants (each from host frames to labels):

* ``fp32``: float32, eager (TF32 off);
* ``bf16``: bf16 autocast, eager;
* ``bf16+compile``: ``compile=True`` (Inductor);
* ``bf16+cudagraphs``: ``compile="reduce-overhead"`` (the forward pass replayed as a CUDA graph);
* ``bf16, pageable``: ``bf16`` with the pinned, overlapped staging turned off (plain
  synchronous copies), to show what the staging buys.

Every variant uses the embedder's GPU path: only the 96 x 96 window is copied, as uint16, through
double-buffered pinned memory on a copy stream (:class:`speckle_embed.inference.transfer.HostToDevice`);
embeddings stay on the GPU until the end of the call. The labels of every variant are compared
with the CPU float32 path on ``--agree-frames`` frames; a disagreement is a **near-tie** when the
CPU's two class distances differ by less than ``--tie`` (squared L2; unit vectors).

Usage (GPU session; the data are shards of 172x172 frames, Poisson noise if none)::

    python benchmarks/bench_gpu.py --frames 16384 --out reports/bench_gpu.json
    python benchmarks/bench_gpu.py --device cpu --frames 64 --batch-sizes 32 --repeats 1   # smoke

Prints one row per variant (patterns/s per batch size, median of ``--repeats`` passes after a
warm-up) and writes the same figures, the machine and the agreement counts to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import VAL_STRUCTURES, load_frames  # noqa: E402

from speckle_embed.fewshot.classifier import FewShotClassifier  # noqa: E402
from speckle_embed.fewshot.index import gpu_available  # noqa: E402
from speckle_embed.inference.transfer import HostToDevice  # noqa: E402

VARIANTS = {  # name: (precision, compile, pinned staging)
    "fp32": ("float32", False, True),
    "bf16": ("bfloat16", False, True),
    "bf16+compile": ("bfloat16", True, True),
    "bf16+cudagraphs": ("bfloat16", "reduce-overhead", True),
    "bf16, pageable": ("bfloat16", False, False),
}


def frames_and_supports(data: str, n: int, seed: int = 0):
    """uint16 (n, 172, 172) query frames, 20 support frames + labels, mask, and a description."""
    shards = load_frames(data, VAL_STRUCTURES)
    rng = np.random.default_rng(seed)
    if shards:
        name = sorted(shards)[0]
        f, hit, mask = shards[name]
        single, multi = np.flatnonzero(hit == 1), np.flatnonzero(hit == 2)
        if len(single) > 10 and len(multi) > 10:
            sup = np.concatenate([single[:10], multi[:10]])
            pool = np.concatenate([f[np.setdiff1d(np.arange(len(f)), sup)]]
                                  + [shards[k][0] for k in sorted(shards)[1:]])
            frames = pool[rng.permutation(len(pool))[:n]] if len(pool) >= n else np.resize(pool, (n, 172, 172))
            return frames, f[sup], np.array(["single"] * 10 + ["multi"] * 10), mask, \
                f"{len(shards)} structures of {data} (supports: {name})"
    yy, xx = np.mgrid[:172, :172] - 85.5
    lam = 30 * np.exp(-np.hypot(yy, xx) / 12.0)
    frames = rng.poisson(lam, size=(n, 172, 172)).astype(np.uint16)
    sup = rng.poisson(np.stack([lam] * 10 + [lam * (1 + np.cos(xx / 2))] * 10)).astype(np.uint16)
    return frames, sup, np.array(["single"] * 10 + ["multi"] * 10), None, "Poisson frames (no shard found)"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--frames", type=int, default=16384, help="frames in host memory per timed pass")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--agree-frames", type=int, default=4096, help="frames compared with the CPU path")
    ap.add_argument("--tie", type=float, default=0.01, help="near-tie: |d_single - d_multi| below this")
    ap.add_argument("--data", default="data/offline/pdb")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (reference path)")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU (use --device cpu for a smoke run)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    frames, sup, sup_y, mask, source = frames_and_supports(args.data, args.frames)
    if args.random_weights:
        from speckle_embed.inference.embedder import SpeckleEmbedder

        def make(device, **kw):
            return SpeckleEmbedder.random_init(device=device, seed=0, **kw)
    else:
        from speckle_embed.inference.pretrained import load_pretrained

        def make(device, **kw):
            return load_pretrained(device=device, **kw)

    faiss_gpu = dev.type == "cuda" and gpu_available()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {args.frames} uint16 172x172 frames in host memory ({source}); device {dev} ({name}); "
          f"torch {torch.__version__}; FAISS on the GPU: {faiss_gpu}; {os.cpu_count()} CPUs")

    # -- reference: the CPU float32 path
    n_ref = min(args.agree_frames, args.frames)
    ref = FewShotClassifier(make("cpu"), rule="mean_distance", use_gpu=False).fit(sup, sup_y, mask=mask)
    t = time.perf_counter()
    ref_dist = ref.decision_distances(frames[:n_ref], mask=mask)
    ref_labels = ref.classes_[np.argmin(ref_dist, axis=1)]
    margin = np.abs(ref_dist[:, 0] - ref_dist[:, 1])
    print(f"# CPU float32 reference on {n_ref} frames: {n_ref / (time.perf_counter() - t):.0f} patterns/s")

    results = {"device": str(dev), "device_name": name, "torch": torch.__version__, "frames": args.frames,
               "source": source, "faiss_gpu": faiss_gpu, "variants": {}}
    print(f"{'variant':<18}" + "".join(f"{'bs=' + str(b):>10}" for b in args.batch_sizes)
          + "   label diffs vs CPU (near-ties)   peak GPU MiB")
    for v in args.variants:
        precision, compile_, pinned = VARIANTS[v]
        if dev.type == "cpu" and (compile_ or not pinned):
            continue  # compile is slow to build on a CPU smoke run; staging is CUDA-only
        emb = make(dev, precision=precision, compile=compile_)
        if dev.type == "cuda" and not pinned:
            emb._h2d = HostToDevice(dev, pin=False)
        clf = FewShotClassifier(emb, rule="mean_distance", use_gpu=faiss_gpu).fit(sup, sup_y, mask=mask)
        rates = {}
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for b in args.batch_sizes:
            emb.batch_size = b
            clf.predict(frames[:2 * b], mask=mask)  # warm-up: compile/capture for this shape
            sync(dev)
            runs = []
            for _ in range(args.repeats):
                sync(dev)
                t = time.perf_counter()
                clf.predict(frames, mask=mask)
                sync(dev)
                runs.append(args.frames / (time.perf_counter() - t))
            rates[b] = float(np.median(runs))
        emb.batch_size = max(args.batch_sizes)
        labels = clf.predict(frames[:n_ref], mask=mask)
        diff = labels != ref_labels
        ties = int((diff & (margin < args.tie)).sum())
        peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
        results["variants"][v] = {"patterns_per_s": rates, "label_diffs": int(diff.sum()), "near_ties": ties,
                                  "compared": n_ref, "peak_gpu_mib": peak}
        print(f"{v:<18}" + "".join(f"{r:>10.0f}" for r in rates.values())
              + f"   {int(diff.sum()):>6} of {n_ref} ({ties} near-ties)" + f"{peak:>14.0f}")
        del clf, emb
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    best = max(((r, v, b) for v, d in results["variants"].items() for b, r in d["patterns_per_s"].items()),
               default=None)
    if best:
        print(f"# best: {best[0]:.0f} patterns/s ({best[1]}, batch {best[2]}); goal on one H100: 50,000")
        results["best"] = {"patterns_per_s": best[0], "variant": best[1], "batch_size": best[2]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
