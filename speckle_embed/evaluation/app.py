"""``speckle-embed evaluate``: every experiment of the evaluation suite, one report.

:func:`run` takes the plain config of ``conf/evaluate/evaluate.yaml`` (Hydra composes it in
:mod:`speckle_embed.evaluation.__main__`) and writes into ``out_dir``:

* ``report.md`` (or ``.html``) with tables and PNG figures, stamped with the configuration,
  seed, code version and checkpoint hash;
* ``report.json`` with every number.

Sections (each switched on by its config block):

1. ``offline``: 2-way K-shot (K = 1, 5, 20) per held-out structure, 1,000 balanced queries,
   accuracy and F1 averaged over structures; confusion matrices; accuracy against particle
   size; t-SNE with supports; fluence scan 1e-2 .. 1e2 (noise-free sets).
2. ``online``: 3-way 5-shot with 100% and 25% of the detector, SpeckleNN against the ResNet
   and Shi19 heads trained on the same few labels; Assalauova et al.'s selection metrics
   (precision, recall, F1, predicted single hits, IoU, PSD contrast).
3. ``domains``: leave-one-domain-out, 2-way single vs not-single K-shot per held-out realistic
   domain for one or more embeddings beside the baselines, gap to an in-domain reference
   (:mod:`speckle_embed.evaluation.domains`, docs/domains.md).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from speckle_embed.checkpoint import resolve_checkpoint_spec
from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.evaluation import figures
from speckle_embed.evaluation.domains import (
    ROLES,
    add_domain_section,
    domain_problem,
    domain_protocol,
    folder_problem,
    load_domain,
    parse_domains,
    resolve_path,
)
from speckle_embed.evaluation.labelled import load_labelled_sets
from speckle_embed.evaluation.offline import (
    fluence_scan,
    kshot_protocol,
    size_table,
    tsne_embeddings,
)
from speckle_embed.evaluation.online import online_protocol
from speckle_embed.evaluation.report import Report
from speckle_embed.provenance import code_version

__all__ = ["run", "code_version", "load_embedder"]

_CLASS_NAMES = {1: "single", 2: "multi", 3: "non-sample"}


def load_embedder(checkpoint: str, device: str = "cpu", base_dir: str | None = None, *,
                  trust_checkpoint: bool = False):
    """The embedder a checkpoint spec names (:func:`speckle_embed.checkpoint.parse_checkpoint_spec`):
    ``pretrained`` / ``default`` / ``pretrained:<name>`` (shipped weights) or a path (relative to
    ``base_dir``). Read with ``weights_only=True`` unless ``trust_checkpoint`` (explicit opt-in)."""
    return SpeckleEmbedder.from_checkpoint(resolve_checkpoint_spec(checkpoint, base_dir), device=device,
                                           trust_checkpoint=trust_checkpoint)


def _flag(value, key: str) -> bool:
    """A yes/no config value; anything else is refused (``trust_checkpoint="no"`` must not mean yes)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be true or false; got {value!r}")


def _abs(paths, base_dir: str | None):
    out = []
    for p in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths)):
        p = Path(os.path.expanduser(os.fspath(p)))
        out.append(p if p.is_absolute() or not base_dir else Path(base_dir) / p)
    return out


def _embed_kwargs(cfg: Mapping) -> dict:
    kw = {}
    for key in ("scale", "center", "batch_size"):
        if cfg.get(key) is not None:
            kw[key] = cfg[key]
    return kw


