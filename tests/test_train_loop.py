"""Training runs end to end on tiny synthetic shards: Hydra composition, checkpoints, resume
equivalence, NaN handling, bad input, and the CLI.

Shards are 32x32 synthetic frames written with ``simulate.dataset_io.write_shard``; the model is
``model=tiny`` at ``input_size=24``. Everything runs on the CPU in a few seconds.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from simulate.dataset_io import MASK_INVALID, write_shard
from speckle_embed.data.h5dataset import CorruptShardError, DatasetError
from speckle_embed.preprocess import preprocess
from speckle_embed.train import TrainingDivergedError, load_checkpoint, load_embedder, train
from speckle_embed.train.checkpoint import CHECKPOINT_FORMAT
from speckle_embed.train.config import TrainConfig
from speckle_embed.train.data import build_train_data

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf" / "train"
SIZE = 32


def synthetic_frames(structure: int, hit: np.ndarray, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Poisson frames whose pattern depends on the structure (ring radius) and the hit class."""
    yy, xx = np.meshgrid(np.arange(size) - (size - 1) / 2, np.arange(size) - (size - 1) / 2, indexing="ij")
    r = np.hypot(yy, xx)
    ring = np.exp(-((r - (4 + 2 * structure)) ** 2) / 2.0)
    out = []
    for h in hit:
        if h == 0:
            lam = np.full_like(r, 0.05)
        elif h == 1:
            lam = 3 * ring + 0.05
        elif h == 2:
            lam = 3 * ring * (1 + np.cos(xx * rng.uniform(0.5, 1.5))) + 0.05
        else:
            lam = 6 * np.exp(-r / 3) + 0.05
        out.append(rng.poisson(lam))
    return np.asarray(out, dtype=np.float32)


