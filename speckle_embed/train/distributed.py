"""Data-parallel training over several processes (``torchrun``): process group and helpers.

:func:`init_distributed` joins (or creates) the ``torch.distributed`` process group and returns
a :class:`DistributedContext`, whose helpers are no-ops in a single process, so the training
loop has one code path:

- :meth:`~DistributedContext.wrap` puts the model in ``DistributedDataParallel`` (gradients
  averaged over the processes at every ``backward``);
- :meth:`~DistributedContext.all_gather` concatenates the embeddings of every process in rank
  order, so the triplets of a step are mined over the whole global P x K batch (negatives and
  positives cross processes), with gradients flowing through this process's part only;
- :meth:`~DistributedContext.run_on_main` runs a function on rank 0 (validation, reading a
  checkpoint) and gives its result to every rank; :meth:`~DistributedContext.main_first` lets
  rank 0 do a thing (simulate a missing dataset) before the others.

Usage and the batch split are described in ``docs/distributed.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedConfig", "DistributedContext", "init_distributed"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo", "none")


@dataclass
class DistributedConfig:
    """How the processes of a ``torchrun`` launch train together (``distributed:`` in
    ``conf/train/train.yaml``).

    Attributes
    ----------
    backend : {"auto", "nccl", "gloo", "none"}
        ``auto``: data-parallel when launched as several processes (``WORLD_SIZE`` > 1, or a
        process group already initialised by the caller), with NCCL on CUDA and Gloo on the
        CPU. ``nccl`` / ``gloo``: data-parallel with that backend, also as a single process
        (a group of one, to exercise the code path). ``none``: a single process; refused
        when ``WORLD_SIZE`` > 1 (the processes would overwrite each other's outputs).
    timeout_min : float
        Timeout of collective operations; ranks > 0 wait this long for rank 0 to validate
        or write a checkpoint.
    sync_batchnorm : bool
        Convert BatchNorm layers to ``SyncBatchNorm`` (statistics over the global batch
        instead of each process's part). CUDA only.
    """

    backend: str = "auto"
    timeout_min: float = 30.0
    sync_batchnorm: bool = False

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"distributed.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if not float(self.timeout_min) > 0:
            raise ValueError(f"distributed.timeout_min must be > 0, got {self.timeout_min}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DistributedConfig":
        """Build from a mapping (``None`` gives the defaults); unknown keys are refused."""
        d = dict(d or {})
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"unknown config key(s) {[f'distributed.{k}' for k in unknown]}; "
                             f"allowed in distributed: {sorted(allowed)}")
        return cls(**d)


class DistributedContext:
    """Rank, world size and collective helpers of one training process.

    The default instance describes a single process: every helper then returns its input or
    calls the function directly, without ``torch.distributed``.

    Attributes
    ----------
    rank, world_size, local_rank : int
    enabled : bool
        A process group is in use (data-parallel training, possibly with one process).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, *, enabled: bool = False,
                 owns_group: bool = False, sync_batchnorm: bool = False) -> None:
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self.enabled = bool(enabled)
        self.owns_group = bool(owns_group)
        self.sync_batchnorm = bool(sync_batchnorm)

    def __repr__(self) -> str:
        return (f"DistributedContext(rank={self.rank}, world_size={self.world_size}, "
                f"local_rank={self.local_rank}, enabled={self.enabled})")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates and writes outputs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This process's device: ``cuda:<local_rank>`` for a CUDA device, else ``device``."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(model)`` (rank 0's weights are broadcast to every rank),
        or ``model`` itself in a single process. With ``sync_batchnorm`` the BatchNorm layers
        of ``model`` are replaced in place by ``SyncBatchNorm``."""
        if not self.enabled:
            return model
        if self.sync_batchnorm:
            if device.type != "cuda":
                raise ValueError("distributed.sync_batchnorm needs CUDA devices (SyncBatchNorm has no CPU kernel)")
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if converted is not model:  # only when the model itself is a BatchNorm layer
                raise ValueError("distributed.sync_batchnorm: the model's root module is a BatchNorm layer")
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenation of ``x`` of every rank, in rank order (same shape on every rank).

        This rank's part is ``x`` itself (gradients flow through it); the other parts are
        copies without gradient. Every rank gets the same values.
        """
        if not self.enabled or self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.detach().contiguous())
        parts[self.rank] = x
        return torch.cat(parts)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s (picklable) ``obj`` on every rank."""
        if not self.enabled or self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0, its result returned on every rank.

        An exception raised by ``fn`` is raised again on rank 0 and as a ``RuntimeError``
        naming it on the other ranks, so that no rank waits for the others forever.
        """
        if not self.enabled:
            return fn()
        error = None
        result = None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the others
                error = exc
        ok, value = self.broadcast((error is None, result if error is None else f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        if not ok:
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    @contextlib.contextmanager
    def main_first(self):
        """Run the body on rank 0 first, then on the other ranks (e.g. a cache that rank 0
        creates and the others read). A failure on rank 0 is raised on every rank."""
        if not self.enabled or self.world_size == 1:
            yield
            return
        if self.is_main:
            try:
                yield
            except Exception as exc:
                self.broadcast((False, f"{type(exc).__name__}: {exc}"))
                raise
            self.broadcast((True, ""))
        else:
            ok, message = self.broadcast(None)
            if not ok:
                raise RuntimeError(f"rank 0 failed: {message}")
            yield

    def barrier(self) -> None:
        if self.enabled and self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            # every rank done with its collectives before the group goes: gloo's worker threads
            # must not outlive it with work in flight (an intermittent SIGABRT at exit otherwise)
            try:
                self.barrier()
            except RuntimeError:  # a peer already gone: destroy anyway
                pass
            dist.destroy_process_group()
        self.owns_group = False

    def __enter__(self) -> "DistributedContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def init_distributed(cfg: DistributedConfig | Mapping | None, device_type: str = "cpu") -> DistributedContext:
    """Join the process group of a ``torchrun`` launch (or the caller's) as ``cfg`` says.

    Parameters
    ----------
    cfg : DistributedConfig or mapping
    device_type : str
        ``"cuda"`` or ``"cpu"``: picks the backend of ``backend="auto"`` and, for CUDA, makes
        ``cuda:<LOCAL_RANK>`` the current device.

    Returns
    -------
    DistributedContext
        Close it (or use it as a context manager) to destroy a group it created; a group
        initialised by the caller is left alone.

    Raises
    ------
    RuntimeError
        ``backend="none"`` in a multi-process launch.
    ValueError
        ``backend="nccl"`` without CUDA.
    """
    cfg = cfg if isinstance(cfg, DistributedConfig) else DistributedConfig.from_dict(cfg)
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    initialized = dist.is_available() and dist.is_initialized()
    if cfg.backend == "none":
        if env_world > 1 or (initialized and dist.get_world_size() > 1):
            raise RuntimeError(f"distributed.backend=none, but this process is one of {max(env_world, 1)} "
                               "(torchrun): use backend=auto, or launch a single process")
        return DistributedContext()
    if cfg.backend == "auto" and env_world <= 1 and not initialized:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() if initialized else 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    owns = False
    if not initialized:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")
        if backend == "nccl" and device_type != "cuda":
            raise ValueError("distributed.backend=nccl needs CUDA devices; use gloo on the CPU")
        timeout = timedelta(minutes=float(cfg.timeout_min))
        if env_world > 1 or "RANK" in os.environ:  # torchrun: env:// rendezvous (MASTER_ADDR, ...)
            dist.init_process_group(backend, init_method="env://", timeout=timeout)
        else:  # one process without a launcher: a group of one
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        owns = True
    ctx = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, enabled=True, owns_group=owns,
                             sync_batchnorm=cfg.sync_batchnorm)
    logger.info("data-parallel training: rank %d of %d (%s backend)", ctx.rank, ctx.world_size, dist.get_backend())
    return ctx