def _offline(cfg: Mapping, emb, report: Report, numbers: dict, out: Path, seed: int, progress: bool,
             base_dir: str | None) -> None:
    sets = load_labelled_sets(_abs(cfg["data"], base_dir), cfg.get("structures"),
                              max_frames=cfg.get("max_frames"))
    embed_kw = _embed_kwargs(cfg.get("embed") or {})
    sigma = float(cfg.get("gaussian_sigma", 0.15))
    t0 = time.perf_counter()
    kshot = kshot_protocol(emb, sets, k_shots=cfg["k_shots"], n_query=cfg["n_query"], n_tasks=cfg["n_tasks"],
                           rule=cfg["rule"], seed=seed, gaussian_sigma=sigma, progress=progress,
                           baselines=bool(cfg.get("baselines", True)), **embed_kw)
    z, hit, struct = kshot.pop("_embeddings")
    clean = all(s.clean for s in sets)
    report.heading("Offline protocol: 2-way K-shot on held-out structures")
    report.text(
        f"{len(sets)} structures ({', '.join(s.name for s in sets)}); per structure {cfg['n_tasks']} episodes "
        f"per K with up to {cfg['n_query']} queries per class (single vs multi hit, label-balanced), "
        f"rule {cfg['rule']}; supports and queries from the same structure; frames "
        + ("simulated noise-free, photon noise drawn at the baseline fluence (Poisson + "
           f"{sigma} photon Gaussian)" if clean else "as stored (noisy)")
        + ". Scores are means over structures (the paper's figure of merit); pooled = over all queries.")
    rows = []
    base_names = list(next(iter(kshot["by_k"].values())).get("baselines", {}))
    for k, v in kshot["by_k"].items():
        paper = figures.PAPER["specklenn_offline_accuracy"].get(int(k))
        rows.append([k, v["accuracy_mean"], v["accuracy_std"], v["f1_mean"], v["accuracy_pooled"]]
                    + [v["baselines"][b]["accuracy_mean"] for b in base_names]
                    + [v["n_queries"] // max(1, v["n_tasks"]), "n/a" if paper is None else f"{paper:.3f}"])
    report.table(["K", "accuracy (mean)", "std over structures", "F1 (mean)", "accuracy (pooled)"]
                 + [f"{b}: accuracy (mean)" for b in base_names]
                 + ["queries per episode", "SpeckleNN paper accuracy"], rows)
    if base_names:
        report.text("Baselines: nearest class mean on classical features (speckle_embed.baselines), "
                    "fitted on the same supports and scored on the same queries and noisy frames as "
                    "the embedding. The embedding earns its keep only where it beats them.")
    report.figure(figures.plot_kshot(kshot, out / "offline_kshot.png"), "2-way K-shot accuracy and F1")
    k_ref = 5 if "5" in kshot["by_k"] else int(next(iter(kshot["by_k"])))
    sizes = size_table(sets, kshot, k=k_ref)
    report.heading(f"Per structure ({k_ref}-shot) and particle size", 3)
    report.table(["structure", "atoms", "radius (A)", "accuracy", "F1"],
                 [[r["name"], r["n_atoms"] if r["n_atoms"] is not None else "n/a",
                   f"{r['radius_angstrom']:.0f}" if r["radius_angstrom"] else "n/a", r["accuracy"], r["f1"]]
                  for r in sizes])
    if any(r["n_atoms"] for r in sizes):
        report.figure(figures.plot_size(sizes, out / "offline_size.png", k=k_ref),
                      f"{k_ref}-shot accuracy against particle size")
    report.figure(figures.plot_confusions({f"{k}-shot": v for k, v in kshot["by_k"].items()},
                                          out / "offline_confusion.png"),
                  "Confusion matrices pooled over all episodes (rows: true class)")
    tsne_cfg = cfg.get("tsne") or {}
    if tsne_cfg.get("enabled", True) and tsne_cfg.get("n_structures", 0) > 0:
        chosen = list(range(min(int(tsne_cfg["n_structures"]), len(sets))))
        maps = tsne_embeddings(z, hit, struct, structures=chosen, k_shot=int(tsne_cfg.get("k_shot", 5)),
                               n_points=int(tsne_cfg.get("n_points", 300)),
                               perplexity=float(tsne_cfg.get("perplexity", 30)), seed=seed)
        report.figure(figures.plot_tsne(maps, [s.name for s in sets], out / "offline_tsne.png"),
                      "t-SNE of embeddings, one episode's supports as stars")
    numbers["offline"] = {**kshot, "size": sizes}
    scan_cfg = cfg.get("fluence_scan") or {}
    if scan_cfg.get("enabled", True):
        report.heading("Fluence scan", 3)
        if not clean:
            report.text("Skipped: the sets hold noisy frames; simulate noise-free sets "
                        "(dataset=eval_clean) for a fluence scan.")
        else:
            factors = scan_cfg.get("factors") or [10 ** (e / 2) for e in range(-4, 5)]
            scan = fluence_scan(emb, sets, factors=factors, k_shot=scan_cfg["k_shot"],
                                n_query=scan_cfg["n_query"], n_tasks=scan_cfg["n_tasks"], rule=cfg["rule"],
                                seed=seed, gaussian_sigma=sigma, progress=progress, **embed_kw)
            numbers["offline"]["fluence_scan"] = scan
            report.table(["fluence / baseline", "accuracy (mean)", "F1 (mean)"],
                         [[f"{lv['factor']:.3g}", lv["accuracy_mean"], lv["f1_mean"]] for lv in scan["levels"]])
            report.figure(figures.plot_fluence_scan(scan, out / "offline_fluence.png"),
                          f"2-way {scan['k_shot']}-shot against fluence ({scan['n_query']} queries per class)")
    numbers["offline"]["seconds"] = time.perf_counter() - t0


def _online(cfg: Mapping, emb, report: Report, numbers: dict, out: Path, seed: int, progress: bool,
            base_dir: str | None) -> None:
    from speckle_embed.evaluation.selection import plot_psd, selection_report

    sets = load_labelled_sets(_abs(cfg["data"], base_dir), cfg.get("structures"),
                              labels_path=cfg.get("labels_path") or "/entry_1/truth/hit_class")
    t0 = time.perf_counter()
    for s in sets:
        res = online_protocol(
            emb, s, heads=cfg.get("heads") or {}, detector_fractions=cfg["detector_fractions"],
            k_shot=cfg["k_shot"], n_query=cfg["n_query"], n_tasks=cfg["n_tasks"], n_train=cfg["n_train"],
            n_val=cfg["n_val"], classes=cfg["classes"], rule=cfg["rule"], seed=seed,
            head_overrides=cfg.get("head_overrides") or {}, single_model=bool(cfg.get("single_model", True)),
            embed_kwargs=_embed_kwargs(cfg.get("embed") or {}), progress=progress,
            finetune=cfg.get("finetune"), run_dir=out / f"online_{s.name}",
            baselines=bool(cfg.get("baselines", True)))
        report.heading(f"Online protocol: {s.name}", 2)
        names = ", ".join(_CLASS_NAMES.get(c, str(c)) for c in res["classes"])
        report.text(
            f"{len(res['classes'])}-way {res['k_shot']}-shot ({names}); labelled pool {cfg['n_train']} + "
            f"{cfg['n_val']} frames per class (supervised heads train on the first, pick their epoch "
            f"on the second; SpeckleNN's supports come from the first); {res['n_tasks']} episodes of "
            f"{res['n_query']} queries per class from the other {res['split']['query']} frames; every "
            "method is scored on the same queries. 25% of the detector = one fixed quadrant.")
        paper = figures.PAPER["specklenn_online_accuracy"]
        report.table(["detector", "method", "accuracy", "F1 (single)", "precision", "recall", "queries",
                      "SpeckleNN paper accuracy"],
                     [[r["detector"], r["method"], r["accuracy"], r["f1"], r.get("precision", "n/a"),
                       r.get("recall", "n/a"), r["n_queries"],
                       f"{paper[r['detector']]:.2f}" if r["method"].startswith("SpeckleNN") and r["detector"] in paper
                       else ""] for r in res["rows"]])
        report.figure(figures.plot_online(res["rows"], out / f"online_{s.name}_accuracy.png"),
                      "Online accuracy by method and detector fraction")
        report.figure(figures.plot_confusions({f"{r['method']} / {r['detector']}": r for r in res["rows"]},
                                              out / f"online_{s.name}_confusion.png"),
                      "Online confusion matrices (rows: true class)")
        sel_numbers = {}
        query_frames = s.frames[res["query_index"]]
        for tag, sel in res["selections"].items():
            truth = sel.pop("truth")
            mask = res["masks"][tag]
            rep = selection_report(sel, truth, frames=query_frames, mask=mask)
            profiles = {**rep.pop("profiles"), "true singles": rep.pop("profile_truth")}
            sel_numbers[tag] = rep
            report.heading(f"Single-hit selection, {tag} of the detector (Assalauova et al. metrics)", 3)
            psd = rep["psd"]
            report.table(["method", "precision", "recall", "F1", "predicted singles", "true singles",
                          "PSD contrast (mean of 3 min/max pairs)"],
                         [[m, v["precision"], v["recall"], v["f1"], v["n_predicted"], v["n_true"],
                           psd[m]["mean_contrast"]] for m, v in rep["metrics"].items()]
                         + [["true singles", 1.0, 1.0, 1.0, rep["n_true"], rep["n_true"],
                             rep["psd_truth"]["mean_contrast"]]])
            methods = rep["names"]
            report.table(["IoU of selections"] + methods,
                         [[a] + list(row) for a, row in zip(methods, rep["iou"])])
            report.figure(plot_psd(profiles, out / f"online_{s.name}_psd_{tag.rstrip('%')}.png"),
                          f"Angular average (PSD) of the mean selected pattern, {tag} of the detector")
        numbers.setdefault("online", {})[s.name] = {k: v for k, v in res.items()
                                                   if k not in ("selections", "masks", "query_index")}
        numbers["online"][s.name]["selection"] = sel_numbers
    numbers.setdefault("online", {})["seconds"] = time.perf_counter() - t0


def _generate_domain(domain, base_dir: str | None) -> None:
    """Make the missing folders of a domain with the simulate app (its ``simulate`` overrides), in a subprocess."""
    for d in domain.dirs:
        if folder_problem(resolve_path(d, base_dir)) is None:
            continue
        if not domain.simulate:
            raise ValueError(domain_problem(domain, base_dir))
        cmd = [sys.executable, "-m", "simulate", *domain.simulate, f"out_dir={d}"]
        print(f"[domains] generating {domain.name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=base_dir or None, check=True)  # CalledProcessError names the command


def _embedding_label(spec: str) -> str:
    """Short column label of a checkpoint spec: the shipped name, or ``<folder>/<file>`` of a path."""
    if spec.startswith("pretrained:"):
        return spec.split(":", 1)[1]
    p = Path(spec)
    return spec if spec in ("pretrained", "default") or not p.suffix else f"{p.parent.name}/{p.name}".lstrip("/")


def _domains(cfg: Mapping, emb, report: Report, numbers: dict, out: Path, seed: int, progress: bool,
             base_dir: str | None, device: str, trust: bool) -> None:
    doms = parse_domains(cfg.get("sets") or [], "domains.sets")
    missing = str(cfg.get("missing", "error"))
    if missing not in ("error", "skip", "generate"):
        raise ValueError(f"domains.missing must be error, skip or generate; got {missing!r}")
    roles = list(cfg.get("roles") or ROLES)
    if not set(roles) <= set(ROLES):
        raise ValueError(f"domains.roles must be a list from {list(ROLES)}; got {roles!r}")
    position = {d.name: i for i, d in enumerate(doms)}  # seeds each domain's episodes, whatever is left out
    doms = [d for d in doms if d.role in roles]
    if not doms:
        raise ValueError(f"domains.roles={roles}: no domain of domains.sets has these roles")
    load = {"labels_path": cfg.get("labels_path") or "/entry_1/truth/hit_class", "max_frames": cfg.get("max_frames")}
    sets, skipped, kept = {}, [], []
    for d in doms:
        if missing == "generate":
            _generate_domain(d, base_dir)
        problem = domain_problem(d, base_dir)
        if problem and missing == "skip":
            skipped.append(problem)
            continue
        sets[d.name] = load_domain(d, base_dir, **load)
        kept.append(d)
    if not kept:
        raise ValueError("domains: no domain has data; " + " | ".join(skipped))
    ref, ref_sets = None, None
    if cfg.get("reference"):
        ref = parse_domains([{"role": "test", **cfg["reference"]}], "domains.reference")[0]
        if missing == "generate":
            _generate_domain(ref, base_dir)
        ref_sets = load_domain(ref, base_dir, **load)
    specs = cfg.get("embeddings") or [str(cfg["checkpoint"])]
    specs = dict(specs) if isinstance(specs, Mapping) else {_embedding_label(str(s)): str(s) for s in specs}
    embedders = {m: emb if s == str(cfg["checkpoint"]) else load_embedder(s, device=device, base_dir=base_dir,
                                                                           trust_checkpoint=trust)
                 for m, s in specs.items()}
    t0 = time.perf_counter()
    res = domain_protocol(
        sets, kept, embedders, k_shots=cfg.get("k_shots") or [1, 5], n_query=int(cfg.get("n_query", 50)),
        n_tasks=int(cfg.get("n_tasks", 100)), seed=seed, rule=cfg["rule"], classes=cfg.get("classes") or [1, 2, 3],
        baselines=bool(cfg.get("baselines", True)), adapt=cfg.get("adapt") or (), finetune=cfg.get("finetune"),
        reference=ref, reference_sets=ref_sets, embed_kwargs=_embed_kwargs(cfg.get("embed") or {}), progress=progress,
        support_views=str(cfg.get("support_views", "d4")), query_views=str(cfg.get("query_views", "none")),
        domain_indices=[position[d.name] for d in kept],
        reference_index=len(position))
    info = {m: {"checkpoint": specs[m], "checkpoint_hash": getattr(e, "checkpoint_hash", None)}
            for m, e in embedders.items()}
    add_domain_section(report, res, out, embeddings=info, skipped=skipped)
    numbers["domains"] = {**res, "embeddings": info, "skipped": skipped, "seconds": time.perf_counter() - t0}


def run(cfg: Mapping[str, Any]) -> dict[str, Path]:
    """Run the enabled sections of the suite and write the report; returns the written paths.

    ``cfg`` is the plain dict of ``conf/evaluate/evaluate.yaml`` plus ``out_dir`` (the Hydra run folder)
    and ``base_dir`` (where relative data and checkpoint paths start).
    """
    import torch
    import yaml

    seed = int(cfg.get("seed", 0))
    progress = bool(cfg.get("progress", True))
    base_dir = cfg.get("base_dir")
    out = Path(os.fspath(cfg["out_dir"]))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    np.random.seed(seed)
    torch.manual_seed(seed)
    emb = load_embedder(str(cfg["checkpoint"]), device=cfg.get("device", "cpu"), base_dir=base_dir,
                        trust_checkpoint=_flag(cfg.get("trust_checkpoint", False), "trust_checkpoint"))
    plain = {k: v for k, v in cfg.items() if k not in ("out_dir", "base_dir")}
    stamp = {"checkpoint": str(cfg["checkpoint"]), "checkpoint_hash": emb.checkpoint_hash,
             "seed": seed, "code": code_version(),
             "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads, device {cfg.get('device', 'cpu')}",
             "config_yaml": yaml.safe_dump(plain, sort_keys=False)}
    report = Report(str(cfg.get("title") or "speckle_embed evaluation"), stamp)
    numbers: dict[str, Any] = {"config": plain}
    if (cfg.get("offline") or {}).get("enabled", False):
        _offline({**cfg["offline"], "rule": cfg.get("rule", "logistic"),
                  "baselines": cfg.get("baselines", True)}, emb, report, numbers, out,
                 seed, progress, base_dir)
    if (cfg.get("online") or {}).get("enabled", False):
        _online({**cfg["online"], "rule": cfg.get("rule", "logistic"),
                 "baselines": cfg.get("baselines", True)}, emb, report, numbers, out,
                seed, progress, base_dir)
    if (cfg.get("domains") or {}).get("enabled", False):
        _domains({**cfg["domains"], "rule": cfg.get("rule", "logistic"), "checkpoint": cfg["checkpoint"],
                  "support_views": cfg.get("support_views", "d4"), "query_views": cfg.get("query_views", "none"),
                  "baselines": cfg.get("baselines", True)}, emb, report, numbers, out, seed, progress, base_dir,
                 cfg.get("device", "cpu"), _flag(cfg.get("trust_checkpoint", False), "trust_checkpoint"))
    if not numbers.keys() - {"config"}:
        raise ValueError("nothing to evaluate: enable offline.enabled=true, online.enabled=true and/or "
                         "domains.enabled=true")
    return report.write(out, numbers, fmt=str(cfg.get("report_format", "markdown")))
