"""The online veto service: source -> bounded queue -> classifier -> PUB socket, log, CXI, page.

:func:`run_stream` takes the configuration of ``conf/stream/stream.yaml`` as a plain mapping (the
Hydra entry point :mod:`speckle_embed.stream.__main__` composes it) and runs until SIGINT or
SIGTERM (the batch in flight is finished, the outputs are flushed, it returns), until a finite
source ends (``stop_when_source_ends``), or until ``max_seconds`` / ``max_frames``.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from speckle_embed.stream.batch_order import BatchOrder
from speckle_embed.stream.counters import StreamCounters
from speckle_embed.stream.decision_log import DecisionLog
from speckle_embed.stream.monitor import MonitorServer, frame_png
from speckle_embed.stream.publisher import DecisionPublisher
from speckle_embed.stream.queue import FrameQueue
from speckle_embed.stream.singles_cxi import SinglesWriter
from speckle_embed.stream.source import SourceRunner
from speckle_embed.stream.validate import FrameValidator
from speckle_embed.stream.worker import ClassifierWorker

__all__ = ["StreamService", "build_classifier", "build_source", "load_supports", "run_stream"]

log = logging.getLogger("speckle_embed.stream")
_SUFFIXES = (".h5", ".cxi", ".hdf5", ".npy")


# ----------------------------------------------------------------------------- building blocks
def load_supports(folder) -> tuple[np.ndarray, list[str]]:
    """Support frames of a folder with one sub-folder per class (``.h5``/``.cxi``/``.npy`` files).

    Returns
    -------
    frames : ndarray, shape (n, H, W)
    labels : list of str (the sub-folder names)
    """
    import h5py

    from speckle_embed.cli import find_frames_dataset

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"supports={folder}: no such folder (expected one sub-folder per class)")
    frames, labels = [], []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(p for p in d.iterdir() if p.suffix.lower() in _SUFFIXES and not p.name.endswith(".tmp")):
            if f.suffix == ".npy":
                x = np.load(f)
            else:
                with h5py.File(f, "r") as h:
                    x = find_frames_dataset(h)[()]
            x = x[None] if x.ndim == 2 else x
            frames.append(x)
            labels += [d.name] * len(x)
    if not frames:
        raise FileNotFoundError(f"supports={folder}: no .h5/.cxi/.npy frames in its class sub-folders")
    shapes = {x.shape[1:] for x in frames}
    if len(shapes) > 1:
        raise ValueError(f"supports={folder}: frames of different shapes {sorted(shapes)}")
    return np.concatenate(frames).astype(np.float32), labels


def build_classifier(cfg: Mapping[str, Any]):
    """The classifier of ``cfg`` and the support frames/labels (None when loaded from a save)."""
    from speckle_embed.fewshot.classifier import FewShotClassifier
    from speckle_embed.inference.pretrained import DEFAULT_PRETRAINED, load_pretrained

    sup = load_supports(cfg["supports"]) if cfg.get("supports") else (None, None)
    if cfg.get("classifier"):
        clf = FewShotClassifier.load(cfg["classifier"], device=cfg.get("device", "cpu"), use_gpu=False)
    elif sup[0] is not None:
        emb = load_pretrained(cfg.get("pretrained") or DEFAULT_PRETRAINED, device=cfg.get("device", "cpu"))
        clf = FewShotClassifier(emb, use_gpu=False).fit(sup[0], sup[1])
    else:
        raise ValueError("give classifier=<saved FewShotClassifier directory> or supports=<folder with one "
                         "sub-folder of frames per class>")
    emb = clf.embedder
    emb.batch_size = int(cfg.get("batch_size", emb.batch_size))
    if cfg.get("scale") is not None:
        clf.scale = cfg["scale"] if isinstance(cfg["scale"], str) else float(cfg["scale"])
    if cfg.get("center") is not None:
        clf.center = cfg["center"] if isinstance(cfg["center"], str) else tuple(float(c) for c in cfg["center"])
    return clf, sup


def build_source(scfg: Mapping[str, Any]):
    """The :class:`FrameSource` of the ``source`` section."""
    kind = scfg.get("kind")
    if kind == "zmq":
        from speckle_embed.stream.zmq_source import ZmqFrameSource

        return ZmqFrameSource(scfg["endpoint"], bind=bool(scfg.get("bind", False)),
                              socket_type=scfg.get("socket_type", "PULL"), hwm=int(scfg.get("hwm", 64)),
                              backoff_s=tuple(scfg.get("backoff_s", (0.1, 5.0))))
    if kind == "karabo":
        from speckle_embed.stream.karabo_source import KaraboBridgeSource

        return KaraboBridgeSource(scfg["endpoint"], source_name=scfg.get("source_name"),
                                  data_key=scfg.get("data_key", "image.data"),
                                  pulse_key=scfg.get("pulse_key", "image.pulseId"),
                                  mask_key=scfg.get("mask_key"), layout=scfg.get("layout", "file"),
                                  socket_type=scfg.get("socket_type", "REQ"),
                                  silence_s=float(scfg.get("silence_s", 5.0)))
    if kind == "replay":
        from speckle_embed.stream.replay_source import FileReplaySource

        return FileReplaySource(scfg["inputs"], rate_hz=float(scfg.get("rate_hz", 100)),
                                data_path=scfg.get("data_path"),
                                frames_per_message=int(scfg.get("frames_per_message", 32)),
                                repeat=int(scfg.get("repeat", 1)))
    raise ValueError(f"source.kind must be zmq, karabo or replay; got {kind!r} (choose source=...)")


def build_assembler(acfg: Mapping[str, Any] | None):
    """The :class:`DetectorAssembler` of the ``assembly`` section (None for ``detector: none``)."""
    if not acfg or acfg.get("detector") in (None, "none"):
        return None
    from speckle_embed.stream.assembly import DetectorAssembler, build_geometry

    geom = build_geometry(acfg["detector"], acfg.get("geom_file"), acfg.get("quad_positions"),
                          acfg.get("module_positions"))
    mask = np.load(acfg["mask_file"]) if acfg.get("mask_file") else None
    return DetectorAssembler(geom, mask)


# ----------------------------------------------------------------------------- the service
class StreamService:
    """All parts of one running stream (built from a config mapping; see :func:`run_stream`)."""

    def __init__(self, cfg: Mapping[str, Any], *, classifier=None, supports=(None, None)):
        self.cfg = cfg
        n_workers = 1 if cfg.get("workers") is None else int(cfg["workers"])
        if n_workers < 1:   # checked before any socket is opened
            raise ValueError(f"workers must be >= 1; got {cfg.get('workers')!r}")
        if classifier is None:
            classifier, supports = build_classifier(cfg)
        self.clf, self.supports = classifier, supports
        self.classes = [str(c) for c in self.clf.classes_]
        self.counters = StreamCounters(self.classes)
        self.stop = threading.Event()
        self.source_done = threading.Event()
        out = Path(cfg.get("output_dir", "stream_out"))
        self.output_dir = out
        qcfg = cfg.get("queue", {}) or {}
        self.queue = FrameQueue(int(qcfg.get("capacity_frames", 8192)), qcfg.get("policy", "drop_oldest"),
                                on_drop=self.counters.add_dropped)
        self.assembler = build_assembler(cfg.get("assembly"))
        mask = self.assembler.mask if self.assembler is not None else None
        if cfg.get("mask_file"):
            extra = np.load(cfg["mask_file"])
            mask = extra if mask is None else ((mask != 0) | (extra != 0)).astype(np.uint16)
        self.mask = mask
        if self.assembler is not None and self.clf.center is None:
            self.clf.center = self.assembler.center
        shape = cfg.get("frame_shape") or (self.assembler.frame_shape if self.assembler is not None else None)
        self.validator = FrameValidator(shape, mask)
        self.source = build_source(cfg["source"])
        scfg = cfg["source"]
        self.runner = SourceRunner(self.source, self.queue, self.counters, self.stop, self.validator,
                                   self.assembler, backoff_s=tuple(scfg.get("backoff_s", (0.1, 5.0))))
        pcfg = cfg.get("publish", {}) or {}
        self.publisher = DecisionPublisher(pcfg["endpoint"], int(pcfg.get("hwm", 10000))) \
            if pcfg.get("endpoint") else None
        lcfg = cfg.get("log", {}) or {}
        self.decision_log = DecisionLog(out / lcfg.get("directory", "decisions"), self.classes,
                                        flush_records=int(lcfg.get("flush_records", 4096)),
                                        flush_seconds=float(lcfg.get("flush_seconds", 2.0)),
                                        csv=bool(lcfg.get("csv", True)),
                                        reserve_bytes=int(float(lcfg.get("reserve_bytes", 16 << 20))),
                                        on_error=lambda: self.counters.add_write_error("log")) \
            if lcfg.get("enabled", True) else None
        self.singles_cfg = cfg.get("singles", {}) or {}
        self.singles = None   # created at the first frame (needs its shape and dtype)
        self.veto_class = str(self.singles_cfg.get("class_name", "single"))
        self._first_done = False
        self.order = BatchOrder(on_first_batch=self._first_batch)
        latest, latest_lock = {}, threading.Lock()
        self.workers = [ClassifierWorker(self.clf, self.queue, self.counters, self.stop, self.source_done,
                                         publisher=self.publisher, decision_log=self.decision_log, singles=None,
                                         veto_class=self.veto_class, batch_size=int(cfg.get("batch_size", 256)),
                                         max_wait_s=float(cfg.get("max_wait_ms", 20)) / 1e3, mask=mask,
                                         order=self.order, latest=latest, latest_lock=latest_lock,
                                         name=f"classifier-{i}")
                        for i in range(n_workers)]
        mcfg = cfg.get("monitor", {}) or {}
        self.monitor = MonitorServer(self.state, mcfg.get("host", "127.0.0.1"), int(mcfg.get("port", 8050)),
                                     float(mcfg.get("interval_s", 0.5))) if mcfg.get("enabled", True) else None
        self._png_cache: dict[str, tuple[str, str]] = {}
        self._support_pngs = None

    # ------------------------------------------------------------------ first batch: int8, CXI writer
    @property
    def worker(self) -> ClassifierWorker:
        """The first classifier worker (all of them: :attr:`workers`)."""
        return self.workers[0]

    def _first_batch(self, packets) -> None:
        """Once, before the first classification: int8 calibration and the CXI writer (frame shape, dtype)."""
        if self._first_done:
            return
        x = packets[0].frames
        if self.cfg.get("precision", "float32") == "int8":
            self._calibrate_int8(np.concatenate([p.frames for p in packets]))
        if self.singles_cfg.get("enabled", False):
            self.singles = SinglesWriter(
                self.output_dir / self.singles_cfg.get("directory", "singles"), x.shape[1:], x.dtype,
                self.classes, max_file_bytes=int(float(self.singles_cfg.get("max_file_bytes", 1 << 30))),
                mask=self.mask, compression=self.singles_cfg.get("compression"),
                retry_s=float(self.singles_cfg.get("retry_s", 10.0)),
                reserve_bytes=int(float(self.singles_cfg.get("reserve_bytes", 64 << 20))),
                attrs={"class_name": self.veto_class,
                       "checkpoint_hash": str(self.clf.checkpoint_hash_ or ""),
                       "classifier": str(self.cfg.get("classifier") or self.cfg.get("supports") or "")},
                on_error=lambda: self.counters.add_write_error("singles"))
            for w in self.workers:
                w.singles = self.singles
        self._first_done = True

    def _calibrate_int8(self, first_frames: np.ndarray) -> None:
        emb = self.clf.embedder
        frames = self.supports[0] if self.supports[0] is not None else first_frames
        where = "the support frames" if self.supports[0] is not None else "the first batch of the stream"
        rep = emb.calibrate_int8(frames, mask=self.mask, center=self.clf.center, scale=self.clf.scale,
                                 n=int(self.cfg.get("int8_calibration_frames", 256)))
        emb.precision = "int8"
        log.warning("int8 embedder calibrated on %d frames of %s (min cosine to float32 %.4f)", rep["n"], where,
                    rep.get("min_cosine", float("nan")))

    # ------------------------------------------------------------------ monitor state
    def state(self) -> dict:
        snap = self.counters.snapshot()
        latest = []
        with self.worker.latest_lock:   # shared by all workers
            items = dict(self.worker.latest)
        for cls, (frame, ident) in sorted(items.items()):
            cached = self._png_cache.get(cls)
            if cached is None or cached[0] != ident:
                cached = (ident, frame_png(frame, self.mask))
                self._png_cache[cls] = cached
            latest.append({"caption": f"{cls} {ident}", "png": cached[1]})
        if self._support_pngs is None:
            self._support_pngs = []
            frames, labels = self.supports
            if frames is not None:
                for cls in sorted(set(labels)):
                    idx = [i for i, lab in enumerate(labels) if lab == cls][:3]
                    self._support_pngs += [{"caption": f"{cls} #{i}", "png": frame_png(frames[i])} for i in idx]
        return {"counters": snap, "history": self.counters.history(), "margin": self.counters.margin_histogram(),
                "latest": latest, "supports": self._support_pngs, "classes": self.classes,
                "source": self.source.name}

    # ------------------------------------------------------------------ running
    def start(self) -> StreamService:
        """Start the monitor, the classifier worker(s) and the source threads."""
        if self.monitor is not None:
            self.monitor.start()
        for w in self.workers:
            w.start()
        self.runner.start()
        return self

    def request_stop(self, *_args) -> None:
        """Finish the batch in flight, flush, return (SIGINT/SIGTERM handler)."""
        self.stop.set()

    def wait(self) -> None:
        """Block until a stop request, the end of a finite source, or a limit of the config."""
        t0 = time.monotonic()
        max_s = self.cfg.get("max_seconds")
        max_frames = self.cfg.get("max_frames")
        status_every = float((self.cfg.get("publish") or {}).get("status_interval_s", 1.0))
        next_status = time.monotonic() + status_every
        while not self.stop.is_set():
            self.stop.wait(0.05)
            if self.runner.exhausted.is_set() and self.cfg.get("stop_when_source_ends", True):
                self.source_done.set()
            if self._worker_error() is not None or not any(w.is_alive() for w in self.workers) \
                    or self.runner.error is not None:
                break
            if max_s is not None and time.monotonic() - t0 >= float(max_s):
                break
            if max_frames is not None and self.counters.classified >= int(max_frames):
                break
            if self.publisher is not None and time.monotonic() >= next_status:
                self.publisher.publish_status(self.counters.snapshot())
                next_status = time.monotonic() + status_every

    def _worker_error(self) -> BaseException | None:
        return next((w.error for w in self.workers if w.error is not None), None)

    def shutdown(self, timeout: float = 60.0) -> dict:
        """Stop the source, let the worker finish its batch, flush and close every output."""
        self.source_done.set()
        self.stop.set()
        self.runner.join(timeout)
        for w in self.workers:
            w.join(timeout)
        left = self.queue.clear()
        if left:
            log.warning("shutdown: %d queued frames were not classified (counted as dropped)", left)
            self.counters.add_dropped(left)
        if self.decision_log is not None and not self.decision_log.close():
            log.error("shutdown: the last %d decisions could not be written to %s", self.decision_log._n_buf,
                      self.decision_log.dir)
        if self.singles is not None:
            self.singles.close()
        if self.publisher is not None:
            self.publisher.publish_status(self.counters.snapshot())
            self.publisher.close()
        if self.monitor is not None:
            self.monitor.stop()
        summary = self.counters.snapshot()
        summary["log_dir"] = str(self.decision_log.dir) if self.decision_log is not None else None
        summary["singles_files"] = [str(p) for p in self.singles.files] if self.singles is not None else []
        error = self._worker_error() or self.runner.error
        summary["error"] = repr(error) if error else None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        from speckle_embed.atomic import write_bytes_atomically

        write_bytes_atomically(json.dumps(summary, indent=1).encode(), self.output_dir / "summary.json")
        return summary


def run_stream(cfg: Mapping[str, Any], *, install_signals: bool = True) -> dict:
    """Run the service of ``cfg`` to its end; returns the final counters (also ``summary.json``).

    SIGINT and SIGTERM end it cleanly (in the main thread only: Python delivers signals there).
    """
    import torch  # the service's classifier runs on it; imported here only to set its threads

    workers = 1 if cfg.get("workers") is None else max(1, int(cfg["workers"]))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    elif workers > 1:   # the cores are shared among the workers
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    svc = StreamService(cfg)
    old = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, svc.request_stop)
    try:
        svc.start()
        log.warning("stream: %s source, classes %s, publishing on %s", svc.source.name, svc.classes,
                    (cfg.get("publish") or {}).get("endpoint"))
        svc.wait()
    finally:
        summary = svc.shutdown()
        for sig, h in old.items():
            signal.signal(sig, h)
    return summary
