"""Data-parallel training (torchrun / DDP) on the CPU with the gloo backend.

Two processes are started with ``torch.multiprocessing.spawn`` and the environment torchrun
would give them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), so :func:`init_distributed`
takes the same path as under ``torchrun``. Data: the tiny synthetic shards of
``test_train_loop``; model ``model=tiny`` at 24 x 24.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from speckle_embed.losses import BatchAllMiner, SemiHardMiner, TripletLoss
from speckle_embed.train import PKSampler, load_checkpoint, train
from speckle_embed.train.distributed import DistributedConfig, DistributedContext, init_distributed
from test_train_loop import compose_cfg, overrides, write_dataset

WORLD = 2


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def as_rank(rank: int, port: int) -> None:
    """The environment torchrun gives process ``rank`` of ``WORLD``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def spawn(fn, *args) -> None:
    mp.spawn(fn, args=args, nprocs=WORLD, join=True)


# ============================================================================ single process
def test_shard_gives_whole_groups():
    s, h = np.repeat(np.arange(4), 8), np.tile([1, 2], 16)
    sampler = PKSampler(s, h, p=4, k=3, seed=0)
    for batch in sampler.epoch_batches(0):
        parts = [sampler.shard(batch, r, 2) for r in range(2)]
        np.testing.assert_array_equal(np.concatenate(parts), batch)
        for part in parts:  # 2 whole groups of 3 frames
            groups = [(s[i], h[i]) for i in part]
            assert len(part) == 6 and len(set(groups)) == 2 and groups[0] == groups[2] and groups[3] == groups[5]
    np.testing.assert_array_equal(sampler.shard(batch, 0, 1), batch)
    with pytest.raises(ValueError, match=r"sampler.p \(4\) must be a multiple of the number of processes \(3\)"):
        sampler.shard(batch, 0, 3)


