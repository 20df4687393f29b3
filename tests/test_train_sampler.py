"""PKSampler (P x K batches) and the train/validation splits."""
from __future__ import annotations

import numpy as np
import pytest

from speckle_embed.train.sampler import PKSampler
from speckle_embed.train.split import frames_of_structures, split_by_class, split_by_structure


def labels(n_structures=5, hits=(0, 1, 2, 3), per_group=7, seed=0):
    s = np.repeat(np.arange(n_structures), len(hits) * per_group)
    h = np.tile(np.repeat(np.asarray(hits), per_group), n_structures)
    perm = np.random.default_rng(seed).permutation(s.size)
    return s[perm], h[perm]


# ----------------------------------------------------------------------------- PKSampler
def test_batches_are_p_groups_of_k():
    s, h = labels()
    sampler = PKSampler(s, h, p=6, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == int(np.ceil(s.size / 24))
    for b in batches:
        b = np.asarray(b)
        assert b.size == 24
        assert np.all((b >= 0) & (b < s.size))
        keys = [(s[i], h[i]) for i in b]
        groups = [keys[j * 4:(j + 1) * 4] for j in range(6)]
        for g in groups:  # K consecutive frames of one group
            assert len(set(g)) == 1
        assert len({g[0] for g in groups}) == 6  # P distinct groups
        assert np.unique(b).size == 24  # groups of 7 >= K: no repeats inside a group


def test_deterministic_and_epochs_differ():
    s, h = labels()
    a = PKSampler(s, h, p=4, k=3, seed=1)
    b = PKSampler(s, h, p=4, k=3, seed=1)
    c = PKSampler(s, h, p=4, k=3, seed=2)
    ea = a.epoch_batches(0)
    assert all(np.array_equal(x, y) for x, y in zip(ea, b.epoch_batches(0)))
    assert not all(np.array_equal(x, y) for x, y in zip(ea, c.epoch_batches(0)))
    assert not all(np.array_equal(x, y) for x, y in zip(ea, a.epoch_batches(1)))
    # epoch 1 does not depend on whether epoch 0 was iterated
    assert all(np.array_equal(x, y) for x, y in zip(a.epoch_batches(1), b.epoch_batches(1)))


def test_set_epoch_start_resumes_mid_epoch():
    s, h = labels()
    sampler = PKSampler(s, h, p=4, k=3, seed=0, batches_per_epoch=10)
    full = sampler.epoch_batches(2)
    sampler.set_epoch(2, start=6)
    assert len(sampler) == 4
    rest = list(sampler)
    assert [list(x) for x in full[6:]] == rest
    state = sampler.state_dict()
    other = PKSampler(s, h, p=4, k=3, seed=0, batches_per_epoch=10)
    other.load_state_dict(state)
    assert list(other) == rest
    with pytest.raises(ValueError, match="seed"):
        PKSampler(s, h, p=4, k=3, seed=9).load_state_dict(state)


def test_groups_visited_evenly_and_frames_covered():
    s, h = labels(n_structures=4, per_group=6)  # 16 groups of 6
    sampler = PKSampler(s, h, p=4, k=3, seed=0, batches_per_epoch=8)  # 8 * 4 = 2 rounds of groups
    counts = {}
    seen = set()
    for b in sampler.epoch_batches(0):
        for j in range(4):
            key = (s[b[3 * j]], h[b[3 * j]])
            counts[key] = counts.get(key, 0) + 1
        seen.update(b.tolist())
    assert len(counts) == 16 and set(counts.values()) == {2}
    assert seen == set(range(s.size))  # every frame used: each group cycles through its frames


def test_small_groups_dropped_or_repeated():
    s = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    h = np.array([1, 1, 1, 2, 2, 1, 2, 2])
    sampler = PKSampler(s, h, p=3, k=4, seed=0)
    assert sampler.dropped_groups == {(2, 1): 1}
    assert sampler.groups == [(0, 1), (1, 2), (3, 2)]
    for b in sampler:
        assert len(b) == 12 and 5 not in b  # K > group size: frames repeat, singleton excluded
    with pytest.raises(ValueError, match="at least p=4"):
        PKSampler(s, h, p=4, k=2)


def test_batches_always_have_two_hit_labels():
    s = np.repeat(np.arange(10), 4)
    h = np.where(s < 9, 1, 2)  # nine single groups, one multi group
    sampler = PKSampler(s, h, p=2, k=2, seed=0, batches_per_epoch=50)
    for b in sampler.epoch_batches(0):
        assert len(set(h[b].tolist())) == 2


@pytest.mark.parametrize("kw", [dict(p=1, k=2), dict(p=2, k=1), dict(p=2.5, k=2)])
def test_bad_arguments(kw):
    s, h = labels()
    with pytest.raises(ValueError):
        PKSampler(s, h, **kw)
    with pytest.raises(ValueError, match="same length"):
        PKSampler(s[:-1], h, p=2, k=2)


# ----------------------------------------------------------------------------- splits
def test_split_by_structure_no_leakage():
    names = [f"s{i:02d}" for i in range(20)]
    train, val = split_by_structure(names, 0.25, seed=4)
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(names)
    # deterministic, independent of input order, depends on the seed
    assert split_by_structure(names[::-1], 0.25, seed=4) == (train, val)
    assert split_by_structure(names, 0.25, seed=5) != (train, val)
    # frames follow their structure
    sid = np.array(names * 3, dtype=object)
    tr, va = frames_of_structures(sid, train), frames_of_structures(sid, val)
    assert not set(tr) & set(va) and tr.size + va.size == sid.size
    assert set(sid[va]) == set(val)


def test_split_by_structure_options_and_errors():
    assert split_by_structure(["a", "b"], 0.01) == (["a"], ["b"]) or split_by_structure(["a", "b"], 0.01) == (["b"], ["a"])
    assert split_by_structure(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])
    assert split_by_structure(["a", "b", "c"], val_structures=["c"]) == (["a", "b"], ["c"])
    with pytest.raises(ValueError, match="not in the dataset"):
        split_by_structure(["a", "b"], val_structures=["x"])
    with pytest.raises(ValueError, match="no training structure"):
        split_by_structure(["a", "b"], val_structures=["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        split_by_structure(["a", "a"])
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_structure(["a", "b"], 1.0)


def test_split_by_class():
    hit = np.array([1] * 70 + [2] * 65 + [3] * 30 + [-1] * 10)
    tr, va = split_by_class(hit, [1, 2, 3], 40, 20, seed=0)
    assert not set(tr) & set(va)
    assert [int(np.sum(hit[tr] == c)) for c in (1, 2, 3)] == [40, 40, 20]  # class 3: 2:1 split of 30
    assert [int(np.sum(hit[va] == c)) for c in (1, 2, 3)] == [20, 20, 10]
    assert np.all(hit[tr] > 0) and np.all(hit[va] > 0)
    tr2, va2 = split_by_class(hit, [1, 2, 3], 40, 20, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    with pytest.raises(ValueError, match="class 0 has 0 labelled"):
        split_by_class(hit, [0, 1], 40, 20, where="run.h5")
