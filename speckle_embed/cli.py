"""``speckle-embed classify``: classify every frame of HDF5/CXI files with a saved classifier.

The entry point (:func:`classify_main`) only composes ``conf/classify/classify.yaml`` with the command
line's Hydra overrides and calls :func:`run_classify`, a plain function of a config mapping that
the tests and notebooks can call too::

    speckle-embed classify classifier=clf/ inputs=[run42/*.cxi] output_dir=out/run42
    python -m speckle_embed classify classifier=clf/ inputs=[a.h5,b.h5] chunk_size=512 device=cuda

Files are read ``chunk_size`` frames at a time, so they may exceed the memory. The parts live in
:mod:`speckle_embed.classify`: :mod:`~speckle_embed.classify.discovery` (input files, frames datasets,
masks), :mod:`~speckle_embed.classify.writer` (the ``.h5``/``.csv`` results and their layout, safe on
a full disk) and :mod:`~speckle_embed.classify.app` (:func:`run_classify`); this module is the entry
point and re-exports them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from speckle_embed.classify.app import run_classify
from speckle_embed.classify.discovery import CXI_DATA_PATHS, find_frames_dataset, resolve_inputs

__all__ = ["CONFIG_DIR", "CXI_DATA_PATHS", "classify_main", "run_classify", "resolve_inputs",
           "find_frames_dataset"]

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
"""Absolute path of the repository's ``conf/`` folder (editable install): one config tree per app,
``conf/<app>/<app>.yaml`` (classify, simulate, train, evaluate, demo, stream)."""
CLASSIFY_CONFIG_DIR = str(Path(CONFIG_DIR) / "classify")
"""The classify command's config tree, ``conf/classify/``."""


_USAGE = """usage: speckle-embed classify classifier=DIR inputs=[PATH,...] [key=value ...]

Classify every frame of HDF5/CXI files with a FewShotClassifier saved by clf.save(DIR).
Keys (conf/classify/classify.yaml), as Hydra overrides:
"""


def classify_main(argv: list[str] | None = None) -> int:
    """Compose ``conf/classify/classify.yaml`` with Hydra overrides ``argv`` and run :func:`run_classify`.

    ``--help`` prints the keys, ``--cfg`` the composed configuration. Returns the exit status.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    argv = list(sys.argv[1:] if argv is None else argv)
    show_cfg = "--cfg" in argv or "-c" in argv
    if "-h" in argv or "--help" in argv:
        print(_USAGE + (Path(CLASSIFY_CONFIG_DIR) / "classify.yaml").read_text())
        return 0
    overrides = [a for a in argv if a not in ("--cfg", "-c")]
    bad = [a for a in overrides if a.startswith("-")]
    if bad:
        print(f"speckle-embed classify: unknown option {bad[0]} (use key=value overrides; --help)",
              file=sys.stderr)
        return 2
    try:
        with initialize_config_dir(config_dir=CLASSIFY_CONFIG_DIR, version_base="1.3", job_name="classify"):
            cfg = compose(config_name="classify", overrides=overrides)
    except HydraException as exc:
        print(f"speckle-embed classify: {exc}", file=sys.stderr)
        return 2
    if show_cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"speckle-embed classify: missing value: {exc.full_key} (give {exc.full_key}=...; see --help)",
              file=sys.stderr)
        return 2
    try:
        summary = run_classify(plain)
    except (FileNotFoundError, ValueError, OSError) as exc:
        if os.environ.get("SPECKLE_EMBED_DEBUG"):
            raise
        print("speckle-embed classify: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["counts"].items(), key=lambda kv: str(kv[0])))
    print(f"classified {summary['n_frames']} frames from {len(summary['files'])} file(s) in "
          f"{summary['seconds']:.1f} s ({summary['patterns_per_s']:.0f} patterns/s)\n"
          f"  {counts}\n  -> {summary['h5']}" + (f"\n  -> {summary['csv']}" if summary["csv"] else ""))
    if summary["n_empty"]:
        print(f"  {summary['n_empty']} frame(s) have no photons (or no contrast) in the model's field of "
              "view: flagged in the `empty` column, their predictions are meaningless")
    return 0
