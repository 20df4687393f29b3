"""Host-to-device staging (speckle_embed.transfer) and the GPU embedding path.

The byte handling (raw dtype, reinterpretation, widening, ring reuse) runs on the CPU here; the
tests marked ``cuda`` need a GPU (skipped without one, e.g. in CI) and check pinned, overlapped
copies, CUDA graphs and agreement with the CPU path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speckle_embed.embedder import SpeckleEmbedder
from speckle_embed.transfer import HostToDevice

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint8, np.int16, np.int32, np.int64,
                                   np.float16, np.float32, np.float64, ">u2", ">f4", np.uint64, bool])
def test_values_survive_the_trip(dtype):
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        a = rng.random((3, 5, 7)) > 0.5
    elif dt.kind == "u":
        a = rng.integers(0, np.iinfo(dt).max, size=(3, 5, 7), endpoint=True, dtype=np.uint64).astype(dt)
        a.flat[0] = np.iinfo(dt).max  # the top bit must not turn negative
    elif dt.kind == "i":
        a = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, size=(3, 5, 7)).astype(dt)
    else:
        a = (rng.normal(size=(3, 5, 7)) * 100).astype(dt)
    h2d = HostToDevice(torch.device("cpu"))
    got = h2d(a)
    assert got.dtype == torch.float32 and tuple(got.shape) == a.shape
    np.testing.assert_array_equal(got.numpy(), a.astype(np.float32))
    assert h2d.bytes_copied == a.nbytes or dt.kind == "b" or dt == np.uint64


def test_window_of_a_bigger_array_and_ring_reuse():
    frames = (np.arange(4 * 10 * 12, dtype=np.uint16).reshape(4, 10, 12) * 37)
    h2d = HostToDevice(torch.device("cpu"), n_buffers=2)
    outs = [h2d(frames[i:i + 2, 2:8, 3:9]) for i in range(3)]  # a strided view, 3 calls, 2 buffers
    for i, o in enumerate(outs):  # earlier results are not overwritten when a buffer is refilled
        np.testing.assert_array_equal(o.numpy(), frames[i:i + 2, 2:8, 3:9].astype(np.float32))
    assert h2d.bytes_copied == 3 * 2 * 6 * 6 * 2   # uint16 travels at 2 bytes per pixel
    # a larger block grows the buffer, an empty one is fine
    assert h2d(frames).shape == (4, 10, 12) and h2d(frames[:0]).shape == (0, 10, 12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_buffers"):
        HostToDevice("cpu", 0)
    with pytest.raises(ValueError, match="CUDA"):
        HostToDevice("cpu", pin=True)
    with pytest.raises(TypeError, match="real numbers"):
        HostToDevice("cpu")(np.zeros((2, 2), dtype=np.complex64))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_embed_through_the_staging_path_matches_the_plain_path(dtype):
    """embed()'s CUDA input path (staged copies of the window) gives the same embeddings as the
    plain path; run on the CPU by plugging an unpinned stager in, with a mask and NaNs."""
    rng = np.random.default_rng(3)
    frames = rng.poisson(4.0, size=(40, 120, 130)).astype(dtype)
    if dtype == np.float32:
        frames[3, 60, 60] = np.nan
    mask = np.zeros((120, 130), bool)
    mask[58:62, :] = True
    plain = SpeckleEmbedder.random_init(device="cpu", seed=2, batch_size=16)
    staged = SpeckleEmbedder.random_init(device="cpu", seed=2, batch_size=16)
    staged._h2d = HostToDevice(torch.device("cpu"))
    np.testing.assert_allclose(staged.embed(frames, mask=mask), plain.embed(frames, mask=mask), atol=1e-6)
    # only the model's window (96 + a 2-pixel resampling margin per side) travels, in its own dtype
    assert staged._h2d.bytes_copied == 40 * 100 * 100 * np.dtype(dtype).itemsize


def test_compile_mode_validation():
    with pytest.raises(ValueError, match="compile must be"):
        SpeckleEmbedder.random_init(device="cpu", compile="fastest")
    emb = SpeckleEmbedder.random_init(device="cpu", compile="reduce-overhead")
    assert emb.compile and emb.compile_mode == "reduce-overhead"
    assert SpeckleEmbedder.random_init(device="cpu", compile=True).compile_mode == "default"
    assert SpeckleEmbedder.random_init(device="cpu").compile_mode is None


# ----------------------------------------------------------------------------- GPU only
def _frames(n=600, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:172, :172] - 85.5
    lam = 20 * np.exp(-np.hypot(yy, xx) / 15.0)
    return rng.poisson(lam, size=(n, 172, 172)).astype(np.uint16)


@cuda
def test_pinned_copies_are_pinned_and_exact():
    h2d = HostToDevice(torch.device("cuda"))
    assert h2d.pin and h2d.stream is not None
    a = _frames(8)[:, 38:134, 38:134]
    outs = [h2d(a) for _ in range(5)]
    torch.cuda.synchronize()
    assert all(b.is_pinned() for b in h2d._buffers if b is not None)
    for o in outs:
        assert o.device.type == "cuda"
        np.testing.assert_array_equal(o.cpu().numpy(), a.astype(np.float32))


@cuda
def test_cuda_float32_matches_cpu():
    frames = _frames()
    cpu = SpeckleEmbedder.random_init(device="cpu", seed=1, batch_size=256)
    gpu = SpeckleEmbedder.random_init(device="cuda", seed=1, batch_size=256)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        za, zb = cpu.embed(frames), gpu.embed(frames)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert np.abs(za - zb).max() < 1e-3


@cuda
@pytest.mark.parametrize("compile", [False, "default", "reduce-overhead"])
def test_cuda_bf16_paths_agree_with_cpu(compile):
    frames = _frames()
    cpu = SpeckleEmbedder.random_init(device="cpu", seed=1)
    gpu = SpeckleEmbedder.random_init(device="cuda", seed=1, precision="bfloat16", compile=compile,
                                      batch_size=256)
    za = cpu.embed(frames)
    zb = gpu.embed(frames)   # 600 = 2 full batches + a padded last one
    zc = gpu.embed(frames)   # second call: CUDA graphs replayed
    np.testing.assert_allclose(zb, zc, atol=1e-5)
    cos = (za * zb).sum(1)
    assert cos.min() > 0.98, cos.min()


def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    """The GPU benchmark is only ever run in GPU sessions: keep its CPU smoke path working."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_gpu

    out = tmp_path / "bench.json"
    res = bench_gpu.main(["--device", "cpu", "--frames", "24", "--batch-sizes", "8", "--repeats", "1",
                          "--agree-frames", "24", "--data", str(tmp_path / "none"), "--random-weights",
                          "--out", str(out)])
    assert set(res["variants"]) == {"fp32", "bf16"}       # compile/pageable variants: CUDA only
    fp32 = res["variants"]["fp32"]
    assert fp32["label_diffs"] == 0 and fp32["compared"] == 24   # the CPU path agrees with itself
    assert fp32["patterns_per_s"][8] > 0
    import json
    assert json.loads(out.read_text())["variants"]["bf16"]["patterns_per_s"]["8"] > 0
