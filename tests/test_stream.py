"""The online veto service (speckle_embed.stream): schema, queue, each source, outputs, faults."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest
import zmq
from stream_helpers import (
    base_cfg,
    free_port,
    rings,
    small_classifier,
    stripes,
    wait_until,
)

from speckle_embed.stream.batch_order import BatchOrder
from speckle_embed.stream.decision_log import DecisionLog, csv_rows, read_decision_log
from speckle_embed.stream.messages import (
    DECISIONS_SCHEMA,
    decode_decisions,
    decode_frames,
    encode_frames,
)
from speckle_embed.stream.packet import FramePacket, MalformedMessage
from speckle_embed.stream.queue import FrameQueue
from speckle_embed.stream.service import StreamService, run_stream
from speckle_embed.stream.singles_cxi import SinglesWriter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clf():
    return small_classifier()   # fresh: a service sets its classifier's centre/scale


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf") / "clf"
    small_classifier().save(d)
    return d


def write_cxi(path, frames):
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=frames)
    return path


class Subscriber:
    """SUB socket collecting decisions messages in a thread."""

    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"decisions")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.messages: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            if self.sock.poll(50):
                _topic, body = self.sock.recv_multipart()
                self.messages.append(decode_decisions(body))

    def n(self):
        return sum(len(m["code"]) for m in self.messages)

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
        self.ctx.term()


def run_service(cfg, clf):
    svc = StreamService(cfg, classifier=clf).start()
    t = threading.Thread(target=svc.wait, daemon=True)
    t.start()
    return svc, t


# ----------------------------------------------------------------------------- schema and queue
def test_frames_message_round_trip_and_malformed_messages():
    x = rings(3)
    p = decode_frames(encode_frames(x, 7, [4, 5, 6], 12.5))
    assert np.array_equal(p.frames, x) and p.train_id.tolist() == [7] * 3 and p.pulse_id.tolist() == [4, 5, 6]
    assert p.timestamp[0] == 12.5
    head, data = encode_frames(x, 7)
    h = msgpack.unpackb(head)
    cases = {
        "parts": [head],
        "decode": [b"\xc1garbage", data],
        "schema": [msgpack.packb({**h, "schema": "other/1"}), data],
        "dtype": [msgpack.packb({**h, "dtype": "<c8"}), data],
        "shape": [msgpack.packb({**h, "shape": [128, 128]}), data],
        "truncated": [head, bytes(data)[:-10]],
        "header": [msgpack.packb({**h, "pulse_id": [1]}), data],
    }
    for reason, parts in cases.items():
        with pytest.raises(MalformedMessage) as e:
            decode_frames(parts)
        assert e.value.reason == reason, (reason, e.value)


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<f4", ">f4"])
def test_frames_of_any_byte_order_decode_without_copy_and_classify_alike(dtype, clf):
    """A frames message is read in place (a view on the ZMQ buffer); big-endian uint16/float32
    frames give the values, and the decisions, of little-endian ones."""
    x = rings(3).astype(dtype)
    head, data = encode_frames(x, 7)
    buf = bytearray(bytes(data))
    p = decode_frames([head, buf])
    assert p.frames.dtype == np.dtype(dtype) and np.array_equal(p.frames, x)
    assert np.shares_memory(p.frames, np.frombuffer(buf, np.uint8))       # no copy of the pixels
    ref = clf.classify(rings(3).astype(dtype.replace(">", "<")))
    got = clf.classify(p.frames)
    assert np.array_equal(got.codes, ref.codes) and np.array_equal(got.distances, ref.distances)


def test_queue_drop_oldest_and_block():
    pk = lambda n, t: FramePacket(np.zeros((n, 2, 2)), t, np.arange(n), 0.0)
    dropped = []
    q = FrameQueue(10, "drop_oldest", on_drop=dropped.append)
    for t in range(5):
        q.put(pk(4, t))
    assert len(q) == 8 and dropped == [4, 4, 4] and q.dropped == 12
    got = q.get_batch(5, timeout=0.1)
    assert [p.train_id[0] for p in got] == [3, 4] and sum(map(len, got)) == 5   # oldest kept first, split
    assert len(q) == 3
    qb = FrameQueue(4, "block")
    qb.put(pk(4, 0))
    stop = threading.Event()
    done = []
    th = threading.Thread(target=lambda: done.append(qb.put(pk(2, 1), stop)))
    th.start()
    time.sleep(0.2)
    assert not done                                      # the source waits ...
    assert len(qb.get_batch(4, 0.1)) == 1
    th.join(2)
    assert done == [True] and len(qb) == 2 and qb.dropped == 0   # ... and nothing is dropped


def test_csv_rows_equal_the_per_value_formatting():
    """The vectorised CSV chunk is byte for byte the per-value f-string formatting it replaced."""
    rng = np.random.default_rng(3)
    n, k = 50, 3
    cols = {"train_id": rng.integers(0, 2**40, n), "pulse_id": rng.integers(0, 400, n).astype(np.int32),
            "timestamp": np.where(rng.random(n) < 0.2, np.nan, 1.7e9 + rng.random(n)),
            "code": rng.integers(-1, k, n), "label": np.array(["single", "no_hit", "unknown", "x"])[rng.integers(0, 4, n)],
            "distances": (rng.standard_normal((n, k)) * 10.0 ** rng.integers(-8, 8, (n, k))).astype(np.float32),
            "probabilities": rng.random((n, k)).astype(np.float32),
            "margin": np.r_[rng.random(n - 2), -0.0, np.inf].astype(np.float32),
            "latency_ms": (rng.random(n) * 1e3).astype(np.float32)}
    oracle = "".join(",".join([str(int(cols["train_id"][i])), str(int(cols["pulse_id"][i])),
                               f"{float(cols['timestamp'][i]):.6f}", str(cols["label"][i]), str(int(cols["code"][i]))]
                              + [f"{v:.6g}" for v in cols["distances"][i]]
                              + [f"{v:.6g}" for v in cols["probabilities"][i]]
                              + [f"{float(cols['margin'][i]):.6g}", f"{float(cols['latency_ms'][i]):.3f}"]) + "\n"
                     for i in range(n))
    assert csv_rows(cols, k) == oracle.encode()
    assert csv_rows({c: v[:0] for c, v in cols.items()}, k) == b""


def test_batch_order_emits_in_taken_order_runs_the_set_up_once_and_survives_a_failed_batch():
    """Workers finishing out of order still emit batch k after batch k-1; batch 0's set-up runs once, first."""
    events, emitted = [], []
    lock = threading.Lock()

    def set_up(packets):
        time.sleep(0.05)
        with lock:
            events.append(("set_up", int(packets[0].train_id[0])))

    order = BatchOrder(on_first_batch=set_up)
    q = FrameQueue(100, "block")
    n = 12
    for t in range(n):
        q.put(FramePacket(np.zeros((1, 2, 2)), t, [0], 0.0))
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 0.03, n)[::-1]          # later batches classify faster: out-of-order finishes

    def worker():
        while True:
            k, packets = order.take(q, 1, 0.1, 0.0)
            if not packets:
                return
            try:
                order.before_classify(k, packets)
                with lock:
                    events.append(("classify", k))
                time.sleep(delays[k])
                order.classified(k)
                order.wait_turn(k)
                if k == 5:
                    raise RuntimeError("batch 5 fails")   # its turn must still pass to batch 6
                emitted.append((k, int(packets[0].train_id[0])))
            except RuntimeError:
                pass
            finally:
                order.done(k)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    [th.start() for th in threads]
    [th.join(20) for th in threads]
    assert not any(th.is_alive() for th in threads)
    assert emitted == [(k, k) for k in range(n) if k != 5]       # numbers follow the queue; emitted in order
    assert events[0] == ("set_up", 0) and sum(e[0] == "set_up" for e in events) == 1


