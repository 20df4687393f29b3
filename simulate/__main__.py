"""``python -m simulate`` / ``speckle-simulate``: the Hydra entry point of the simulator.

It only composes the configuration and calls :func:`simulate.app.run`. The configuration
lives in ``conf/`` at the repository root, found from this file's location (absolute path),
so both commands work from any directory with the editable install (``pip install -e .``);
a relative ``config_path="../conf"`` would break the console script, which Hydra resolves
as the package ``conf``.

Examples
--------
::

    python -m simulate dataset=tiny source.n_structures=2
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

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
"""Absolute path of the repository's ``conf/`` folder."""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="simulate")
def main(cfg: DictConfig) -> None:
    """Compose ``conf/simulate.yaml`` (plus command-line overrides) and run the app.

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
