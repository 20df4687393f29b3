"""Inference throughput: uint16 detector frames in memory -> embeddings -> few-shot predictions.

Frames are ``uint16`` 172 x 172 patterns (the SpeckleNN detector): simulated shots of the
validation structures read from ``--data`` (rounded to photons), or Poisson noise when no shard
is found. The model is the shipped default SpeckleNN (``load_pretrained()``: 96 x 96 input,
128-D; ``--random-weights`` for an untrained one, speed does not depend on the weights).
For each precision of ``--precision`` (float32, the reference, is always timed) and each batch
size it reports patterns/s of

* ``embed``: :meth:`SpeckleEmbedder.embed` (crop before float conversion, BatchNorm folded into
  the convolutions, PReLU after max-pooling, channels-last, ``torch.inference_mode``);
  ``bfloat16``: the same under bf16 autocast (CPUs with AVX512-BF16/AMX, or CUDA); ``int8``:
  static int8 quantization (:mod:`speckle_embed.inference.int8`) calibrated on 256 frames of other
  structures than those timed, run in chunks that keep int8 buffers under 32 MiB (default);
  ``int8-nochunk``: the same model running whole batches;
* ``classify``: ``FewShotClassifier(rule="mean_distance").predict`` (embedding + FAISS rule)
  with 2 classes x 10 supports;
* ``naive`` (float32 only, unless ``--skip-naive``): ``model(preprocess(frames))`` on whole
  frames, NCHW, BatchNorm unfused (the straightforward code); ``--compile`` adds bf16 +
  ``torch.compile``.

The variants are timed interleaved (one pass of each, ``--repeats`` times, the order rotating)
and the **median** pass is reported with its spread, because a shared machine is noisy; the
``cpu`` column is process CPU seconds per wall second (2.0 = both cores busy for us, lower =
other jobs took the CPU). Then, at one batch size, where the time goes (preprocessing alone,
model alone, the int8 fully connected layer as int8 / dynamic int8 / float32), and, when int8 is
asked, its agreement with float32: ``max`` and ``median |z_int8 - z_fp32|`` over embedding
coordinates of the timed frames, and the label disagreements of two few-shot classifiers
(single vs multiple hits of each structure, 10 supports per class, mean-distance rule) fitted
on the same supports with each precision.

Usage::

    python benchmarks/bench_inference.py --precision bfloat16 int8 --batch-sizes 256 --repeats 7
    python benchmarks/bench_inference.py                       # float32 + bf16, CPU, 2 threads
    python benchmarks/bench_inference.py --device cuda --compile --frames 16384
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import time

import numpy as np
import torch

from speckle_embed.fewshot.classifier import FewShotClassifier
from speckle_embed.inference.embedder import SpeckleEmbedder
from speckle_embed.preprocess import preprocess

VAL_STRUCTURES = ["1BXN", "2FHA", "3J9I", "4JSV", "6WLB", "7Q5B", "1M19", "3O21", "2NIP", "6FLR"]


def timed(fn, n: int) -> tuple[float, float]:
    """(patterns/s, process CPU seconds per wall second) of one call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    c, t = time.process_time(), time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    return n / wall, (time.process_time() - c) / wall


def interleaved(fns: dict, n: int, repeats: int) -> dict:
    """Median (rate, cpu) and (min, max) rate of each function, timed in rotating order."""
    for fn in fns.values():
        fn()  # warm-up (builds the inference copy, compiles, allocates)
    runs: dict = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            runs[k].append(timed(fns[k], n))
    out = {}
    for k, v in runs.items():
        a = np.array(v)
        out[k] = {"rate": float(np.median(a[:, 0])), "cpu": float(np.median(a[:, 1])),
                  "min": float(a[:, 0].min()), "max": float(a[:, 0].max())}
    return out


