"""Example figures of simulated datasets: a grid of frames, one row per hit class.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change), so
it works headless and inside other programs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .labels import HIT_CLASSES

__all__ = ["render_examples", "shard_files"]

_DATA, _MASK, _TRUTH = "/entry_1/data_1/data", "/entry_1/data_1/mask", "/entry_1/truth"
#: Photons below this are shown at this value on the log scale (noise can be <= 0).
LOG_FLOOR = 0.1


def shard_files(dataset_dir_or_files) -> list[Path]:
    """The ``*.h5`` shards of a folder (sorted), or the given file(s).

    Raises
    ------
    FileNotFoundError
        A missing path, or a folder without ``*.h5`` files.
    """
    if isinstance(dataset_dir_or_files, (str, os.PathLike)):
        items = [dataset_dir_or_files]
    else:
        items = list(dataset_dir_or_files)
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.glob("*.h5") if q.is_file())
            if not found:
                raise FileNotFoundError(f"{p}: no *.h5 shards in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such dataset file or folder")
    if not files:
        raise FileNotFoundError("render_examples: no dataset files given")
    return files


def _class_names(f: h5py.File) -> list[str]:
    try:
        return list(json.loads(f.attrs["hit_class_names"]))
    except Exception:  # noqa: BLE001 - older or foreign file: the standard names
        return list(HIT_CLASSES)


def _pick(files: list[Path], per_class: int) -> dict[str, list[tuple[Path, int]]]:
    """Up to ``per_class`` ``(file, frame index)`` per class, taking files in turn."""
    per_file = []
    for path in files:
        with h5py.File(path, "r") as f:
            names = _class_names(f)
            codes = np.asarray(f[f"{_TRUTH}/hit_class"][()])
        per_file.append({names[c]: [int(i) for i in np.flatnonzero(codes == c)]
                         for c in np.unique(codes)})
    picks: dict[str, list[tuple[Path, int]]] = {}
    order = list(HIT_CLASSES) + sorted({n for d in per_file for n in d} - set(HIT_CLASSES))
    for name in order:
        queues = [(path, list(d.get(name, []))) for path, d in zip(files, per_file)]
        chosen: list[tuple[Path, int]] = []
        while len(chosen) < per_class and any(q for _, q in queues):
            for path, q in queues:
                if q and len(chosen) < per_class:
                    chosen.append((path, q.pop(0)))
        if chosen:
            picks[name] = chosen
    return picks


def render_examples(dataset_dir_or_files, out_png, per_class: int = 4, log: bool = True, *,
                    dpi: int = 100, cmap: str = "viridis") -> Path:
    """Draw example frames of a dataset: one row per hit class present, ``per_class`` columns.

    Parameters
    ----------
    dataset_dir_or_files : str, Path or iterable of them
        A dataset folder (all its ``*.h5`` shards) or shard files. Frames of each class are
        taken from the files in turn, so several structures appear in a row.
    out_png : str or Path
        Output image (parent folders are created).
    per_class : int
        Frames per hit class (columns).
    log : bool
        Colour by ``log10(max(photons, 0.1))`` (default) instead of photons.
    dpi : int
        Resolution of the PNG.
    cmap : str
        Matplotlib colour map; masked pixels (non-zero CXI mask) are grey.

    Returns
    -------
    Path
        ``out_png``.

    Raises
    ------
    FileNotFoundError
        No dataset files.
    ValueError
        ``per_class < 1`` or no frames in the files.

    Examples
    --------
    >>> render_examples("data/simulated/procedural", "examples.png")   # doctest: +SKIP
    PosixPath('examples.png')
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class = {per_class!r}: must be an integer >= 1")
    files = shard_files(dataset_dir_or_files)
    picks = _pick(files, int(per_class))
    if not picks:
        raise ValueError(f"no frames in {[str(p) for p in files]}")

    panels = {}   # (row, col) -> (image, title)
    vmax = LOG_FLOOR
    for row, (name, chosen) in enumerate(picks.items()):
        for col, (path, i) in enumerate(chosen):
            with h5py.File(path, "r") as f:
                frame = np.asarray(f[_DATA][i], dtype=np.float64)
                mask = np.asarray(f[_MASK][()]) if _MASK in f else np.zeros(frame.shape, np.uint16)
                truth = f[_TRUTH]
                sid = truth["structure_id"][i] if "structure_id" in truth else path.stem
                sid = sid.decode() if isinstance(sid, bytes) else str(sid)
                npart = int(truth["n_particles"][i]) if "n_particles" in truth else -1
            good = mask == 0
            total = float(frame[good].sum())
            img = np.log10(np.clip(frame, LOG_FLOOR, None)) if log else frame
            vmax = max(vmax, float(img[good].max()) if good.any() else 0.0)
            panels[row, col] = (np.ma.masked_array(img, mask=~good),
                                f"{sid}\nn={npart}, {total:.3g} ph")

    n_rows, n_cols = len(picks), int(per_class)
    fig = Figure(figsize=(2.3 * n_cols + 0.9, 2.5 * n_rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    colours = matplotlib.colormaps[cmap].with_extremes(bad="0.55")
    vmin = np.log10(LOG_FLOOR) if log else 0.0
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    image = None
    for row, name in enumerate(picks):
        for col in range(n_cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if (row, col) not in panels:
                ax.set_axis_off()
                continue
            data, title = panels[row, col]
            image = ax.imshow(data, cmap=colours, vmin=vmin, vmax=max(vmax, vmin + 1e-6),
                              origin="lower", interpolation="nearest")
            ax.set_title(title, fontsize=7)
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8,
                     label="log10 photons" if log else "photons")
    out = Path(out_png).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out
