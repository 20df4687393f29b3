"""Dataset generation: simulate every structure of a source into one HDF5 shard each.

:func:`generate_dataset` is the library side of ``python -m simulate``: it takes structure
specs (:func:`simulate.sources.resolve_sources`), a :class:`~simulate.geometry.Geometry` and
the shot settings, and writes ``<out_dir>/<structure name>.h5`` with
:func:`simulate.dataset_io.write_shard` (atomic: a file under its final name is complete).

Resuming and sharding
---------------------
* The folder's identity (every setting that changes the frames, and the code version; see
  :mod:`simulate.resume`) must match this run's, else the run is refused before any
  structure starts (``overwrite=True`` replaces it).
* A structure whose shard is complete, has this run's identity and passes its content
  checksum (:func:`~simulate.dataset_io.verify_shard`) is skipped, so re-running an
  interrupted command finishes the job without duplicates. A damaged shard is regenerated;
  one with another identity is refused (regenerated with ``overwrite=True``).
* Each shard is checked and written under its own file lock: a second process on the same
  folder waits for the shard, then finds it complete.
* Structure ``i`` (in spec order) belongs to job ``i % num_shards``; jobs with different
  ``shard_index`` may run at the same time on the same ``out_dir`` (Hydra multirun).
* Stale temporaries are removed first: only this package's ``<name>.<pid>-<hex>.tmp`` whose
  writer is gone (:func:`~simulate.dataset_io.cleanup_partial`), and, under a shard's lock,
  that shard's own temporaries.
* Run-wide settings and the detector's memory are checked before any structure
  (:mod:`simulate.preflight`); each structure's peak memory (with its reciprocal grid) is
  checked before it is simulated.

Determinism
-----------
The shot generator of a structure is seeded from ``(seed, crc32(name))`` with a numpy
``SeedSequence``, so a structure's frames do not depend on which other structures are in the
source, on sharding or on resuming. ``chunk`` is part of the random stream (frames are drawn
``chunk`` at a time): the same ``(seed, name, chunk, settings)`` gives the same frames. With
``deterministic=True`` the reciprocal grid is built with one thread (finufft's multithreaded
spreading adds in a racy order and is not bit-reproducible); frames are then identical from
run to run on the same machine and software.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from speckle_embed.formats import HIT_CLASSES, parse_tmp_name
from speckle_embed.provenance import code_version

from .dataset_io import (SHARD_FORMAT, TMP_SUFFIX, cleanup_partial, shard_is_complete, verify_shard,
                         write_shard)
from .engine import DEFAULT_OVERSAMPLING, PatternEngine
from .geometry import Geometry
from .preflight import check_memory, estimate_shard_bytes, validate_run_settings
from .resume import (IDENTITY_ATTR, check_dataset_identity, identity_differences,
                     mismatch_message, shard_lock)
from .sample_variety import SampleConfig
from .shots import FluenceConfig, HitMix, NoiseConfig, ShotGenerator
from .sources import StructureSpec

__all__ = ["StructureOutcome", "GenerationReport", "generate_dataset", "shot_seed",
           "code_version", "shard_path", "iter_shards"]

logger = logging.getLogger(__name__)

#: Beam-centre jitter covered by the reciprocal grid, in standard deviations.
JITTER_COVERAGE_SIGMA = 4.0


@dataclass
class StructureOutcome:
    """What happened to one structure.

    Attributes
    ----------
    name, source : str
        From the :class:`~simulate.sources.StructureSpec`.
    status : {"done", "skipped", "failed"}
        ``done``: shard written now; ``skipped``: a complete shard already existed;
        ``failed``: an error was caught (``error`` says which).
    path : str
        The shard path (written, existing or intended).
    n_frames : int
        Frames in the shard (0 when failed).
    seconds : float
        Wall time spent on the structure.
    error : str
        ``"<ExceptionType>: <message>"`` for failed structures, else ``""``.
    """

    name: str
    source: str
    status: str
    path: str
    n_frames: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class GenerationReport:
    """Outcome of :func:`generate_dataset`, one entry per structure of this job's partition."""

    out_dir: str
    shard_index: int = 0
    num_shards: int = 1
    outcomes: list = field(default_factory=list)
    removed_tmp: list = field(default_factory=list)

    def _with(self, status: str) -> list:
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list:
        """Structures whose shard was written by this call."""
        return self._with("done")

    @property
    def skipped(self) -> list:
        """Structures skipped because their shard was already complete."""
        return self._with("skipped")

    @property
    def failed(self) -> list:
        """Structures that raised; each has ``name``, ``source`` and ``error``."""
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when no structure failed."""
        return not self.failed

    @property
    def shard_paths(self) -> list:
        """Paths of the complete shards of this partition (written now or before)."""
        return [Path(o.path) for o in self.outcomes if o.status in ("done", "skipped")]

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {"out_dir": self.out_dir, "shard_index": self.shard_index,
                "num_shards": self.num_shards,
                "counts": {s: len(self._with(s)) for s in ("done", "skipped", "failed")},
                "removed_tmp": [str(p) for p in self.removed_tmp],
                "outcomes": [dataclasses.asdict(o) for o in self.outcomes]}

    def table(self) -> str:
        """A plain-text summary table: one line per structure, then the counts."""
        rows = [(o.name, o.status if o.status != "skipped" else "skipped-complete",
                 str(o.n_frames) if o.n_frames else "-", f"{o.seconds:.1f}", o.error)
                for o in self.outcomes]
        head = ("structure", "status", "frames", "time_s", "reason")
        widths = [max([len(head[k])] + [len(r[k]) for r in rows]) for k in range(4)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        lines = [f"dataset {self.out_dir} (job {self.shard_index + 1}/{self.num_shards})",
                 fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths), "").rstrip()]
        lines += [fmt.format(*r).rstrip() for r in rows]
        lines.append(f"done: {len(self.done)}, skipped-complete: {len(self.skipped)}, "
                     f"failed: {len(self.failed)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers
def shot_seed(seed: int, name: str) -> int:
    """Seed of the shot generator of structure ``name``: ``SeedSequence([seed, crc32(name)])``.

    Stable across processes and Python versions (unlike ``hash()``).

    Examples
    --------
    >>> shot_seed(0, "1BXN") == shot_seed(0, "1BXN") != shot_seed(1, "1BXN")
    True
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed = {seed!r}: must be a non-negative integer")
    ss = np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def shard_path(out_dir, name: str) -> Path:
    """``<out_dir>/<name>.h5``."""
    return Path(out_dir) / f"{name}.h5"


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (None: unchanged), then restore.

    :class:`~simulate.engine.ReciprocalVolume` gives finufft ``torch.get_num_threads()``
    threads; finufft's multithreaded type-1 spreading adds sub-grids in a racy order, so
    its result changes in the last bits from run to run, which can flip Poisson draws.
    One thread makes the grid bit-reproducible.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _remove_stale_tmp(final: Path) -> list:
    """Remove our ``<final>.<pid>-<hex>.tmp`` left by a killed write of this shard.

    Call it only while holding the shard's lock: no live writer of the shard exists then.
    """
    removed = []
    for p in glob.glob(glob.escape(str(final)) + ".*" + TMP_SUFFIX):
        parsed = parse_tmp_name(p)
        if parsed is None or parsed.final != final.name:
            continue
        try:
            os.unlink(p)
            removed.append(Path(p))
        except FileNotFoundError:
            pass
    return removed


