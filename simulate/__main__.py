"""``python -m simulate`` / ``speckle-simulate``: the Hydra entry point of the simulator.

It only composes the configuration and calls :func:`simulate.app.run`. The configuration
(the simulator's own tree) lives in ``conf/simulate/`` at the repository root, found from this
file's location (absolute path),
so both commands work from any directory with the editable install (``pip install -e .``);
a relative ``config_path="../conf"`` would break the console script, which Hydra resolves
as the package ``conf``.

Examples
--------
::

    python -m simulate dataset=tiny source.n_structures=2
    python -m simulate experiment=pr772 dataset=online_pr772
    python -m simulate source=pdb_shared dataset=small
    python -m simulate -m hydra/launcher=joblib run.num_shards=2 run.shard_index=0,1
    python -m simulate mode=render render.input=data/simulated/procedural render.output=ex.png
    python -m simulate --cfg job        # print the composed configuration
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf" / "simulate")
"""Absolute path of the simulator's config tree, the repository's ``conf/simulate/`` (groups
geometry, source, dataset, experiment; ``hydra/launcher`` links to the shared ``conf/hydra/``)."""

RENAMED_OVERRIDES = {"+experiment=": "experiment="}
"""Command-line keys renamed when ``conf/`` became one tree per app: old prefix -> new prefix."""


def refuse_renamed_overrides(argv: list[str], renamed: dict[str, str], prog: str) -> None:
    """Exit with one line naming the new key when an override uses a renamed one (else return)."""
    for arg in argv:
        for old, new in renamed.items():
            if arg.startswith(old):
                sys.exit(f"{prog}: error: {arg!r} is now {new + arg[len(old):]!r} "
                         f"(one config tree per app under conf/; docs use the new keys)")


def main() -> None:
    """Console script and ``python -m simulate``: refuse renamed keys, then compose and run (:func:`_main`)."""
    refuse_renamed_overrides(sys.argv[1:], RENAMED_OVERRIDES, "simulate")
    _main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="simulate")
def _main(cfg: DictConfig) -> None:
    """Compose ``conf/simulate/simulate.yaml`` (plus command-line overrides) and run the app.

    Exits 1 with a one-line message on invalid settings (before any structure starts) or
    insufficient memory, and 1 after the summary table when any structure failed.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    from simulate.app import run
    from simulate.errors import SimulationError

    try:
        result = run(cfg, output_dir=HydraConfig.get().runtime.output_dir,
                     base_dir=get_original_cwd())
    except (SimulationError, ValueError, MemoryError, OSError) as exc:
        sys.exit(f"simulate: error: {exc}")
    failed = getattr(result, "failed", None)
    if failed:
        names = ", ".join(o.name for o in failed)
        sys.exit(f"simulate: {len(failed)} structure(s) failed: {names} (see the table above)")


if __name__ == "__main__":
    main()
