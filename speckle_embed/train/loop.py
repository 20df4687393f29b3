"""The training loop: ``train(config) -> TrainResult``, resumable at any moment.

One optimizer step: read the batch's frames (a background thread reads the next batch
while this one trains), augment them on the model's device
(:class:`~speckle_embed.train.augment.SpeckleAugment`), preprocess
(:func:`speckle_embed.preprocess.preprocess`, the normalisation stored in the checkpoint),
embed, mine triplets with SpeckleNN's (structure, hit) rule, triplet loss on squared L2,
backward, gradient clipping, AdamW step, learning-rate schedule step.

Reproducibility and resumption
------------------------------
The batches of an epoch are a pure function of ``(seed, epoch)``
(:class:`~speckle_embed.train.sampler.PKSampler`), and the augmentation and mining generators
are re-seeded at every step from ``(seed, epoch, step)``; the model, optimizer and scheduler
states and the epoch's running sums are saved in ``last.pt`` at every epoch end and every
``checkpoint_every_steps`` steps (atomically: temporary file + ``os.replace``). A run killed
at any moment (even ``kill -9``) and restarted with the same configuration and run folder
(``resume: auto``) reloads ``last.pt``, replays the steps done after it and ends with the
same weights as an uninterrupted run (bit-identical on CPU).

``metrics.csv`` is rewritten from the history stored in the checkpoint, so it never holds
rows of steps that a resumed run replays. A non-finite loss or gradient stops the run with
:class:`TrainingDivergedError`; ``last.pt`` / ``best.pt`` stay the last good ones.

Data-parallel training (``torchrun``, ``docs/distributed.md``)
-------------------------------------------------------------
Every process builds the same model (same seed; ``DistributedDataParallel`` also broadcasts
rank 0's weights) and draws the same global P x K batches; process ``r`` of ``W`` reads and
augments its ``P / W`` groups x ``K`` frames (:meth:`PKSampler.shard`). The embeddings are
all-gathered, so every process mines the same triplets over the whole global batch (negatives
cross processes) and computes the same loss; ``W x loss`` is back-propagated through the
process's own embeddings, so that DDP's gradient average is the gradient of the global-batch
loss. Rank 0 alone validates (the others receive its metrics) and writes checkpoints,
``metrics.csv``, TensorBoard events and the learning curve; a resumed run reads ``last.pt``
on rank 0 and broadcasts it.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from speckle_embed.atomic import save_figure_atomically
from speckle_embed.checkpoint import resolve_checkpoint_spec
from speckle_embed.device import resolve_device
from speckle_embed.fewshot.episodes import evaluate_episodes, sample_episodes
from speckle_embed.losses import BatchAllMiner, BatchHardMiner, SemiHardMiner, TripletLoss
from speckle_embed.models import build_model, model_config
from speckle_embed.preprocess import Preprocessing, preprocess

from .augment import SpeckleAugment
from .checkpoint import (CHECKPOINT_FORMAT, atomic_torch_save, atomic_write_text, get_rng_states,
                         load_checkpoint, set_rng_states)
from .config import TrainConfig, to_plain
from .data import DatasetGenerator, TrainData, build_train_data
from .distributed import DistributedConfig, DistributedContext, init_distributed
from .sampler import PKSampler

__all__ = ["train", "TrainResult", "TrainingDivergedError", "step_seed", "warmup_cosine",
           "METRICS_NAME", "CURVE_NAME", "LAST_NAME", "BEST_NAME"]

logger = logging.getLogger(__name__)

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.csv"
CURVE_NAME = "learning_curve.png"
METRIC_COLUMNS = ["epoch", "step", "lr", "loss", "active_fraction", "triplets_per_batch",
                  "semihard_fraction", "val_accuracy", "val_f1", "train_time_s", "patterns_per_s"]
#: Keys whose change does not prevent resuming a run.
RESUMABLE_KEYS = {"epochs", "resume", "progress", "tensorboard", "run_dir", "base_dir", "device",
                  "threads", "checkpoint_every_steps", "name", "data.generate_if_missing",
                  "data.generate", "data.max_open_files", "eval.batch_size"}



def _load_init(spec: str, base_dir: Path) -> dict:
    """Checkpoint dict of ``init_checkpoint``: a trainer checkpoint path, a compressed (shipped
    format) file, or ``pretrained`` / ``pretrained:<name>`` for an embedding shipped in the
    package (dequantised weights)."""
    return load_checkpoint(resolve_checkpoint_spec(spec, base_dir), map_location="cpu", expand_compressed=True)


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    run_dir : Path
    last_checkpoint, best_checkpoint : Path
    history : list of dict
        One row per epoch (the columns of ``metrics.csv``).
    best_metric : float
        Best validation accuracy (or ``-loss`` without validation).
    global_step : int
    resumed_from : Path or None
    """

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    history: list = field(default_factory=list)
    best_metric: float = float("-inf")
    global_step: int = 0
    resumed_from: Path | None = None


