"""End-to-end throughput and latency of the online veto (``speckle-embed stream``) on localhost.

A sender process replays ``uint16`` frames from a CXI file over ZMQ (``send_replay``, PUSH,
``--frames-per-message`` frames per message); the service (:class:`StreamService`, in this
process) receives, validates, classifies with the shipped embedding at ``--precision`` (int8
calibrated on the supports), publishes every decision on its PUB socket and appends the decision
log. For each frame size (128 x 128, and 1024 x 1024 "assembled" frames read with ``scale=8``):

1. ``saturated``: the sender goes as fast as it can with the ``block`` policy (the queue pushes
   back, nothing is dropped): the sustained frames/s of the whole chain;
2. ``paced``: the sender paced at ``--load`` x that rate with the ``drop_oldest`` policy: frames
   dropped (should be 0) and the latency receipt -> published decision (p50/p99);
3. ``in-memory``: ``FewShotClassifier.classify`` on the same frames already in memory, batch
   ``--batch-size``, ``--threads`` torch threads in one loop (the embedder's own throughput), measured just before and just after the
   saturated phase (``--seconds`` / 2 each, their mean is the reference): the ratio
   saturated / in-memory says what I/O costs. On a shared machine the load can change between
   phases; bracketing the stream phase by two in-memory ones shows that (both are reported).

The service runs ``--workers`` classifier threads with ``--threads // --workers`` torch threads
each (``workers`` in the stream config). It also reports the CPU time per frame (user + system, all threads) of the in-memory loop, of the
service process during the saturated window and of the sender process (Linux ``/proc``), which
says where CPU goes independently of what else runs on the machine.

Frames are synthetic (Poisson rings and stripes, seed ``--seed``): speed does not depend on the
content. The figures depend on the machine and on what else runs on it (README table).

Usage::

    python benchmarks/bench_stream.py                      # both sizes, int8, 8 s per phase
    python benchmarks/bench_stream.py --sizes 128 --seconds 5 --threads 2
    python benchmarks/bench_stream.py --sizes 128 --workers 2 --batch-size 128   # 2 workers x 1 torch thread
    python benchmarks/bench_stream.py --sizes 128 --components   # CPU us/frame of each step around the embedder
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speckle_embed.fewshot.classifier import FewShotClassifier
from speckle_embed.inference.pretrained import load_pretrained
from speckle_embed.stream.counters import StreamCounters
from speckle_embed.stream.decision_log import DecisionLog
from speckle_embed.stream.messages import decode_frames, encode_decisions, encode_frames
from speckle_embed.stream.publisher import DecisionPublisher
from speckle_embed.stream.service import StreamService
from speckle_embed.stream.validate import FrameValidator


def frames_of(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    k = size / 128
    out = np.empty((n, size, size), np.uint16)
    for i in range(n):
        lam = 20 * (1 + (np.cos(np.hypot(yy, xx) / (3 * k)) if i % 2 else np.cos(xx / (3 * k))))
        out[i] = rng.poisson(lam)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _messages_from_memory(path, per_msg):
    """The file's messages read once, then repeated forever with increasing train ids."""
    from speckle_embed.stream.replay_source import FileFrames

    messages = [(pulses, x) for _train, pulses, x in FileFrames([path], frames_per_message=per_msg, repeat=1)]
    train = 1
    while True:
        for pulses, x in messages:
            yield train, pulses, x
            train += 1


def _sender(path, endpoint, rate, per_msg, seconds, threads_env, from_memory=False):
    os.environ.update(threads_env)
    from speckle_embed.stream.replay_sender import send_replay
    from speckle_embed.stream.replay_source import FileFrames

    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    frames = _messages_from_memory(path, per_msg) if from_memory else \
        FileFrames([path], frames_per_message=per_msg, repeat=0)
    send_replay(frames, endpoint, rate_hz=rate, block=True, stop=stop, hwm=16)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc``; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_memory(clf, x, batch_size, seconds):
    """Frames/s and CPU ms per frame of ``clf.classify`` over ``x`` in batches (at least 2 passes)."""
    clf.classify(x[:batch_size])
    reps, t, c = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t < seconds or reps < 2:
        for i in range(0, len(x), batch_size):
            clf.classify(x[i:i + batch_size])
        reps += 1
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return reps * len(x) / wall, 1e3 * cpu / (reps * len(x))


def n_batches(svc) -> int:
    return sum(w.batches for w in svc.workers)


