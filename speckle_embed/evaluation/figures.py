"""Figures of the evaluation report (matplotlib, Agg backend, PNG files).

Every function takes plain numbers (the dicts of :mod:`~speckle_embed.evaluation.offline` and
:mod:`~speckle_embed.evaluation.online`), writes one PNG and returns its path. The published
numbers drawn for comparison are labelled "paper" and come from :data:`PAPER`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from speckle_embed.atomic import save_figure_atomically

__all__ = ["PAPER", "plot_kshot", "plot_fluence_scan", "plot_size", "plot_tsne", "plot_confusions",
           "plot_online", "plot_domains"]

#: Published figures drawn as references (never reported as ours).
PAPER = {
    "specklenn_offline_accuracy": {1: 0.843, 5: 0.891, 20: 0.896},  # Wang et al. 2023, 2-way, 1e12 photons
    "specklenn_online_accuracy": {"100%": 0.98, "25%": 0.94},        # Wang et al. 2023, Table 1
}

HIT_NAMES = {0: "no hit", 1: "single", 2: "multi", 3: "non-sample"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> Path:
    return save_figure_atomically(fig, Path(os.fspath(path)), dpi=110, bbox_inches="tight")


def plot_kshot(kshot: Mapping, path) -> Path:
    """Accuracy and F1 (mean over structures, +-1 std of accuracy) against K; classical baselines dotted
    (when ``by_k[K]["baselines"]`` holds them), the paper's accuracy dashed."""
    plt = _plt()
    ks = sorted(int(k) for k in kshot["by_k"])
    acc = [kshot["by_k"][str(k)]["accuracy_mean"] for k in ks]
    std = [kshot["by_k"][str(k)]["accuracy_std"] for k in ks]
    f1 = [kshot["by_k"][str(k)]["f1_mean"] for k in ks]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(ks, acc, yerr=std, marker="o", capsize=3, label="accuracy (ours)")
    ax.plot(ks, f1, marker="s", label="F1, single positive (ours)")
    for j, name in enumerate(kshot["by_k"][str(ks[0])].get("baselines", {})):
        ax.plot(ks, [kshot["by_k"][str(k)]["baselines"][name]["accuracy_mean"] for k in ks], ls=":",
                marker="^v<>"[j % 4], color="grey" if j else "tab:green", label=f"accuracy, {name}")
    paper = PAPER["specklenn_offline_accuracy"]
    pk = [k for k in ks if k in paper]
    if pk:
        ax.plot(pk, [paper[k] for k in pk], "k--", marker="x", label="accuracy (SpeckleNN paper)")
    _score_axes(ax, "supports per class K", (0.5, 1.0),
                f"2-way K-shot, {kshot['by_k'][str(ks[0])]['n_structures']} held-out structures")
    ax.set_xticks(ks, [str(k) for k in ks])
    return _save(fig, path)


def plot_fluence_scan(scan: Mapping, path) -> Path:
    """Accuracy and F1 against fluence (multiples of the baseline), log x."""
    plt = _plt()
    f = [lv["factor"] for lv in scan["levels"]]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(f, [lv["accuracy_mean"] for lv in scan["levels"]], marker="o", label="accuracy")
    ax.plot(f, [lv["f1_mean"] for lv in scan["levels"]], marker="s", label="F1 (single positive)")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    _score_axes(ax, "fluence / baseline (1e12 photons per pulse)", (0.4, 1.0),
                f"2-way {scan['k_shot']}-shot against fluence")
    return _save(fig, path)