def step_seed(seed: int, epoch: int, step: int, stream: int = 0, rank: int = 0) -> int:
    """63-bit seed of the generators of one step: a pure function of its arguments.

    ``rank`` > 0 (data-parallel process) gives other seeds; rank 0 gets a single process's.
    """
    entropy = [int(seed), int(epoch), int(step), int(stream)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in RESUMABLE_KEYS:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_KEYS or any(key.startswith(k + ".") for k in RESUMABLE_KEYS):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def _yaml(d: dict) -> str:
    import yaml
    return yaml.safe_dump(d, sort_keys=False)


def _build_miner(cfg, device):
    c = cfg.loss
    generator = torch.Generator(device=device)
    if c.miner == "semihard":
        return SemiHardMiner(c.margin, select=c.select, fallback=c.fallback, generator=generator), generator
    if c.miner == "batch_hard":
        return BatchHardMiner(), None
    return BatchAllMiner(c.margin, active_only=c.active_only), None


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on BN, PReLU, biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Prefetcher:
    """Reads batch ``i + 1`` in a thread while batch ``i`` trains (order is unchanged)."""

    def __init__(self, data: TrainData):
        self.reader = data.reader()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="speckle-read")

    def iterate(self, batches: Sequence[np.ndarray]):
        if not batches:
            return
        future = self.pool.submit(self.reader, batches[0])
        for i in range(len(batches)):
            result = future.result()
            if i + 1 < len(batches):
                future = self.pool.submit(self.reader, batches[i + 1])
            yield result

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.reader.close()


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporaries of atomic writes left by a killed run (``<name>.<pid>-<hex>.tmp``)."""
    stems = (LAST_NAME, BEST_NAME, METRICS_NAME, Path(CURVE_NAME).stem)
    for p in run_dir.iterdir():
        if ".tmp" in p.name and p.name.startswith(stems) and p.is_file():
            try:
                p.unlink()
            except OSError:
                pass


def _write_metrics_csv(history: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
    atomic_write_text(buf.getvalue(), path)


def plot_learning_curve(history: list[dict], path, episodes: str = "2-way 5-shot") -> Path:
    """Loss, active-triplet fraction and validation accuracy vs epoch (matplotlib Agg)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("loss", "training loss"), ("active_fraction", "active triplets"),
              ("val_accuracy", f"validation accuracy ({episodes})")]
    for ax, (key, title) in zip(axes, panels):
        ys = [r.get(key, float("nan")) for r in history]
        ax.plot(epochs, ys, "o-", ms=3)
        if key == "val_accuracy":
            ax.plot(epochs, [r.get("val_f1", float("nan")) for r in history], "s--", ms=3, label="F1 (single)")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure_atomically(fig, path, dpi=100)


