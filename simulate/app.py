"""The dataset-generation application: a plain function of the composed configuration.

``python -m simulate`` (:mod:`simulate.__main__`) composes ``conf/simulate/simulate.yaml`` with Hydra
and calls :func:`run`; tests and notebooks can call :func:`run` with a config composed by
``hydra.compose`` or with a plain dict. This module never imports hydra.

Config keys used (see ``conf/simulate/simulate.yaml``): ``mode`` (``generate`` | ``render``),
``geometry`` (the :class:`~simulate.geometry.Geometry` fields), ``source`` (see
:mod:`simulate.sources`), ``dataset`` (``n_frames``, ``chunk``, ``mix``, ``noise``,
``fluence``, optional ``sample``: :mod:`simulate.sample_variety`), ``out_dir``, ``seed``,
``method``, ``oversampling``, ``device``, ``threads``, ``deterministic``, ``progress``,
``overwrite``, ``run.shard_index``, ``run.num_shards``, ``render_after`` and
``render.{input, output, per_class, log}``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from speckle_embed.paths import absolute_path

from .errors import GeometryError
from .generate import generate_dataset
from .geometry import Geometry
from .render import render_examples
from .sources import resolve_sources

__all__ = ["run", "geometry_from_config", "REPORT_NAME", "EXAMPLES_NAME"]

logger = logging.getLogger(__name__)

REPORT_NAME = "generation_report.json"
"""File written into the run folder after generation."""
EXAMPLES_NAME = "examples.png"
"""Example figure written into the run folder (``render_after``, or ``mode=render``)."""


def geometry_from_config(cfg: Mapping[str, Any]) -> Geometry:
    """A :class:`Geometry` from its fields as a mapping (lists become tuples).

    Raises
    ------
    GeometryError
        Unknown field names, or invalid values (the message names the field).
    """
    fields = {f.name for f in dataclasses.fields(Geometry)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise GeometryError(f"unknown geometry parameter(s) {unknown}; allowed: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items()}
    try:
        return Geometry(**values)
    except TypeError as exc:  # e.g. a string where a number is expected
        raise GeometryError(f"invalid geometry {values}: {exc}") from exc


def _plain(cfg) -> tuple[dict, str]:
    """``(dict, YAML text)`` of a DictConfig or mapping, interpolations resolved."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_yaml(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"config must be a DictConfig or a mapping, got {type(cfg).__name__}")
    plain = copy.deepcopy(dict(cfg))
    return plain, OmegaConf.to_yaml(OmegaConf.create(plain))


def _device(name: str) -> str:
    if name == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(cfg, *, output_dir=None, base_dir=None):
    """Run the app: generate a dataset (``mode=generate``) or draw examples (``mode=render``).

    Parameters
    ----------
    cfg : DictConfig or mapping
        The composed configuration (``conf/simulate/simulate.yaml``).
    output_dir : str or Path, optional
        Folder of this run (Hydra's run/job folder): receives ``generation_report.json`` and
        ``examples.png``. None writes neither (unless ``render.output`` is set).
    base_dir : str or Path, optional
        Folder that relative paths of the config (``out_dir``, PDB folders, ``render.*``)
        are relative to; default the current directory (Hydra passes the original cwd).

    Returns
    -------
    GenerationReport or Path
        The generation report, or the written PNG for ``mode=render``.

    Raises
    ------
    GeometryError, SourceConfigError, StructureError, ValueError
        Invalid configuration, before any structure is simulated. Errors of individual
        structures are not raised: they are in the report.
    """
    c, config_yaml = _plain(cfg)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    out_run = Path(output_dir) if output_dir is not None else None
    mode = c.get("mode", "generate")
    render_cfg = c.get("render") or {}
    if mode == "render":
        return _render(render_cfg, base, out_run)
    if mode != "generate":
        raise ValueError(f"mode = {mode!r}: choose 'generate' or 'render'")

    geometry = geometry_from_config(c["geometry"])
    specs = resolve_sources(c["source"], base_dir=base)
    ds = c["dataset"]
    shards = c.get("run") or {}
    report = generate_dataset(
        specs, geometry, out_dir=absolute_path(c["out_dir"], base), n_frames=ds["n_frames"],
        chunk=ds.get("chunk", 64), mix=ds.get("mix"), noise=ds.get("noise"),
        fluence=ds.get("fluence"), sample=ds.get("sample"), method=c.get("method", "fast"),
        oversampling=c.get("oversampling"), device=_device(c.get("device", "cpu")),
        seed=c.get("seed", 0), shard_index=shards.get("shard_index", 0),
        num_shards=shards.get("num_shards", 1), config_yaml=config_yaml,
        progress=c.get("progress", True), threads=c.get("threads"),
        deterministic=c.get("deterministic", True), overwrite=bool(c.get("overwrite", False)))
    if out_run is not None:
        out_run.mkdir(parents=True, exist_ok=True)
        (out_run / REPORT_NAME).write_text(json.dumps(report.as_dict(), indent=2))
        if c.get("render_after", True) and report.shard_paths:
            try:
                png = render_examples(report.shard_paths, out_run / EXAMPLES_NAME,
                                      per_class=render_cfg.get("per_class", 4),
                                      log=render_cfg.get("log", True))
                logger.info("examples: %s", png)
            except Exception as exc:  # noqa: BLE001 - the dataset is written; a figure is a bonus
                logger.warning("could not render examples: %s: %s", type(exc).__name__, exc)
    return report


def _render(render_cfg: Mapping, base: Path, out_run: Path | None) -> Path:
    source = render_cfg.get("input")
    if not source:
        raise ValueError("mode=render needs render.input=<dataset folder or .h5 file>")
    sources = source if isinstance(source, (list, tuple)) else [source]
    output = render_cfg.get("output")
    if output:
        png = absolute_path(output, base)
    elif out_run is not None:
        png = out_run / EXAMPLES_NAME
    else:
        png = base / EXAMPLES_NAME
    png = render_examples([absolute_path(s, base) for s in sources], png,
                          per_class=render_cfg.get("per_class", 4), log=render_cfg.get("log", True))
    logger.info("examples: %s", png)
    print(png, flush=True)
    return png

