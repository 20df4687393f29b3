"""``speckle-embed evaluate`` / ``python -m speckle_embed.evaluation``: the evaluation suite (Hydra).

Composes ``conf/evaluate/evaluate.yaml`` and calls :func:`speckle_embed.evaluation.app.run` with the run
folder Hydra made; relative paths are relative to the directory the command was started from.

Examples
--------
::

    speckle-embed evaluate checkpoint=outputs/train/offline_v2/best.pt offline.data=[data/eval/pdb_clean]
    speckle-embed evaluate checkpoint=pretrained online.enabled=true online.data=[data/eval/pr772_online]
    speckle-embed evaluate checkpoint=pretrained offline.enabled=false online.enabled=true \\
        online.data=[run42_labelled.h5] online.labels_path=/labels/hit_class report_format=html
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf" / "evaluate")
"""Absolute path of evaluation's config tree, ``conf/evaluate/`` (groups heads, domains)."""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Compose the configuration and run the suite."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd
    from omegaconf import OmegaConf

    from speckle_embed.evaluation.app import run

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["out_dir"] = HydraConfig.get().runtime.output_dir
    plain["base_dir"] = get_original_cwd()
    paths = run(plain)
    for kind, path in paths.items():
        print(f"{kind}: {path}", flush=True)


if __name__ == "__main__":
    main()
