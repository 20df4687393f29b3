"""The whole story in one command (``make demo`` / ``speckle-embed demo``).

1. **Simulate** a structure the embedding never saw (a procedural particle drawn with a seed
   outside the training library, or a PDB/mmCIF file of yours) on the SpeckleNN detector:
   single and multi hits at the paper's fluence with photon noise.
2. **Embedding**: the weights shipped in the package (``se.load_pretrained()``, trained by
   ``conf/train/experiment/pretrain.yaml``), or a short pretraining on freshly simulated
   procedural particles (``pretrain.mode=short``; minutes, and much less accurate).
3. **Register** 5 labelled frames per class (``FewShotClassifier.fit``), save the classifier.
4. **Classify** every other frame; print accuracy and F1 (single hit positive) and save a figure:
   the supports, queries with their predicted labels, and the embedding map. The classical
   baselines (:mod:`speckle_embed.baselines`: radial profile, photon count; no learning) are
   fitted on the same supports and scored on the same queries, printed and shown beside it.

Everything lands in the run folder: ``data/`` (CXI shards), ``classifier/``, ``predictions.csv``,
``results.json``, ``demo.png``. A rerun in the same folder reuses complete shards (an interrupted
run restarts where it stopped); nothing half-written is left by a crash or a full disk.
"""
from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from speckle_embed.baselines import BASELINES

__all__ = ["run_demo", "DemoError"]

CLASS_NAMES = {1: "single", 2: "multi", 3: "non_sample"}


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what to do."""


def _say(msg: str) -> None:
    print(msg, flush=True)


def _check_writable(directory: Path) -> None:
    """Fail early, with a useful message, when the run folder cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        hint = ("the disk is full; free some space or choose another folder with hydra.run.dir=..."
                if exc.errno == errno.ENOSPC else
                "choose a writable folder with hydra.run.dir=... (e.g. under your home directory)")
        raise DemoError(f"cannot write to the run folder {directory}: {exc.strerror or exc}; {hint}") from exc


def _simulate(specs, out: Path, cfg: Mapping, *, n_frames: int, mix: Mapping, seed: int, what: str):
    from simulate.generate import generate_dataset
    from simulate.geometry import default_geometry

    # the run folder's data are the demo's own cache: a shard simulated with other settings (another
    # code version after an update, other demo options) is simulated again, an identical one reused
    report = generate_dataset(specs, default_geometry(), out_dir=out, n_frames=n_frames, chunk=min(64, n_frames),
                              mix=dict(mix), seed=seed, progress=bool(cfg.get("progress", True)),
                              threads=cfg.get("threads"), overwrite=True)
    for o in report.skipped:
        _say(f"      {o.name}: complete shard found in {out}, reused")
    for o in report.failed:
        _say(f"  ! {what}: structure {o.name} failed ({o.error}); continuing without it")
    return report


def _new_structure_specs(cfg: Mapping):
    """The unseen structure: a PDB/mmCIF file, or a procedural particle from an unused seed."""
    from simulate.sources import resolve_sources

    new = cfg["new_structure"]
    if new.get("pdb"):
        path = Path(os.path.expanduser(str(new["pdb"])))
        if not path.is_file():
            raise DemoError(f"new_structure.pdb: no such file {path}")
        return resolve_sources({"kind": "pdb", "files": [str(path)], "name": "new"}, base_dir=Path.cwd())
    return resolve_sources({"kind": "procedural", "n_structures": 1, "seed": int(new["seed"]),
                            "n_atoms_min": int(new["n_atoms_min"]), "n_atoms_max": int(new["n_atoms_max"]),
                            "kinds": [new["kind"]]})


def _embedder(cfg: Mapping, run_dir: Path, seed: int):
    import speckle_embed as se

    mode = cfg["pretrain"]["mode"]
    if mode == "shipped":
        emb = se.load_pretrained(device="cpu")
        _say(f"[2/4] embedding: shipped weights {emb.checkpoint_path.name} (hash {emb.checkpoint_hash})")
        return emb
    if mode != "short":
        raise DemoError(f"pretrain.mode must be 'shipped' or 'short', got {mode!r}")
    from simulate.sources import resolve_sources
    from speckle_embed.train import train

    p = cfg["pretrain"]
    _say(f"[2/4] short pretraining on {p['n_structures']} procedural particles "
         f"({p['epochs']} epochs x {p['steps_per_epoch']} steps)")
    specs = resolve_sources({"kind": "procedural", "n_structures": int(p["n_structures"]), "seed": int(p["seed"]),
                             "n_atoms_min": 8000, "n_atoms_max": int(cfg["new_structure"]["n_atoms_max"])})
    _simulate(specs, run_dir / "data" / "pretrain", cfg, n_frames=int(p["n_frames"]),
              mix={"single": 0.5, "multi": 0.5}, seed=seed, what="pretraining data")
    result = train({"name": "pretrain", "seed": seed, "run_dir": str(run_dir / "pretrain"), "epochs": int(p["epochs"]),
                    "steps_per_epoch": int(p["steps_per_epoch"]), "device": "cpu", "threads": cfg.get("threads"),
                    "progress": bool(cfg.get("progress", True)), "tensorboard": False,
                    "sampler": {"p": 8, "k": 8},
                    "data": {"dirs": [str(run_dir / "data" / "pretrain")], "mode": "structure",
                             "val_fraction": 0.25, "generate_if_missing": False},
                    "eval": {"n_way": 2, "k_shot": 5, "n_query": 10, "n_tasks": 10}})
    emb = se.SpeckleEmbedder.from_checkpoint(result.best_checkpoint, device="cpu")
    _say(f"      validation 2-way 5-shot accuracy {result.best_metric:.3f} -> {result.best_checkpoint}")
    return emb


