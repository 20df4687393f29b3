"""Deployable exports of an embedder: TorchScript and ONNX graphs that take raw frames.

Facility pipelines (C++/ONNX Runtime/Triton, or Python without this package) need the whole
inference path in one file: frames in photons go in, unit-norm embeddings come out. The graph
built here bakes :func:`speckle_embed.preprocess.preprocess` and the model together for one
**fixed frame size** ``(H, W)`` and one **fixed bad-pixel mask**::

    from speckle_embed import SpeckleEmbedder
    from speckle_embed.inference.export import export_onnx, export_torchscript

    emb = SpeckleEmbedder.from_checkpoint("runs/exp1/best.pt")
    export_onnx(emb, "embedder.onnx", frame_shape=(172, 172), mask=cxi_mask)
    export_torchscript(emb, "embedder.pt", frame_shape=(172, 172), mask=cxi_mask)

    # elsewhere, without speckle_embed:
    import onnxruntime as ort
    sess = ort.InferenceSession("embedder.onnx", providers=["CPUExecutionProvider"])
    z = sess.run(["embeddings"], {"frames": frames.astype("float32")})[0]   # (N, d)

    import torch
    m = torch.jit.load("embedder.pt")
    z = m(torch.from_numpy(frames).float())

What the graph does (identical to :meth:`SpeckleEmbedder.embed` with its defaults):

* input ``frames``: float32 ``(N, H, W)`` photons, ``N`` dynamic (ONNX axis name ``"batch"``);
* the central ``input_size x input_size`` window about the geometric centre is cut out;
* bad pixels (the baked mask) and non-finite pixels are ignored; ``log1p`` of the counts
  (negatives clipped at 0), per-frame standardisation over the valid pixels, invalid pixels 0;
* the model, then L2 normalisation: output ``embeddings`` float32 ``(N, d)``.

The graph resamples as ``embed`` does at the preprocessing's scale, about the geometric centre of
the frame: the plain central crop (``preprocessing.crop == input_size`` and ``H - input_size``,
``W - input_size`` even), or else the area-weighted bilinear resampling of
:func:`~speckle_embed.preprocess.resample_center` (binning, upsampling, a window half a pixel off
the grid, a frame smaller than the window), whose interpolation matrices are constants of the
graph. Per-frame beam centres, ``scale="auto"`` and ``center="auto"`` are not part of the graph.

Differences from :meth:`~SpeckleEmbedder.embed`: the graph cannot raise, so a frame without any
finite unmasked pixel in the window (``embed`` raises ``ValueError``) yields the embedding of an
all-zero input; and the caller converts frames to float32 (integer counts up to 2**24 are exact).

Provenance travels with the file (see :func:`read_export_metadata`): the checkpoint hash, the
preprocessing dict, the frame shape, the model config and more, as ONNX ``metadata_props``
(JSON-encoded values for non-strings) and as the TorchScript extra file
``speckle_embed.json``.
"""
from __future__ import annotations

import copy
import inspect
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from speckle_embed.atomic import replace_atomically
from speckle_embed.frame_checks import check_frame_size
from speckle_embed.inference.frames import window
from speckle_embed.inference.precision import fold_if_exact
from speckle_embed.models import model_config
from speckle_embed.preprocess import Preprocessing, model_inputs

__all__ = ["EmbeddingGraph", "export_torchscript", "export_onnx", "read_export_metadata",
           "EXPORT_FORMAT", "METADATA_FILE", "INPUT_NAME", "OUTPUT_NAME"]

#: ``format`` entry of the metadata of every exported file.
EXPORT_FORMAT = "speckle_embed-export-1"
#: Name of the JSON extra file inside TorchScript exports.
METADATA_FILE = "speckle_embed.json"
#: Input / output names of the ONNX graph.
INPUT_NAME = "frames"
OUTPUT_NAME = "embeddings"


def _frame_shape(frame_shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in frame_shape)
    except (TypeError, ValueError):
        raise ValueError(f"frame_shape must be (H, W); got {frame_shape!r}") from None
    if tuple(frame_shape) != (h, w) or h < 1 or w < 1:
        raise ValueError(f"frame_shape must be two positive integers (H, W); got {frame_shape!r}")
    return h, w


def _bad_pixels(mask, hw: tuple[int, int]) -> torch.Tensor:
    """Boolean (H, W) CPU tensor, True = bad pixel (non-zero CXI bits or True)."""
    if mask is None:
        return torch.zeros(hw, dtype=torch.bool)
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise ValueError(f"mask must be boolean or integer (non-zero = bad pixel); got dtype {m.dtype}")
    if m.shape != hw:
        raise ValueError(f"mask shape {m.shape} does not match frame_shape {hw}; an exported graph "
                         "bakes one (H, W) mask for all frames")
    return torch.from_numpy(np.ascontiguousarray(m != 0))


