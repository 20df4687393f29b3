"""Resampling of frames about the beam centre (preprocess.resample_center) against torch's grid_sample."""
from __future__ import annotations

import pytest
import torch

from speckle_embed.preprocess import bilinear_rows, resample_center


def _grid_sample_oracle(frames, valid, out_size, scale, center):
    """The previous implementation of resample_center (torch grid_sample), as a reference."""
    import torch.nn.functional as F

    n, h, w = frames.shape
    cy, cx = center
    data = torch.stack([torch.where(valid, frames, torch.zeros_like(frames)), valid.to(frames.dtype)], 1)
    k = max(int(round(scale)), 1)
    data = F.pad(data, (k, k, k, k))
    h, w, cy, cx = h + 2 * k, w + 2 * k, cy + k, cx + k
    if k > 1:
        data = F.avg_pool2d(data, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)[..., :h, :w]
    offs = (torch.arange(out_size, dtype=frames.dtype) - (out_size - 1) / 2) * scale
    gy, gx = torch.meshgrid((cy + offs) / (h - 1) * 2 - 1, (cx + offs) / (w - 1) * 2 - 1, indexing="ij")
    out = F.grid_sample(data, torch.stack([gx, gy], -1).expand(n, out_size, out_size, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    good = out[:, 1] > 1e-3
    return torch.where(good, out[:, 0] / out[:, 1].clamp_min(1e-3), torch.zeros_like(out[:, 0])), good


@pytest.mark.parametrize("shape,scale,center", [((70, 72), 0.7, (34.5, 35.2)), ((172, 172), 0.6, (85.5, 85.5)),
                                                ((40, 40), 1.3, (19.5, 19.5)), ((128, 128), 2.0, (63.5, 60.1)),
                                                ((100, 90), 3.2, (40.0, 52.7)), ((30, 30), 1.0, (14.2, 14.5))])
def test_resample_center_equals_bilinear_grid_sample(shape, scale, center):
    """Separable matrix products give grid_sample's bilinear, zero-padded sampling, masks included."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand((4, *shape), generator=g) * 10
    per_frame = torch.rand((4, *shape), generator=g) > 0.2
    one = torch.rand(shape, generator=g) > 0.1
    frames[:, ~one] = float("nan")  # masked pixels may hold anything
    for valid in (per_frame & one, one):
        got, good = resample_center(frames, valid, 24, scale, center)
        want, want_good = _grid_sample_oracle(frames, valid.expand(4, *shape), 24, scale, center)
        assert good.shape == want_good.shape == (4, 24, 24)
        torch.testing.assert_close(good, want_good)
        # grid_sample normalises coordinates to [-1, 1] and back: ~1e-5 px of rounding, amplified
        # where few valid pixels carry the weight
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-3)


def test_bilinear_rows_weights_sum_to_one_inside_and_drop_outside():
    pos = torch.tensor([-2.0, -0.5, 0.0, 3.25, 4.0, 4.5, 7.0])
    rows = bilinear_rows(pos, 5)
    torch.testing.assert_close(rows.sum(1), torch.tensor([0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]))
    torch.testing.assert_close(rows[3], torch.tensor([0.0, 0.0, 0.0, 0.75, 0.25]))
