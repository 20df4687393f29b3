"""Every Hydra config of every app composes: a broken config fails here, not on a beamline.

``conf/`` holds one config tree per app (``conf/<app>/<app>.yaml`` + its groups, one
``experiment/`` group per app that has experiments) and the shared ``conf/hydra/`` (launchers,
linked into the trees of the apps that run multiruns). The tests compose, as the entry points do
(``initialize_config_dir`` on the app's tree + ``compose``): every primary config, every option of
every group, the simulator overrides that ``domains.missing=generate`` runs, and the training and
simulation commands written in the docs and config headers (so a renamed key or group is caught
where users copy it from).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from simulate.__main__ import RENAMED_OVERRIDES as SIMULATE_RENAMED
from speckle_embed.__main__ import main as speckle_embed_main
from speckle_embed.cli import CLASSIFY_CONFIG_DIR, CONFIG_DIR
from speckle_embed.train.__main__ import RENAMED_OVERRIDES as TRAIN_RENAMED

REPO = Path(CONFIG_DIR).parent
CONF = Path(CONFIG_DIR)
#: app tree -> its primary configs (stream-replay shares the stream tree)
APPS = {"simulate": ["simulate"], "train": ["train"], "evaluate": ["evaluate"], "classify": ["classify"],
        "demo": ["demo"], "stream": ["stream", "stream_replay"]}
#: trees whose apps run Hydra multiruns: their ``hydra`` is the shared conf/hydra (launchers)
MULTIRUN_APPS = ("simulate", "train", "evaluate")
#: how the docs start each app, and its tree
COMMANDS = {"python -m simulate": "simulate", "python -m speckle_embed.train": "train"}


def _compose(app: str, config_name: str, overrides=(), hydra_config: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF / app), job_name="test_configs"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra_config)


def _resolved(cfg) -> dict:
    """The plain config with every interpolation resolved (``???`` values stay missing)."""
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    return OmegaConf.to_container(cfg, resolve=True)


def _group_options():
    """(app, primary config, group, option) for every yaml of every group folder of every tree."""
    cases = []
    for app, primaries in APPS.items():
        for group_dir in sorted(p for p in (CONF / app).rglob("*") if p.is_dir() and not p.is_symlink()):
            group = group_dir.relative_to(CONF / app).as_posix()
            for option in sorted(group_dir.glob("*.yaml")):
                cases.append(pytest.param(app, primaries[0], group, option.stem, id=f"{app}:{group}={option.stem}"))
    return cases


def test_one_tree_per_app_and_one_experiment_group_each():
    tops = {p.name for p in CONF.iterdir()}
    assert tops == set(APPS) | {"hydra"}, "conf/ holds only the app trees and the shared hydra/"
    for app, primaries in APPS.items():
        assert {p.stem for p in (CONF / app).glob("*.yaml")} == set(primaries), app
        experiments = [p for p in (CONF / app).rglob("experiment") if p.is_dir()]
        assert len(experiments) <= 1 and all(p.parent == CONF / app for p in experiments), experiments
    for app in MULTIRUN_APPS:
        link = CONF / app / "hydra"
        assert link.is_symlink() and link.resolve() == (CONF / "hydra").resolve(), link
    assert Path(CLASSIFY_CONFIG_DIR) == CONF / "classify"


@pytest.mark.parametrize("app, config_name", [(a, c) for a, cs in APPS.items() for c in cs])
def test_every_primary_config_composes(app, config_name):
    cfg = _compose(app, config_name, hydra_config=True)
    assert cfg.hydra.job.name == ("test_configs" if config_name not in ("simulate", "train", "evaluate", "demo")
                                  else config_name)
    plain = _resolved(cfg)
    assert plain, f"conf/{app}/{config_name}.yaml composed to nothing"


@pytest.mark.parametrize("app, config_name, group, option", _group_options())
def test_every_group_option_composes(app, config_name, group, option):
    """Each option through the key the primary config selects it by (``heads@online.heads.resnet``),
    else appended (``+group=option``)."""
    choices = _compose(app, config_name, hydra_config=True).hydra.runtime.choices
    keys = [k for k in choices if k.split("@")[0] == group]
    overrides = [f"{k}={option}" for k in keys] or [f"+{group}={option}"]
    cfg = _compose(app, config_name, overrides, hydra_config=True)
    for k in keys:
        assert cfg.hydra.runtime.choices[k] == option
    _resolved(cfg)


def test_experiments_override_the_primary_config():
    """``experiment=<name>`` is the one experiment key of both apps; an experiment may override groups."""
    pr772 = _compose("simulate", "simulate", ["experiment=pr772"], hydra_config=True)
    assert pr772.hydra.runtime.choices["geometry"] == "pnccd" and pr772.oversampling == 6.0
    assert pr772.hydra.runtime.choices["source"] == "continuum_pr772"
    online = _compose("train", "train", ["experiment=online"])
    assert online.name == "online" and online.data.mode == "class"
    assert _compose("train", "train").name == "default"


def test_domain_simulate_overrides_compose():
    """The overrides ``domains.missing=generate`` hands ``python -m simulate`` (evaluation app)."""
    domains = yaml.safe_load((CONF / "evaluate" / "domains" / "realistic.yaml").read_text())
    sets = [*domains["sets"], domains["reference"]]
    assert all(s.get("simulate") for s in sets)
    for s in sets:
        cfg = _compose("simulate", "simulate", [*s["simulate"], f"out_dir={s['dirs'][0]}"])
        assert cfg.out_dir == s["dirs"][0], s["name"]


def _documented_commands():
    """(file:line, app, overrides) of every single-run simulate/train command in the docs and configs."""
    files = [REPO / "README.md", REPO / "DESIGN.md", REPO / "speckle_embed" / "weights" / "MODEL_CARD.md",
             *sorted((REPO / "docs").glob("*.md")), *sorted(CONF.rglob("*.yaml"))]
    found = []
    for path in files:
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            start, text = i, lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):  # shell continuation lines
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].lstrip("# ")
            i += 1
            for prefix, app in COMMANDS.items():
                for m in re.finditer(re.escape(prefix) + r"\s(.*)", text):
                    command = re.split(r"`|\s#\s|\s{2,}#|\)\.?$|\)[:;,.]?\s", m.group(1))[0]
                    try:
                        tokens = shlex.split(command)
                    except ValueError:
                        continue
                    if "-m" in tokens or "--cfg" in tokens or any("<" in t or "..." in t for t in tokens):
                        continue  # multiruns (sweep syntax), printing, placeholders
                    tokens = [t for t in tokens if "=" in t and not t.startswith(("hydra", "-"))]
                    found.append(pytest.param(app, tokens, id=f"{path.relative_to(REPO)}:{start + 1}"))
    return found


@pytest.mark.parametrize("app, overrides", _documented_commands())
def test_documented_commands_compose(app, overrides):
    _compose(app, app, overrides)


def test_documented_commands_are_found():
    ids = [p.id for p in _documented_commands()]
    assert any(i.startswith("README.md") for i in ids) and any("experiment/pretrain" in i for i in ids), ids


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("app, renamed", [("simulate", SIMULATE_RENAMED), ("train", TRAIN_RENAMED)])
def test_renamed_keys_are_gone_and_refused_in_one_line(app, renamed, capsys, monkeypatch):
    """The keys of the old shared conf/ (``+experiment=``, ``train/experiment=``...) no longer compose;
    the entry points refuse them with the new key (through ``speckle-embed train`` too)."""
    for old, new in renamed.items():
        with pytest.raises(Exception):
            _compose(app, app, [old + "x"])
        assert new.rstrip("=") in _compose(app, app, hydra_config=True).hydra.runtime.choices
    if app == "train":
        assert speckle_embed_main(["train", "train/model=tiny", "--cfg", "job"]) == 1
        assert "'train/model=tiny' is now 'model=tiny'" in capsys.readouterr().err
    else:
        from simulate.__main__ import main

        monkeypatch.setattr("sys.argv", ["simulate", "+experiment=pr772", "dataset=tiny"])
        with pytest.raises(SystemExit, match="'\\+experiment=pr772' is now 'experiment=pr772'"):
            main()