class _Trainer:
    """State of one run; :func:`train` is the public entry point."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Callable] = (),
                 dist: DistributedContext | None = None, dataset_generator: DatasetGenerator | None = None):
        self.cfg = cfg
        self.dataset_generator = dataset_generator
        self.callbacks = list(callbacks)
        self.dist = dist or DistributedContext()
        self.run_dir = Path(cfg.run_dir).expanduser().resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            _remove_stale_temporaries(self.run_dir)
        self.base_dir = Path(cfg.base_dir).expanduser() if cfg.base_dir else Path.cwd()
        self.device = self.dist.device(resolve_device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        if cfg.deterministic:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        self.config_dict = cfg.to_dict()
        self.use_amp = bool(cfg.amp) and self.device.type == "cuda"

    # ------------------------------------------------------------------ setup
    def setup(self):
        cfg = self.cfg
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        init = None
        if cfg.init_checkpoint:
            init = _load_init(str(cfg.init_checkpoint), self.base_dir)
            logger.info("initialising from %s (its architecture and preprocessing)", cfg.init_checkpoint)
        prep = dict(init["preprocessing"]) if init else dict(cfg.preprocessing)
        if cfg.init_crop is not None:
            logger.info("training at crop %d instead of the checkpoint's %s (init_crop)", cfg.init_crop, prep.get("crop"))
            prep["crop"] = int(cfg.init_crop)
        self.prep = Preprocessing.from_dict(prep)
        mcfg = dict(init["model"] if init else cfg.model)
        mcfg.setdefault("input_size", self.prep.input_size)
        size = mcfg["input_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(size) != (self.prep.input_size, self.prep.input_size):
            raise ValueError(f"model.input_size {size} differs from preprocessing.input_size "
                             f"{self.prep.input_size}")
        with self.dist.main_first():  # rank 0 simulates a missing dataset before the others read it
            self.data = build_train_data(cfg.data, cfg.eval, seed=cfg.seed, base_dir=self.base_dir,
                                         generator=self.dataset_generator)
        self.model = build_model(mcfg)
        if init:
            self.model.load_state_dict(init["state_dict"])
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_model = self.dist.wrap(self.model, self.device)  # what train steps call; self.model is saved
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, o.weight_decay), lr=o.lr,
                                           betas=tuple(o.betas))
        self.sampler = PKSampler(self.data.train_structure, self.data.train_hit, cfg.sampler.p,
                                 cfg.sampler.k, seed=cfg.seed, batches_per_epoch=cfg.steps_per_epoch)
        if self.sampler.dropped_groups:
            logger.warning("left out (structure, hit) groups with fewer than 2 frames: %s",
                           self.sampler.dropped_groups)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        warmup = o.warmup_steps if o.warmup_steps is not None else int(round(o.warmup_fraction * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(int(warmup), self.total_steps, o.min_lr_ratio))
        self.miner, self.miner_generator = _build_miner(cfg, self.device)
        self.loss_fn = TripletLoss(cfg.loss.margin)
        self.augment = SpeckleAugment(cfg.augment, out_size=self.prep.crop)
        self.aug_generator = torch.Generator(device=self.device)
        self._setup_validation()
        # progress state
        self.epoch, self.position, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.best_metric = float("-inf")
        self.best_epoch = -1
        self.acc = self._new_accumulator()
        self.resumed_from = None

    def _setup_validation(self):
        ev = self.cfg.eval
        self.episodes = []
        self.val_inputs = None
        if not self.dist.is_main:  # rank 0 validates (DistributedContext.run_on_main)
            return
        if self.data.val_idx.size == 0:
            logger.warning("no validation frames: best.pt follows the training loss")
            return
        try:
            self.episodes = sample_episodes(self.data.val_hit, self.data.val_structure, n_way=ev.n_way,
                                            k_shot=ev.k_shot, n_query=ev.n_query, n_tasks=ev.n_tasks,
                                            seed=ev.seed, classes=ev.classes)
        except ValueError as exc:
            logger.warning("no validation episodes (%s): best.pt follows the training loss", exc)
            return
        # Validation inputs: fixed (no augmentation), preprocessed once, read in chunks.
        reader = self.data.reader()
        chunks = []
        for start in range(0, self.data.val_idx.size, 256):
            frames, bad = reader(self.data.val_idx[start:start + 256])
            chunks.append(preprocess(frames.to(self.device), self.prep, mask=bad.to(self.device)).cpu())
        reader.close()
        self.val_inputs = torch.cat(chunks)

    def _reference_speckle(self) -> float | None:
        """Speckle FWHM (training-detector pixels) of up to 64 training single hits.

        Stored in checkpoints as ``preprocessing.reference_speckle_px`` so that
        ``SpeckleEmbedder.embed(..., scale="auto")`` can match foreign detectors to it.
        """
        if not hasattr(self, "_reference_speckle_px"):
            from speckle_embed.scale import speckle_size

            idx = self.data.train_idx[self.data.train_hit == 1]
            idx = idx if idx.size else self.data.train_idx
            # one geometry only (speckle_size describes a set of one detector): with mixed
            # detectors (data.frame_shape), the shards that are natively at the common size
            index = self.data.index
            native = np.array([s.frame_shape == tuple(index.frame_shape) for s in index.shards])
            idx = idx[native[self.data.shard_of(idx)]]
            idx = idx[:: max(1, idx.size // 64)][:64]
            value = None
            if idx.size:
                reader = self.data.reader()
                frames, bad = reader(np.sort(idx))
                reader.close()
                try:
                    value = float(speckle_size(frames.numpy(), bad.numpy()))
                except ValueError as exc:  # e.g. noise-only frames
                    logger.warning("no reference speckle size for scale='auto': %s", exc)
                if value is not None and not value >= 1.0:
                    logger.warning("no reference speckle size for scale='auto': the training single "
                                   "hits show no resolvable speckle (%.3g px)", value)
                    value = None
            self._reference_speckle_px = value
        return self._reference_speckle_px

    @staticmethod
    def _new_accumulator() -> dict:
        return {"loss": 0.0, "active": 0.0, "triplets": 0.0, "semihard": 0.0, "pairs": 0.0, "steps": 0,
                "time": 0.0, "patterns": 0}

    # ------------------------------------------------------------------ checkpoints
    def _base_checkpoint(self, metrics: dict | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model_config(self.model),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "preprocessing": {**self.prep.to_dict(), "reference_speckle_px": self._reference_speckle()},
            "training": {
                "epoch": self.epoch, "position": self.position, "step": self.global_step,
                "steps_per_epoch": self.steps_per_epoch, "seed": self.cfg.seed,
                "config": self.config_dict, "config_yaml": _yaml(self.config_dict),
                "metrics": metrics or {}, "train_structures": list(self.data.train_structures),
                "val_structures": list(self.data.val_structures),
                "torch_version": str(torch.__version__), "world_size": self.dist.world_size,
            },
        }

    def save_last(self) -> None:
        if not self.dist.is_main:
            return
        self.sampler.set_epoch(self.epoch, self.position)
        ckpt = self._base_checkpoint(self.history[-1] if self.history else None)
        ckpt.update({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling
            "sampler": self.sampler.state_dict(),
            "rng": get_rng_states(),
            "accumulator": dict(self.acc),
            "history": list(self.history),
            "best": {"metric": self.best_metric, "epoch": self.best_epoch},
        })
        atomic_torch_save(ckpt, self.run_dir / LAST_NAME)

    def save_best(self, metrics: dict) -> None:
        if not self.dist.is_main:
            return
        atomic_torch_save(self._base_checkpoint(metrics), self.run_dir / BEST_NAME)

    def maybe_resume(self) -> None:
        r = self.cfg.resume
        if r == "never":
            return
        path = self.run_dir / LAST_NAME if r == "auto" else Path(r).expanduser()

        def read() -> dict | None:
            if r != "auto" and not path.is_file():
                raise FileNotFoundError(f"resume={r!r}: no such checkpoint")
            return load_checkpoint(path, map_location="cpu") if path.is_file() else None

        ckpt = self.dist.run_on_main(read)  # rank 0 reads, every rank resumes from it
        if ckpt is None:
            return
        if "optimizer" not in ckpt:
            raise ValueError(f"{path} has no optimizer state (a best.pt?); resume from a last.pt")
        diffs = _config_differences(ckpt["training"]["config"], self.config_dict)
        if diffs:
            raise ValueError(
                f"{path} was written by a run with another configuration; differences: "
                f"{'; '.join(diffs)}. Use another run folder (name=...) or resume=never.")
        t = ckpt["training"]
        if int(t["steps_per_epoch"]) != self.steps_per_epoch:
            raise ValueError(f"{path}: steps_per_epoch {t['steps_per_epoch']} != {self.steps_per_epoch}")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])  # keeps this run's lambdas (current total)
        self.sampler.load_state_dict(ckpt["sampler"])
        set_rng_states(ckpt["rng"])
        self.epoch, self.position, self.global_step = int(t["epoch"]), int(t["position"]), int(t["step"])
        self.acc = dict(ckpt["accumulator"])
        self.history = list(ckpt["history"])
        self.best_metric = float(ckpt["best"]["metric"])
        self.best_epoch = int(ckpt["best"]["epoch"])
        self.resumed_from = path
        logger.info("resumed from %s at epoch %d, step %d (global %d)", path, self.epoch, self.position,
                    self.global_step)

    # ------------------------------------------------------------------ steps
    def _emit(self, event: str, **info) -> None:
        for cb in self.callbacks:
            cb(event, {"trainer": self, **info})

    def train_step(self, frames: torch.Tensor, bad: torch.Tensor, batch: np.ndarray) -> dict:
        cfg, dev = self.cfg, self.device
        self.model.train()
        frames = frames.to(dev, non_blocking=True)
        bad = bad.to(dev, non_blocking=True)
        self.aug_generator.manual_seed(step_seed(cfg.seed, self.epoch, self.position, 1, self.dist.rank))
        if self.miner_generator is not None:
            self.miner_generator.manual_seed(step_seed(cfg.seed, self.epoch, self.position, 2))
        with torch.no_grad():
            x, bad = self.augment(frames, bad, generator=self.aug_generator)
            inputs = preprocess(x, self.prep, mask=bad)
        if cfg.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        structure = torch.as_tensor(self.data.train_structure[batch], device=dev)
        hit = torch.as_tensor(self.data.train_hit[batch], device=dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=self.use_amp):
            emb = self.ddp_model(inputs)
        emb = self.dist.all_gather(emb.float())  # the global batch (= batch), same on every rank
        triplets = self.miner(emb, structure, hit)
        loss, stats = self.loss_fn(emb, *triplets)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(self._diverged_message("loss", loss.item()))
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.dist.world_size).backward()  # DDP averages over ranks: the global loss's gradient
        clip = cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else float("inf"))
        if not torch.isfinite(norm):
            raise TrainingDivergedError(self._diverged_message("gradient norm", float(norm)))
        self.optimizer.step()
        self.scheduler.step()
        mstats = self.miner.stats
        return {"loss": loss.item(), "active_fraction": stats["active_fraction"],
                "n_triplets": stats["n_triplets"], "n_semihard": mstats.get("n_semihard", 0),
                "n_pairs": mstats.get("n_pairs", 0), "grad_norm": float(norm)}

    def _diverged_message(self, what: str, value: float) -> str:
        last = self.run_dir / LAST_NAME
        kept = (f"the last good checkpoint {last} is kept" if last.exists()
                else "no checkpoint had been written yet")
        return (f"training stopped: non-finite {what} ({value}) at epoch {self.epoch}, step "
                f"{self.position} (global step {self.global_step}); {kept}. Lower optim.lr, check "
                f"the data, or set optim.grad_clip.")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.episodes:
            return {}
        self.model.eval()
        out = []
        bs = int(self.cfg.eval.batch_size)
        for start in range(0, self.val_inputs.shape[0], bs):
            x = self.val_inputs[start:start + bs].to(self.device)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                out.append(self.model(x).float().cpu())
        emb = torch.cat(out).numpy()
        if not np.isfinite(emb).all():
            return {"accuracy": float("nan"), "f1": float("nan"), "per_structure": {}}
        return evaluate_episodes(emb, self.episodes, rule=self.cfg.eval.rule,
                                 structure_names=self.data.eval_structure_names)

    # ------------------------------------------------------------------ main loop
    def run(self) -> TrainResult:
        cfg = self.cfg
        writer = None
        if cfg.tensorboard and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(log_dir=str(self.run_dir / "tb"),
                                       purge_step=self.global_step if self.resumed_from else None)
            except Exception as exc:  # noqa: BLE001 - tensorboard is optional
                logger.warning("TensorBoard logging disabled: %s", exc)
        if self.history and self.dist.is_main:
            _write_metrics_csv(self.history, self.run_dir / METRICS_NAME)
        prefetch = _Prefetcher(self.data)
        try:
            from tqdm.auto import tqdm

            while self.epoch < cfg.epochs:
                batches = self.sampler.epoch_batches(self.epoch)[self.position:]
                # this rank's frames of each (global) batch: the whole batch in a single process
                local = [self.data.train_idx[self.sampler.shard(b, self.dist.rank, self.dist.world_size)]
                         for b in batches]
                bar = tqdm(total=self.steps_per_epoch, initial=self.position, desc=f"epoch {self.epoch}",
                           disable=not cfg.progress or not self.dist.is_main, leave=False, dynamic_ncols=True)
                for batch, (frames, bad) in zip(batches, prefetch.iterate(local)):
                    t0 = time.perf_counter()
                    s = self.train_step(frames, bad, batch)
                    dt = time.perf_counter() - t0
                    a = self.acc
                    a["loss"] += s["loss"]
                    a["active"] += s["active_fraction"]
                    a["triplets"] += s["n_triplets"]
                    a["semihard"] += s["n_semihard"]
                    a["pairs"] += s["n_pairs"]
                    a["steps"] += 1
                    a["time"] += dt
                    a["patterns"] += len(batch)
                    self.position += 1
                    self.global_step += 1
                    if writer is not None:
                        writer.add_scalar("train/loss_step", s["loss"], self.global_step)
                        writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.global_step)
                    bar.set_postfix(loss=f"{s['loss']:.4f}", active=f"{s['active_fraction']:.2f}")
                    bar.update(1)
                    every = int(cfg.checkpoint_every_steps)
                    if every and self.global_step % every == 0 and self.position < self.steps_per_epoch:
                        self.save_last()
                    self._emit("step_end", epoch=self.epoch, position=self.position,
                               global_step=self.global_step, stats=s)
                bar.close()
                self._end_epoch(writer)
            if self.history and self.dist.is_main:
                ev = cfg.eval
                plot_learning_curve(self.history, self.run_dir / CURVE_NAME, f"{ev.n_way}-way {ev.k_shot}-shot")
        finally:
            prefetch.close()
            if writer is not None:
                writer.close()
        if self.dist.is_main and not (self.run_dir / BEST_NAME).exists():  # e.g. resumed a finished run
            self.save_best(self.history[-1] if self.history else {})
        self.dist.barrier()  # every rank returns once rank 0's files are written
        return TrainResult(self.run_dir, self.run_dir / LAST_NAME, self.run_dir / BEST_NAME,
                           list(self.history), self.best_metric, self.global_step, self.resumed_from)

    def _end_epoch(self, writer) -> None:
        a = self.acc
        n = max(a["steps"], 1)
        metrics = self.dist.run_on_main(self.evaluate)
        row = {
            "epoch": self.epoch, "step": self.global_step, "lr": self.scheduler.get_last_lr()[0],
            "loss": a["loss"] / n, "active_fraction": a["active"] / n, "triplets_per_batch": a["triplets"] / n,
            "semihard_fraction": (a["semihard"] / a["pairs"]) if a["pairs"] else float("nan"),
            "val_accuracy": metrics.get("accuracy", float("nan")), "val_f1": metrics.get("f1", float("nan")),
            "train_time_s": a["time"], "patterns_per_s": a["patterns"] / a["time"] if a["time"] else float("nan"),
        }
        self.history.append(row)
        score = row["val_accuracy"] if metrics else -row["loss"]
        improved = np.isfinite(score) and score > self.best_metric
        if self.dist.is_main:
            logger.info("epoch %d: loss %.4f, active %.3f, val accuracy %.4f, F1 %.4f, %.1f patterns/s%s",
                        self.epoch, row["loss"], row["active_fraction"], row["val_accuracy"], row["val_f1"],
                        row["patterns_per_s"], " (best)" if improved else "")
        if writer is not None:
            for key in ("loss", "active_fraction", "triplets_per_batch", "semihard_fraction", "patterns_per_s"):
                writer.add_scalar(f"epoch/{key}", row[key], self.epoch)
            if metrics:
                writer.add_scalar("val/accuracy", row["val_accuracy"], self.epoch)
                writer.add_scalar("val/f1", row["val_f1"], self.epoch)
                for name, m in metrics.get("per_structure", {}).items():
                    writer.add_scalar(f"val_structure/{name}", m["accuracy"], self.epoch)
            writer.flush()
        self.epoch += 1
        self.position = 0
        self.acc = self._new_accumulator()
        if improved:
            self.best_metric = float(score)
            self.best_epoch = row["epoch"]
            self.save_best({**row, "per_structure": metrics.get("per_structure", {})})
        self.save_last()
        if self.dist.is_main:
            _write_metrics_csv(self.history, self.run_dir / METRICS_NAME)
        self._emit("epoch_end", epoch=row["epoch"], metrics=row)


def train(cfg: Any, *, callbacks: Sequence[Callable[[str, dict], None]] = (),
          dataset_generator: DatasetGenerator | None = None) -> TrainResult:
    """Train an embedding model (see the module notes).

    Parameters
    ----------
    cfg : TrainConfig, mapping or DictConfig
        The configuration (``conf/train/train.yaml`` composed by Hydra, or a plain dict; missing
        keys take the defaults of :class:`~speckle_embed.train.config.TrainConfig`). Its
        ``distributed`` section (:class:`~speckle_embed.train.distributed.DistributedConfig`)
        says how the processes of a ``torchrun`` launch train together; it is a launch
        setting, not stored in checkpoints (a run may resume with another number of processes).
    callbacks : sequence of callables, optional
        ``callback(event, info)`` with ``event`` ``"step_end"`` or ``"epoch_end"``; ``info``
        has ``epoch``, ``global_step`` and the trainer. An exception raised by a callback
        stops the run (the checkpoints on disk stay valid).
    dataset_generator : callable, optional
        Simulates a missing dataset for ``data.generate_if_missing``
        (:data:`~speckle_embed.train.data.DatasetGenerator`); :func:`speckle_embed.train.train`
        passes the simulator's (:func:`speckle_embed.train.app.simulate_dataset`).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingDivergedError
        NaN/inf loss or gradient.
    DatasetError, ValueError
        Bad data (named file and frame) or configuration.
    """
    if isinstance(cfg, TrainConfig):
        config, dist_config = cfg, DistributedConfig()
    else:
        plain = to_plain(cfg)
        dist_config = DistributedConfig.from_dict(plain.pop("distributed", None))
        config = TrainConfig.from_dict(plain)
    with init_distributed(dist_config, resolve_device(config.device).type) as dist:
        trainer = _Trainer(config, callbacks, dist, dataset_generator)
        trainer.setup()
        trainer.maybe_resume()
        return trainer.run()
