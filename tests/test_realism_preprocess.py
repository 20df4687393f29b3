"""Preprocessing of real-detector input: frames smaller than the model's window, raw ADU frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.preprocess import Preprocessing, preprocess


def test_frame_smaller_than_the_window_is_padded_as_bad_pixels():
    g = torch.Generator().manual_seed(0)
    small = torch.poisson(torch.full((3, 40, 40), 2.0), generator=g)
    prep = Preprocessing(input_size=32, crop=32)
    # speckles twice as large: scale 2 makes the window 64 input pixels wide, the frame has 40
    out = preprocess(small, prep, scale=2.0)
    assert out.shape == (3, 1, 32, 32) and torch.isfinite(out).all()
    # oracle: the same frame in a 64x64 canvas whose outside is masked
    canvas = torch.zeros(3, 64, 64)
    canvas[:, 12:52, 12:52] = small
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[12:52, 12:52] = False
    ref = preprocess(canvas, prep, mask=outside, scale=2.0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.all(out[:, 0, :2, :] == 0) and torch.all(out[:, 0, :, -2:] == 0)  # padding is "missing"
    # the embedder accepts it too and agrees with the padded, masked canvas
    emb = SpeckleEmbedder.random_init(prep, seed=0)
    np.testing.assert_allclose(emb.embed(small.numpy(), scale=2.0),
                               emb.embed(canvas.numpy(), mask=outside.numpy(), scale=2.0), atol=1e-4)


def test_adu_frames_are_converted_to_photons_first():
    g = torch.Generator().manual_seed(1)
    photons = torch.poisson(torch.full((2, 24, 24), 1.0), generator=g)
    adu = photons * 37.0 + 3.0 * torch.randn(photons.shape, generator=g)  # 0.08-photon dark noise
    prep = Preprocessing(input_size=24, crop=24)
    torch.testing.assert_close(preprocess(adu, prep, adu_per_photon=37.0), preprocess(photons, prep))
    with pytest.raises(ValueError, match="adu_per_photon"):
        preprocess(adu, prep, adu_per_photon=0.0)

