"""Datasets that mix detector sizes (e.g. 172x172 next to a 128x128 pnCCD): centre crop/pad."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from speckle_embed.data import DatasetError, fit_mask, fit_to_shape, open_dataset
from speckle_embed.train import train
from speckle_embed.train.config import TrainConfig
from speckle_embed.train.data import build_train_data

from test_train_loop import compose_cfg, write_dataset


def oracle_fit(a: np.ndarray, shape, fill):
    """Pixel by pixel: output (R, C) takes input (R - dr, C - dc) with the centres aligned."""
    H, W = shape
    h, w = a.shape
    dr, dc = (H - h) // 2 if H >= h else -((h - H) // 2), (W - w) // 2 if W >= w else -((w - W) // 2)
    out = np.full((H, W), fill, dtype=a.dtype)
    for r in range(H):
        for c in range(W):
            if 0 <= r - dr < h and 0 <= c - dc < w:
                out[r, c] = a[r - dr, c - dc]
    return out


@pytest.mark.parametrize("src", [(5, 7), (6, 6), (9, 4), (12, 3)])
@pytest.mark.parametrize("dst", [(5, 7), (8, 8), (7, 10), (3, 2)])
def test_fit_to_shape_matches_pixel_oracle(src, dst):
    a = np.arange(np.prod(src), dtype=np.float32).reshape(src) + 1
    got = fit_to_shape(a[None], dst, fill=-1)[0]
    np.testing.assert_array_equal(got, oracle_fit(a, dst, -1))


def test_even_difference_keeps_the_beam_centre():
    # a centred spot in a 128x128 frame stays centred in 172x172 (pnCCD -> paper detector)
    yy, xx = np.mgrid[:128, :128] - 63.5
    spot = np.exp(-(yy ** 2 + xx ** 2) / 20.0)
    big = fit_to_shape(spot, (172, 172))
    Y, X = np.mgrid[:172, :172]
    cy, cx = (big * Y).sum() / big.sum(), (big * X).sum() / big.sum()
    assert cy == pytest.approx(85.5) and cx == pytest.approx(85.5)
    # and back again: the crop restores the frame exactly
    np.testing.assert_array_equal(fit_to_shape(big, (128, 128)), spot)


def test_fit_mask_marks_padding_bad():
    own = np.zeros((4, 4), bool)
    own[1, 2] = True
    m = fit_mask(own, (4, 4), (6, 8))
    assert m.shape == (6, 8)
    assert m[0].all() and m[-1].all() and m[:, :2].all() and m[:, -2:].all()
    assert m[2, 4] and m[1:5, 2:6].sum() == 1
    assert not fit_mask(None, (4, 4), (4, 4)).any()
    with pytest.raises(DatasetError, match="does not match"):
        fit_mask(np.zeros((3, 3), bool), (4, 4), (6, 6))


def frames_of(path):
    with h5py.File(path, "r") as f:
        return f["/entry_1/data_1/data"][()]


def test_shard_index_reads_mixed_sizes_at_a_common_shape(tmp_path):
    big = frames_of(write_dataset(tmp_path / "d", n_structures=1, size=32, seed=0)[0])
    small = frames_of(write_dataset(tmp_path / "d", n_structures=1, size=24, seed=1, first=1)[0])
    with pytest.raises(DatasetError, match=r"mixed sizes.*data.frame_shape=max"):
        open_dataset(tmp_path / "d")
    with pytest.raises(ValueError, match="frame_shape must be"):
        open_dataset(tmp_path / "d", frame_shape="largest")
    index = open_dataset(tmp_path / "d", frame_shape="max")
    assert index.frame_shape == (32, 32)
    assert [s.frame_shape for s in index.shards] == [(32, 32), (24, 24)]
    got = index.read_frames([0, 30, 24])           # one big, two small, any order
    np.testing.assert_array_equal(got[0], big[0])
    np.testing.assert_array_equal(got[1], fit_to_shape(small[6], (32, 32)))
    np.testing.assert_array_equal(index.read_frame(24), got[2])
    m_small = index.shard_mask(1)
    assert m_small.shape == (32, 32) and m_small[:4].all() and m_small[:, -4:].all()
    assert m_small[4:28, 16].all() and m_small[4:28, 4:28].sum() == 24   # its own bad column
    # a fixed shape crops the big shard
    crop = open_dataset(tmp_path / "d", frame_shape=[24, 24])
    np.testing.assert_array_equal(crop.read_frame(0), big[0, 4:28, 4:28])
    np.testing.assert_array_equal(crop.read_frame(24), small[0])


def test_training_on_mixed_detector_sizes(tmp_path):
    write_dataset(tmp_path / "d", n_structures=3, size=32)
    write_dataset(tmp_path / "d", n_structures=1, size=24, seed=9, first=3)   # the "pnCCD" shard
    cfg = TrainConfig.from_dict({"data": {"dirs": [str(tmp_path / "d")], "frame_shape": "max",
                                          "val_fraction": 0.25}, "eval": {"k_shot": 2}})
    data = build_train_data(cfg.data, cfg.eval, seed=0, base_dir=tmp_path)
    assert data.index.frame_shape == (32, 32) and data.masks.shape == (4, 32, 32)
    frames, bad = data.reader()(np.arange(data.index.offsets[3], data.index.offsets[3] + 3))
    assert frames.shape == (3, 32, 32) and bad[:, :4].all() and (frames[:, :4] == 0).all()
    data.index.close()
    run = compose_cfg(tmp_path / "d", tmp_path / "run", epochs=1, **{"data.frame_shape": "max"})
    result = train(run)
    assert result.global_step == 3 and (tmp_path / "run" / "best.pt").is_file()
    # scale="auto"'s reference is measured on the detector natively at the common size only
    import torch
    ref = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["preprocessing"]["reference_speckle_px"]
    assert ref is None or ref >= 1.0