def test_init_distributed_choices(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not init_distributed({"backend": "auto"}).enabled  # plain python: no process group
    assert not init_distributed(None).enabled
    with pytest.raises(ValueError, match="distributed.backend must be one of"):
        DistributedConfig(backend="mpi4")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['distributed.nodes'\]"):
        DistributedConfig.from_dict({"nodes": 2})
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        init_distributed({"backend": "nccl"}, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="backend=none, but this process is one of 2"):
        init_distributed({"backend": "none"})
    monkeypatch.delenv("WORLD_SIZE")
    # a forced backend without a launcher: a group of one, destroyed on close
    with init_distributed({"backend": "gloo"}) as ctx:
        assert ctx.enabled and ctx.is_main and ctx.world_size == 1 and torch.distributed.is_initialized()
        x = torch.ones(3, requires_grad=True)
        assert ctx.all_gather(x) is x and ctx.broadcast({"a": 1}) == {"a": 1}
        assert ctx.run_on_main(lambda: 7) == 7
        with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
            DistributedContext(enabled=True, sync_batchnorm=True).wrap(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert not torch.distributed.is_initialized()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_dataset(folder)
    return folder


def test_group_of_one_trains_like_a_single_process(data_dir, tmp_path):
    """The DDP code path with one process (backend=gloo, no launcher) gives the plain run's weights."""
    plain = train(compose_cfg(data_dir, tmp_path / "plain", epochs=1))
    ddp = train(compose_cfg(data_dir, tmp_path / "ddp1", epochs=1, **{"distributed.backend": "gloo"}))
    assert not torch.distributed.is_initialized()
    assert [r["loss"] for r in ddp.history] == pytest.approx([r["loss"] for r in plain.history], abs=1e-6)
    a, b = load_checkpoint(plain.last_checkpoint), load_checkpoint(ddp.last_checkpoint)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, atol=1e-6, rtol=0, msg=k)
    assert b["training"]["world_size"] == 1 and "distributed" not in b["training"]["config"]


# ============================================================================ two processes
def _gradient_worker(rank: int, port: int) -> None:
    """The all-gathered triplet loss gives every rank the single-process gradient and loss."""
    as_rank(rank, port)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.PReLU(), torch.nn.Linear(5, 4))
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
    structure = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0, 2, 2, 2])
    hit = torch.tensor([1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    loss_fn = TripletLoss(0.5)

    def loss_of(emb, miner_seed):
        emb = torch.nn.functional.normalize(emb, dim=1)
        semihard = SemiHardMiner(0.5, generator=torch.Generator().manual_seed(miner_seed))
        return loss_fn(emb, *semihard(emb, structure, hit))[0] + loss_fn(emb, *BatchAllMiner(0.5)(emb, structure, hit))[0]

    ref = loss_of(model(x), 3)  # one process, whole batch
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    with init_distributed({"backend": "gloo"}) as ctx:
        assert ctx.enabled and ctx.owns_group and (ctx.rank, ctx.world_size) == (rank, WORLD)
        ddp = ctx.wrap(model, torch.device("cpu"))
        local = x[rank * 6:(rank + 1) * 6]  # two whole (structure, hit) groups per rank
        emb = ctx.all_gather(ddp(local))
        assert emb.shape == (12, 4)
        loss = loss_of(emb, 3)
        (loss * ctx.world_size).backward()
        torch.testing.assert_close(loss, ref.detach(), atol=1e-6, rtol=0)
        for p, g in zip(model.parameters(), ref_grads):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
        del ddp, emb, loss  # the DDP reducer holds the group: release it before the group goes
        # rank 0's result (or failure) reaches every rank
        assert ctx.run_on_main(lambda: {"rank": rank}) == {"rank": 0}

        def boom():
            raise KeyError("no such key")

        with pytest.raises(KeyError if rank == 0 else RuntimeError, match="no such key"):
            ctx.run_on_main(boom)


def test_gathered_loss_gives_the_single_process_gradient():
    spawn(_gradient_worker, free_ports(1)[0])


class Interrupt(RuntimeError):
    pass


def without_batchnorm(build):
    """``build_model`` with BatchNorm layers replaced by identities: with per-process batch
    statistics gone, a data-parallel step is exactly a single-process step."""
    def build_model(cfg):
        model = build(cfg)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(parent, name, torch.nn.Identity())
        return model
    return build_model


#: No augmentation (per-rank draws differ), batch-all mining (no random choice), no BatchNorm.
EQUIVALENT = {"epochs": 1, "augment.enabled": False, "loss.miner": "batch_all"}


def _train_worker(rank: int, ports: list, data_dir: str, out: str) -> None:
    """Ranks of a 2-process run: an uninterrupted run, and one killed at step 5 and resumed."""
    from speckle_embed.train import loop

    torch.set_num_threads(1)
    writes = []  # every file the trainer writes goes through these three functions

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            writes.append(name)
            return fn(*args, **kwargs)
        return wrapper

    for name in ("atomic_torch_save", "_write_metrics_csv", "plot_learning_curve"):
        setattr(loop, name, recording(name, getattr(loop, name)))

    trainers = []
    keep = lambda event, info: trainers.append(info["trainer"]) if event == "epoch_end" else None  # noqa: E731

    def kill(event, info):
        if event == "step_end" and info["global_step"] == 5:  # last.pt is from step 4
            raise Interrupt("simulated kill")

    def cfg(run, **extra):
        return compose_cfg(data_dir, os.path.join(out, run), tensorboard=True, **extra)

    as_rank(rank, ports[0])
    ref = train(cfg("ref"), callbacks=[keep])
    as_rank(rank, ports[1])
    with pytest.raises(Interrupt):
        train(cfg("resumed"), callbacks=[kill])
    as_rank(rank, ports[2])
    resumed = train(cfg("resumed"))
    as_rank(rank, ports[3])
    loop.build_model = without_batchnorm(loop.build_model)
    train(cfg("equivalent", **EQUIVALENT))
    assert not torch.distributed.is_initialized()
    params = {k: v.detach().clone() for k, v in trainers[-1].model.named_parameters()}
    torch.save(params, os.path.join(out, f"params{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"writes": writes, "history": ref.history, "steps": [ref.global_step, resumed.global_step],
                   "resumed_from": str(resumed.resumed_from)}, f)


def test_two_ranks_train_identically_and_only_rank0_writes(data_dir, tmp_path, monkeypatch):
    spawn(_train_worker, free_ports(4), str(data_dir), str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    # the two ranks end with the same parameters, which are those of rank 0's last.pt
    p0, p1 = (torch.load(tmp_path / f"params{r}.pt") for r in range(WORLD))
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    last = load_checkpoint(tmp_path / "ref" / "last.pt")
    for k in p0:
        assert torch.equal(last["state_dict"][k], p0[k]), k
    assert last["training"]["world_size"] == WORLD and last["training"]["step"] == 6
    # rank 0 validated and shared its metrics: both ranks hold the same history (but timings)
    timing = {"train_time_s", "patterns_per_s"}
    strip = lambda history: [{k: v for k, v in row.items() if k not in timing} for row in history]  # noqa: E731
    assert strip(r0["history"]) == strip(r1["history"]) and np.isfinite(r0["history"][-1]["val_accuracy"])
    # only rank 0 wrote checkpoints, metrics.csv, the learning curve and TensorBoard events
    assert r1["writes"] == [] and {"atomic_torch_save", "_write_metrics_csv", "plot_learning_curve"} <= set(r0["writes"])
    run = tmp_path / "ref"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "learning_curve.png", "metrics.csv", "tb"]
    assert len(list((run / "tb").iterdir())) == 1
    # killed at step 5 and resumed from last.pt of step 4: the uninterrupted run's weights
    assert r0["steps"] == r1["steps"] == [6, 6]
    assert r0["resumed_from"] == r1["resumed_from"] == str(tmp_path / "resumed" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for k, v in last["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, atol=1e-6, rtol=0, msg=k)
    # without BatchNorm and augmentation, 2 ranks train exactly like one process on the global batch
    from speckle_embed.train import loop

    monkeypatch.setattr(loop, "build_model", without_batchnorm(loop.build_model))
    single = train(compose_cfg(data_dir, tmp_path / "single", **EQUIVALENT))
    two = load_checkpoint(tmp_path / "equivalent" / "last.pt")
    assert two["training"]["metrics"]["loss"] == pytest.approx(single.history[0]["loss"], abs=1e-6)
    one = load_checkpoint(single.last_checkpoint)
    for k, v in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][k], v, atol=1e-5, rtol=1e-4, msg=k)


def test_torchrun_command_line(data_dir, tmp_path):
    """The command of docs/distributed.md: torchrun starts 2 ranks of the Hydra entry point."""
    run = tmp_path / "run"
    args = overrides(data_dir, epochs=1, steps_per_epoch=2, tensorboard=True) + [f"hydra.run.dir={run}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           "-m", "speckle_embed.train", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 reports
    assert "rank 1 of 2 (gloo backend)" in proc.stderr + (run / "train.log").read_text()
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["training"]["world_size"] == WORLD and ckpt["training"]["step"] == 2
    assert len(list((run / "tb").iterdir())) == 1