def run_phase(clf, path, size, per_msg, seconds, rate, policy, batch_size, scale, sender="file", workers=1):
    port = free_port()
    cfg = {"source": {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}", "hwm": 16},
           "assembly": {"detector": "none"}, "batch_size": batch_size, "max_wait_ms": 5, "workers": workers,
           "queue": {"capacity_frames": max(4 * batch_size, 8 * per_msg), "policy": policy},
           "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
           "log": {"enabled": True, "flush_records": 8192, "flush_seconds": 2.0, "csv": True},
           "singles": {"enabled": False}, "monitor": {"enabled": False},
           "output_dir": tempfile.mkdtemp(prefix="bench_stream_"), "stop_when_source_ends": False}
    if scale:
        clf.scale = scale
    svc = StreamService(cfg, classifier=clf).start()
    proc = mp.get_context("spawn").Process(target=_sender, args=(str(path), f"tcp://127.0.0.1:{port}", rate,
                                                                 per_msg, seconds + 20, {"OMP_NUM_THREADS": "1"},
                                                                 sender == "memory"))
    proc.start()
    end = time.monotonic() + 60   # the sender process starts (imports) and the first batch is done
    while svc.counters.classified == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(1.0)
    c0, t0, b0 = svc.counters.classified, time.perf_counter(), n_batches(svc)
    svc.counters._lat[:] = np.nan   # latencies of the measured window only
    cpu0, sender0 = time.process_time(), process_cpu_s(proc.pid)
    time.sleep(seconds)
    c1, t1, b1 = svc.counters.classified, time.perf_counter(), n_batches(svc)
    cpu1, sender1 = time.process_time(), process_cpu_s(proc.pid)
    snap = svc.counters.snapshot()
    proc.terminate()
    proc.join(30)
    svc.request_stop()
    svc.shutdown()
    n = max(c1 - c0, 1)
    return {"frames_per_s": (c1 - c0) / (t1 - t0), "dropped": snap["dropped"], "latency_ms": snap["latency"],
            "classified": snap["classified"], "mean_batch": (c1 - c0) / max(b1 - b0, 1), "service_cpu_ms_per_frame": 1e3 * (cpu1 - cpu0) / n,
            "sender_cpu_ms_per_frame": None if sender0 is None or sender1 is None else 1e3 * (sender1 - sender0) / n}


