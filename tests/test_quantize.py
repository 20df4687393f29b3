"""int8 CPU inference (speckle_embed.quantize, SpeckleEmbedder(precision="int8")): agreement with
float32 on synthetic frames for a random-init and the shipped model, identical few-shot labels on a
separable problem, calibration required and deterministic, CUDA refused, model checks.

Tolerances. Embeddings are unit vectors; int8 keeps 8-bit activations (per tensor) and 8-bit
weights (per output channel), a relative error of ~0.5 % per layer, so coordinates of z move by a
few 1e-3 (median) and the largest of the N x d coordinates by a few 1e-2 (up to 0.045 measured on
the shipped model with simulated shots, docs/int8.md). The bounds below (median < 0.01,
max < 0.08, cosine > 0.98) leave a 2x margin over what these synthetic frames give and are
exceeded 4x by a broken quantization (FX quantization with PyTorch's quantized PReLU
kernel: median |dz| 0.04, max 0.3, min cosine 0.3 on the shipped model).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from speckle_embed.classifier import FewShotClassifier
from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.models import SpeckleNNEmbedding
from speckle_embed.quantize import (FC_MODES, Int8SpeckleNN, check_prelu_kernel, compare, default_engine,
                                    quantize_specklenn)

SMALL = {"name": "specklenn", "input_size": 96, "channels": [8, 16], "hidden_size": 64, "embedding_size": 32}
MED_TOL, MAX_TOL, COS_TOL = 0.01, 0.08, 0.98


def speckle_frames(n: int, radius: float, seed: int, size: int = 172) -> np.ndarray:
    """uint16 Poisson frames of a sphere-like pattern (rings of period ~1/radius) with random
    speckle modulation and fluence: a stand-in for single-particle diffraction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    q = np.hypot(yy, xx) + 1e-3
    out = np.empty((n, size, size), np.uint16)
    for i in range(n):
        qr = q * radius * rng.uniform(0.95, 1.05)
        form = (np.sin(qr) - qr * np.cos(qr)) / qr ** 3
        blobs = rng.normal(size=(-(-size // 8), -(-size // 8)))
        mod = 1 + 0.3 * np.kron(blobs, np.ones((8, 8)))[:size, :size]
        lam = 2e4 * rng.uniform(0.5, 2.0) * form ** 2 * np.clip(mod, 0.1, None)
        out[i] = np.minimum(rng.poisson(lam), 65535)
    return out


@pytest.fixture(scope="module")
def frames():
    return np.concatenate([speckle_frames(24, 0.2, 1), speckle_frames(24, 0.6, 2)])  # margin ~0.15


@pytest.fixture(scope="module")
def mask():
    m = np.zeros((172, 172), np.uint16)
    m[84:88, :] = 1  # a gap
    m[80:92, 80:92] = 0x10  # beam stop
    return m


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    d = np.abs(a - b)
    return float(np.median(d)), float(d.max()), float((a * b).sum(1).min())


def assert_close(z8, z32):
    med, mx, cos = agreement(z8, z32)
    assert med < MED_TOL and mx < MAX_TOL and cos > COS_TOL, (med, mx, cos)


@pytest.fixture(scope="module")
def small_pair(frames, mask):
    e32 = SpeckleEmbedder.random_init(model=SMALL, seed=0, device="cpu")
    e8 = SpeckleEmbedder(e32.model, e32.preprocessing, device="cpu", precision="int8")
    report = e8.calibrate_int8(frames[::2], mask=mask)
    return e32, e8, report


# ----------------------------------------------------------------------------- agreement
def test_random_init_int8_close_to_float32(small_pair, frames, mask):
    e32, e8, report = small_pair
    assert report["n"] == 24 and report["engine"] == default_engine() and report["fc"] == "int8"
    assert report["min_cosine"] > COS_TOL
    z8 = e8.embed(frames[1::2], mask=mask)
    assert z8.shape == (24, 32) and z8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z8, axis=1), 1.0, atol=1e-5)
    assert_close(z8, e32.embed(frames[1::2], mask=mask))


def test_shipped_model_int8_close_to_float32(frames, mask):
    se = pytest.importorskip("speckle_embed.pretrained")
    try:
        e32 = se.load_pretrained(device="cpu")
    except FileNotFoundError:
        pytest.skip("no shipped weights in this installation")
    e8 = SpeckleEmbedder(e32.model, e32.preprocessing, device="cpu", precision="int8")
    e8.calibrate_int8(frames, mask=mask, n=32)
    held_out = np.concatenate([speckle_frames(8, 0.3, 7), speckle_frames(8, 0.4, 8)])
    assert_close(e8.embed(held_out, mask=mask), e32.embed(held_out, mask=mask))


def test_few_shot_labels_identical(small_pair, frames, mask):
    e32, e8, _ = small_pair
    sup = np.r_[0:5, 24:29]
    y = ["small"] * 5 + ["large"] * 5
    qry = np.r_[5:24, 29:48]
    truth = np.array(["small"] * 19 + ["large"] * 19)
    p32 = FewShotClassifier(e32, rule="mean_distance", use_gpu=False).fit(frames[sup], y, mask=mask).predict(
        frames[qry], mask=mask)
    p8 = FewShotClassifier(e8, rule="mean_distance", use_gpu=False).fit(frames[sup], y, mask=mask).predict(
        frames[qry], mask=mask)
    np.testing.assert_array_equal(p32, truth)  # the problem is separable ...
    np.testing.assert_array_equal(p8, p32)  # ... and int8 gives the same labels


@pytest.mark.parametrize("fc", FC_MODES)
def test_fc_modes(frames, fc):
    model = SpeckleEmbedder.random_init(model=SMALL, seed=1, device="cpu")
    x = torch.cat([t for _, _, t in model._batches(frames, None, None, None, 64)])
    q = quantize_specklenn(model.model, x[::2], fc=fc)
    assert isinstance(q, Int8SpeckleNN) and q.fc == fc and q.calibration["n"] == 24
    got = compare(model.model, q, x[1::2])
    assert got["median_abs_diff"] < MED_TOL and got["max_abs_diff"] < MAX_TOL and got["min_cosine"] > COS_TOL


def test_prelu_is_not_run_by_the_quantized_prelu_kernel(small_pair):
    _, e8, _ = small_pair
    nnq = torch.ao.nn.quantized
    kinds = {type(m) for m in e8._int8.modules()}
    assert nnq.LeakyReLU in kinds and nnq.PReLU not in kinds and nn.PReLU in kinds  # PReLU: float head only
    assert nnq.Conv2d in kinds and nnq.Linear in kinds
    assert sum(isinstance(m, nn.PReLU) for m in e8._int8.modules()) == 1
    assert isinstance(check_prelu_kernel(), float)  # diagnostic of the PyTorch kernel (broken in 2.13)


def test_per_channel_prelu_runs_in_float(frames):
    model = SpeckleNNEmbedding(channels=[8, 16], hidden_size=64, embedding_size=32).eval()
    with torch.no_grad():
        act = nn.PReLU(8)
        act.weight.copy_(torch.linspace(-0.2, 0.4, 8))  # negative slopes: no pooling swap
        model.features[0][2] = act
    emb = SpeckleEmbedder(model, device="cpu")
    x = torch.cat([t for _, _, t in emb._batches(frames, None, None, None, 64)])
    q = quantize_specklenn(model, x[::2])
    assert any(isinstance(m, nn.PReLU) and m.num_parameters == 8 for m in q.modules())
    got = compare(model, q, x[1::2])
    assert got["max_abs_diff"] < MAX_TOL and got["min_cosine"] > COS_TOL


# ----------------------------------------------------------------------------- calibration
def test_calibration_is_required_and_deterministic(frames, mask):
    e32 = SpeckleEmbedder.random_init(model=SMALL, seed=2, device="cpu")
    e8 = SpeckleEmbedder(e32.model, e32.preprocessing, device="cpu", precision="int8")
    with pytest.raises(RuntimeError, match="calibrate_int8"):
        e8.embed(frames[:2])
    e8.calibrate_int8(frames, mask=mask, n=16)
    z1 = e8.embed(frames[:6], mask=mask)
    e8.calibrate_int8(frames, mask=mask, n=16)
    np.testing.assert_array_equal(e8.embed(frames[:6], mask=mask), z1)
    # other batch splits: same int8 arithmetic; the float tail may round differently (1 thread)
    np.testing.assert_allclose(e8.embed(frames[:6], mask=mask, batch_size=4), z1, rtol=0, atol=1e-6)
    with torch.no_grad():
        e32.model.head[3].bias.add_(0.01)  # the weights change: the int8 model is stale
    with pytest.raises(RuntimeError, match="calibrate_int8"):
        e8.embed(frames[:2])


def test_calibration_frames_are_subsampled_with_per_frame_masks_and_centres(frames):
    e8 = SpeckleEmbedder.random_init(model=SMALL, seed=3, device="cpu", precision="int8")
    masks = np.zeros((48, 172, 172), bool)
    masks[:, 84:88] = True
    centres = np.tile([85.5, 85.5], (48, 1))
    assert e8.calibrate_int8(frames, mask=masks, center=centres, n=5)["n"] == 5
    assert e8.calibrate_int8(torch.from_numpy(frames.astype(np.int32)), n=1000)["n"] == 48


def test_calibration_errors():
    e8 = SpeckleEmbedder.random_init(model=SMALL, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="n must be"):
        e8.calibrate_int8(np.zeros((4, 172, 172), np.uint16), n=0)
    with pytest.raises(ValueError, match="at least one frame"):
        e8.calibrate_int8(np.zeros((0, 172, 172), np.uint16))
    model = SpeckleNNEmbedding(channels=[8, 16], hidden_size=64, embedding_size=32)
    with pytest.raises(ValueError, match=r"shape \(N, 1, 96, 96\)"):
        quantize_specklenn(model, torch.zeros(4, 1, 64, 64))
    with pytest.raises(ValueError, match="NaN"):
        quantize_specklenn(model, torch.full((4, 1, 96, 96), float("nan")))
    with pytest.raises(ValueError, match="fc must be"):
        quantize_specklenn(model, torch.zeros(4, 1, 96, 96), fc="int4")
    with pytest.raises(TypeError, match="SpeckleNN-like"):
        quantize_specklenn(nn.Sequential(nn.Flatten(), nn.Linear(9216, 8)), torch.zeros(4, 1, 96, 96))


# ----------------------------------------------------------------------------- devices and options
def test_cuda_and_compile_are_refused():
    model = SpeckleNNEmbedding(channels=[8, 16], hidden_size=64, embedding_size=32)
    with pytest.raises(ValueError, match="CPU only"):
        SpeckleEmbedder(model, device=torch.device("cuda"), precision="int8")
    with pytest.raises(ValueError, match="compile=True"):
        SpeckleEmbedder(model, device="cpu", precision="int8", compile=True)
    with pytest.raises(ValueError, match="'int8'"):
        SpeckleEmbedder(model, device="cpu", precision="int4")
    e8 = SpeckleEmbedder(model, device="cpu", precision="int8")
    e8.device = torch.device("cuda")  # as after a move to a GPU
    with pytest.raises(ValueError, match="CPU only"):
        e8.embed(np.zeros((1, 172, 172), np.uint16))
    with pytest.raises(ValueError, match="CPU only"):
        e8.calibrate_int8(np.zeros((1, 172, 172), np.uint16))


def test_integer_fast_path_checks_per_frame_masks(frames):
    emb = SpeckleEmbedder.random_init(model=SMALL, device="cpu")
    masks = np.zeros((3, 172, 172), bool)
    masks[1] = True
    with pytest.raises(ValueError, match="frame 1 has no finite, unmasked pixel"):
        emb.embed(frames[:3], masks)


def test_large_batches_run_in_chunks_with_the_same_result(small_pair, frames):
    _, e8, _ = small_pair
    q = e8._int8
    x = torch.cat([t for _, _, t in e8._batches(frames, None, None, None, 64)])
    with torch.inference_mode():
        whole = q(x)
        old, q.max_batch = q.max_batch, 5
        try:
            chunked = q(x)
        finally:
            q.max_batch = old
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    assert quantize_specklenn(SpeckleNNEmbedding().eval(), torch.zeros(2, 1, 96, 96), check=False).max_batch == 116