def _as_config(value, cls, what: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(names)}")
        value = dict(value)
        if "multi_counts" in value:
            value["multi_counts"] = tuple(value["multi_counts"])
        return cls(**value)
    raise TypeError(f"{what} must be a {cls.__name__} or a dict, got {type(value).__name__}")


def _geometry_attrs(geometry: Geometry) -> dict:
    attrs = {}
    for key, value in geometry.as_dict().items():
        attrs[key] = np.asarray(value) if isinstance(value, (tuple, list)) else value
    attrs["wavelength_m"] = geometry.wavelength_m
    attrs["pixel_size_m"] = geometry.pixel_size_m
    attrs["fluence_photons_per_m2"] = geometry.fluence_photons_per_m2
    return attrs


def dataset_identity(geometry: Geometry, *, n_frames: int, chunk: int, mix: HitMix,
                     noise: NoiseConfig, fluence: FluenceConfig, method: str,
                     oversampling: float, seed: int, sample: SampleConfig | None = None) -> dict:
    """Every setting that changes a dataset's frames, plus the code version and shard format.

    Stored in each shard (attribute ``dataset_identity``) and in the folder's manifest
    (:mod:`simulate.resume`). Not included: device, threads, progress, out_dir, sharding.
    A new setting that changes the frames must be added here. ``sample`` (every field of
    every given section, defaults filled in) is present only when given, so datasets
    without it keep their identity.
    """
    identity = {"n_frames": int(n_frames), "chunk": int(chunk), "seed": int(seed), "method": method,
                "oversampling": float(oversampling), "hit_mix": dataclasses.asdict(mix),
                "noise": dataclasses.asdict(noise), "fluence": dataclasses.asdict(fluence),
                "geometry": geometry.as_dict(), "code_version": code_version(),
                "shard_format": SHARD_FORMAT}
    if sample is not None:
        identity["sample"] = dataclasses.asdict(sample)
    return identity


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} = {value!r}: must be an integer >= {minimum}")
    return int(value)


