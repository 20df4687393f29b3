"""Search throughput and memory of :class:`speckle_embed.fewshot.index.SupportIndex` (flat L2).

For each support-set size, builds a ``SupportIndex(dim, metric="l2")`` from random float32
embeddings, then times ``search(queries, k)`` for a batch of queries and reports queries per
second (best of ``--repeats`` timed runs after a 20-query warm-up), the time of the raw FAISS
search underneath (timed alternately with the wrapper, so the wrapper's overhead shows), the time
to ``add`` the supports, and memory: the flat storage FAISS needs (``n * (4 d + 8)`` bytes: vectors
plus int64 ids) and the process RSS growth across ``add`` (FAISS's copy plus the wrapper's
per-support id/label/norm arrays, 24 B each).  Timings are best-of-N because the CPUs may be
shared.  Runs on the CPU, and on the GPU too when faiss sees one.

Usage::

    python benchmarks/bench_index.py                      # 1e3, 1e5, 1e6 supports, d=128, k=5
    python benchmarks/bench_index.py --sizes 1000 10000 --queries 500
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time

import faiss
import numpy as np

from speckle_embed.fewshot.index import SupportIndex, gpu_available


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def best_times(fns, repeats: int, budget_s: float = 15.0) -> list[float]:
    """Best wall time of each function, running them in alternation up to ``repeats`` times.

    Stops after the first full round that ends past ``budget_s`` (keeps the run short on slow or
    busy machines).
    """
    best = [float("inf")] * len(fns)
    start = time.perf_counter()
    for _ in range(repeats):
        if time.perf_counter() - start > budget_s:
            break
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def bench(n: int, dim: int, n_queries: int, k: int, repeats: int, device: str, rng) -> dict:
    supports = rng.standard_normal((n, dim), dtype=np.float32)
    labels = rng.integers(0, 4, size=n)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    gc.collect()
    rss0 = rss_bytes()
    index = SupportIndex(dim, metric="l2", use_gpu=(device == "gpu"))
    t0 = time.perf_counter()
    index.add(supports, labels)
    t_add = time.perf_counter() - t0
    rss_grow = rss_bytes() - rss0  # the caller's `supports` array is still alive: this is the index
    del supports, labels
    # Warm-up with a few queries: one pass over every stored vector (page faults, BLAS/OpenMP start,
    # the GPU copy) without paying for a full batch.
    index.search(queries[:20], k)
    if device == "cpu":
        raw = index._index  # the FAISS IndexIDMap2 underneath
        t_search, t_raw = best_times(
            [lambda: index.search(queries, k), lambda: raw.search(queries, k)], repeats)
    else:
        (t_search,), t_raw = best_times([lambda: index.search(queries, k)], repeats), float("nan")
    return {
        "n": n, "device": device, "add_s": t_add, "search_s": t_search, "raw_s": t_raw,
        "qps": n_queries / t_search, "flat_bytes": n * (4 * dim + 8), "rss_grow": rss_grow,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU rows even if a GPU is visible")
    args = p.parse_args(argv)

    devices = ["cpu"] + (["gpu"] if gpu_available() and not args.no_gpu else [])
    print(f"SupportIndex flat L2 benchmark: d={args.dim}, {args.queries} queries, k={args.k}")
    print(f"faiss {faiss.__version__}, numpy {np.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, faiss OpenMP threads={faiss.omp_get_max_threads()}, "
          f"GPU: {'yes (%d)' % faiss.get_num_gpus() if 'gpu' in devices else 'none'}, "
          f"load average {os.getloadavg()[0]:.1f} (other processes share these CPUs)")
    header = (f"{'supports':>10} {'device':>6} {'add [s]':>8} {'search [ms]':>11} {'queries/s':>11} "
              f"{'raw faiss [ms]':>14} {'flat index':>11} {'RSS growth':>11}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    for n in args.sizes:
        for device in devices:
            r = bench(n, args.dim, args.queries, args.k, args.repeats, device, rng)
            raw = "-" if np.isnan(r["raw_s"]) else f"{1e3 * r['raw_s']:.1f}"
            print(f"{r['n']:>10,} {r['device']:>6} {r['add_s']:>8.3f} {1e3 * r['search_s']:>11.1f} "
                  f"{r['qps']:>11,.0f} {raw:>14} {fmt_bytes(r['flat_bytes']):>11} "
                  f"{fmt_bytes(r['rss_grow']):>11}", flush=True)
    print(f"total {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
