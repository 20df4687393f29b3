"""The one scan for dead writers' temporaries (speckle_embed.atomic.remove_dead_temporaries)."""
from __future__ import annotations

import itertools
import os
import time

import pytest

import simulate.shard_cleanup
from simulate.shard_cleanup import cleanup_partial
from speckle_embed import atomic
from speckle_embed.atomic import remove_dead_temporaries, remove_stale_temporaries
from test_dataset_io import dead_pid

DEAD = dead_pid()
LIVE = os.getpid()
DAY = 86400.0


def _tree(root):
    """Files of every kind, each with what an independent rule needs to know about it."""
    files = []  # (path, ours, final, alive, age_s, link, depth)
    sub = root / "sub"
    sub.mkdir()
    for depth, folder in ((0, root), (1, sub)):
        for i, (final, alive, age) in enumerate(itertools.product(("a.h5", "b.csv"), (True, False),
                                                                    (5.0, 2 * 3600.0, 2 * DAY))):
            pid = LIVE if alive else DEAD
            files.append((folder / f"{final}.{pid}-{i:08x}.tmp", True, final, alive, age, False, depth))
        for name in ("notes.tmp", "a.h5.tmp", "a.h5.12-xyz.tmp", "a.h5", f"a.h5.{DEAD}-0123abcd.tmp.bak"):
            files.append((folder / name, False, None, False, 2 * DAY, False, depth))
    target = root / "target.bin"
    files.append((target, False, None, False, 2 * DAY, False, 0))
    for path, *_ in files:
        path.write_bytes(b"partial")
    link = root / f"a.h5.{DEAD}-feedbeef.tmp"
    link.symlink_to(target)
    files.append((link, True, "a.h5", False, 2 * DAY, True, 0))
    (root / f"dir.h5.{DEAD}-0badc0de.tmp").mkdir()  # a folder with our name: never a file to remove
    now = time.time()
    for path, _, _, _, age, is_link, _ in files:
        if not is_link:
            os.utime(path, (now - age, now - age))
    return files


def _expected(files, final_name, recursive, max_age_s, min_age_s):
    """Brute force: the rule in words, one file at a time."""
    keep = []
    for path, ours, final, alive, age, link, depth in files:
        if not ours or link or (depth and not recursive):
            continue
        if final_name is not None and final != final_name:
            continue
        if min_age_s is not None and age < min_age_s:
            continue
        if alive and (max_age_s is None or age < max_age_s):
            continue
        keep.append(path)
    return sorted(keep)


@pytest.mark.parametrize("final_name,recursive,max_age_s,min_age_s", [
    (None, False, None, None), (None, True, None, None), ("a.h5", False, None, None), ("b.csv", True, DAY, None),
    (None, False, DAY, 0.0), (None, True, DAY, 3600.0), (None, True, 60.0, 10 * DAY), ("a.h5", True, 1.0, 60.0),
])
def test_remove_dead_temporaries_matches_a_brute_force_rule(tmp_path, final_name, recursive, max_age_s, min_age_s):
    files = _tree(tmp_path)
    want = _expected(files, final_name, recursive, max_age_s, min_age_s)
    assert want or (min_age_s or 0) > DAY  # the cases are not vacuous
    got = remove_dead_temporaries(tmp_path, final_name=final_name, recursive=recursive,
                                  max_age_s=max_age_s, min_age_s=min_age_s)
    assert got == want
    for path, *_ in files:
        assert path.is_symlink() or path.exists() == (path not in want), path
    assert (tmp_path / "target.bin").exists() and (tmp_path / f"dir.h5.{DEAD}-0badc0de.tmp").is_dir()


def test_missing_or_file_directory_has_nothing_to_remove(tmp_path):
    (tmp_path / "f").write_text("x")
    assert remove_dead_temporaries(tmp_path / "nope") == []
    assert remove_dead_temporaries(tmp_path / "f") == []


def test_remove_stale_temporaries_is_the_scan_for_one_final_name(tmp_path):
    final = tmp_path / "pred.h5"
    mine = tmp_path / f"pred.h5.{DEAD}-0123abcd.tmp"
    other = tmp_path / f"pred.csv.{DEAD}-0123abcd.tmp"
    live = tmp_path / f"pred.h5.{LIVE}-89abcdef.tmp"
    for p in (mine, other, live):
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 30 * DAY,) * 2)  # no age bound: a live writer's old file stays
    assert remove_stale_temporaries(final) == [mine]
    assert other.exists() and live.exists()
    assert remove_stale_temporaries(tmp_path / "missing" / "x.h5") == []


def test_shard_cleanup_and_atomic_share_the_scan(tmp_path, monkeypatch):
    assert simulate.shard_cleanup.remove_dead_temporaries is remove_dead_temporaries
    for name in ("parse_tmp_name", "pid_alive", "TMP_SUFFIX"):
        assert not hasattr(simulate.shard_cleanup, name)
    calls = []

    def spy(directory, **kwargs):
        calls.append(kwargs)
        return []

    monkeypatch.setattr(simulate.shard_cleanup, "remove_dead_temporaries", spy)
    monkeypatch.setattr(atomic, "remove_dead_temporaries", spy)
    cleanup_partial(tmp_path, recursive=True, min_age_s=5.0)
    remove_stale_temporaries(tmp_path / "x.h5")
    assert calls == [{"recursive": True, "max_age_s": DAY, "min_age_s": 5.0}, {"final_name": "x.h5"}]