def write_dataset(folder: Path, n_structures=4, per_class=6, seed=0, size=SIZE, hits=(0, 1, 2, 3), first=0):
    """Shards ``struct<first>.h5``, ``struct<first + 1>.h5``... of ``size`` x ``size`` frames."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=np.uint16)
    mask[:, size // 2] = MASK_INVALID
    paths = []
    for s in range(first, first + n_structures):
        hit = np.repeat(np.asarray(hits, dtype=np.int8), per_class)
        name = f"struct{s}"
        frames = synthetic_frames(s, hit, rng, size)
        truth = {"hit_class": hit, "n_particles": np.where(hit == 2, 2, (hit == 1).astype(np.int8)).astype(np.int8),
                 "structure_id": np.array([name] * hit.size)}
        path = folder / f"{name}.h5"
        write_shard(path, frames, truth, mask, {"seed": seed}, durable=False)
        paths.append(path)
    return paths


def overrides(data_dir: Path, **extra) -> list[str]:
    base = {
        "model": "tiny", "preprocessing.input_size": 24, "preprocessing.crop": 24,
        "data.dirs": f"[{data_dir}]", "data.generate_if_missing": False, "data.val_fraction": 0.25,
        "epochs": 2, "steps_per_epoch": 3, "sampler.p": 4, "sampler.k": 3,
        "eval.k_shot": 2, "eval.n_query": 3, "eval.n_tasks": 3, "progress": False,
        "tensorboard": False, "checkpoint_every_steps": 2, "threads": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def compose_cfg(data_dir: Path, run_dir: Path, **extra) -> dict:
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="test"):
        cfg = compose(config_name="train", overrides=overrides(data_dir, **extra))
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["run_dir"] = str(run_dir)
    return plain


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_dataset(folder)
    return folder


def test_smoke_train_through_hydra(data_dir, tmp_path):
    cfg = compose_cfg(data_dir, tmp_path / "run", tensorboard=True, epochs=1)
    result = train(cfg)
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt", "metrics.csv", "learning_curve.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())  # TensorBoard events
    assert not list(run.glob("*.tmp"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["epoch"] == "0" and rows[0]["step"] == "3"
    for key in ("loss", "active_fraction", "val_accuracy", "val_f1"):
        assert np.isfinite(float(rows[0][key])), key
    assert result.global_step == 3 and len(result.history) == 1
    # best.pt alone rebuilds the embedder (architecture + preprocessing), weights-only loadable
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert set(ckpt) >= {"model", "state_dict", "preprocessing", "training"}
    assert ckpt["preprocessing"]["input_size"] == 24 and ckpt["model"]["input_size"] == [24, 24]
    # the training frames' speckle size, for SpeckleEmbedder.embed(scale="auto")
    assert ckpt["preprocessing"]["reference_speckle_px"] > 0
    t = ckpt["training"]
    assert t["val_structures"] and not set(t["val_structures"]) & set(t["train_structures"])
    assert "config_yaml" in t and t["seed"] == 0
    last = load_checkpoint(run / "last.pt")
    assert {"optimizer", "scheduler", "scaler", "rng", "sampler"} <= set(last)
    model, prep, _ = load_embedder(run / "best.pt")
    frames = np.random.default_rng(0).poisson(1.0, size=(3, SIZE, SIZE))
    emb = model(preprocess(frames, prep))
    assert emb.shape == (3, 32) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def _weights(path) -> dict:
    return load_checkpoint(path)["state_dict"]


class Interrupt(RuntimeError):
    pass


def interrupt_at(step: int):
    def callback(event, info):
        if event == "step_end" and info["global_step"] == step:
            raise Interrupt(f"simulated kill at step {step}")
    return callback


def test_kill_and_resume_gives_identical_weights(data_dir, tmp_path):
    ref = train(compose_cfg(data_dir, tmp_path / "ref"))
    assert ref.global_step == 6
    run = tmp_path / "interrupted"
    cfg = compose_cfg(data_dir, run)
    # killed at step 1 (before any checkpoint), then at step 5 (mid-epoch, last.pt from step 4)
    with pytest.raises(Interrupt):
        train(cfg, callbacks=[interrupt_at(1)])
    assert not (run / "last.pt").exists()
    with pytest.raises(Interrupt):
        train(cfg, callbacks=[interrupt_at(5)])
    assert load_checkpoint(run / "last.pt")["training"]["step"] == 4
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 1
    (run / "last.pt.999-deadbeef.tmp").write_bytes(b"partial write of a killed run")
    res = train(cfg)
    assert not list(run.glob("*.tmp"))
    assert res.resumed_from == run / "last.pt" and res.global_step == 6
    a, b = _weights(tmp_path / "ref" / "last.pt"), _weights(run / "last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    assert [r["loss"] for r in res.history] == pytest.approx([r["loss"] for r in ref.history], abs=1e-6)
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 2
    opt_a = load_checkpoint(tmp_path / "ref" / "last.pt")["optimizer"]["state"]
    opt_b = load_checkpoint(run / "last.pt")["optimizer"]["state"]
    for k in opt_a:
        torch.testing.assert_close(opt_b[k]["exp_avg"], opt_a[k]["exp_avg"], atol=1e-6, rtol=0)
    # a finished run restarted: nothing to do, same result
    again = train(cfg)
    assert again.global_step == 6 and len(again.history) == 2


def test_resume_refuses_another_config(data_dir, tmp_path):
    cfg = compose_cfg(data_dir, tmp_path / "run", epochs=1)
    train(cfg)
    other = compose_cfg(data_dir, tmp_path / "run", epochs=1, **{"loss.margin": 0.9})
    with pytest.raises(ValueError, match=r"loss.margin: 0.1 -> 0.9.*another run folder \(name=\.\.\.\)"):
        train(other)
    other["resume"] = "never"
    assert train(other).resumed_from is None


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"

    def poison(event, info):
        if event == "step_end" and info["global_step"] == 2:  # after last.pt of step 2 was written
            with torch.no_grad():
                info["trainer"].model.head[-1].weight.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match=r"non-finite loss .*epoch 0, step 2.*last good checkpoint"):
        train(compose_cfg(data_dir, run), callbacks=[poison])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["training"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("miner", ["batch_hard", "batch_all"])
def test_other_miners_and_online_mode(data_dir, tmp_path, miner):
    cfg = compose_cfg(data_dir, tmp_path / "run", epochs=1, **{"loss.miner": miner})
    assert train(cfg).global_step == 3
    # online experiment: 3 classes, one dummy structure, 3-way episodes
    online = compose_cfg(data_dir, tmp_path / "online", **{
        "experiment": "online", "epochs": 1, "steps_per_epoch": 2, "sampler.p": 3, "sampler.k": 4,
        "data.n_train_per_class": 12, "data.n_val_per_class": 8, "eval.n_query": 3,
        "data.dirs": f"[{data_dir}]", "data.generate_if_missing": False, "loss.miner": miner,
        "init_checkpoint": str(tmp_path / "run" / "best.pt")})
    res = train(online)
    assert np.isfinite(res.history[0]["val_accuracy"])
    ckpt = load_checkpoint(tmp_path / "online" / "best.pt")
    assert ckpt["training"]["config"]["data"]["mode"] == "class"


def test_bad_inputs_name_file_and_frame(tmp_path):
    cfg = TrainConfig.from_dict({"data": {"dirs": [str(tmp_path / "d")]}, "eval": {"k_shot": 2}})
    build = lambda: build_train_data(cfg.data, cfg.eval, seed=0, base_dir=tmp_path)  # noqa: E731
    paths = write_dataset(tmp_path / "d", n_structures=3, per_class=4)
    # a class with fewer than 2 training examples
    cfg_small = TrainConfig.from_dict({"data": {"dirs": [str(tmp_path / "small")], "val_fraction": 0.0}})
    write_dataset(tmp_path / "small", n_structures=1, per_class=1, hits=(1, 2))
    with pytest.raises(ValueError, match=r"fewer than 2 training frames"):
        build_train_data(cfg_small.data, cfg_small.eval, seed=0, base_dir=tmp_path)
    # NaN frame: found when read, the message names file and frame
    with h5py.File(paths[0], "r+") as f:
        f["/entry_1/data_1/data"][5, 3, 3] = np.nan
    data = build_train_data(cfg.data, cfg.eval, seed=0, base_dir=tmp_path)
    reader = data.reader()
    with pytest.raises(DatasetError, match=r"frame 5 of .*struct0.h5.*NaN"):
        reader(np.arange(12))
    reader.close()
    data.index.close()
    # labels that do not match the frames
    with h5py.File(paths[1], "r+") as f:
        del f["/entry_1/truth/hit_class"]
        f["/entry_1/truth/hit_class"] = np.ones(3, dtype=np.int8)
    with pytest.raises(DatasetError, match=r"struct1.h5.*hit_class has length 3 but the file has 16 frames"):
        build()
    paths[1].unlink()
    # frames of mixed sizes
    write_dataset(tmp_path / "other", n_structures=1, size=20)
    os.replace(tmp_path / "other" / "struct0.h5", tmp_path / "d" / "zz.h5")
    with pytest.raises(DatasetError, match="mixed sizes"):
        build()
    (tmp_path / "d" / "zz.h5").unlink()
    # truncated and empty files
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CorruptShardError, match="struct2.h5"):
        build()
    paths[2].write_bytes(b"")
    with pytest.raises(CorruptShardError, match=r"struct2.h5 is empty"):
        build()


def test_cli_entry_point(data_dir, tmp_path):
    run = tmp_path / "cli_run"
    args = overrides(data_dir, epochs=1, steps_per_epoch=2) + [f"hydra.run.dir={run}"]
    proc = subprocess.run([sys.executable, "-m", "speckle_embed.train", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()
    assert (run / ".hydra" / "config.yaml").is_file()


def test_generate_if_missing_simulates_a_dataset(tmp_path):
    pytest.importorskip("finufft")
    pytest.importorskip("gemmi")
    data = tmp_path / "sim"
    n_pix = 40
    cfg = compose_cfg(data, tmp_path / "run", epochs=1, steps_per_epoch=2, **{
        "data.generate_if_missing": True,
        "data.generate.source": "{kind: procedural, n_structures: 3, seed: 0, n_atoms_min: 1500, n_atoms_max: 2000}",
        "data.generate.geometry.n_pixels": n_pix, "data.generate.geometry.detector_side_m": 0.1 * n_pix / 172,
        "data.generate.geometry.beamstop_px": "[2,2]", "data.generate.geometry.gap_px": 1,
        "data.generate.n_frames": 12, "data.generate.chunk": 12, "data.generate.threads": 1})
    result = train(cfg)
    assert len(list(data.glob("*.h5"))) == 3
    assert result.global_step == 2 and (tmp_path / "run" / "best.pt").is_file()


def test_merge_classes_relabels_training_and_validation_frames(tmp_path):
    """data.merge_classes={3: 2}: non-sample frames carry the multi label (one "not single" class)."""
    write_dataset(tmp_path / "d", n_structures=4, per_class=4, hits=(1, 2, 3))
    plain = TrainConfig.from_dict({"data": {"dirs": [str(tmp_path / "d")], "val_fraction": 0.25},
                                   "eval": {"k_shot": 2, "classes": [1, 2]}})
    merged = TrainConfig.from_dict({"data": {"dirs": [str(tmp_path / "d")], "val_fraction": 0.25,
                                             "merge_classes": {3: 2}}, "eval": {"k_shot": 2, "classes": [1, 2]}})
    a = build_train_data(plain.data, plain.eval, seed=0, base_dir=tmp_path)
    b = build_train_data(merged.data, merged.eval, seed=0, base_dir=tmp_path)
    np.testing.assert_array_equal(a.train_idx, b.train_idx)        # the same frames ...
    assert set(a.train_hit.tolist()) == {1, 2, 3} and set(b.train_hit.tolist()) == {1, 2}
    np.testing.assert_array_equal(b.train_hit, np.where(a.train_hit == 3, 2, a.train_hit))  # ... relabelled
    # validation (eval.classes [1, 2]): non-sample frames join the "multi" (not single) side
    assert set(a.val_hit.tolist()) == {1, 2} and set(b.val_hit.tolist()) == {1, 2}
    assert b.val_idx.size > a.val_idx.size
    with pytest.raises(ValueError, match="merge_classes"):
        TrainConfig.from_dict({"data": {"dirs": ["x"], "merge_classes": {"non": "sense"}}})


def test_init_crop_trains_a_checkpoint_at_another_input_scale(data_dir, tmp_path):
    """init_crop replaces the crop of the init checkpoint's preprocessing (input size and weights kept)."""
    train(compose_cfg(data_dir, tmp_path / "base", epochs=1))
    base = load_checkpoint(tmp_path / "base" / "best.pt")
    assert base["preprocessing"]["crop"] == 24
    res = train(compose_cfg(data_dir, tmp_path / "scaled", epochs=1, init_crop=17,
                            init_checkpoint=str(tmp_path / "base" / "best.pt")))
    scaled = load_checkpoint(res.best_checkpoint)
    assert scaled["preprocessing"]["crop"] == 17 and scaled["preprocessing"]["input_size"] == 24
    assert load_embedder(res.best_checkpoint)[1].scale == pytest.approx(17 / 24)
    with pytest.raises(ValueError, match="init_crop replaces the crop of init_checkpoint"):
        TrainConfig.from_dict({"init_crop": 17})