class EmbeddingGraph(nn.Module):
    """Preprocessing + model for one frame size and mask, as a traceable module.

    ``forward(frames)`` maps float32 photons ``(N, H, W)`` to unit-norm embeddings ``(N, d)``,
    exactly as ``SpeckleEmbedder.embed(frames, mask=mask)`` does (see the module docstring for
    the differences).

    Parameters
    ----------
    model : torch.nn.Module
        Embedding network ``(N, 1, S, S) -> (N, d)``; used as given (put it in eval mode;
        :func:`export_torchscript` / :func:`export_onnx` pass an eval copy).
    preprocessing : Preprocessing
        Its ``scale`` (``crop / input_size``) is the graph's.
    frame_shape : (H, W)
        Size of the frames the graph accepts (at least half the model's field of view across,
        as ``embed`` requires).
    mask : array_like (H, W), optional
        Bad pixels (non-zero CXI bits or ``True``); default none. Stored as the bool buffer
        :attr:`mask`.

    Raises
    ------
    ValueError
        A frame smaller than half the model's field of view, a mask of the wrong shape/dtype, or a
        mask that leaves no valid pixel in the window.
    """

    mask: torch.Tensor

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, frame_shape=(172, 172),
                 mask=None):
        super().__init__()
        prep = preprocessing
        h, w = _frame_shape(frame_shape)
        s = int(prep.input_size)
        check_frame_size(h, w, prep)
        self.model = model
        self.preprocessing = prep
        self.frame_shape = (h, w)
        self.input_size = s
        self.scale = float(prep.scale)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        # the rows/cols the model sees: the plain central crop itself, or those embed() cuts
        # before resampling (model_inputs then takes the same path as in embed)
        plain_crop = prep.crop == s and h >= s and w >= s and (h - s) % 2 == 0 and (w - s) % 2 == 0
        if plain_crop:
            self.window = ((h - s) // 2, (h + s) // 2, (w - s) // 2, (w + s) // 2)
        else:
            self.window = window(h, w, cy, cx, s, self.scale)
        r0, r1, c0, c1 = self.window
        self.center = (cy - r0, cx - c0)
        self.register_buffer("mask", _bad_pixels(mask, (h, w)))
        if bool(self.mask[r0:r1, c0:c1].all()):
            raise ValueError(f"the mask leaves no valid pixel in the model's field of view "
                             f"(rows {r0}:{r1}, cols {c0}:{c1})")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        r0, r1, c0, c1 = self.window
        x = frames[:, r0:r1, c0:c1]
        valid = torch.isfinite(x) & torch.logical_not(self.mask[r0:r1, c0:c1])
        z = self.model(model_inputs(x, valid, self.preprocessing, self.center, self.scale))
        return F.normalize(z.float(), dim=1)

    def extra_repr(self) -> str:
        return (f"frame_shape={self.frame_shape}, input_size={self.input_size}, scale={self.scale:g}, "
                f"window={self.window}, bad_pixels={int(self.mask.sum())}")


# ----------------------------------------------------------------------------- building
def _inference_copy(model: nn.Module, input_size: int) -> nn.Module:
    """CPU eval copy of ``model``; Conv+BN folded when that is exact (as ``embed`` does)."""
    m = fold_if_exact(copy.deepcopy(model).cpu().eval(), input_size)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _build(embedder, frame_shape, mask) -> EmbeddingGraph:
    graph = EmbeddingGraph(_inference_copy(embedder.model, embedder.preprocessing.input_size),
                           embedder.preprocessing, frame_shape, mask)
    return graph.eval()


def _metadata(embedder, graph: EmbeddingGraph, kind: str, d: int, extra: dict | None = None) -> dict:
    import speckle_embed
    prep = embedder.preprocessing.to_dict()
    ref = getattr(embedder, "reference_speckle_px", None)
    if ref is not None:
        prep["reference_speckle_px"] = float(ref)
    try:
        mconf = model_config(embedder.model)
    except ValueError:
        mconf = {"name": type(embedder.model).__name__}
    meta = {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "checkpoint_hash": getattr(embedder, "checkpoint_hash", None),
        "preprocessing": prep,
        "model": mconf,
        "frame_shape": list(graph.frame_shape),
        "window": list(graph.window),
        "scale": graph.scale,
        "bad_pixels": int(graph.mask.sum()),
        "embedding_size": int(d),
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", *graph.frame_shape],
                  "units": "photons"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", int(d)],
                   "unit_norm": True},
        "speckle_embed_version": speckle_embed.__version__,
        "torch_version": torch.__version__,
    }
    if extra:
        meta.update(extra)
    return meta


