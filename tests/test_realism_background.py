"""Background photons (speckle_embed.realism.background): formula, Poisson statistics."""
from __future__ import annotations

import math

import pytest
import torch

from speckle_embed.realism import BackgroundConfig, BackgroundParams, add_background, background_rate


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def params(n, **kw):
    base = dict(gas=0.0, r0=5.0, alpha=3.0, streak=0.0, streak_angle=0.0, streak_length=10.0, streak_width=1.0,
                streak_offset=0.0, halo=0.0, halo_radius=6.0, halo_width=1.0, stray=0.0)
    base.update(kw)
    return BackgroundParams(**{k: torch.full((n,), float(v)) for k, v in base.items()})


def test_rate_equals_the_formulas_pixel_by_pixel():
    h, w = 21, 25
    centre = (9.0, 13.5)
    p = params(1, gas=0.4, r0=4.0, alpha=2.5, streak=0.7, streak_angle=0.6, streak_length=6.0, streak_width=1.3,
               streak_offset=1.5, halo=0.3, halo_radius=5.0, halo_width=0.8, stray=0.01)
    rate = background_rate((1, h, w), p, centre)[0]
    for i in range(h):  # brute-force loop over the pixels
        for j in range(w):
            dy, dx = i - centre[0], j - centre[1]
            r = math.hypot(dy, dx)
            t = dy * math.sin(0.6) + dx * math.cos(0.6)
            d = -dy * math.cos(0.6) + dx * math.sin(0.6) - 1.5
            want = (0.4 * (1 + r**2 / 16) ** (-1.25) + 0.01 + 0.7 * math.exp(-abs(t) / 6 - d**2 / (2 * 1.3**2))
                    + 0.3 * math.exp(-(r - 5) ** 2 / (2 * 0.8**2)))
            assert float(rate[i, j]) == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_added_photons_are_poisson_with_the_rate():
    n = 2000
    p = params(n, gas=0.6, r0=3.0, alpha=2.0, stray=0.02)
    x = torch.poisson(torch.full((n, 9, 9), 1.5), generator=gen(1))  # frames already holding photons
    y = add_background(x, BackgroundConfig(), generator=gen(2), params=p)
    added = y - x
    rate = background_rate((1, 9, 9), p)[0]
    assert torch.all(added >= 0) and torch.all(added == added.round())
    torch.testing.assert_close(added.mean(0), rate, atol=4 * math.sqrt(0.62 / n), rtol=0)
    torch.testing.assert_close(added.var(0), rate, atol=0.06, rtol=0)
    # exactness: the sum is Poisson(1.5 + rate): P(y = 0) = exp(-(1.5 + rate)) at the centre pixel
    p0 = float((y[:, 4, 4] == 0).float().mean())
    assert p0 == pytest.approx(math.exp(-(1.5 + float(rate[4, 4]))), abs=0.015)


def test_sampled_amplitudes_follow_the_configured_lognormal_spread():
    cfg = BackgroundConfig(gas_photons=[0.05, 0.05], amplitude_spread=0.4, streak_p=0.0, halo_p=0.0)
    from speckle_embed.realism import sample_background
    p = sample_background(20000, cfg, generator=gen(3))
    logs = torch.log(p.gas / 0.05)
    assert float(logs.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(logs.std()) == pytest.approx(0.4, rel=0.03)
    assert float((p.streak > 0).float().mean()) == 0.0
    off = sample_background(100, BackgroundConfig(p=0.0), generator=gen(4))
    assert float(off.gas.abs().sum() + off.stray.abs().sum() + off.streak.sum() + off.halo.sum()) == 0.0


def test_config_checks_ranges():
    with pytest.raises(ValueError, match="background.gas_alpha"):
        BackgroundConfig(gas_alpha=[4.0, 2.0])
    with pytest.raises(ValueError, match="background.halo_p"):
        BackgroundConfig(halo_p=2.0)
