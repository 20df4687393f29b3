"""speckle_embed.formats is the one owner of the hit classes, CXI paths and temporary names."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import speckle_embed.formats as formats
import simulate.dataset_io
import simulate.labels
import speckle_embed.atomic
import speckle_embed.data.h5dataset
import speckle_embed.evaluation.episodes

ROOT = Path(__file__).resolve().parent.parent


def test_constants_have_one_definition():
    assert simulate.labels.HIT_CLASSES is formats.HIT_CLASSES
    assert speckle_embed.data.h5dataset.HIT_CLASSES is formats.HIT_CLASSES
    assert speckle_embed.evaluation.episodes.HIT_CLASSES is formats.HIT_CLASSES
    for name in ("DATA_PATH", "MASK_PATH", "TRUTH_GROUP", "TMP_SUFFIX", "CXI_VERSION"):
        assert getattr(simulate.dataset_io, name) is getattr(formats, name), name
    assert speckle_embed.data.h5dataset.DEFAULT_DATA_PATH is formats.DATA_PATH
    assert speckle_embed.data.h5dataset.TRUTH_GROUP is formats.TRUTH_GROUP
    assert speckle_embed.atomic.tmp_sibling is formats.tmp_sibling


def test_no_literal_copies_left():
    """No other module spells the hit-class tuple or the frames path as a literal."""
    hits = []
    for folder in ("speckle_embed", "simulate"):
        for p in (ROOT / folder).rglob("*.py"):
            if p.name == "formats.py":
                continue
            text = p.read_text()
            if '("no_hit", "single", "multi", "non_sample")' in text:
                hits.append(str(p))
    assert hits == []


def test_tmp_names_round_trip_and_reject_user_files():
    name = formats.tmp_name("1BXN.h5")
    parsed = formats.parse_tmp_name(name)
    assert parsed == formats.TmpName("1BXN.h5", os.getpid())
    assert formats.parse_tmp_name(formats.tmp_name("cls", "old")).final == "cls"
    assert formats.parse_tmp_name("/some/dir/a.h5.12-0123abcd.tmp").pid == 12
    for user in ("notes.tmp", "a.h5.tmp", "a.h5.12-xyz.tmp", "a.h5.12-0123abcd.tmp.bak",
                 "a.12-0123ABCD.tmp", ".12-0123abcd.tmp"):
        assert formats.parse_tmp_name(user) is None, user


def test_simulate_imports_only_core_modules():
    """simulate/ may import the core modules (formats, atomic, paths, provenance: standard library only;
    realism: numpy/torch only), nothing else (also checked by `lint-imports`, pyproject.toml)."""
    allowed = {"speckle_embed.formats", "speckle_embed.atomic", "speckle_embed.paths", "speckle_embed.provenance",
               "speckle_embed.realism"}
    found = set()
    for p in (ROOT / "simulate").rglob("*.py"):
        for line in p.read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1].startswith("speckle_embed"):
                found.add(words[1].rstrip(","))
    assert found <= allowed, found - allowed


@pytest.mark.parametrize("module", ["paths", "provenance", "config_sections"])
def test_helper_core_modules_import_nothing_from_the_package(module):
    code = (f"import sys, speckle_embed.{module}; "
            "print(sorted(m for m in sys.modules if m.startswith('speckle_embed')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"['speckle_embed', 'speckle_embed.{module}']"


def test_formats_imports_nothing_from_the_package():
    code = ("import sys, speckle_embed.formats; "
            "print(sorted(m for m in sys.modules if m.startswith('speckle_embed')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['speckle_embed', 'speckle_embed.formats']"
