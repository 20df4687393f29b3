"""Deployable exports: EmbeddingGraph == SpeckleEmbedder.embed; TorchScript and ONNX (onnxruntime)
files reproduce it with a dynamic batch axis and carry their provenance; unsupported cases raise."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speckle_embed.embedder import SpeckleEmbedder, file_hash
from speckle_embed.export import (EXPORT_FORMAT, METADATA_FILE, EmbeddingGraph, export_onnx,
                                  export_torchscript, read_export_metadata)
from speckle_embed.preprocess import Preprocessing

PREP = Preprocessing(input_size=24, crop=24)
TINY = {"name": "specklenn", "input_size": 24, "channels": [4, 8], "hidden_size": 16, "embedding_size": 8}
SHAPE = (40, 40)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    e = SpeckleEmbedder.random_init(PREP, model=TINY, seed=1, device="cpu")
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    e.save_checkpoint(ckpt)
    return SpeckleEmbedder.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="module")
def mask():
    m = np.zeros(SHAPE, np.uint16)  # CXI bits: non-zero = bad
    m[19:21, :] = 0x1  # a gap through the window
    m[17:22, 18:23] = 0x10  # beam stop
    return m


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    x = rng.poisson(4.0, size=(5,) + SHAPE).astype(np.float32)
    x[1] *= 50.0  # another fluence
    x[2, 10, 12] = np.nan  # non-finite pixels inside the window, outside the mask
    x[3, 25, 30] = np.inf
    x[4, 8:12, 8:12] = -0.7  # read noise below 0
    return x


def test_graph_matches_embed(emb, mask, frames):
    graph = EmbeddingGraph(emb.model.eval(), emb.preprocessing, SHAPE, mask).eval()
    assert graph.mask.dtype == torch.bool and tuple(graph.mask.shape) == SHAPE
    with torch.no_grad():
        z = graph(torch.from_numpy(frames)).numpy()
    assert z.shape == (5, 8) and np.isfinite(z).all()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(z, emb.embed(frames, mask=mask), atol=1e-5)
    # without a mask, default none bad
    plain = EmbeddingGraph(emb.model.eval(), emb.preprocessing, SHAPE).eval()
    with torch.no_grad():
        np.testing.assert_allclose(plain(torch.from_numpy(frames)).numpy(), emb.embed(frames), atol=1e-5)


def test_torchscript_roundtrip(emb, mask, frames, tmp_path):
    path = export_torchscript(emb, tmp_path / "emb.pt", frame_shape=SHAPE, mask=mask)
    assert path == tmp_path / "emb.pt" and sorted(p.name for p in tmp_path.iterdir()) == ["emb.pt"]
    extra = {METADATA_FILE: ""}
    m = torch.jit.load(str(path), _extra_files=extra)
    ref = emb.embed(frames, mask=mask)
    with torch.no_grad():
        for n in (1, 5):
            np.testing.assert_allclose(m(torch.from_numpy(frames[:n])).numpy(), ref[:n], atol=1e-5)
    meta = json.loads(extra[METADATA_FILE])
    assert meta == read_export_metadata(path)
    assert meta["format"] == EXPORT_FORMAT and meta["kind"] == "torchscript"
    assert meta["checkpoint_hash"] == emb.checkpoint_hash is not None
    assert meta["preprocessing"]["input_size"] == 24 and meta["preprocessing"]["crop"] == 24
    assert meta["frame_shape"] == list(SHAPE) and meta["embedding_size"] == 8
    assert meta["bad_pixels"] == int((mask != 0).sum())


def test_onnx_runtime(emb, mask, frames, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = export_onnx(emb, tmp_path / "emb.onnx", frame_shape=SHAPE, mask=mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.onnx"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "frames" and out.name == "embeddings"
    assert inp.shape[1:] == list(SHAPE) and not isinstance(inp.shape[0], int)  # dynamic batch
    ref = emb.embed(frames, mask=mask)
    for n in (1, 5):
        z = sess.run(["embeddings"], {"frames": frames[:n]})[0]
        assert z.shape == (n, 8) and z.dtype == np.float32
        np.testing.assert_allclose(z, ref[:n], atol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["checkpoint_hash"] == emb.checkpoint_hash == file_hash(emb.checkpoint_path)
    assert json.loads(props["preprocessing"])["input_size"] == 24
    meta = read_export_metadata(path)
    assert meta["kind"] == "onnx" and meta["opset"] == 17 and meta["checkpoint_hash"] == emb.checkpoint_hash


def test_default_size_both_formats(tmp_path):
    """The default 96-pixel model on 172 x 172 frames (the default frame_shape)."""
    ort = pytest.importorskip("onnxruntime")
    e = SpeckleEmbedder.random_init(seed=0, device="cpu")
    assert e.preprocessing.input_size == e.preprocessing.crop == 96
    rng = np.random.default_rng(1)
    x = rng.poisson(2.0, size=(3, 172, 172)).astype(np.float32)
    m = np.zeros((172, 172), bool)
    m[80:92, 80:92] = True
    ref = e.embed(x, mask=m)
    ts = torch.jit.load(str(export_torchscript(e, tmp_path / "d.pt", mask=m)))
    with torch.no_grad():
        np.testing.assert_allclose(ts(torch.from_numpy(x)).numpy(), ref, atol=1e-5)
    sess = ort.InferenceSession(str(export_onnx(e, tmp_path / "d.onnx", mask=m)),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"frames": x})[0], ref, atol=1e-4)
    assert read_export_metadata(tmp_path / "d.onnx")["checkpoint_hash"] is None


@pytest.mark.parametrize("crop,shape", [(48, (64, 64)), (17, (40, 40)), (24, (41, 40)), (24, (20, 40)),
                                        (17, (39, 44))])
def test_resampling_graphs_match_embed(crop, shape, mask, tmp_path):
    """Binning (crop 48), upsampling (crop 17: scale 0.71), a window half a pixel off the grid and a
    frame smaller than the window: the graph resamples as embed does, in TorchScript and ONNX."""
    e = SpeckleEmbedder.random_init(Preprocessing(input_size=24, crop=crop), model=TINY, seed=2, device="cpu")
    rng = np.random.default_rng(3)
    x = rng.poisson(4.0, size=(4, *shape)).astype(np.float32)
    x[1] *= 30.0
    x[2, shape[0] // 2, shape[1] // 2 - 1] = np.nan  # a non-finite pixel inside the field of view
    m = np.zeros(shape, bool)
    m[shape[0] // 2 - 1:shape[0] // 2 + 1, :] = True  # a gap
    ref = e.embed(x, mask=m)
    graph = EmbeddingGraph(e.model.eval(), e.preprocessing, shape, m).eval()
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), ref, atol=1e-5)
    ts = torch.jit.load(str(export_torchscript(e, tmp_path / "r.pt", frame_shape=shape, mask=m)))
    with torch.no_grad():
        np.testing.assert_allclose(ts(torch.from_numpy(x)).numpy(), ref, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(e, tmp_path / "r.onnx", frame_shape=shape, mask=m)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"frames": x})[0], ref, atol=1e-4)
    assert read_export_metadata(path)["scale"] == pytest.approx(crop / 24)


def test_unsupported_cases_raise(emb, tmp_path):
    with pytest.raises(ValueError, match="smaller than half the model's field of view"):
        EmbeddingGraph(emb.model, emb.preprocessing, (10, 40))
    with pytest.raises(ValueError, match="does not match frame_shape"):
        EmbeddingGraph(emb.model, emb.preprocessing, SHAPE, mask=np.zeros((30, 30), bool))
    with pytest.raises(ValueError, match="no valid pixel"):
        EmbeddingGraph(emb.model, emb.preprocessing, SHAPE, mask=np.ones(SHAPE, bool))
    assert list(tmp_path.iterdir()) == []
