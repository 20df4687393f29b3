"""``python -m speckle_embed.train``: the Hydra entry point of training.

It only composes ``conf/train.yaml`` (plus overrides) and calls
:func:`speckle_embed.train.train` with the run folder Hydra made and the directory the
command was started from (relative data paths are relative to it).

Examples
--------
::

    python -m speckle_embed.train train/experiment=offline            # simulates data if missing
    python -m speckle_embed.train train/experiment=offline data.dirs=[data/simulated/procedural,data/simulated/pdb]
    python -m speckle_embed.train train/experiment=online data.dirs=[run42.h5]
    python -m speckle_embed.train name=m02 loss.margin=0.2            # resumes if outputs/train/m02 has last.pt
    python -m speckle_embed.train -m loss.margin=0.05,0.2,0.5,1.0 hydra/launcher=joblib
    python -m speckle_embed.train --cfg job                           # print the composed configuration
    torchrun --standalone --nproc_per_node 4 -m speckle_embed.train name=ddp4   # data-parallel, docs/distributed.md
"""
from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
"""Absolute path of the repository's ``conf/`` (``../../conf`` from this file). Absolute, so the
entry point also works when called from a console script or another CLI (a relative
``config_path`` is then resolved by Hydra as a package and fails)."""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    """Compose the configuration and train."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd
    from omegaconf import OmegaConf

    from speckle_embed.train import train

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["run_dir"] = HydraConfig.get().runtime.output_dir
    if not plain.get("base_dir"):
        plain["base_dir"] = get_original_cwd()
    result = train(plain)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 reports
        print(f"run folder: {result.run_dir}\nbest: {result.best_checkpoint} (metric {result.best_metric:.4f})",
              flush=True)


if __name__ == "__main__":
    main()
