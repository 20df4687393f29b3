"""Beam and sampling effects (speckle_embed.realism.beam): binning, bandwidth, coherence."""
from __future__ import annotations

import pytest
import torch

from speckle_embed.realism import BeamConfig, apply_beam, bandwidth_smear, bin_pixels, coherence_blur


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def speckles(n=1, size=96, support=12, seed=0):
    """Expected intensity of fully coherent speckles: |FFT(random complex object)|^2 (contrast 1)."""
    g = gen(seed)
    obj = torch.zeros(n, size, size, dtype=torch.complex64)
    c = size // 2
    obj[:, c - support // 2:c + support // 2, c - support // 2:c + support // 2] = torch.complex(
        torch.randn(n, support, support, generator=g), torch.randn(n, support, support, generator=g))
    field = torch.fft.fftshift(torch.fft.fft2(obj), dim=(-2, -1))
    return field.abs() ** 2 / support ** 2


def annulus(size, r_lo, r_hi, centre=None):
    c = (size - 1) / 2 if centre is None else centre
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    r = (yy**2 + xx**2).sqrt()
    return (r >= r_lo) & (r < r_hi)


def contrast(x, sel):
    v = x[:, sel]
    return float((v.std(1) / v.mean(1)).mean())


def test_binning_preserves_photons_and_poisson_statistics():
    x = torch.poisson(torch.full((200, 32, 32), 0.3), generator=gen(1))
    y, bad = bin_pixels(x, None, 4)
    assert y.shape == (200, 8, 8) and not bad.any()
    assert float(y.sum()) == float(x.sum())
    assert float(y.mean()) == pytest.approx(16 * 0.3, rel=0.02)
    assert float(y.var()) == pytest.approx(16 * 0.3, rel=0.05)  # a sum of Poisson counts is Poisson
    # bad-pixel rules
    m = torch.zeros(32, 32, dtype=torch.bool)
    m[0, 0] = True
    m[4:8, 4:8] = True
    y_any, b_any = bin_pixels(x, m, 4, rule="any")
    assert b_any[:, 0, 0].all() and b_any[:, 1, 1].all() and int(b_any[0].sum()) == 2
    assert torch.all(y_any[b_any] == 0)
    y_all, b_all = bin_pixels(x, m, 4, rule="all")
    assert b_all[:, 1, 1].all() and not b_all[:, 0, 0].any()
    torch.testing.assert_close(y_all[:, 0, 0], (x[:, :4, :4].sum((1, 2)) - x[:, 0, 0]) * 16 / 15)
    odd, _ = bin_pixels(torch.ones(1, 10, 11), None, 3)
    assert odd.shape == (1, 3, 3) and torch.all(odd == 9)


def test_bandwidth_conserves_intensity_and_lowers_speckle_contrast_at_high_q():
    x = speckles(4, support=32)  # speckles of 96 / 32 = 3 pixels
    sel = annulus(96, 25, 45)
    c0 = contrast(x, sel)
    assert c0 == pytest.approx(1.0, abs=0.15)  # fully developed speckle
    last = c0
    for b in (0.01, 0.03, 0.1):
        y = bandwidth_smear(x, b)
        inner = annulus(96, 0, 40)
        assert float(y[:, inner].sum()) == pytest.approx(float(x[:, inner].sum()), rel=0.02)
        c = contrast(y, sel)
        assert c < last
        last = c
    assert last < 0.8 * c0
    # smearing is radial and grows with r: near the centre the contrast is almost kept
    y = bandwidth_smear(x, 0.03)
    near = annulus(96, 3, 8)
    assert contrast(y, near) > 0.9 * contrast(x, near)
    torch.testing.assert_close(bandwidth_smear(x, 0.0), x, atol=1e-4, rtol=1e-4)


def test_coherence_blur_lowers_contrast_monotonically_and_conserves_total():
    x = speckles(4, seed=3)
    sel = annulus(96, 10, 40)
    cs = []
    for s in (0.0, 0.5, 1.0, 2.0):
        y = coherence_blur(x, s)
        assert float(y.sum()) == pytest.approx(float(x.sum()), rel=0.01)
        cs.append(contrast(y, sel))
    assert cs[0] == pytest.approx(contrast(x, sel))
    assert all(a > b for a, b in zip(cs, cs[1:]))
    flat = coherence_blur(torch.ones(2, 20, 20), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(flat, torch.ones(2, 20, 20))


def test_apply_beam_draws_per_frame_and_p0_is_identity():
    x = speckles(6, seed=5)
    assert torch.equal(apply_beam(x, BeamConfig(p=0.0), generator=gen()), x)
    y = apply_beam(x, BeamConfig(p=1.0, bandwidth=[0.01, 0.01], coherence_p=1.0, coherence_sigma_px=[1.0, 1.0]),
                   generator=gen())
    torch.testing.assert_close(y, coherence_blur(bandwidth_smear(x, 0.01), 1.0))
    half = apply_beam(x, BeamConfig(p=0.5, bandwidth=[0.01, 0.01], coherence_p=0.0), generator=gen(2))
    changed = [not torch.equal(half[i], x[i]) for i in range(6)]
    assert 0 < sum(changed) < 6
    with pytest.raises(ValueError, match="beam.bandwidth"):
        BeamConfig(bandwidth=[0.01, 0.5])
