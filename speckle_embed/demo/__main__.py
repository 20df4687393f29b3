"""``speckle-embed demo`` / ``python -m speckle_embed.demo``: the whole story (Hydra).

Examples
--------
::

    speckle-embed demo                                   # shipped weights, a new procedural particle
    speckle-embed demo new_structure.pdb=my_virus.cif.gz # your own structure
    speckle-embed demo pretrain.mode=short               # a short pretraining instead of the shipped weights
    speckle-embed demo hydra.run.dir=/scratch/demo       # where everything is written
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf" / "demo")
"""Absolute path of the demo's config tree, ``conf/demo/``."""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="demo")
def main(cfg: DictConfig) -> None:
    """Compose the configuration and run the demo; a failed step exits with status 1 and one message."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from speckle_embed.demo import DemoError, run_demo

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["run_dir"] = HydraConfig.get().runtime.output_dir
    try:
        run_demo(plain)
    except DemoError as exc:
        print(f"speckle-embed demo: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