# ----------------------------------------------------------------------------- ZMQ source, PUB, log
def test_zmq_stream_classifies_publishes_logs_and_skips_bad_frames(tmp_path, clf):
    port = free_port()
    cfg = base_cfg(tmp_path, {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}", "backoff_s": [0.05, 0.2]})
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.bind(f"tcp://127.0.0.1:{port}")
    svc, t = run_service(cfg, clf)
    sub = Subscriber(cfg["publish"]["endpoint"])
    time.sleep(0.3)  # PUB/SUB: let the subscription arrive
    good = np.concatenate([rings(20, 5), stripes(20, 5)])
    push.send_multipart(encode_frames(good[:20], 1))
    push.send_multipart([b"\x00\x01not msgpack", b"x"])                     # garbage
    head, data = encode_frames(good[:2], 2)
    push.send_multipart([head, bytes(data)[:100]])                           # truncated
    push.send_multipart(encode_frames(np.zeros((1, 64, 64), np.uint16), 3))  # wrong shape
    nan = good[:3].astype(np.float32)
    nan[1, 10, 10] = np.nan
    push.send_multipart(encode_frames(nan, 4))                               # one NaN frame
    push.send_multipart(encode_frames(good[20:], 5))
    assert wait_until(lambda: svc.counters.classified >= 42, 20)
    # a consumer that disappears: the stream goes on
    sub2 = Subscriber(cfg["publish"]["endpoint"])
    sub2.close()
    push.send_multipart(encode_frames(good[:5], 6))
    assert wait_until(lambda: svc.counters.classified >= 47 and sub.n() >= 47, 20)
    svc.request_stop()
    t.join(10)
    summary = svc.shutdown()
    sub.close()
    push.close()
    ctx.term()
    assert summary["classified"] == 47 and summary["frames_in"] == 47
    assert summary["malformed"] == {"decode": 1, "truncated": 1, "shape": 1, "nonfinite": 1}
    assert summary["dropped"] == 0 and summary["error"] is None
    msgs = sub.messages
    assert all(m["schema"] == DECISIONS_SCHEMA and m["classes"] == ["no_hit", "single"] for m in msgs)
    ids = [(tid, pid) for m in msgs for tid, pid in zip(m["train_id"], m["pulse_id"])]
    assert (4, 1) not in ids and (4, 0) in ids and (4, 2) in ids           # the NaN frame, by its id
    m = msgs[0]
    assert len(m["distances"][0]) == 2 and abs(sum(m["probabilities"][0]) - 1) < 1e-5
    assert all(lat >= 0 for m in msgs for lat in m["latency_ms"])
    labels = {(tid, pid): lab for m in msgs for tid, pid, lab in zip(m["train_id"], m["pulse_id"], m["label"])}
    assert [labels[(1, i)] for i in range(20)] == ["single"] * 20           # rings
    assert [labels[(5, i)] for i in range(20)] == ["no_hit"] * 20           # stripes
    logd = read_decision_log(summary["log_dir"])
    assert len(logd["code"]) == 47 and logd["class_names"] == ["no_hit", "single"]
    assert [labels[(a, b)] for a, b in zip(logd["train_id"], logd["pulse_id"])] == logd["label"].tolist()
    csv_lines = (Path(summary["log_dir"]) / "decisions.csv").read_text().splitlines()
    assert len(csv_lines) == 48 and csv_lines[0].startswith("train_id,pulse_id,timestamp,label,code")


def test_zmq_source_reconnects_after_the_sender_goes_away(tmp_path, clf):
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    cfg = base_cfg(tmp_path, {"kind": "zmq", "endpoint": ep, "backoff_s": [0.05, 0.2]})
    svc, t = run_service(cfg, clf)
    for round_ in range(2):
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.bind(ep)
        push.send_multipart(encode_frames(rings(4, round_), round_))
        assert wait_until(lambda r=round_: svc.counters.classified >= 4 * (r + 1), 15)
        push.close()
        ctx.term()   # the sender disappears
        if round_ == 0:
            assert wait_until(lambda: svc.counters.disconnects >= 1, 10)
    assert wait_until(lambda: svc.counters.reconnects >= 1, 10)
    svc.request_stop()
    t.join(10)
    s = svc.shutdown()
    assert s["classified"] == 8 and s["disconnects"] >= 1 and s["reconnects"] >= 1


# ----------------------------------------------------------------------------- Karabo bridge + assembly
def test_karabo_bridge_with_agipd_assembly_and_reconnect(tmp_path, clf):
    from karabo_bridge import ServerInThread

    from speckle_embed.stream.assembly import DetectorAssembler, build_geometry

    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    cfg = base_cfg(tmp_path, {"kind": "karabo", "endpoint": ep, "layout": "file", "silence_s": 0.5,
                              "backoff_s": [0.05, 0.2], "mask_key": "image.mask"},
                   assembly={"detector": "agipd"}, scale=8.0)
    src = "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"
    rng = np.random.default_rng(0)

    def train(tid, key="image.data"):
        mods = rng.poisson(5, size=(2, 16, 512, 128)).astype(np.float32)
        mask = np.zeros((2, 16, 512, 128), np.uint32)
        mask[:, 3] = 1                                     # module 3 flagged bad by the calibration
        return ({src: {key: mods, "image.pulseId": np.array([0, 1], np.uint64), "image.mask": mask}},
                {src: {"timestamp.tid": tid, "timestamp": time.time()}})

    server = ServerInThread(ep)
    server.start()
    for tid in (100, 101):
        server.feed(*train(tid))
    server.feed(*train(102, key="other.data"))            # a train without the data: counted, skipped
    svc, t = run_service(cfg, clf)
    assert wait_until(lambda: svc.counters.classified >= 4, 30)
    assert svc.clf.center == svc.assembler.center        # the geometry's beam centre is used
    server.stop()                                         # the bridge goes away ...
    assert wait_until(lambda: svc.counters.disconnects >= 1, 10)
    server = ServerInThread(ep)                           # ... and returns
    server.start()
    server.feed(*train(103))
    assert wait_until(lambda: svc.counters.classified >= 6, 30)
    svc.request_stop()
    t.join(10)
    s = svc.shutdown()
    server.stop()
    assert s["classified"] == 6 and s["malformed"] == {"content": 1} and s["reconnects"] >= 1
    logd = read_decision_log(s["log_dir"])
    assert sorted(set(logd["train_id"].tolist())) == [100, 101, 103]
    # the assembly is extra-geom's: same image from a CrystFEL .geom written by it; gaps masked
    geom = build_geometry("agipd")
    geom.write_crystfel_geom(str(tmp_path / "agipd.geom"))
    a = DetectorAssembler(geom)
    b = DetectorAssembler(build_geometry("agipd", geom_file=str(tmp_path / "agipd.geom")))
    mods = np.arange(16, dtype=np.float32)[:, None, None] + np.ones((16, 512, 128), np.float32)
    ia, ib = a.assemble(mods)[0], b.assemble(mods)[0]
    assert np.array_equal(ia, ib) and np.array_equal(a.mask, b.mask)
    assert np.all(ia[a.mask != 0] == 0) and np.all(ia[a.mask == 0] >= 1)
    assert all((ia == k + 1).sum() == 512 * 128 for k in range(16))   # every module pixel placed once


# ----------------------------------------------------------------------------- replay, veto CXI
def test_replay_source_writes_bounded_singles_cxi(tmp_path, clf):
    frames = np.concatenate([rings(10, 7), stripes(6, 7), rings(4, 8)])
    f = write_cxi(tmp_path / "run.cxi", frames)
    frame_bytes = 128 * 128 * 2
    cfg = base_cfg(tmp_path, {"kind": "replay", "inputs": [str(f)], "rate_hz": 2000, "frames_per_message": 8},
                   singles={"enabled": True, "class_name": "single", "max_file_bytes": 3 * frame_bytes})
    svc, t = run_service(cfg, clf)
    t.join(30)
    s = svc.shutdown()
    assert s["classified"] == 20 and s["per_class"]["single"] == 14 and s["singles_written"] == 14
    files = sorted((tmp_path / "out" / "singles").glob("singles-*.cxi"))
    assert [p.name for p in files] == [f"singles-{i:06d}.cxi" for i in range(5)]
    assert not list((tmp_path / "out" / "singles").glob("*.tmp"))
    kept = []
    for p in files:
        with h5py.File(p, "r") as h:
            d = h["/entry_1/data_1/data"]
            assert d.shape[0] <= 3 and d.dtype == np.uint16 and h.attrs["n_frames"] == d.shape[0]
            assert d.shape[0] * frame_bytes <= 3 * frame_bytes
            kept.append(d[()])
            pid = h["/entry_1/event/pulse_id"][()]
            tid = h["/entry_1/event/train_id"][()]
            assert np.array_equal(d[()], frames[pid]) and np.array_equal(tid, pid // 8 + 1)  # pulse = frame in file
    assert sum(len(k) for k in kept) == 14


# ----------------------------------------------------------------------------- full disk
def test_two_workers_give_the_decisions_of_one_in_the_same_order(tmp_path, clf):
    """workers=2: every frame classified once, decisions published and logged in arrival order, equal
    to those of a single worker; the veto CXI gets the same frames."""
    frames = np.concatenate([rings(30, 3), stripes(20, 3), rings(14, 4)])[np.random.default_rng(1).permutation(64)]
    f = write_cxi(tmp_path / "run.cxi", frames)
    out = {}
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        cfg = base_cfg(d, {"kind": "replay", "inputs": [str(f)], "rate_hz": 0, "frames_per_message": 3},
                       batch_size=5, workers=workers, singles={"enabled": True, "class_name": "single"})
        svc = StreamService(cfg, classifier=clf)            # binds the PUB socket ...
        sub = Subscriber(cfg["publish"]["endpoint"])
        time.sleep(0.5)                                     # ... the subscription reaches it, then frames flow
        svc.start()
        t = threading.Thread(target=svc.wait, daemon=True)
        t.start()
        assert len(svc.workers) == workers
        t.join(30)
        s = svc.shutdown()
        wait_until(lambda: sub.n() >= 64, 5)
        sub.close()
        logd = read_decision_log(s["log_dir"])
        ids = list(zip(logd["train_id"].tolist(), logd["pulse_id"].tolist()))
        pub_ids = [(t_, p_) for m in sub.messages for t_, p_ in zip(m["train_id"], m["pulse_id"])]
        with h5py.File(s["singles_files"][0]) as h:
            kept = h["/entry_1/data_1/data"][()]
        out[workers] = (s, ids, logd["code"].tolist(), pub_ids, kept)
        batches = [w.batches for w in svc.workers]
    (s1, ids1, codes1, pub1, kept1), (s2, ids2, codes2, pub2, kept2) = out[1], out[2]
    assert s1["classified"] == 64 and pub1 == ids1
    assert s2["classified"] == 64 and s2["dropped"] == 0 and s2["error"] is None
    assert ids2 == sorted(ids2) and len(set(ids2)) == 64 and ids2 == ids1 and pub2 == ids2
    assert codes2 == codes1 and np.array_equal(kept2, kept1)
    assert min(batches) > 0, f"one of the two workers classified nothing: {batches}"


def test_run_stream_with_two_workers_splits_the_threads_and_calibrates_int8_once(tmp_path, clf_dir, monkeypatch):
    import torch

    threads, calibrations = [], []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)        # record, leave the process as it is
    real = StreamService._calibrate_int8
    monkeypatch.setattr(StreamService, "_calibrate_int8",
                        lambda self, x: (calibrations.append(len(x)), real(self, x))[1])
    f = write_cxi(tmp_path / "run.cxi", np.concatenate([rings(20, 5), stripes(20, 5)]))
    cfg = base_cfg(tmp_path, {"kind": "replay", "inputs": [str(f)], "rate_hz": 0, "frames_per_message": 4},
                   classifier=str(clf_dir), workers=2, precision="int8", batch_size=8, threads=None,
                   int8_calibration_frames=8)
    summary = run_stream(cfg, install_signals=False)
    assert threads == [2]                                   # 4 torch threads shared by 2 workers
    assert calibrations == [8] and summary["error"] is None  # the first batch only, before any other
    assert summary["classified"] == 40 and summary["dropped"] == 0
    with pytest.raises(ValueError, match="workers must be >= 1"):
        StreamService({**cfg, "workers": 0}, classifier=small_classifier())


def test_full_disk_log_and_cxi_keep_classifying_and_leave_nothing_half_written(tmp_path, monkeypatch, caplog):
    import speckle_embed.stream.decision_log as dl

    log = DecisionLog(tmp_path / "log", ["a", "b"], flush_records=10 ** 9, flush_seconds=1e9)
    rec = lambda n, t: dict(train_id=np.full(n, t), pulse_id=np.arange(n), timestamp=np.zeros(n),
                            code=np.zeros(n, np.int64), label=np.array(["a"] * n),
                            distances=np.zeros((n, 2), np.float32), probabilities=np.full((n, 2), .5, np.float32),
                            margin=np.zeros(n, np.float32), latency_ms=np.ones(n, np.float32))
    log.append(**rec(3, 1))
    assert log.flush()
    csv_before = (tmp_path / "log" / "decisions.csv").read_bytes()
    real_append = dl.DecisionLog._append_csv

    def full(self, cols):  # the disk fills up in the middle of the CSV chunk
        fd = os.open(self.csv_path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"1,2,3,half a li")
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl.DecisionLog, "_append_csv", full)
    log.append(**rec(4, 2))
    with caplog.at_level("ERROR"):
        assert not log.flush()
    assert "No space left on device" in caplog.text and "still classifying" in caplog.text
    assert (tmp_path / "log" / "decisions.csv").read_bytes() == csv_before       # truncated back
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["decisions.csv", "part-000000.h5"]
    monkeypatch.setattr(dl.DecisionLog, "_append_csv", real_append)
    log.append(**rec(2, 3))
    assert log.flush()                                                           # the retry writes all
    got = read_decision_log(tmp_path / "log")
    assert got["train_id"].tolist() == [1] * 3 + [2] * 4 + [3] * 2
    assert len((tmp_path / "log" / "decisions.csv").read_text().splitlines()) == 1 + 9


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs (a real full disk) needs root")
def test_real_full_disk_for_the_singles_cxi(tmp_path, clf):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        w = SinglesWriter(mnt, (128, 128), np.uint16, ["no_hit", "single"], max_file_bytes=4 * 128 * 128 * 2,
                          reserve_bytes=0, retry_s=0.0)
        x = rings(40, 3)
        written = 0
        for i in range(0, 40, 4):   # 40 frames of 32 KiB = 1.3 MB > 600 kB
            written += w.write(x[i:i + 4], np.full(4, i), np.arange(4), np.zeros(4), np.full((4, 2), .5))
        w.close()
        assert 0 < written < 40 and w.not_written == 40 - written
        files = sorted(mnt.glob("singles-*.cxi"))
        assert not list(mnt.glob("*.tmp"))                     # nothing half-written left
        total = 0
        for p in files:
            with h5py.File(p, "r") as h:
                n = h["/entry_1/data_1/data"].shape[0]
                assert h.attrs["n_frames"] == n
                total += n
        assert total == written
        (mnt / "filler").write_bytes(b"")
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)   # never leave the mount behind
    assert r.returncode == 0, f"a file handle was left open on the full disk: {r.stderr.decode()}"