def _example(graph: EmbeddingGraph, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.poisson(torch.full((n, *graph.frame_shape), 3.0), generator=g)


def export_torchscript(embedder, path: str | os.PathLike, frame_shape=(172, 172), mask=None) -> Path:
    """Trace :class:`EmbeddingGraph` of ``embedder`` and save it as TorchScript (atomically).

    Parameters
    ----------
    embedder : SpeckleEmbedder
    path : str or os.PathLike
        Output file (conventionally ``.pt``); written to a ``.tmp`` sibling, then renamed.
    frame_shape : (H, W), default (172, 172)
    mask : array_like (H, W), optional
        Bad pixels baked into the graph.

    Returns
    -------
    pathlib.Path
        The file. Load it with ``torch.jit.load(path)``; its metadata with
        :func:`read_export_metadata` (or ``torch.jit.load(path, _extra_files={"speckle_embed.json": ""})``).
        The batch size is free; the graph runs on the CPU (``torch.jit.load(path,
        map_location="cuda")`` moves it).

    Raises
    ------
    ValueError
        As :class:`EmbeddingGraph`.
    """
    path = Path(os.fspath(path)).expanduser()
    graph = _build(embedder, frame_shape, mask)
    example = _example(graph)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.10
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        d = int(traced(example).shape[1])
        meta = _metadata(embedder, graph, "torchscript", d)
        extra = {METADATA_FILE: json.dumps(meta, sort_keys=True)}
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files=extra)
    data = buf.getvalue()
    return replace_atomically(lambda f: f.write(data), path)


def export_onnx(embedder, path: str | os.PathLike, frame_shape=(172, 172), mask=None,
                opset: int = 17) -> Path:
    """Export :class:`EmbeddingGraph` of ``embedder`` to ONNX (atomically).

    The graph has one input ``"frames"`` float32 ``(batch, H, W)`` and one output
    ``"embeddings"`` float32 ``(batch, d)``; ``batch`` is a dynamic axis. Needs the ``onnx``
    package (the ``export`` extra); the TorchScript-based exporter of torch is used
    (``dynamo=False``), so ``onnxscript`` is not needed.

    Parameters
    ----------
    embedder : SpeckleEmbedder
    path : str or os.PathLike
        Output file (conventionally ``.onnx``); written to a ``.tmp`` sibling, then renamed.
    frame_shape : (H, W), default (172, 172)
    mask : array_like (H, W), optional
        Bad pixels baked into the graph.
    opset : int, default 17
        ONNX opset version.

    Returns
    -------
    pathlib.Path
        The file; :func:`read_export_metadata` reads its provenance (``metadata_props``).

    Raises
    ------
    ImportError
        ``onnx`` is not installed.
    ValueError
        As :class:`EmbeddingGraph`.
    """
    path = Path(os.fspath(path)).expanduser()
    graph = _build(embedder, frame_shape, mask)
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("export_onnx needs the 'onnx' package: pip install 'speckle_embed[export]' "
                          "(or pip install onnx onnxruntime)") from exc
    example = _example(graph)
    with torch.no_grad():
        d = int(graph(example).shape[1])
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the dynamo exporter needs onnxscript; the graph is plain ops
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # the window slices of a resampling graph are not constant-folded: harmless, said per slice
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(graph, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=int(opset), do_constant_folding=True, **kwargs)
    proto = onnx.load_model_from_string(buf.getvalue())
    meta = _metadata(embedder, graph, "onnx", d, {"opset": int(opset)})
    onnx.helper.set_model_props(proto, _onnx_props(meta))
    proto.producer_name = "speckle_embed"
    proto.producer_version = str(meta["speckle_embed_version"])
    proto.doc_string = ("speckle_embed embedder: frames (batch, H, W) float32 photons -> unit-norm "
                        f"embeddings (batch, {d}); checkpoint {meta['checkpoint_hash']}")
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    return replace_atomically(lambda f: f.write(data), path)


def _onnx_props(meta: dict) -> dict[str, str]:
    """ONNX metadata_props: strings as they are, ``None`` as "", everything else as JSON."""
    props = {}
    for k, v in meta.items():
        props[k] = "" if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    props["speckle_embed"] = json.dumps(meta, sort_keys=True)
    return props


def read_export_metadata(path: str | os.PathLike) -> dict:
    """Metadata of an exported file (ONNX or TorchScript), as the dict that was stored.

    Keys: ``format``, ``kind`` ("onnx"/"torchscript"), ``checkpoint_hash`` (None for an embedder
    not loaded from/saved to a checkpoint), ``preprocessing``, ``model``, ``frame_shape``,
    ``window`` (rows/cols of the crop), ``bad_pixels``, ``embedding_size``, ``input``,
    ``output``, versions (and ``opset`` for ONNX).

    Raises
    ------
    ValueError
        The file holds no speckle_embed export metadata.
    """
    path = Path(os.fspath(path)).expanduser()
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # TorchScript: a zip archive
        files = {METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        if not files[METADATA_FILE]:
            raise ValueError(f"{path} is a TorchScript file without {METADATA_FILE}")
        return json.loads(files[METADATA_FILE])
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if "speckle_embed" not in props:
        raise ValueError(f"{path} holds no speckle_embed export metadata")
    return json.loads(props["speckle_embed"])
