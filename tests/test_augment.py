"""On-the-fly augmentation of raw photon frames (speckle_embed.train.augment)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speckle_embed.preprocess import Preprocessing, preprocess
from speckle_embed.train.augment import (AugmentConfig, SpeckleAugment, binomial, poisson_background,
                                         thin_photons)


def only(**sections) -> AugmentConfig:
    """Config with every operation off except the given ones."""
    return AugmentConfig.disabled().replace(**sections)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def frames(n=6, h=32, w=32, rate=3.0, seed=0):
    return torch.poisson(torch.full((n, h, w), rate), generator=gen(seed))


def test_shapes_dtype_and_preprocess_compatibility():
    aug = SpeckleAugment(out_size=24)
    mask = np.zeros((32, 32), dtype=np.uint16)
    mask[:, 15:17] = 1
    x, bad = aug(frames(), mask, generator=gen())
    assert x.shape == bad.shape == (6, 24, 24)
    assert x.dtype == torch.float32 and bad.dtype == torch.bool
    assert torch.all(x[bad] == 0)
    inp = preprocess(x, Preprocessing(input_size=24, crop=24), mask=bad)
    assert inp.shape == (6, 1, 24, 24) and torch.isfinite(inp).all()
    # no out_size: same size as the input; integer input converted
    y, _ = SpeckleAugment()(frames().to(torch.int32), generator=gen())
    assert y.shape == (6, 32, 32)


def test_deterministic_given_generator():
    aug = SpeckleAugment(out_size=24)
    x = frames()
    a, ma = aug(x, generator=gen(5))
    b, mb = aug(x, generator=gen(5))
    c, _ = aug(x, generator=gen(6))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert not torch.equal(a, c)


def test_disabled_is_a_central_crop():
    x = frames()
    aug = SpeckleAugment(AugmentConfig(enabled=False), out_size=24)
    y, bad = aug(x)
    assert torch.equal(y, x[:, 4:28, 4:28]) and not bad.any()
    # all probabilities 0: the same crop (through the resampling path)
    y2, bad2 = SpeckleAugment(AugmentConfig.disabled(), out_size=24)(x, generator=gen())
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=0)
    assert not bad2.any()


def test_rotation_by_90_degrees_of_a_known_image():
    img = torch.zeros(1, 17, 17)
    img[0, 2, 8] = 5.0      # above the centre
    img[0, 8, 12] = 3.0     # right of the centre
    img[0, 3:6, 3:5] = 1.0  # a block top-left
    aug = SpeckleAugment(AugmentConfig.disabled())
    bad = torch.zeros_like(img, dtype=torch.bool)
    out, out_bad = aug.geometry(img, bad, out_size=(17, 17), angle=torch.tensor([math.pi / 2]))
    expected = torch.rot90(img, 1, (-2, -1))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert not out_bad.any()
    # the mask rotates with the frame: a vertical gap becomes horizontal
    gap = torch.zeros_like(bad)
    gap[0, :, 7:9] = True
    _, rot_gap = aug.geometry(img, gap, out_size=(17, 17), angle=torch.tensor([math.pi / 2]))
    assert torch.equal(rot_gap, torch.rot90(gap, 1, (-2, -1)))


def test_zoom_and_shift():
    n = 65
    yy, xx = torch.meshgrid(torch.arange(n) - 32.0, torch.arange(n) - 32.0, indexing="ij")
    disk = ((yy**2 + xx**2) <= 20.0**2).float()[None]
    aug = SpeckleAugment(AugmentConfig.disabled().replace(interpolation="nearest"))
    bad = torch.zeros_like(disk, dtype=torch.bool)
    zoomed, _ = aug.geometry(disk, bad, out_size=(n, n), zoom=torch.tensor([1.1]))
    assert float(zoomed.sum() / disk.sum()) == pytest.approx(1.21, rel=0.03)
    dezoomed, _ = aug.geometry(disk, bad, out_size=(n, n), zoom=torch.tensor([0.9]))
    assert float(dezoomed.sum() / disk.sum()) == pytest.approx(0.81, rel=0.03)
    dot = torch.zeros(1, n, n)
    dot[0, 32, 32] = 1.0
    moved, moved_bad = aug.geometry(dot, bad, out_size=(n, n), shift=torch.tensor([[2.0, -3.0]]))
    # the output window is centred on the shifted beam centre: content moves the other way
    assert moved[0, 30, 35] == 1.0 and moved.sum() == 1.0
    assert moved_bad[0, -2:, :].all() and not moved_bad[0, :-2, 3:].any()


def test_random_geometry_ranges():
    cfg = only(rotation={"p": 1.0, "max_deg": 0.0}, zoom={"p": 1.0, "range": 0.1})
    aug = SpeckleAugment(cfg)
    n = 33
    yy, xx = torch.meshgrid(torch.arange(n) - 16.0, torch.arange(n) - 16.0, indexing="ij")
    disk = ((yy**2 + xx**2) <= 8.0**2).float().expand(64, n, n)
    out, _ = aug(disk, generator=gen())
    ratio = out.sum((1, 2)) / disk[0].sum()
    assert ratio.min() >= 0.9**2 * 0.9 and ratio.max() <= 1.1**2 * 1.1
    assert ratio.std() > 0.02  # zoom factors differ between frames


def test_dropout_keeps_a_quarter_of_the_detector():
    x = torch.ones(40, 32, 32)
    for mode in ("quadrants", "panels", "either"):
        aug = SpeckleAugment(only(dropout={"p": 1.0, "mode": mode, "keep_fraction": 0.25}))
        _, bad = aug(x, generator=gen(1))
        kept = 1.0 - bad.float().mean((1, 2))
        torch.testing.assert_close(kept, torch.full((40,), 0.25))
        assert len({tuple(b.flatten().tolist()) for b in bad}) > 1  # random areas
    aug = SpeckleAugment(only(dropout={"p": 0.5}))
    _, bad = aug(x, generator=gen(2))
    dropped = bad.any((1, 2))
    assert 0 < int(dropped.sum()) < 40


def test_patches_mask_rectangles():
    aug = SpeckleAugment(only(patches={"p": 1.0, "max_count": 2, "min_size": 0.1, "max_size": 0.25}))
    _, bad = aug(torch.ones(20, 40, 40), generator=gen())
    frac = bad.float().mean((1, 2))
    assert torch.all(frac > 0) and torch.all(frac <= 2 * 0.25**2 + 0.02)
    rows = bad.any(2).sum(1)
    assert torch.all(rows >= 4) and torch.all(rows <= 2 * 10 + 2)
    _, none = SpeckleAugment(only(patches={"p": 0.0}))(torch.ones(4, 40, 40), generator=gen())
    assert not none.any()


def test_thinning_mean_and_variance():
    x = torch.poisson(torch.full((50, 64, 64), 5.0), generator=gen(0))
    f = torch.full((50,), 0.3)
    y = thin_photons(x, f, generator=gen(1))
    assert float(y.mean()) == pytest.approx(1.5, rel=0.02)
    assert float(y.var()) == pytest.approx(1.5, rel=0.04)  # thinned Poisson is Poisson
    assert torch.all(y <= x) and torch.all(y == y.round())
    # factor 1 leaves frames untouched, factor > 1 scales the photon part
    x2 = x[:2] + 0.1
    assert torch.equal(thin_photons(x2, torch.ones(2), generator=gen()), x2)
    torch.testing.assert_close(thin_photons(x[:2], torch.full((2,), 2.0), generator=gen()), 2 * x[:2])
    # the residual (read noise) is kept as is
    noisy = torch.tensor([[[3.2, -0.3]]])
    out = thin_photons(noisy, torch.tensor([0.5]), generator=gen())
    assert out[0, 0, 1] == pytest.approx(-0.3)
    kept = float(out[0, 0, 0]) - 0.2  # 3 photons thinned + the 0.2 residual
    assert abs(kept - round(kept)) < 1e-5 and 0 <= round(kept) <= 3


def test_binomial_and_poisson_samplers():
    for n, p in ((3.0, 0.2), (20.0, 0.9), (100.0, 0.4)):
        counts = torch.full((100000,), n)
        b = binomial(counts, torch.full_like(counts, p), generator=gen())
        assert float(b.mean()) == pytest.approx(n * p, rel=0.02)
        assert float(b.var()) == pytest.approx(n * p * (1 - p), rel=0.05)
        assert torch.all((b >= 0) & (b <= n))
    bg = poisson_background(torch.tensor([0.05, 0.8, 3.0]), (200, 200), generator=gen())
    for i, lam in enumerate((0.05, 0.8, 3.0)):
        assert float(bg[i].mean()) == pytest.approx(lam, rel=0.05)
        assert float(bg[i].var()) == pytest.approx(lam, rel=0.08)


def test_fluence_and_noise_through_forward():
    x = torch.poisson(torch.full((200, 16, 16), 4.0), generator=gen())
    aug = SpeckleAugment(only(fluence={"p": 1.0, "sigma": 0.5, "thin_only": True}))
    y, _ = aug(x, generator=gen(3))
    ratio = y.mean((1, 2)) / x.mean((1, 2))
    assert ratio.max() <= 1.0 + 1e-6 and ratio.min() < 0.7
    aug = SpeckleAugment(only(poisson={"p": 1.0, "max_rate": 0.5}, gaussian={"p": 1.0, "max_sigma": 0.3}))
    z, _ = aug(torch.zeros(200, 16, 16), generator=gen(4))
    assert float(z.mean()) == pytest.approx(0.25, rel=0.1)  # E[U(0, 0.5)] background photons
    assert float((z - z.round()).abs().max()) > 0  # Gaussian read noise added


def test_mask_and_nonfinite_pixels_are_bad():
    x = frames(2, 20, 20)
    x[0, 3, 3] = float("nan")
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[10, :] = True
    y, bad = SpeckleAugment(AugmentConfig(enabled=False))(x, mask)
    assert bad[0, 3, 3] and bad[:, 10].all() and not bad[1, 3, 3]
    assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match="mask shape"):
        SpeckleAugment()(x, torch.zeros(5, 5))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown key"):
        AugmentConfig.from_dict({"rotation": {"p": 0.5, "angle": 3}})
    with pytest.raises(ValueError, match=r"augment.zoom.p"):
        AugmentConfig.from_dict({"zoom": {"p": 1.5}})
    with pytest.raises(ValueError, match="dropout.mode"):
        AugmentConfig.from_dict({"dropout": {"mode": "rows"}})
    cfg = AugmentConfig.from_dict({"shift": {"fraction": 0.1}})
    assert cfg.shift.fraction == 0.1 and cfg.shift.p == 0.5
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