def component_costs(size: int = 128, per_msg: int = 32, batch_size: int = 256, log_records: int = 8192,
                    seed: int = 0) -> dict:
    """CPU microseconds per frame of each step of the service outside the embedder (best of 5).

    The steps of the source thread (decode a frames message, validate its frames) and of the
    classifier thread around ``classify`` (gather a batch, encode and publish its decisions,
    count them, log them with and without the CSV).
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 100, (per_msg, size, size)).astype(np.uint16)
    parts = [bytes(p) for p in encode_frames(x, 1)]
    xf = x.astype(np.float32)
    parts_f = [bytes(p) for p in encode_frames(xf, 1)]
    n, k = batch_size, 2
    dist, proba = rng.random((n, k)), rng.random((n, k))
    codes = rng.integers(0, k, n)
    labels = np.array(["a", "b"])[codes]
    ids, lat = np.arange(n), rng.random(n)
    packets = [decode_frames(parts, 0, "zmq") for _ in range(max(1, batch_size // per_msg))]
    counters = StreamCounters(["a", "b"])
    validator = FrameValidator((size, size))
    pub = DecisionPublisher(f"tcp://127.0.0.1:{free_port()}")
    cols = dict(train_id=ids, pulse_id=ids, timestamp=ids * 1.0, code=codes, label=labels,
                distances=dist.astype(np.float32), probabilities=proba.astype(np.float32),
                margin=proba[:, 0].astype(np.float32), latency_ms=lat.astype(np.float32))

    def per_frame(fn, frames, reps):
        best = np.inf
        for _ in range(5):
            c = time.process_time()
            for _ in range(reps):
                fn()
            best = min(best, (time.process_time() - c) / reps)
        return round(1e6 * best / frames, 3)

    def log_flush(csv):
        d = tempfile.mkdtemp(prefix="bench_stream_log_")
        log = DecisionLog(d, ["a", "b"], flush_records=10 ** 12, flush_seconds=1e12, csv=csv)

        def run():
            for _ in range(log_records // n):
                log.append(**cols)
            log.flush()
        return run

    try:
        return {
            "decode_message": per_frame(lambda: decode_frames(parts, 0, "zmq"), per_msg, 200),
            "validate_uint16": per_frame(lambda: validator.check(packets[0]), per_msg, 200),
            "validate_float32": per_frame(lambda: validator.check(decode_frames(parts_f, 0, "zmq")), per_msg, 50),
            "gather_batch": per_frame(lambda: np.concatenate([p.frames for p in packets]), n, 50),
            "encode_and_publish": per_frame(lambda: pub.publish(encode_decisions(
                ["a", "b"], ids, ids, ids * 1.0, labels, codes, dist, proba, proba[:, 0], lat)), n, 50),
            "counters": per_frame(lambda: counters.add_classified(codes, lat, proba[:, 0]), n, 200),
            "log_hdf5": per_frame(log_flush(False), log_records, 2),
            "log_hdf5_and_csv": per_frame(log_flush(True), log_records, 2),
        }
    finally:
        pub.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--precision", default="int8", choices=["float32", "int8"])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--large-batch-size", type=int, default=16,
                    help="batch size for frames larger than 256 px (a 256-frame batch of 1024^2 takes ~30 s here)")
    ap.add_argument("--frames-per-message", type=int, default=32)
    ap.add_argument("--load", type=float, default=0.8, help="paced rate as a fraction of the saturated one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sender", default="file", choices=["file", "memory"],
                    help="file: the sender re-reads the CXI file for every message (a replay); memory: it reads "
                         "the file once and repeats its messages (less sender CPU on the shared cores, closer to "
                         "a facility sending from another host)")
    ap.add_argument("--workers", type=int, default=1,
                    help="classifier workers of the service (config key `workers`); each gets --threads / "
                         "--workers torch threads, the in-memory reference keeps --threads in one loop")
    ap.add_argument("--components", action="store_true",
                    help="only print the CPU us/frame of each service step outside the embedder, then exit")
    args = ap.parse_args(argv)
    if args.components:
        print(json.dumps({"size": args.sizes[0], "cpu_us_per_frame": component_costs(
            args.sizes[0], args.frames_per_message, args.batch_size, seed=args.seed)}))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    stream_threads = max(1, args.threads // args.workers)

    def stream_phase(*a, **kw):   # the service's threads: --threads shared among --workers
        torch.set_num_threads(stream_threads)
        try:
            return run_phase(*a, sender=args.sender, workers=args.workers, **kw)
        finally:
            torch.set_num_threads(args.threads)

    results = []
    for size in args.sizes:
        scale = size / 128 if size > 128 else None
        bs = args.batch_size if size <= 256 else args.large_batch_size
        emb = load_pretrained(device="cpu")
        emb.batch_size = bs
        sup = frames_of(16, size, args.seed + 1)
        clf = FewShotClassifier(emb, use_gpu=False, scale=scale).fit(sup, ["a", "b"] * 8)
        if args.precision == "int8":
            emb.calibrate_int8(sup, scale=scale)
            emb.precision = "int8"
        n_file = 512 if size <= 256 else 64
        x = frames_of(n_file, size, args.seed)
        tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
        with h5py.File(tmp / "frames.cxi", "w") as f:
            f.create_dataset("/entry_1/data_1/data", data=x)
        load0 = os.getloadavg()[0]
        per_msg = args.frames_per_message if size <= 256 else 4
        mem_before, cpu_mem = in_memory(clf, x, bs, args.seconds / 2)   # the classifier itself ...
        sat = stream_phase(clf, tmp / "frames.cxi", size, per_msg, args.seconds, 0, "block", bs, scale)
        mem_after, cpu_mem_after = in_memory(clf, x, bs, args.seconds / 2)   # ... on both sides of the stream
        mem = (mem_before + mem_after) / 2
        if sat["frames_per_s"] <= 0:
            raise SystemExit(f"{size}: nothing classified in the saturated window; use a longer --seconds")
        paced = stream_phase(clf, tmp / "frames.cxi", size, per_msg, args.seconds, args.load * sat["frames_per_s"],
                             "drop_oldest", bs, scale)
        row = {"size": size, "precision": args.precision, "threads": args.threads, "workers": args.workers,
               "threads_per_worker": stream_threads, "sender": args.sender,
               "in_memory_frames_per_s": round(mem, 1),
               "in_memory_before_after": [round(mem_before, 1), round(mem_after, 1)],
               "saturated_frames_per_s": round(sat["frames_per_s"], 1), "saturated_dropped": sat["dropped"],
               "mean_batch": {"saturated": round(sat["mean_batch"], 1), "paced": round(paced["mean_batch"], 1)},
               "ratio_to_in_memory": round(sat["frames_per_s"] / mem, 3),
               "paced_rate": round(args.load * sat["frames_per_s"], 1),
               "paced_frames_per_s": round(paced["frames_per_s"], 1), "paced_dropped": paced["dropped"],
               "paced_latency_ms": {k: (None if v is None else round(v, 2)) for k, v in paced["latency_ms"].items()},
               "cpu_ms_per_frame": {"in_memory": round((cpu_mem + cpu_mem_after) / 2, 4),
                                    "service": round(sat["service_cpu_ms_per_frame"], 4),
                                    "sender": None if sat["sender_cpu_ms_per_frame"] is None
                                    else round(sat["sender_cpu_ms_per_frame"], 4)},
               "cpu_count": os.cpu_count(), "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        print(json.dumps(row), flush=True)
        results.append(row)
    print("\n| frames | in memory (f/s) | stream saturated (f/s, dropped) | ratio | paced at (f/s) | dropped | "
          "p50 / p99 latency (ms) | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        lat = r["paced_latency_ms"]
        print(f"| {r['size']}x{r['size']} uint16 | {r['in_memory_frames_per_s']:.0f} | "
              f"{r['saturated_frames_per_s']:.0f} ({r['saturated_dropped']}) | {r['ratio_to_in_memory']:.2f} | "
              f"{r['paced_rate']:.0f} | {r['paced_dropped']} | {lat['p50_ms']} / {lat['p99_ms']} | "
              f"{r['loadavg_1min'][0]}-{r['loadavg_1min'][1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