def _pick_supports(hit: np.ndarray, classes, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x5])
    picks = []
    for c in classes:
        members = np.flatnonzero(hit == c)
        if members.size < k + 1:
            raise DemoError(f"the new structure has only {members.size} frames of class {CLASS_NAMES[c]}; "
                            f"raise new_structure.n_frames (need more than k_shot = {k})")
        picks.append(rng.choice(members, k, replace=False))
    return np.concatenate(picks)


def _metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    from speckle_embed.evaluation.selection import selection_metrics

    single = selection_metrics(pred == "single", true == "single")
    return {"accuracy": float(np.mean(pred == true)), "f1_single": single["f1"],
            "precision_single": single["precision"], "recall_single": single["recall"],
            "n_queries": int(true.size)}


def _figure(path: Path, frames, mask, support_idx, query_idx, labels, pred, z_sup, z_qry, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speckle_embed.atomic import save_figure_atomically

    h, w = frames.shape[1:]
    c = min(h, w, 96) // 2  # the central window the model sees
    win = (slice(h // 2 - c, h // 2 + c), slice(w // 2 - c, w // 2 + c))

    def show(ax, i, text, colour="k"):
        img = np.log10(np.clip(frames[i], 0, None) + 1.0)
        img = np.where(mask != 0, np.nan, img) if mask is not None else img
        ax.imshow(img[win], cmap="magma")
        ax.set_title(text, fontsize=7, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])

    n_show = min(len(support_idx), 10)
    fig = plt.figure(figsize=(15, 4.6))
    gs = fig.add_gridspec(2, 12, width_ratios=[1] * 10 + [0.3, 4.5])
    for j, i in enumerate(support_idx[:n_show]):
        show(fig.add_subplot(gs[0, j]), i, f"support: {labels[i]}")
    rng = np.random.default_rng(0)
    shown = rng.choice(len(query_idx), min(10, len(query_idx)), replace=False)
    wrong = np.flatnonzero(pred != labels[query_idx])
    shown = np.unique(np.r_[wrong[:3], shown])[:10]  # show a mistake or three if any
    for j, q in enumerate(shown):
        ok = pred[q] == labels[query_idx[q]]
        show(fig.add_subplot(gs[1, j]), query_idx[q], f"pred {pred[q]}\n(true {labels[query_idx[q]]})",
             "green" if ok else "red")
    ax = fig.add_subplot(gs[:, 11])
    z = np.concatenate([z_sup, z_qry])
    centred = z - z.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    xs, xq = xy[:len(z_sup)], xy[len(z_sup):]
    true_q = labels[query_idx]
    colours = {"single": "tab:blue", "multi": "tab:orange", "non_sample": "tab:green"}
    for name, colour in colours.items():
        m = true_q == name
        if m.any():
            ax.scatter(*xq[m].T, s=10, alpha=0.5, color=colour, label=f"query: {name}")
        ms = labels[support_idx] == name
        if ms.any():
            ax.scatter(*xs[ms].T, s=180, marker="*", color=colour, edgecolor="k", label=f"support: {name}")
    bad = pred != true_q
    if bad.any():
        ax.scatter(*xq[bad].T, s=40, facecolor="none", edgecolor="red", label="misclassified")
    ax.set_title("embedding map (first two principal components)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return save_figure_atomically(fig, path, dpi=100, bbox_inches="tight")


def run_demo(cfg: Mapping[str, Any]) -> dict:
    """Run the four steps; returns the results dict (also written to ``results.json``).

    ``cfg`` is the plain dict of ``conf/demo/demo.yaml`` plus ``run_dir``.

    Raises
    ------
    DemoError
        A step failed (unwritable folder, full disk, structure that cannot be simulated...).
    """
    import speckle_embed as se
    from speckle_embed.atomic import write_bytes_atomically
    from speckle_embed.data import read_frames, read_mask

    t0 = time.perf_counter()
    run_dir = Path(os.fspath(cfg["run_dir"]))
    _check_writable(run_dir)
    seed = int(cfg.get("seed", 0))
    if cfg.get("threads"):
        import torch
        torch.set_num_threads(int(cfg["threads"]))
    try:
        # 1. the unseen structure
        new = cfg["new_structure"]
        specs = _new_structure_specs(cfg)
        _say(f"[1/4] simulating {new['n_frames']} shots of {specs[0].name} ({specs[0].source}), "
             "a structure the shipped embedding never saw")
        data_dir = run_dir / "data" / "new"
        report = _simulate(specs, data_dir, cfg, n_frames=int(new["n_frames"]), mix=new["mix"], seed=seed + 1,
                           what="new structure")
        if not report.shard_paths:
            raise DemoError(f"the new structure could not be simulated: "
                            f"{'; '.join(f'{o.name}: {o.error}' for o in report.failed)}")
        shard = report.shard_paths[0]
        import h5py
        with h5py.File(shard, "r") as f:
            hit = np.asarray(f["/entry_1/truth/hit_class"][()], dtype=np.int64)
        frames, mask = read_frames(shard), read_mask(shard)
        labels = np.array([CLASS_NAMES.get(int(h), str(h)) for h in hit])

        # 2. the embedding
        emb = _embedder(cfg, run_dir, seed)

        # 3. register K supports per class
        k = int(cfg["k_shot"])
        classes = sorted({int(h) for h in hit})
        support_idx = _pick_supports(hit, classes, k, seed)
        query_idx = np.setdiff1d(np.arange(hit.size), support_idx)
        clf = se.FewShotClassifier(emb, rule=cfg.get("rule", "logistic"))
        clf.fit(frames[support_idx], labels[support_idx], mask=mask)
        clf_dir = clf.save(run_dir / "classifier")
        _say(f"[3/4] registered {k} supports per class ({', '.join(clf.classes_.tolist())}); "
             f"classifier saved to {clf_dir}")

        # 4. classify the queries
        t_cls = time.perf_counter()
        result = clf.classify(frames[query_idx], mask=mask)
        seconds = time.perf_counter() - t_cls
        pred = np.asarray(result.labels).astype(str)
        metrics = _metrics(pred, labels[query_idx])
        _say(f"[4/4] classified {len(query_idx)} queries in {seconds:.1f} s: accuracy {metrics['accuracy']:.3f}, "
             f"F1 (single positive) {metrics['f1_single']:.3f}")
        base = {}
        for name, cls in BASELINES.items():
            bpred = cls().fit(frames[support_idx], labels[support_idx], mask=mask).predict(frames[query_idx], mask=mask)
            base[name] = _metrics(np.asarray(bpred).astype(str), labels[query_idx])
            _say(f"      baseline {name}: accuracy {base[name]['accuracy']:.3f}, "
                 f"F1 (single positive) {base[name]['f1_single']:.3f}")
        lines = ["frame,true,predicted"] + [f"{i},{labels[i]},{p}" for i, p in zip(query_idx, pred)]
        write_bytes_atomically(("\n".join(lines) + "\n").encode(), run_dir / "predictions.csv")
        z_sup = clf.transform(frames[support_idx], mask=mask)
        z_qry = clf.transform(frames[query_idx], mask=mask)
        fig = _figure(run_dir / "demo.png", frames, mask, support_idx, query_idx, labels, pred, z_sup, z_qry,
                      f"{specs[0].name}: {k}-shot, accuracy {metrics['accuracy']:.3f}, "
                      f"F1 {metrics['f1_single']:.3f} ({emb.checkpoint_hash}); same supports and queries, "
                      + ", ".join(f"{n}: accuracy {v['accuracy']:.3f}" for n, v in base.items()))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DemoError(f"the disk is full while writing in {run_dir}: free space and rerun the same "
                            "command (complete shards are reused; nothing half-written was kept)") from exc
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise DemoError(f"permission denied while writing in {run_dir}: {exc}") from exc
        raise
    out = {"structure": specs[0].name, "source": specs[0].source, "k_shot": k,
           "embedding": emb.checkpoint_hash, "pretrain_mode": cfg["pretrain"]["mode"], "seed": seed,
           **metrics, "baselines": base, "classify_seconds": seconds, "total_seconds": time.perf_counter() - t0,
           "figure": str(fig), "classifier": str(clf_dir), "data": str(shard)}
    write_bytes_atomically(json.dumps(out, indent=2).encode(), run_dir / "results.json")
    _say(f"figure: {fig}\nresults: {run_dir / 'results.json'} (total {out['total_seconds']:.0f} s)")
    return out
