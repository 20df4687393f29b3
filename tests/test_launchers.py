"""SLURM launchers of Hydra multiruns: conf/hydra/launcher/submitit_slurm.yaml and s3df.yaml.

The configs are composed as the apps compose them (the app's tree ``conf/<app>/`` as the primary
config dir; its ``hydra`` links to the shared ``conf/hydra/``) and instantiated into the plugin's launcher; the last test runs a real multirun of
``python -m simulate`` against a fake ``sbatch`` that records the job-array script it is given.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                    reason="hydra-submitit-launcher is not installed (pip install -e '.[cluster]')")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

from speckle_embed.cli import CONFIG_DIR  # noqa: E402  (conf/, one tree per app)

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
# Our submitit_slurm.yaml replaces the plugin's config of the same name, and Hydra then
# checks it against the plugin's schema with a deprecation notice (docs/cluster.md).
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema:UserWarning")


def is_slurm_launcher(obj) -> bool:  # by name: Hydra's plugin discovery may import the module anew
    return f"{type(obj).__module__}.{type(obj).__qualname__}" == SLURM_LAUNCHER


def launcher_cfg(*overrides, app: str = "simulate"):
    with initialize_config_dir(version_base="1.3", config_dir=f"{CONFIG_DIR}/{app}", job_name="test"):
        cfg = compose(config_name=app, overrides=list(overrides), return_hydra_config=True)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == overrides[0].split("=")[1]
    return cfg.hydra.launcher


@pytest.mark.parametrize("app", ["simulate", "train", "evaluate"])
def test_submitit_slurm_defaults_and_overrides(app):
    lc = launcher_cfg("hydra/launcher=submitit_slurm", app=app)
    assert lc._target_ == SLURM_LAUNCHER
    assert lc.partition is None and lc.account is None  # the cluster's defaults
    assert (lc.timeout_min, lc.cpus_per_task, lc.mem_gb, lc.gpus_per_node, lc.nodes) == (120, 4, 16, None, 1)
    lc = launcher_cfg("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                      "hydra.launcher.account=proj42", "hydra.launcher.timeout_min=30",
                      "hydra.launcher.gpus_per_node=1", "hydra.launcher.cpus_per_task=2",
                      "hydra.launcher.mem_gb=8", app=app)
    assert (lc.partition, lc.account, lc.timeout_min, lc.gpus_per_node, lc.cpus_per_task, lc.mem_gb) == \
        ("gpu", "proj42", 30, 1, 2, 8)
    launcher = instantiate(lc)
    assert is_slurm_launcher(launcher)
    assert launcher.params["partition"] == "gpu" and launcher.params["timeout_min"] == 30


def test_submitit_slurm_refuses_bad_values():
    with pytest.raises(ConfigCompositionException):  # misspelt key
        launcher_cfg("hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu")
    with pytest.raises(ConfigCompositionException):  # checked against the plugin's schema (int)
        launcher_cfg("hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=two_hours")


def test_s3df_needs_an_account():
    lc = launcher_cfg("hydra/launcher=s3df")
    assert OmegaConf.is_missing(lc, "account") and lc.partition == "milano"
    with pytest.raises(MissingMandatoryValue, match="hydra.launcher.account"):
        instantiate(lc)
    lc = launcher_cfg("hydra/launcher=s3df", "hydra.launcher.account=lcls:xpp12345")
    assert (lc.partition, lc.account, lc.timeout_min, lc.cpus_per_task, lc.mem_gb, lc.qos) == \
        ("milano", "lcls:xpp12345", 240, 8, 32, None)
    gpu = launcher_cfg("hydra/launcher=s3df", "hydra.launcher.account=lcls:xpp12345",
                       "hydra.launcher.partition=ampere", "hydra.launcher.gpus_per_node=1",
                       "hydra.launcher.qos=preemptable", "hydra.launcher.timeout_min=60", app="train")
    assert (gpu.partition, gpu.gpus_per_node, gpu.qos, gpu.timeout_min) == ("ampere", 1, "preemptable", 60)
    assert is_slurm_launcher(instantiate(gpu))


@pytest.mark.skipif(sys.platform == "win32", reason="fake sbatch is a POSIX shell script")
def test_multirun_writes_the_sbatch_array_script(tmp_path):
    """``python -m simulate -m hydra/launcher=s3df ...`` as in docs/cluster.md, with a fake
    ``sbatch`` that keeps the script and submits nothing (so the command fails after it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nfor last; do :; done\ncp "$last" "$SBATCH_RECORD"\n'
                                    'echo "fake sbatch: nothing submitted" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that it exists
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    record, sweep = tmp_path / "script.sh", tmp_path / "sweep"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_RECORD": str(record)}
    cmd = [sys.executable, "-m", "simulate", "-m", "hydra/launcher=s3df", "hydra.launcher.account=lcls:xpp12345",
           "hydra.launcher.timeout_min=90", "run.num_shards=3", "run.shard_index=range(3)", "threads=8",
           f"out_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "fake sbatch: nothing submitted" in proc.stderr, proc.stderr[-3000:]
    lines = set(record.read_text().splitlines())
    for option in ("--partition=milano", "--account=lcls:xpp12345", "--time=90", "--cpus-per-task=8",
                   "--mem=32GB", "--nodes=1", "--ntasks-per-node=1", "--array=0-2%3", "--job-name=simulate"):
        assert f"#SBATCH {option}" in lines, option
    assert len(list((sweep / ".submitit").glob("*.pkl"))) == 3  # one pickled job per shard
    assert not (tmp_path / "data").exists()  # nothing ran locally
