"""Miners and triplet loss against a brute-force loop over every (a, p, n) triplet."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from speckle_embed.losses import (
    BaseTripletMiner,
    BatchAllMiner,
    BatchHardMiner,
    SemiHardMiner,
    TripletLoss,
    pairwise_squared_l2,
    valid_pair_masks,
)

SEEDS = range(6)
MARGINS = (0.2, 0.5, 1.0)


# --------------------------------------------------------------------------------------
# Brute-force oracle: plain Python over all N^3 triplets
# --------------------------------------------------------------------------------------
def oracle_dist(emb: torch.Tensor) -> list[list[float]]:
    rows = emb.double().tolist()
    return [[sum((x - y) ** 2 for x, y in zip(ri, rj)) for rj in rows] for ri in rows]


def is_valid(a, p, n, structure, hit) -> bool:
    same_structure = structure is None or structure[a] == structure[p]
    return a != p and hit[a] == hit[p] and same_structure and hit[n] != hit[a]


def oracle_triplets(structure, hit) -> list[tuple[int, int, int]]:
    n = len(hit)
    return [t for t in itertools.product(range(n), repeat=3) if is_valid(*t, structure, hit)]


def oracle_pairs(structure, hit) -> dict[tuple[int, int], list[int]]:
    """Every (a, p) pair that has at least one valid negative -> its negatives."""
    pairs: dict[tuple[int, int], list[int]] = {}
    for a, p, n in oracle_triplets(structure, hit):
        pairs.setdefault((a, p), []).append(n)
    return pairs


def is_semihard(d, a, p, n, margin) -> bool:
    return d[a][p] < d[a][n] < d[a][p] + margin


def argmin_first(values: dict[int, float]) -> int:
    best = min(values.values())
    return min(k for k, v in values.items() if v == best)


def oracle_semihard(d, structure, hit, margin, fallback):
    """Expected (a, p) -> negative for select="hardest", and -> (semi-hard set or None)."""
    hardest, semi_sets = {}, {}
    for (a, p), negs in oracle_pairs(structure, hit).items():
        semi = [n for n in negs if is_semihard(d, a, p, n, margin)]
        semi_sets[(a, p)] = semi
        if semi:
            hardest[(a, p)] = argmin_first({n: d[a][n] for n in semi})
        elif fallback == "hardest":
            hardest[(a, p)] = argmin_first({n: d[a][n] for n in negs})
        elif fallback == "random":
            hardest[(a, p)] = None  # any valid negative
        # fallback == "none": pair dropped
    return hardest, semi_sets


def triplets_of(out) -> list[tuple[int, int, int]]:
    a, p, n = out
    return list(zip(a.tolist(), p.tolist(), n.tolist()))


def random_batch(seed, n_structures=4, k=4, n_hit=2, dim=6, normalise=True):
    """P structures x K images, random hit labels, float64 embeddings."""
    g = torch.Generator().manual_seed(seed)
    structure = torch.arange(n_structures).repeat_interleave(k)
    hit = torch.randint(0, n_hit, (n_structures * k,), generator=g)
    emb = torch.randn(n_structures * k, dim, generator=g, dtype=torch.float64)
    if normalise:
        emb = torch.nn.functional.normalize(emb, dim=1)
    return emb, structure, hit


def check_semihard(out, emb, structure, hit, margin, select, fallback):
    s = None if structure is None else structure.tolist()
    h = hit.tolist()
    d = oracle_dist(emb)
    expected, semi_sets = oracle_semihard(d, s, h, margin, fallback)
    got = triplets_of(out)
    got_pairs = [(a, p) for a, p, _ in got]
    # exactly one triplet per expected pair, and nothing else
    assert sorted(got_pairs) == sorted(expected)
    assert len(set(got_pairs)) == len(got_pairs)
    for a, p, n in got:
        assert is_valid(a, p, n, s, h)
        if semi_sets[(a, p)]:
            assert n in semi_sets[(a, p)]
            if select == "hardest":
                assert n == expected[(a, p)]
        elif fallback == "hardest":
            assert n == expected[(a, p)]
    return got


# --------------------------------------------------------------------------------------
# distances
# --------------------------------------------------------------------------------------
def test_pairwise_squared_l2_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64)
    b = torch.randn(4, 5, generator=g, dtype=torch.float64)
    expected = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(pairwise_squared_l2(a, b), expected)
    self_d = pairwise_squared_l2(a)
    torch.testing.assert_close(self_d, ((a[:, None] - a[None]) ** 2).sum(-1))
    assert torch.equal(self_d.diagonal(), torch.zeros(7, dtype=torch.float64))
    assert torch.equal(self_d, self_d.T)


def test_pairwise_squared_l2_far_from_origin_float32():
    """Centring keeps float32 accurate when points sit far from the origin."""
    g = torch.Generator().manual_seed(1)
    x32 = (torch.randn(32, 16, generator=g, dtype=torch.float64) * 0.01 + 1000.0).float()
    d = pairwise_squared_l2(x32)
    x64 = x32.double()
    expected = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    assert (d >= 0).all()
    torch.testing.assert_close(d.double(), expected, rtol=1e-3, atol=1e-6)
    # the plain expansion |x|^2 + |y|^2 - 2 x.y is useless here (|x|^2 ~ 1.6e7)
    sq = x32.pow(2).sum(1)
    naive = (sq[:, None] + sq[None] - 2 * x32 @ x32.T).clamp_min(0)
    assert (naive.double() - expected).abs().max() > 100 * (d.double() - expected).abs().max()


def test_pairwise_squared_l2_half_and_grad():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pairwise_squared_l2, (x, y))
    assert pairwise_squared_l2(x.detach().half()).dtype == torch.float32
    assert pairwise_squared_l2(torch.zeros(0, 3), torch.zeros(2, 3)).shape == (0, 2)
    with pytest.raises(ValueError):
        pairwise_squared_l2(torch.zeros(2, 3), torch.zeros(2, 4))


# --------------------------------------------------------------------------------------
# the pair rule
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_structure", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_valid_pair_masks_matches_rule(seed, with_structure):
    _, structure, hit = random_batch(seed, n_hit=3)
    if not with_structure:
        structure = None
    s = None if structure is None else structure.tolist()
    h = hit.tolist()
    pos, neg = valid_pair_masks(structure, hit)
    n = len(h)
    for a, b in itertools.product(range(n), repeat=2):
        assert pos[a, b].item() == (a != b and h[a] == h[b] and (s is None or s[a] == s[b]))
        assert neg[a, b].item() == (h[a] != h[b])


# --------------------------------------------------------------------------------------
# SemiHardMiner
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fallback", ["hardest", "random", "none"])
@pytest.mark.parametrize("select", ["hardest", "random"])
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("seed", SEEDS)
def test_semihard_against_oracle(seed, margin, select, fallback):
    emb, structure, hit = random_batch(seed)
    miner = SemiHardMiner(
        margin, select=select, fallback=fallback, generator=torch.Generator().manual_seed(seed)
    )
    out = miner(emb, structure, hit)
    for t in out:
        assert t.dtype == torch.long and t.ndim == 1
    got = check_semihard(out, emb, structure, hit, margin, select, fallback)
    assert miner.stats["n_triplets"] == len(got)


@pytest.mark.parametrize("select", ["hardest", "random"])
@pytest.mark.parametrize("seed", SEEDS)
def test_semihard_single_label_rule(seed, select):
    emb, _, hit = random_batch(seed, n_hit=3)
    miner = SemiHardMiner(0.5, select=select, generator=torch.Generator().manual_seed(seed))
    check_semihard(miner(emb, None, hit), emb, None, hit, 0.5, select, "hardest")


def test_semihard_float32_unnormalised_larger_batch():
    """Float32 embeddings off the sphere, a batch that spans several work chunks."""
    import speckle_embed.losses.miners as miners_mod

    emb, structure, hit = random_batch(7, n_structures=6, k=5, n_hit=3, normalise=False)
    old = miners_mod._CHUNK_ELEMENTS
    try:
        miners_mod._CHUNK_ELEMENTS = 64  # force ~30 chunks of 2 pairs
        out = SemiHardMiner(2.0, select="hardest")(emb.float(), structure, hit)
    finally:
        miners_mod._CHUNK_ELEMENTS = old
    check_semihard(out, emb.float(), structure, hit, 2.0, "hardest", "hardest")


def test_semihard_random_is_reproducible_and_covers_all_candidates():
    emb, structure, hit = random_batch(3)
    make = lambda s: SemiHardMiner(1.0, generator=torch.Generator().manual_seed(s))  # noqa: E731
    out1, out2 = make(11)(emb, structure, hit), make(11)(emb, structure, hit)
    assert all(torch.equal(x, y) for x, y in zip(out1, out2))

    # Over many draws every semi-hard candidate of every pair gets picked (uniform choice).
    d = oracle_dist(emb)
    _, semi_sets = oracle_semihard(d, structure.tolist(), hit.tolist(), 1.0, "hardest")
    miner = make(0)
    seen: dict[tuple[int, int], Counter] = {k: Counter() for k in semi_sets}
    for _ in range(300):
        for a, p, n in triplets_of(miner(emb, structure, hit)):
            seen[(a, p)][n] += 1
    multi = [k for k, v in semi_sets.items() if len(v) > 1]
    assert multi, "test batch should have pairs with several semi-hard negatives"
    for k in multi:
        assert set(seen[k]) == set(semi_sets[k])


def _no_semihard_batch():
    """1-D embeddings: positives 1 apart, negatives >= 10 away (all easy at margin 0.5)."""
    emb = torch.tensor([[0.0], [1.0], [10.0], [12.0], [20.0], [21.0]], dtype=torch.float64)
    structure = torch.tensor([0, 0, 1, 1, 2, 2])
    hit = torch.tensor([1, 1, 0, 0, 2, 2])
    return emb, structure, hit


@pytest.mark.parametrize("select", ["hardest", "random"])
def test_semihard_fallbacks_when_no_semihard(select):
    emb, structure, hit = _no_semihard_batch()
    pos, _ = valid_pair_masks(structure, hit)
    all_pairs = sorted(map(tuple, pos.nonzero().tolist()))

    hardest = SemiHardMiner(0.5, select=select, fallback="hardest")
    got = triplets_of(hardest(emb, structure, hit))
    assert [(a, p) for a, p, _ in got] == all_pairs
    nearest = {0: 2, 1: 2, 2: 1, 3: 4, 4: 3, 5: 3}  # closest sample with another hit label
    assert all(n == nearest[a] for a, _, n in got)
    assert hardest.stats["n_semihard"] == 0 and hardest.stats["n_fallback"] == len(all_pairs)

    rnd = SemiHardMiner(0.5, select=select, fallback="random",
                        generator=torch.Generator().manual_seed(0))
    picks = set()
    for _ in range(50):
        got = triplets_of(rnd(emb, structure, hit))
        assert [(a, p) for a, p, _ in got] == all_pairs
        assert all(hit[n] != hit[a] for a, _, n in got)
        picks |= {n for a, _, n in got if a == 0}
    assert picks == {2, 3, 4, 5}

    none = SemiHardMiner(0.5, select=select, fallback="none")
    a, p, n = none(emb, structure, hit)
    assert a.numel() == p.numel() == n.numel() == 0 and a.dtype == torch.long
    check_semihard((a, p, n), emb, structure, hit, 0.5, select, "none")


def test_semihard_mixed_semihard_and_fallback():
    # 1-D points 0, 1, 2, 12, 10; hits 1, 1, 0, 0, 0; margin 5.
    # (0, 1): d_ap = 1, negative 2 at d = 4 is semi-hard (1 < 4 < 6), others are easy.
    # (1, 0): d_ap = 1, negative 2 at d = 1 is not (strict), others easy -> fallback.
    # (2, 3): d_ap = 100, negatives 0, 1 are hard (d = 4, 1) -> fallback.
    # (3, 2): d_ap = 100, negatives at d = 144, 121 are easy -> fallback.
    emb = torch.tensor([[0.0], [1.0], [2.0], [12.0], [10.0]], dtype=torch.float64)
    structure = torch.tensor([0, 0, 1, 1, 2])
    hit = torch.tensor([1, 1, 0, 0, 0])
    for fallback in ("hardest", "random", "none"):
        out = SemiHardMiner(5.0, select="hardest", fallback=fallback)(emb, structure, hit)
        check_semihard(out, emb, structure, hit, 5.0, "hardest", fallback)
    got = triplets_of(SemiHardMiner(5.0, select="hardest", fallback="none")(emb, structure, hit))
    assert got == [(0, 1, 2)]
    fb = triplets_of(SemiHardMiner(5.0, select="hardest", fallback="hardest")(emb, structure, hit))
    assert fb == [(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]


def test_semihard_boundaries_are_strict():
    # d_ap = 1; negatives at d = 1 (equal: not semi-hard) and d = 1 + margin (not semi-hard).
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
    structure = torch.tensor([0, 0, 1, 1])
    hit = torch.tensor([1, 1, 0, 0])
    miner = SemiHardMiner(3.0, select="hardest", fallback="none")
    a, _, _ = miner(emb, structure, hit)
    # anchor 0: d(0,2)=1 == d_ap, d(0,3)=4 == d_ap + 3 -> nothing semi-hard for (0, 1)
    assert 0 not in a.tolist()


# --------------------------------------------------------------------------------------
# BatchHardMiner
# --------------------------------------------------------------------------------------
def oracle_batch_hard(d, structure, hit):
    out = []
    for a in range(len(hit)):
        trip = [(p, n) for p, n in itertools.product(range(len(hit)), repeat=2)
                if is_valid(a, p, n, structure, hit)]
        if not trip:
            continue
        pos = {p: d[a][p] for p, _ in trip}
        neg = {n: d[a][n] for _, n in trip}
        best_p = min(k for k, v in pos.items() if v == max(pos.values()))
        out.append((a, best_p, argmin_first(neg)))
    return out


@pytest.mark.parametrize("with_structure", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_batch_hard_against_oracle(seed, with_structure):
    emb, structure, hit = random_batch(seed, n_hit=3 if seed % 2 else 2)
    if not with_structure:
        structure = None
    got = triplets_of(BatchHardMiner()(emb, structure, hit))
    s = None if structure is None else structure.tolist()
    assert got == oracle_batch_hard(oracle_dist(emb), s, hit.tolist())


# --------------------------------------------------------------------------------------
# BatchAllMiner
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("active_only", [False, True])
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("seed", SEEDS)
def test_batch_all_against_oracle(seed, margin, active_only):
    emb, structure, hit = random_batch(seed)
    miner = BatchAllMiner(margin, active_only=active_only)
    got = triplets_of(miner(emb, structure, hit))
    s, h = structure.tolist(), hit.tolist()
    expected = oracle_triplets(s, h)
    assert miner.stats["n_valid"] == len(expected)
    if active_only:
        d = oracle_dist(emb)
        expected = [(a, p, n) for a, p, n in expected if d[a][p] - d[a][n] + margin > 0]
    assert got == expected  # lexicographic order


def test_batch_all_chunked_and_single_label():
    import speckle_embed.losses.miners as miners_mod

    emb, _, hit = random_batch(2, n_hit=3)
    old = miners_mod._CHUNK_ELEMENTS
    try:
        miners_mod._CHUNK_ELEMENTS = 300  # one anchor per chunk for N = 16
        got = triplets_of(BatchAllMiner(0.2)(emb, None, hit))
    finally:
        miners_mod._CHUNK_ELEMENTS = old
    assert got == oracle_triplets(None, hit.tolist())


# --------------------------------------------------------------------------------------
# edge cases shared by all miners
# --------------------------------------------------------------------------------------
def all_miners():
    return [
        SemiHardMiner(0.5, select="hardest", fallback="hardest"),
        SemiHardMiner(0.5, select="random", fallback="random"),
        SemiHardMiner(0.5, select="random", fallback="none"),
        BatchHardMiner(),
        BatchAllMiner(0.5),
        BatchAllMiner(0.5, active_only=True),
    ]


@pytest.mark.parametrize("miner", all_miners(), ids=repr)
def test_all_same_hit_label_gives_no_triplets(miner):
    emb, structure, _ = random_batch(0)
    hit = torch.ones(len(structure), dtype=torch.long)
    a, p, n = miner(emb, structure, hit)
    assert a.shape == p.shape == n.shape == (0,)
    assert a.dtype == p.dtype == n.dtype == torch.long
    loss, stats = TripletLoss(0.5)(emb.requires_grad_(), a, p, n)
    assert stats["n_triplets"] == 0


@pytest.mark.parametrize("miner", all_miners(), ids=repr)
def test_singleton_class_is_never_anchor_or_positive(miner):
    emb, structure, hit = random_batch(4)
    # sample 0 becomes the only member of its (structure, hit) group
    structure = structure.clone()
    structure[0] = 99
    a, p, n = miner(emb, structure, hit)
    assert 0 not in a.tolist() and 0 not in p.tolist()
    s, h = structure.tolist(), hit.tolist()
    assert all(is_valid(*t, s, h) for t in triplets_of((a, p, n)))
    # ... but it may still serve as a negative: for batch-all it does whenever possible
    if isinstance(miner, BatchAllMiner) and not miner.active_only:
        assert 0 in n.tolist()


@pytest.mark.parametrize("miner", all_miners(), ids=repr)
def test_empty_and_tiny_batches(miner):
    a, p, n = miner(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long))
    assert a.numel() == 0
    a, p, n = miner(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long),
                    torch.zeros(1, dtype=torch.long))
    assert a.numel() == 0


def test_miner_input_validation():
    miner = BatchHardMiner()
    emb = torch.randn(4, 3)
    s = torch.tensor([0, 0, 1, 1])
    h = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError):
        miner(emb, s, h[:3])
    with pytest.raises(ValueError):
        miner(emb[0], s, h)
    with pytest.raises(TypeError):
        miner(emb, s, h.float())
    with pytest.raises(TypeError):
        miner(emb.long(), s, h)
    with pytest.raises(ValueError):  # labels on another device
        miner(emb, s, h.to("meta"))
    # narrow integer labels (int8 as stored in the HDF5 truth) are accepted
    out = miner(emb, s.to(torch.int8), h.to(torch.int8))
    assert all(t.dtype == torch.long for t in out)
    for bad in (dict(margin=0.0), dict(margin=0.5, select="x"), dict(margin=0.5, fallback="x")):
        with pytest.raises(ValueError):
            SemiHardMiner(**bad)
    with pytest.raises(ValueError):
        BatchAllMiner(-1.0)
    with pytest.raises(NotImplementedError):
        BaseTripletMiner()(emb, s, h)


def test_miners_do_not_track_gradients():
    emb = torch.randn(8, 3, requires_grad=True)
    s = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    h = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    for miner in all_miners():
        for t in miner(emb, s, h):
            assert not t.requires_grad
    assert emb.grad is None


# --------------------------------------------------------------------------------------
# TripletLoss
# --------------------------------------------------------------------------------------
def test_triplet_loss_against_loop():
    emb, structure, hit = random_batch(5)
    emb.requires_grad_()
    a, p, n = BatchAllMiner(0.5)(emb, structure, hit)
    loss, stats = TripletLoss(0.5)(emb, a, p, n)
    d = oracle_dist(emb.detach())
    per = [max(d[i][j] - d[i][k] + 0.5, 0.0) for i, j, k in triplets_of((a, p, n))]
    assert loss.item() == pytest.approx(sum(per) / len(per), rel=1e-12)
    assert stats["n_triplets"] == len(per)
    assert stats["n_active"] == sum(x > 0 for x in per)
    assert stats["active_fraction"] == pytest.approx(sum(x > 0 for x in per) / len(per))
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_triplet_loss_zero_triplets_keeps_graph():
    emb = torch.randn(5, 3, requires_grad=True)
    empty = torch.empty(0, dtype=torch.long)
    loss, stats = TripletLoss(0.3)(emb, empty, empty, empty)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert stats["n_triplets"] == 0 and stats["n_active"] == 0 and stats["active_fraction"] == 0.0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))
    # NaN embeddings still give an exact zero
    nan_emb = torch.full((2, 3), float("nan"), requires_grad=True)
    assert TripletLoss(0.3)(nan_emb, empty, empty, empty)[0].item() == 0.0


def test_triplet_loss_validation():
    emb = torch.randn(4, 3)
    i = torch.tensor([0, 1])
    with pytest.raises(ValueError):
        TripletLoss(0.2)(emb, i, i, i[:1])
    with pytest.raises(ValueError):
        TripletLoss(0.2)(emb, i.float(), i, i)
    with pytest.raises(ValueError):
        TripletLoss(-0.1)


@pytest.mark.parametrize("make_miner", [
    lambda: SemiHardMiner(0.5, generator=torch.Generator().manual_seed(0)),
    lambda: BatchHardMiner(),
    lambda: BatchAllMiner(0.5),
], ids=["semihard", "batchhard", "batchall"])
def test_triplet_loss_decreases_under_sgd(make_miner):
    """Toy problem: a linear map of noisy class prototypes, trained with mined triplets."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    structure = torch.arange(4).repeat_interleave(6)
    hit = torch.tensor([0, 0, 0, 1, 1, 1] * 4)
    prototypes = torch.randn(4, 2, 16, generator=g)
    x = prototypes[structure, hit] + 2.0 * torch.randn(24, 16, generator=g)
    model = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    miner, criterion = make_miner(), TripletLoss(0.5)

    def full_loss():
        with torch.no_grad():
            emb = torch.nn.functional.normalize(model(x), dim=1)
            return criterion(emb, *BatchAllMiner(0.5)(emb, structure, hit))[0].item()

    before = full_loss()
    for _ in range(30):
        emb = torch.nn.functional.normalize(model(x), dim=1)
        loss, _ = criterion(emb, *miner(emb, structure, hit))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = full_loss()
    assert after < 0.7 * before
