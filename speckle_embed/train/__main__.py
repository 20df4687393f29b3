"""``python -m speckle_embed.train``: the Hydra entry point of training.

It only composes ``conf/train/train.yaml`` (plus overrides) and calls
:func:`speckle_embed.train.train` with the run folder Hydra made and the directory the
command was started from (relative data paths are relative to it).

Examples
--------
::

    python -m speckle_embed.train experiment=offline            # simulates data if missing
    python -m speckle_embed.train experiment=offline data.dirs=[data/simulated/procedural,data/simulated/pdb]
    python -m speckle_embed.train experiment=online data.dirs=[run42.h5]
    python -m speckle_embed.train name=m02 loss.margin=0.2            # resumes if outputs/train/m02 has last.pt
    python -m speckle_embed.train -m loss.margin=0.05,0.2,0.5,1.0 hydra/launcher=joblib
    python -m speckle_embed.train --cfg job                           # print the composed configuration
    torchrun --standalone --nproc_per_node 4 -m speckle_embed.train name=ddp4   # data-parallel, docs/distributed.md
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from simulate.__main__ import refuse_renamed_overrides

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf" / "train")
"""Absolute path of training's config tree, the repository's ``conf/train/`` (groups model, data,
optim, experiment; ``hydra/launcher`` links to the shared ``conf/hydra/``). Absolute, so the
entry point also works when called from a console script or another CLI (a relative
``config_path`` is then resolved by Hydra as a package and fails)."""

RENAMED_OVERRIDES = {f"train/{group}=": f"{group}=" for group in ("experiment", "model", "data", "optim")}
"""Command-line keys renamed when ``conf/`` became one tree per app: old prefix -> new prefix."""


def main() -> None:
    """Console script and ``python -m speckle_embed.train``: refuse renamed keys, then compose and train."""
    refuse_renamed_overrides(sys.argv[1:], RENAMED_OVERRIDES, "speckle_embed.train")
    _main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(cfg: DictConfig) -> None:
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
