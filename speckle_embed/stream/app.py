"""Hydra composition shared by ``speckle-embed stream`` and ``speckle-embed stream-replay``
(the entry points only; library code never imports hydra)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf" / "stream")
"""Absolute path of the stream apps' config tree, ``conf/stream/`` (stream.yaml with groups source
and assembly, stream_replay.yaml)."""


def compose_main(argv, config_name: str, usage: str, run) -> int:
    """Compose ``conf/stream/<config_name>.yaml`` with ``key=value`` overrides and call ``run(plain_dict)``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"speckle-embed {config_name.replace('_', '-')}"
    if "-h" in argv or "--help" in argv:
        print(usage + (Path(CONFIG_DIR) / f"{config_name}.yaml").read_text())
        return 0
    show = "--cfg" in argv
    overrides = [a for a in argv if a != "--cfg"]
    bad = [a for a in overrides if a.startswith("-")]
    if bad:
        print(f"{prog}: unknown option {bad[0]} (use key=value overrides; --help)", file=sys.stderr)
        return 2
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name=config_name):
            cfg = compose(config_name=config_name, overrides=overrides)
    except HydraException as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"{prog}: missing value: {exc.full_key} (give {exc.full_key}=...; see --help)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(plain)
    except (FileNotFoundError, ValueError, OSError) as exc:
        if os.environ.get("SPECKLE_EMBED_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
