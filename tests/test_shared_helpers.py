"""One owner for small helpers: code_version, absolute_path, resolve_device, section_from_mapping."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import simulate.app
import simulate.generate
import simulate.sources
import speckle_embed.evaluation.app
import speckle_embed.heads.supervised
import speckle_embed.realism.domain
import speckle_embed.train.augment
import speckle_embed.train.data
import speckle_embed.train.loop
from speckle_embed.config_sections import section_from_mapping
from speckle_embed.device import resolve_device
from speckle_embed.paths import absolute_path
from speckle_embed.provenance import code_version
from speckle_embed.realism import BackgroundConfig, RealismConfig
from speckle_embed.train.augment import AugmentConfig, RotationConfig


def test_code_version_is_one_function_with_one_format():
    assert simulate.generate.code_version is code_version
    assert speckle_embed.evaluation.app.code_version is code_version
    assert re.fullmatch(r"speckle_embed \S+( git [0-9a-f]{12}(-dirty)?)?", code_version())


def test_absolute_path_is_shared_and_normalises(tmp_path):
    for module in (simulate.app, simulate.sources, speckle_embed.train.data):
        assert module.absolute_path is absolute_path
        assert not hasattr(module, "_absolute")
    assert not hasattr(speckle_embed.train.loop, "_absolute")  # the loop resolves no path itself now
    assert absolute_path("a/../b", tmp_path) == tmp_path / "b"
    assert absolute_path(tmp_path / "x", "/elsewhere") == tmp_path / "x"
    assert absolute_path("~/x", tmp_path) == Path.home() / "x"


def test_resolve_device_is_shared():
    for module in (speckle_embed.train.loop, speckle_embed.heads.supervised):
        assert module.resolve_device is resolve_device
        assert not hasattr(module, "_resolve_device")


def test_heads_refuse_cuda_without_cuda(monkeypatch):
    """An explicit CUDA device fails at set-up with a clear message (was: at the first tensor)."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    head = speckle_embed.heads.supervised.SupervisedHead(device="cuda", progress=False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        head.fit(torch.zeros(4, 8, 8).numpy(), [0, 1, 0, 1])


@dataclasses.dataclass
class _Section:
    p: float = 0.5
    size: int = 3


def test_section_from_mapping_builds_refuses_unknown_keys_and_passes_instances():
    assert section_from_mapping(_Section, {"p": 1.0}, "x.sec") == _Section(p=1.0, size=3)
    assert section_from_mapping(_Section, {}, "x.sec") == _Section()
    inst = _Section(size=9)
    assert section_from_mapping(_Section, inst, "x.sec") is inst
    assert section_from_mapping(_Section, None, "x.sec", nullable=True) is None
    with pytest.raises(ValueError) as err:
        section_from_mapping(_Section, {"p": 1.0, "zz": 1, "angle": 2}, "x.sec")
    assert str(err.value) == "unknown key(s) ['angle', 'zz'] in x.sec; allowed: ['p', 'size']"
    with pytest.raises(TypeError, match=r"^x.sec must be a mapping or _Section; got NoneType$"):
        section_from_mapping(_Section, None, "x.sec")
    with pytest.raises(TypeError, match=r"^x.sec must be a mapping, null or _Section; got int$"):
        section_from_mapping(_Section, 3, "x.sec", nullable=True)


def test_realism_and_augment_build_sections_with_the_one_helper():
    for module in (speckle_embed.realism.domain, speckle_embed.train.augment):
        assert module.section_from_mapping is section_from_mapping
    assert not hasattr(speckle_embed.realism.domain, "_build")
    assert not hasattr(speckle_embed.train.augment, "_section")
    allowed = sorted(f.name for f in dataclasses.fields(BackgroundConfig))
    with pytest.raises(ValueError) as err:
        RealismConfig.from_dict({"background": {"amplitude": 1}})
    assert str(err.value) == f"unknown key(s) ['amplitude'] in realism.background; allowed: {allowed}"
    # the augmentation names its sections by their full key, as its other errors do (augment.zoom.p)
    allowed = sorted(f.name for f in dataclasses.fields(RotationConfig))
    with pytest.raises(ValueError) as err:
        AugmentConfig.from_dict({"rotation": {"angle": 3}})
    assert str(err.value) == f"unknown key(s) ['angle'] in augment.rotation; allowed: {allowed}"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['x'\] in augment\.realism;"):
        AugmentConfig.from_dict({"realism": {"x": 1}})
    with pytest.raises(TypeError, match="augment.zoom must be a mapping or ZoomConfig"):
        AugmentConfig(zoom=3)
    with pytest.raises(TypeError, match="realism.layout must be a mapping, null or LayoutConfig"):
        RealismConfig(layout=3)
    assert RealismConfig(layout=None).layout is None
    for cls in (RealismConfig, AugmentConfig):
        inst = cls()
        assert cls.from_dict(inst) is inst and cls.from_dict(None) == inst