# ----------------------------------------------------------------------------- processes: signals, kill -9
def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "speckle_embed", "stream", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _replay_args(tmp_path, clf_dir, f, out, extra=()):
    return [f"classifier={clf_dir}", "source=replay", f"source.inputs=[{f}]", "source.rate_hz=400",
            "source.repeat=0", "source.frames_per_message=8", f"output_dir={out}", "monitor.enabled=false",
            f"publish.endpoint=tcp://127.0.0.1:{free_port()}", "log.flush_seconds=0.1", "log.flush_records=16",
            "singles.enabled=true", f"singles.max_file_bytes={5 * 128 * 128 * 2}", "max_seconds=60", *extra]


def _n_logged(out):
    try:
        return len(read_decision_log(out / "decisions")["code"])
    except (FileNotFoundError, OSError, KeyError):
        return 0


def test_sigterm_finishes_the_batch_flushes_and_exits_0(tmp_path, clf_dir):
    f = write_cxi(tmp_path / "run.cxi", np.concatenate([rings(8, 1), stripes(8, 1)]))
    out = tmp_path / "out"
    p = _cli(_replay_args(tmp_path, clf_dir, f, out))
    try:
        assert wait_until(lambda: _n_logged(out) >= 32 or p.poll() is not None, 40) and p.poll() is None, \
            p.communicate()[1]
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    logd = read_decision_log(out / "decisions")
    assert len(logd["code"]) == summary["classified"] > 32                 # everything flushed
    csv = (out / "decisions" / "decisions.csv").read_text()
    assert csv.endswith("\n") and len(csv.splitlines()) == summary["classified"] + 1
    assert not list(out.rglob("*.tmp"))
    n_single = sum(h5py.File(q, "r")["/entry_1/data_1/data"].shape[0] for q in (out / "singles").glob("*.cxi"))
    assert n_single == summary["singles_written"] == int((logd["label"] == "single").sum())