# ---------------------------------------------------------------------------- main loop
def generate_dataset(specs: Sequence[StructureSpec], geometry: Geometry, *, out_dir,
                     n_frames: int, chunk: int = 64, mix: HitMix | dict | None = None,
                     noise: NoiseConfig | dict | None = None,
                     fluence: FluenceConfig | dict | None = None,
                     sample: SampleConfig | dict | None = None, method: str = "fast",
                     oversampling: float | None = None, device="cpu", seed: int = 0,
                     shard_index: int = 0, num_shards: int = 1, config_yaml: str = "",
                     progress: bool = True, threads: int | None = None,
                     deterministic: bool = True, overwrite: bool = False) -> GenerationReport:
    """Simulate ``n_frames`` shots of every structure of this job's partition.

    Parameters
    ----------
    specs : sequence of StructureSpec
        The structures (unique names), e.g. from :func:`simulate.sources.resolve_sources`.
    geometry : Geometry
        Beam and detector.
    out_dir : str or Path
        Dataset folder; shard ``<out_dir>/<name>.h5`` per structure (created if needed).
    n_frames : int
        Shots per structure (>= 1).
    chunk : int
        Shots simulated per call of the shot generator (progress granularity; part of the
        random stream, see the module notes).
    mix, noise, fluence : HitMix, NoiseConfig, FluenceConfig or dict, optional
        Hit-class probabilities, detector noise and fluence spread (dicts are passed to the
        dataclass; default: the dataclass defaults).
    sample : SampleConfig or dict, optional
        Sample variety (``dataset.sample``: polydispersity, aggregate, non_sample; see
        :mod:`simulate.sample_variety`). None (default): none, frames as without it.
    method : {"fast", "direct"}
        Engine method (:class:`~simulate.engine.PatternEngine`).
    oversampling : float, optional
        Reciprocal-grid oversampling of the fast method (None: the engine's
        ``DEFAULT_OVERSAMPLING``).
    device : str
        ``"cpu"`` or ``"cuda"``.
    seed : int
        Dataset seed; each structure's generator is seeded with :func:`shot_seed`.
    shard_index, num_shards : int
        This job handles the structures ``i`` with ``i % num_shards == shard_index``.
    config_yaml : str
        Full configuration as YAML text, stored in every shard's attributes.
    progress : bool
        Show a tqdm bar per structure and print the summary table at the end (else the
        table is logged at INFO level).
    threads : int, optional
        ``torch.set_num_threads(threads)``; None leaves torch's default.
    deterministic : bool
        Build reciprocal grids with one thread (bit-reproducible; slower on many cores).
    overwrite : bool
        Replace the folder's identity and regenerate shards written with other settings
        (default False: such a folder is refused, naming the differing settings).

    Returns
    -------
    GenerationReport
        One :class:`StructureOutcome` per structure of the partition, in spec order.
        Errors raised while handling a structure (``StructureError``, ``GeometryError``,
        ``OSError``...) are caught, logged and recorded; ``KeyboardInterrupt`` is not.

    Raises
    ------
    ValueError
        Bad ``n_frames``, ``chunk``, ``seed``, shard numbers, duplicate structure names or
        unknown keys in ``mix``/``noise``/``fluence``;
        :class:`~simulate.preflight.RunSettingsError` for a bad method, device, fluence,
        noise or geometry range; :class:`~simulate.resume.DatasetMismatchError` when
        ``out_dir`` holds a dataset with other settings (and not ``overwrite``).
    MemoryError
        :class:`~simulate.preflight.InsufficientMemoryError` when the frames and detector
        arrays of one shard cannot fit in the available memory.
    """
    n_frames = _check_int(n_frames, "n_frames", 1)
    chunk = _check_int(chunk, "chunk", 1)
    num_shards = _check_int(num_shards, "num_shards", 1)
    shard_index = _check_int(shard_index, "shard_index", 0)
    if shard_index >= num_shards:
        raise ValueError(f"shard_index = {shard_index} must be < num_shards = {num_shards}")
    shot_seed(seed, "")  # validates seed
    if oversampling is None:
        oversampling = DEFAULT_OVERSAMPLING
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a Geometry, got {type(geometry).__name__}")
    mix = _as_config(mix, HitMix, "mix")
    mix.probabilities()  # validates before any work
    noise = _as_config(noise, NoiseConfig, "noise")
    fluence = _as_config(fluence, FluenceConfig, "fluence")
    if sample is not None and not isinstance(sample, SampleConfig):
        sample = SampleConfig.from_dict(sample)
    validate_run_settings(geometry, method=method, device=device, noise=noise, fluence=fluence)
    n_pix = geometry.n_pixels
    check_memory(estimate_shard_bytes(geometry, n_frames, method="direct"),
                 f"a shard of {n_frames} frames of {n_pix}x{n_pix} pixels")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate structure names {dup}")
    if threads is not None:
        torch.set_num_threads(_check_int(threads, "threads", 1))

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    identity = dataset_identity(geometry, n_frames=n_frames, chunk=chunk, mix=mix, noise=noise,
                                fluence=fluence, method=method, oversampling=oversampling,
                                seed=seed, sample=sample)
    check_dataset_identity(out, identity, overwrite=overwrite)
    mine = [s for i, s in enumerate(specs) if i % num_shards == shard_index]
    report = GenerationReport(out_dir=str(out), shard_index=shard_index, num_shards=num_shards)
    report.removed_tmp += cleanup_partial(out)  # only ours, only of writers that are gone
    if report.removed_tmp:
        logger.info("removed %d stale temporary file(s) in %s", len(report.removed_tmp), out)

    settings = dict(n_frames=n_frames, chunk=chunk, mix=mix, noise=noise, fluence=fluence,
                    sample=sample, method=method, oversampling=oversampling, device=device, seed=seed,
                    config_yaml=config_yaml, progress=progress, deterministic=deterministic,
                    identity=identity, overwrite=overwrite, removed_tmp=report.removed_tmp)
    logger.info("job %d/%d: %d of %d structure(s) -> %s", shard_index + 1, num_shards,
                len(mine), len(specs), out)
    for spec in mine:
        report.outcomes.append(_one_structure(spec, geometry, out, **settings))

    table = report.table()
    if progress:
        print(table, flush=True)
    else:
        logger.info("\n%s", table)
    return report


