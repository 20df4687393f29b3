"""SpeckleEmbedder: shapes/dtypes, crop-first fast path vs. plain preprocessing, detectors of other
sizes, masks and NaN, checkpoint round trip and errors; speckle-size scale and beam centre."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speckle_embed.embedder import CHECKPOINT_FORMAT, CheckpointError, SpeckleEmbedder, file_hash
from speckle_embed.preprocess import Preprocessing, preprocess
from speckle_embed.scale import estimate_center, estimate_scale, geometric_scale, speckle_size

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}


@pytest.fixture(scope="module")
def emb():
    return SpeckleEmbedder.random_init(model=SMALL, seed=0, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.poisson(5.0, size=(6, 172, 172)).astype(np.uint16)


def plain(emb, frames, **kw):
    """Reference: the model applied to preprocess() of the whole frames."""
    with torch.inference_mode():
        return emb.model(preprocess(frames, emb.preprocessing, **kw)).numpy()


def assert_unit_rows(z):
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_embed_shape_dtype_unit_norm(emb, frames, dtype):
    z = emb.embed(frames.astype(dtype))
    assert z.shape == (6, 32) and z.dtype == np.float32
    assert_unit_rows(z)
    np.testing.assert_allclose(z, emb.embed(frames.astype(np.float32)), atol=1e-6)


def test_single_frame_tensor_and_default_model(frames):
    big = SpeckleEmbedder.random_init(device="cpu")
    z1 = big.embed(frames[0])
    assert z1.shape == (1, 128) and z1.dtype == np.float32
    z = big.embed(torch.from_numpy(frames[:2].astype(np.int32)))
    np.testing.assert_allclose(z[:1], z1, atol=1e-6)
    assert big.embedding_size == 128


def test_empty_batch(emb):
    assert emb.embed(np.zeros((0, 64, 64), np.uint16)).shape == (0, 32)


def test_batch_size_invariance(emb, frames):
    np.testing.assert_allclose(emb.embed(frames, batch_size=1), emb.embed(frames, batch_size=100), atol=1e-6)


# ----------------------------------------------------------------------------- fast path == reference
@pytest.mark.parametrize("scale", [None, 1.5, 0.75, 1.75])
@pytest.mark.parametrize("center", [None, (80.3, 91.6)])
def test_crop_first_matches_plain_preprocess(emb, frames, scale, center):
    mask = np.zeros((172, 172), np.uint16)
    mask[84:90, :] = 1  # a gap
    mask[80:88, 80:86] = 0x10  # beam stop
    got = emb.embed(frames, mask, scale=scale, center=center)
    ref = plain(emb, frames, mask=mask, scale=scale, center=center)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_per_frame_centres(emb, frames):
    centres = np.array([[85.5, 85.5], [80.0, 90.0], [90.2, 83.1]])
    z = emb.embed(frames[:3], center=centres)
    for i in range(3):
        np.testing.assert_allclose(z[i], emb.embed(frames[i], center=tuple(centres[i]))[0], atol=1e-6)


# ----------------------------------------------------------------------------- other detectors
def test_pnccd_128_binned_frames_with_own_mask(emb):
    rng = np.random.default_rng(1)
    f = rng.poisson(3.0, size=(3, 128, 128)).astype(np.uint16)
    mask = np.zeros((128, 128), np.uint16)
    mask[:, 63:65] = 1
    for scale in (None, 128 / 96):
        z = emb.embed(f, mask, scale=scale)
        assert z.shape == (3, 32)
        assert_unit_rows(z)
        np.testing.assert_allclose(z, plain(emb, f, mask=mask, scale=scale), atol=2e-5)


def test_assembled_1024_frames_binned_by_8(emb):
    rng = np.random.default_rng(2)
    f = rng.poisson(1.0, size=(2, 1024, 1024)).astype(np.uint16)
    assert geometric_scale(75e-6, 0.13, 1700, reference_pixel_size_m=600e-6, reference_distance_m=0.13,
                           reference_photon_energy_ev=1700) == pytest.approx(8.0)
    z = emb.embed(f, scale=8.0)
    assert z.shape == (2, 32) and np.isfinite(z).all()
    np.testing.assert_allclose(z, plain(emb, f, scale=8.0), atol=2e-5)


# ----------------------------------------------------------------------------- masks, NaN, errors
def test_nan_pixels_are_masked(emb, frames):
    f = frames.astype(np.float32)
    f[1, 70:80, :] = np.nan
    f[2, 5, 5] = np.inf
    mask = np.zeros((6, 172, 172), bool)
    mask[1, 70:80, :] = True
    mask[2, 5, 5] = True
    clean = np.where(mask, 0, f)
    np.testing.assert_allclose(emb.embed(f), emb.embed(clean, mask), atol=1e-6)


def test_all_nan_frame_raises_with_index(emb, frames):
    f = frames.astype(np.float32)
    f[3] = np.nan
    with pytest.raises(ValueError, match="frame 3 "):
        emb.embed(f)


def test_nan_policy_raise(frames):
    strict = SpeckleEmbedder.random_init(model=SMALL, device="cpu", nan_policy="raise")
    f = frames.astype(np.float32)
    f[4, 86, 86] = np.nan
    with pytest.raises(ValueError, match="frame 4 has NaN"):
        strict.embed(f)


@pytest.mark.parametrize("bad", [np.zeros(10), np.zeros((2, 3, 64, 64)), np.zeros((2, 64, 64), complex),
                                 np.zeros((2, 64, 64), bool)])
def test_bad_frames_raise(emb, bad):
    with pytest.raises(ValueError, match="frames must"):
        emb.embed(bad)


def test_wrong_mask_shape_raises(emb, frames):
    with pytest.raises(ValueError, match="mask shape"):
        emb.embed(frames, np.zeros((171, 172)))
    with pytest.raises(ValueError, match="mask shape"):
        emb.embed(frames, np.zeros((5, 172, 172)))


def test_fully_masked_field_of_view_raises(emb, frames):
    with pytest.raises(ValueError, match="no valid pixel"):
        emb.embed(frames, np.ones((172, 172), np.uint16))


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), "big"])
def test_bad_scale_raises(emb, frames, scale):
    with pytest.raises(ValueError, match="scale"):
        emb.embed(frames, scale=scale)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(emb, frames, tmp_path):
    emb2 = SpeckleEmbedder.random_init(model=SMALL, seed=3, device="cpu", reference_speckle_px=4.5)
    path = tmp_path / "m.pt"
    digest = emb2.save_checkpoint(path)
    assert digest == file_hash(path) == emb2.checkpoint_hash
    assert not list(tmp_path.glob("*.tmp"))
    loaded = SpeckleEmbedder.from_checkpoint(path, device="cpu")
    assert loaded.checkpoint_hash == digest and loaded.checkpoint_path == path.resolve()
    assert loaded.preprocessing == emb2.preprocessing and loaded.reference_speckle_px == 4.5
    np.testing.assert_array_equal(loaded.embed(frames), emb2.embed(frames))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["model"]["embedding_size"] == 32


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        SpeckleEmbedder.from_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        SpeckleEmbedder.from_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        SpeckleEmbedder.from_checkpoint(tmp_path / "junk.pt")
    emb = SpeckleEmbedder.random_init(model=SMALL, device="cpu")
    good = emb.checkpoint_dict()
    torch.save({**good, "format": "other"}, tmp_path / "fmt.pt")
    with pytest.raises(CheckpointError, match="fmt.pt.*format"):
        SpeckleEmbedder.from_checkpoint(tmp_path / "fmt.pt")
    torch.save({k: v for k, v in good.items() if k != "state_dict"}, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match="keys.pt.*state_dict"):
        SpeckleEmbedder.from_checkpoint(tmp_path / "keys.pt")
    torch.save({**good, "model": {**good["model"], "embedding_size": 16}}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape.pt.*do not fit"):
        SpeckleEmbedder.from_checkpoint(tmp_path / "shape.pt")
    emb.save_checkpoint(tmp_path / "trunc.pt")
    data = (tmp_path / "trunc.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        SpeckleEmbedder.from_checkpoint(tmp_path / "trunc.pt")


def test_model_preprocessing_mismatch():
    with pytest.raises(ValueError, match="expects inputs"):
        SpeckleEmbedder.random_init(Preprocessing(input_size=64, crop=64), model=SMALL, device="cpu")


# ----------------------------------------------------------------------------- scale / centre
def _speckles(n_grid, objects, crop=128, photons=1e6, shift=(0, 0), seed=0):
    """|FFT of a random blob|^2 on an n_grid FFT grid (n_grid=512 zooms the 256 pattern by 2)."""
    rng = np.random.default_rng(seed)
    out = []
    for obj in objects:
        big = np.zeros((n_grid, n_grid))
        big[: obj.shape[0], : obj.shape[1]] = obj
        intensity = np.fft.fftshift(np.abs(np.fft.fft2(big)) ** 2)
        c = n_grid // 2 + np.asarray(shift)
        intensity = intensity[c[0] - crop // 2: c[0] + crop // 2, c[1] - crop // 2: c[1] + crop // 2]
        out.append(rng.poisson(intensity / intensity.sum() * photons))
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:64, :64] - 32
    return [rng.random((64, 64)) * (np.hypot(yy, xx) < 20) for _ in range(12)]


def test_auto_scale_of_zoomed_speckles_is_about_two(blobs):
    ref = _speckles(256, blobs)
    zoomed = _speckles(512, blobs, seed=1)
    ref_size = speckle_size(ref)
    assert 3 < ref_size < 8
    assert 1.7 < estimate_scale(zoomed, ref_size) < 2.3
    assert 0.85 < estimate_scale(_speckles(256, blobs, seed=2), ref_size) < 1.15

    emb = SpeckleEmbedder.random_init(model=SMALL, device="cpu")
    with pytest.raises(ValueError, match="reference_speckle_px"):
        emb.embed(zoomed, scale="auto")
    emb.calibrate_reference_speckle(ref)
    assert emb.reference_speckle_px == pytest.approx(ref_size)
    s = emb.estimate_scale(zoomed)
    assert 1.7 < s < 2.3
    # 128-pixel crops zoomed by 2 are smaller than the window (96 * ~2 pixels): embedded, the overhang masked
    np.testing.assert_allclose(emb.embed(zoomed, scale="auto"), emb.embed(zoomed, scale=s), atol=1e-6)
    wide = _speckles(512, blobs[:4], crop=256, seed=1)
    s = emb.estimate_scale(wide)
    assert 1.7 < s < 2.3
    np.testing.assert_allclose(emb.embed(wide, scale="auto"), emb.embed(wide, scale=s), atol=1e-6)


def test_estimate_center_friedel(blobs):
    f = _speckles(256, blobs[:6], shift=(3, -5))
    mask = np.zeros((128, 128), np.uint8)
    mask[:, 40:43] = 1
    cy, cx = estimate_center(f, mask)
    # the pattern centre (zero frequency) sits at index 64 - shift
    assert abs(cy - 61) < 0.5 and abs(cx - 69) < 0.5
    emb = SpeckleEmbedder.random_init(model=SMALL, device="cpu")
    np.testing.assert_allclose(emb.embed(f, mask, center="auto"), emb.embed(f, mask, center=(cy, cx)), atol=1e-6)
    # one quadrant: no Friedel mates, so no estimate (it used to drift into the visible quadrant)
    from speckle_embed.evaluation.online import detector_fraction_mask

    quadrant = detector_fraction_mask((128, 128), 0.25)
    with pytest.raises(ValueError, match="not centro-symmetric.*center=\\(row, col\\)"):
        estimate_center(f, quadrant)
    with pytest.raises(ValueError, match="not centro-symmetric"):
        emb.embed(f, quadrant, center="auto")


def test_auto_scale_refuses_noise_only_frames():
    noise = np.random.default_rng(0).poisson(5, (8, 128, 128)).astype(np.uint16)
    with pytest.raises(ValueError, match="no resolvable speckle"):
        estimate_scale(noise, 4.0)


def test_speckle_size_refuses_patterns_without_speckle_contrast():
    """Fluctuations finer than a pixel (here the Laplacian of white noise: anti-correlated at a
    lag of one pixel) have no measurable speckle size; it used to come back as a meaningless
    0.38 px, and estimate_scale then refused it for being below a pixel."""
    from scipy.ndimage import laplace

    from speckle_embed.scale import _fwhm

    rng = np.random.default_rng(0)
    hp = np.stack([laplace(rng.normal(size=(128, 128)), mode="wrap") for _ in range(8)])
    frames = rng.poisson((200 * (1 + 0.5 * hp / hp.std())).clip(0))
    with pytest.raises(ValueError, match="no speckle contrast beyond the zero lag"):
        speckle_size(frames)
    with pytest.raises(ValueError, match="no resolvable speckle.*zero lag"):
        estimate_scale(frames, 4.0)
    with pytest.raises(ValueError, match="zero lag"):
        _fwhm(np.arange(5.0), np.array([1.0, 0.0, -0.03, 0.01, 0.0]))
    assert _fwhm(np.arange(5.0), np.array([1.0, 0.8, 0.45, 0.1, 0.0])) > 2