def load_frames(pattern: str, structures: list[str]) -> dict:
    """{structure: (uint16 frames, hit_class, mask)} of the shards matching ``pattern``."""
    import h5py

    out = {}
    for path in sorted(glob.glob(os.path.join(pattern, "*.h5")) if os.path.isdir(pattern) else glob.glob(pattern)):
        name = os.path.splitext(os.path.basename(path))[0]
        if structures and name not in structures:
            continue
        with h5py.File(path, "r") as f:
            data = f["entry_1/data_1/data"][()]
            hit = f["entry_1/truth/hit_class"][()] if "entry_1/truth/hit_class" in f else np.zeros(len(data), np.int8)
            mask = f["entry_1/data_1/mask"][()] if "entry_1/data_1/mask" in f else None
        if data.shape[1:] != (172, 172):
            continue
        out[name] = (np.clip(np.rint(data), 0, 65535).astype(np.uint16), np.asarray(hit), mask)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved passes per variant (median reported)")
    ap.add_argument("--precision", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16", "int8"], help="float32 is always timed (reference)")
    ap.add_argument("--int8-fc", default="int8", choices=["int8", "dynamic", "float32"],
                    help="first fully connected layer of the int8 model (speckle_embed.inference.int8.FC_MODES)")
    ap.add_argument("--data", default="data/offline/pdb",
                    help="folder or glob of CXI shards of 172x172 frames (Poisson noise frames if none)")
    ap.add_argument("--random-weights", action="store_true", help="untrained model instead of the shipped one")
    ap.add_argument("--checkpoint", default=None,
                    help="another embedding file (e.g. weights/specklenn-realistic-v6.pt, scale 1.0) instead of the default")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (bf16)")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    precisions = ["float32"] + [p for p in dict.fromkeys(args.precision) if p != "float32"]
    if "int8" in precisions and dev.type != "cpu":
        ap.error("--precision int8 runs on the CPU only")

    # -- frames: timed/evaluated structures, and others for the int8 calibration
    shards = load_frames(args.data, VAL_STRUCTURES)
    rng = np.random.default_rng(0)
    if len(shards) >= 2:
        names = sorted(shards)
        calib_names, eval_names = names[:max(1, len(names) // 3)], names[max(1, len(names) // 3):]
        pool = np.concatenate([shards[k][0] for k in eval_names])
        frames = pool[rng.permutation(len(pool))[:args.frames]] if len(pool) >= args.frames \
            else np.resize(pool, (args.frames, 172, 172))
        masks = {shards[k][2].tobytes() if shards[k][2] is not None else b"" for k in names}
        mask = shards[names[0]][2] if len(masks) == 1 else None
        calib = np.concatenate([shards[k][0] for k in calib_names])
        source = f"{len(eval_names)} structures of {args.data} (int8 calibrated on {', '.join(calib_names)})"
    else:
        frames = rng.poisson(3.0, size=(args.frames, 172, 172)).astype(np.uint16)
        calib = rng.poisson(3.0, size=(256, 172, 172)).astype(np.uint16)
        mask, eval_names = None, []
        source = "Poisson(3) noise (no shard found under --data)"

    if args.random_weights:
        def make(**kw):
            return SpeckleEmbedder.random_init(device=dev, **kw)
        weights = "random weights"
    elif args.checkpoint:
        def make(**kw):
            return SpeckleEmbedder.from_checkpoint(args.checkpoint, device=dev, **kw)
        weights = args.checkpoint
    else:
        from speckle_embed.inference.pretrained import DEFAULT_PRETRAINED, load_pretrained

        def make(**kw):
            return load_pretrained(device=dev, **kw)
        weights = DEFAULT_PRETRAINED
    embs = {p: make(precision=p) for p in precisions}
    if "int8" in embs:
        t = time.perf_counter()
        cal = embs["int8"].calibrate_int8(calib, mask=mask, n=256, fc=args.int8_fc)
        print(f"# int8 calibration: {cal['n']} frames, engine {cal['engine']}, fc {cal['fc']}, "
              f"{time.perf_counter() - t:.1f} s; batches run in chunks of {embs['int8']._int8.max_batch}")
        embs["int8-nochunk"] = make(precision="int8")  # the same, whole batches in one call
        embs["int8-nochunk"].calibrate_int8(calib, mask=mask, n=256, fc=args.int8_fc, chunk_bytes=None)
    if args.compile:
        embs["bf16-compile"] = make(precision="bfloat16", compile=True)
    supports = frames[:20]
    clfs = {p: FewShotClassifier(e, rule="mean_distance", use_gpu=False).fit(supports, ["a"] * 10 + ["b"] * 10,
                                                                            mask=mask)
            for p, e in embs.items()}

    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {args.frames} uint16 172x172 frames in memory: {source}; SpeckleNN default model "
          f"(96x96 -> 128, {weights}), device={dev} ({name}), torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"# median of {args.repeats} interleaved passes [min-max], patterns/s; cpu = process CPU s / wall s")
    model = embs["float32"].model

    def naive(bs):
        def run():
            with torch.inference_mode():
                for s in range(0, args.frames, bs):
                    x = preprocess(frames[s:s + bs], embs["float32"].preprocessing, mask=mask, device=dev)
                    model(x).cpu()
        return run

    rows: dict = {}
    for b in args.batch_sizes:
        fns = {}
        if not args.skip_naive:
            fns["naive float32"] = naive(b)
        for p, e in embs.items():
            fns[f"embed {p}"] = lambda e=e, b=b: e.embed(frames, mask=mask, batch_size=b)
        for p, c in clfs.items():
            fns[f"classify {p}"] = lambda c=c, p=p, b=b: (setattr(embs[p], "batch_size", b), c.predict(frames, mask=mask))
        for k, v in interleaved(fns, args.frames, args.repeats).items():
            rows.setdefault(k, {})[b] = v
    print(f"{'variant':<22}" + "".join(f"{'bs=' + str(b):>24}" for b in args.batch_sizes))
    for key, per_b in rows.items():
        print(f"{key:<22}" + "".join(f"{v['rate']:>7.0f} [{v['min']:.0f}-{v['max']:.0f}] cpu {v['cpu']:.1f}".rjust(24)
                                     for v in per_b.values()))

    # -- where the time goes, at one batch size
    bs = 256 if 256 in args.batch_sizes else args.batch_sizes[0]
    x = frames[:bs]
    e32 = embs["float32"]
    inputs = torch.cat([t for _, _, t in e32._batches(x, mask, None, None, bs)])
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    folded = e32._inference_model()

    def prep_only():
        for _ in e32._batches(x, mask, None, None, bs):
            pass

    def model_only(m, autocast=False):
        def run():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                m(inputs)
        return run

    fns = {"preprocess (embed's path)": prep_only, "model fp32, as built": model_only(model),
           "model fp32, folded + NHWC": model_only(folded)}
    if "bfloat16" in embs:
        fns["model bf16, folded + NHWC"] = model_only(folded, True)
    if "int8" in embs:
        from speckle_embed.inference.int8 import quantize_specklenn

        cal_inputs = torch.cat([t for _, _, t in e32._batches(calib[np.linspace(0, len(calib) - 1, 256).astype(int)],
                                                               mask, None, None, 256)])
        for fc in ("int8", "dynamic", "float32"):
            q = embs["int8"]._int8 if fc == args.int8_fc else quantize_specklenn(model.cpu(), cal_inputs, fc=fc, check=False)
            fns[f"model int8, fc {fc}"] = model_only(q)
        fns[f"model int8, fc {args.int8_fc}, no chunks"] = model_only(embs["int8-nochunk"]._int8)
    print(f"\n# breakdown at batch size {bs} (patterns/s, median of {args.repeats} interleaved)")
    for k, v in interleaved(fns, bs, args.repeats).items():
        print(f"{k:<36}{v['rate']:>8.0f} [{v['min']:.0f}-{v['max']:.0f}] cpu {v['cpu']:.1f}")
    flops = 2 * (92 * 92 * 32 * 25 + 42 * 42 * 64 * 32 * 25 + 28224 * 512 + 512 * 128)
    print(f"# model cost: {flops / 1e6:.0f} MFLOP per pattern")

    # -- agreement of int8 with float32
    if "int8" in embs:
        z32 = embs["float32"].embed(frames, mask=mask)
        z8 = embs["int8"].embed(frames, mask=mask)
        d = np.abs(z8 - z32)
        cos = (z8 * z32).sum(1)
        print(f"\n# int8 vs float32 on the {len(frames)} timed frames: max |dz| {d.max():.4f}, median |dz| "
              f"{np.median(d):.5f}, min cosine {cos.min():.4f}, median cosine {np.median(cos):.5f}")
        dis = total = acc32 = acc8 = 0
        for k in eval_names:
            f, hit, m = shards[k]
            idx = {c: np.flatnonzero(hit == c) for c in (1, 2)}
            if min(len(v) for v in idx.values()) < 11:
                continue
            sup = np.concatenate([idx[1][:10], idx[2][:10]])
            qry = np.concatenate([idx[1][10:], idx[2][10:]])
            y = np.array(["single"] * 10 + ["multi"] * 10)
            truth = np.where(hit[qry] == 1, "single", "multi")
            p32 = FewShotClassifier(embs["float32"], rule="mean_distance", use_gpu=False).fit(f[sup], y, mask=m).predict(f[qry], mask=m)
            p8 = FewShotClassifier(embs["int8"], rule="mean_distance", use_gpu=False).fit(f[sup], y, mask=m).predict(f[qry], mask=m)
            dis += int((p32 != p8).sum())
            total += len(qry)
            acc32 += int((p32 == truth).sum())
            acc8 += int((p8 == truth).sum())
        if total:
            print(f"# few-shot single vs multiple hits ({len(eval_names)} structures, 10 supports per class, "
                  f"mean distance): {dis} label disagreements int8 vs float32 out of {total} queries; "
                  f"accuracy float32 {acc32 / total:.4f}, int8 {acc8 / total:.4f}")


if __name__ == "__main__":
    main()