def _one_structure(spec: StructureSpec, geometry: Geometry, out: Path, **settings) -> StructureOutcome:
    """Check, then (re)generate one shard while holding its lock."""
    path = shard_path(out, spec.name)
    with shard_lock(path):
        settings["removed_tmp"] += _remove_stale_tmp(path)
        return _one_structure_locked(spec, geometry, path, **settings)


def _existing_shard(path: Path, identity: dict, overwrite: bool) -> tuple[str, str]:
    """``("reuse" | "regenerate" | "refuse", reason)`` for the file at ``path``."""
    if not path.exists():
        return "regenerate", ""
    if not shard_is_complete(path):
        return "regenerate", "incomplete or unreadable"
    differences = identity_differences(_stored_identity(path), identity)
    if differences:
        if overwrite:
            return "regenerate", "written with other settings (overwrite=true)"
        return "refuse", mismatch_message(f"shard {path}", differences)
    problem = verify_shard(path)
    if problem is not None:
        return "regenerate", problem
    return "reuse", ""


def _stored_identity(path: Path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get(IDENTITY_ATTR)
        return None if text is None else json.loads(text)
    except (OSError, ValueError):
        return None


def _one_structure_locked(spec: StructureSpec, geometry: Geometry, path: Path, *, n_frames, chunk,
                          mix, noise, fluence, sample, method, oversampling, device, seed, config_yaml,
                          progress, deterministic, identity, overwrite, removed_tmp) -> StructureOutcome:
    t0 = time.perf_counter()
    action, reason = _existing_shard(path, identity, overwrite)
    if action == "reuse":
        return StructureOutcome(spec.name, spec.source, "skipped", str(path), _n_frames_of(path) or 0)
    if action == "refuse":
        logger.error("%s", reason)
        return StructureOutcome(spec.name, spec.source, "failed", str(path), 0, 0.0,
                                f"DatasetMismatchError: {reason}")
    if reason:
        logger.warning("%s: %s; regenerating it", path, reason)
    try:
        structure = spec.load()
        jitter = JITTER_COVERAGE_SIGMA * noise.beam_center_jitter_px
        max_scale = sample.max_size_scale if sample is not None else 1.0
        check_memory(estimate_shard_bytes(geometry, n_frames, method=method,
                                          radius_angstrom=structure.radius * max_scale,
                                          oversampling=oversampling, max_beam_offset_px=jitter),
                     f"structure {spec.name} ({n_frames} frames, reciprocal grid)")
        with _torch_threads(1 if deterministic and method == "fast" else None):
            engine = PatternEngine(structure, geometry, method=method, device=device,
                                   oversampling=oversampling, max_beam_offset_px=jitter,
                                   max_size_scale=max_scale)
        sseed = shot_seed(seed, spec.name)
        generator = ShotGenerator(engine, noise=noise, fluence=fluence, mix=mix, seed=sseed,
                                  sample=sample)
        frames, truth = _simulate(generator, spec.name, n_frames, chunk, progress)
        attrs = _geometry_attrs(geometry)
        attrs.update({
            "seed": int(seed),
            "shot_seed": sseed,
            "structure_name": spec.name,
            "structure_source": structure.source or spec.source,
            "structure_kind": spec.kind,
            "structure_n_atoms": structure.n_atoms,
            "structure_radius_angstrom": structure.radius,
            "structure_n_electrons": structure.n_electrons,
            "method": method,
            "oversampling": float(oversampling),
            "chunk": int(chunk),
            "hit_mix": dataclasses.asdict(mix),
            "noise": dataclasses.asdict(noise),
            "fluence": dataclasses.asdict(fluence),
            **({} if sample is None else {"sample": dataclasses.asdict(sample)}),
            "config_yaml": config_yaml,
            "code_version": code_version(),
            "hit_class_names": json.dumps(list(HIT_CLASSES)),
            IDENTITY_ATTR: json.dumps(identity, sort_keys=True),
        })
        write_shard(path, frames, truth, generator.mask, attrs)
    except Exception as exc:  # noqa: BLE001 - one bad structure must not stop the others
        seconds = time.perf_counter() - t0
        error = f"{type(exc).__name__}: {exc}"
        logger.error("structure %s (%s) failed after %.1f s: %s", spec.name, spec.source,
                     seconds, error, exc_info=logger.isEnabledFor(logging.DEBUG))
        return StructureOutcome(spec.name, spec.source, "failed", str(path), 0, seconds, error)
    seconds = time.perf_counter() - t0
    logger.info("%s: %d frames in %.1f s -> %s", spec.name, n_frames, seconds, path)
    return StructureOutcome(spec.name, spec.source, "done", str(path), n_frames, seconds)


def _simulate(generator: ShotGenerator, name: str, n_frames: int, chunk: int, progress: bool):
    from tqdm.auto import tqdm

    batches = []
    with tqdm(total=n_frames, desc=name, unit="pattern", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        t0 = time.perf_counter()
        for start in range(0, n_frames, chunk):
            batches.append(generator.generate(min(chunk, n_frames - start)))
            done = start + batches[-1].frames.shape[0]
            bar.update(batches[-1].frames.shape[0])
            bar.set_postfix({"patterns/s": f"{done / max(time.perf_counter() - t0, 1e-9):.1f}"})
    frames = np.concatenate([b.frames for b in batches])
    truth = {k: np.concatenate([b.truth[k] for b in batches]) for k in batches[0].truth}
    return frames, truth


def _n_frames_of(path: Path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["n_frames"])
    except Exception:  # noqa: BLE001
        return None


def iter_shards(out_dir) -> Iterable[Path]:
    """Complete shards in ``out_dir``, sorted by name."""
    return [p for p in sorted(Path(out_dir).glob("*.h5")) if shard_is_complete(p)]