def test_kill_9_then_restart_appends_and_files_stay_readable(tmp_path, clf_dir):
    f = write_cxi(tmp_path / "run.cxi", np.concatenate([rings(8, 1), stripes(8, 1)]))
    out = tmp_path / "out"
    p = _cli(_replay_args(tmp_path, clf_dir, f, out))
    try:
        assert wait_until(lambda: _n_logged(out) >= 48 or p.poll() is not None, 40) and p.poll() is None, \
            p.communicate()[1]
        time.sleep(0.15)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        p.kill()
    first = read_decision_log(out / "decisions")                          # complete parts read fine
    parts_before = sorted(q.name for q in (out / "decisions").glob("part-*.h5"))
    cxi_before = sorted(q.name for q in (out / "singles").glob("singles-*.cxi"))
    p = _cli(_replay_args(tmp_path, clf_dir, f, out, ["max_frames=32"]))
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr
    parts_after = sorted(q.name for q in (out / "decisions").glob("part-*.h5"))
    assert parts_after[:len(parts_before)] == parts_before and len(parts_after) > len(parts_before)
    second = read_decision_log(out / "decisions")
    assert len(second["code"]) >= len(first["code"]) + 32                  # the restart appended
    lines = (out / "decisions" / "decisions.csv").read_text().splitlines()
    assert lines[0].startswith("train_id") and all(len(x.split(",")) == len(lines[0].split(",")) for x in lines)
    assert len(lines) - 1 >= len(second["code"])
    cxi_after = sorted(q.name for q in (out / "singles").glob("singles-*.cxi"))
    assert cxi_after[:len(cxi_before)] == cxi_before and len(cxi_after) > len(cxi_before)
    for q in cxi_after:
        with h5py.File(out / "singles" / q, "r") as h:
            assert h["/entry_1/data_1/data"].shape[0] == h.attrs["n_frames"] >= 1
    # the killed file was recovered, or (HDF5 could not open it: kill -9 mid-write; documented in
    # speckle_embed/stream/singles_cxi.py) moved aside as *.damaged.tmp; no live temporary is left
    leftover = sorted(out.rglob("singles-*.tmp"))
    assert all(q.name.endswith(".damaged.tmp") for q in leftover) and len(leftover) <= 1, leftover


def test_cli_errors_are_one_line(tmp_path):
    p = _cli(["monitor.enabled=false", f"output_dir={tmp_path}"])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "give classifier=" in err and "Traceback" not in err