def _score_axes(ax, xlabel: str, ylim: tuple[float, float], title: str) -> None:
    """Log x, scores on y, grid and legend: the frame of the K-shot and fluence plots."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def plot_size(rows: Sequence[Mapping], path, k: int = 5) -> Path:
    """Per-structure accuracy against atoms, each point labelled with its structure."""
    plt = _plt()
    rows = [r for r in rows if r.get("n_atoms")]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = [r["n_atoms"] for r in rows]
    ax.scatter(x, [r["accuracy"] for r in rows], label="accuracy")
    ax.scatter(x, [r["f1"] for r in rows], marker="s", alpha=0.6, label="F1")
    for r in rows:
        ax.annotate(r["name"], (r["n_atoms"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("atoms in the structure")
    ax.set_ylabel(f"2-way {k}-shot score")
    ax.set_ylim(0.5, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_tsne(maps: Mapping[int, Mapping], names: Sequence[str], path) -> Path:
    """One t-SNE panel per structure: frames coloured by hit class, supports as large stars."""
    plt = _plt()
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    colours = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
    for ax, (s, m) in zip(axes[0], maps.items()):
        for c in np.unique(m["hit"]):
            q = (m["hit"] == c) & ~m["support"]
            sup = (m["hit"] == c) & m["support"]
            ax.scatter(*m["xy"][q].T, s=6, alpha=0.5, color=colours.get(int(c)),
                       label=HIT_NAMES.get(int(c), str(c)))
            ax.scatter(*m["xy"][sup].T, s=140, marker="*", color=colours.get(int(c)),
                       edgecolor="k", linewidth=0.8, label=f"{HIT_NAMES.get(int(c), str(c))} support")
        ax.set_title(names[s], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("t-SNE of embeddings (stars: the supports of one 5-shot episode)", fontsize=9)
    return _save(fig, path)


def plot_confusions(matrices: Mapping[str, Mapping], path) -> Path:
    """Row-normalised confusion matrices, one panel each (``{title: {"confusion", "confusion_classes"}}``)."""
    plt = _plt()
    items = [(t, m) for t, m in matrices.items() if m.get("confusion") is not None]
    n = max(1, len(items))
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.7 * rows), squeeze=False,
                             layout="constrained")  # keeps one panel's labels off the next
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, m) in zip(axes.ravel(), items):
        ax.axis("on")
        c = np.asarray(m["confusion"], dtype=float)
        norm = c / np.maximum(c.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        labels = [HIT_NAMES.get(int(k), str(k)) for k in m["confusion_classes"]]
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                ax.text(j, i, f"{norm[i, j]:.2f}\n({int(c[i, j])})", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


def plot_online(rows: Sequence[Mapping], path) -> Path:
    """Grouped bars: accuracy of each method with each detector fraction; paper's SpeckleNN dashed."""
    plt = _plt()
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for j, m in enumerate(methods):
        vals = [next((r["accuracy"] for r in rows if r["method"] == m and r["detector"] == d), np.nan)
                for d in detectors]
        ax.bar(np.arange(len(detectors)) + j * width, vals, width, label=m)
    paper = PAPER["specklenn_online_accuracy"]
    for i, d in enumerate(detectors):
        if d in paper:
            ax.hlines(paper[d], i - 0.05, i + 0.8, colors="k", linestyles="--",
                      label="SpeckleNN paper" if i == 0 else None)
    ax.set_xticks(np.arange(len(detectors)) + 0.4 - width / 2, [f"{d} of detector" for d in detectors])
    ax.set_ylabel("3-way accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_domains(result: Mapping, path) -> Path:
    """Grouped bars per domain (one panel per K): accuracy of every method with its interval over
    episodes (:func:`speckle_embed.evaluation.domains.domain_protocol`'s result); the in-domain
    reference first, the validation domain hatched (it chose the checkpoint: not a result)."""
    plt = _plt()
    ks = [str(k) for k in result["settings"]["k_shots"]]
    rows = ([result["reference"]] if result.get("reference") else []) + list(result["domains"])
    methods = list(result["kinds"])
    width = 0.8 / max(1, len(methods))
    fig, axes = plt.subplots(1, len(ks), figsize=(max(5.0, 1.3 * len(rows) + 1.5) * len(ks) / 1.3, 3.8),
                             squeeze=False)
    for ax, k in zip(axes[0], ks):
        for j, m in enumerate(methods):
            x = np.arange(len(rows)) + j * width
            val = np.array([r["by_k"][k]["methods"][m]["accuracy"] for r in rows])
            ci = np.array([r["by_k"][k]["methods"][m]["accuracy_ci"] for r in rows], dtype=float)
            err = np.abs(np.stack([val - ci[:, 0], ci[:, 1] - val]))
            base = result["kinds"][m] == "baseline"
            bars = ax.bar(x, val, width, yerr=err, capsize=2, label=m, alpha=0.6 if base else 1.0,
                          color="grey" if base and j % 2 else "tab:green" if base else None)
            for bar, r in zip(bars, rows):
                if r["role"] == "validation":
                    bar.set_hatch("//")
        ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2,
                      [r["name"] + {"validation": "\n(validation)", "reference": "\n(in-domain)"}.get(r["role"], "")
                       for r in rows], fontsize=8)
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set_ylim(0.4, 1.0)
        ax.set_ylabel("2-way accuracy (single vs not)")
        ax.set_title(f"{k}-shot", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
