"""Static int8 inference of the SpeckleNN embedding on x86 CPUs.

:func:`quantize_specklenn` turns a float :class:`~speckle_embed.models.SpeckleNNEmbedding` into
an :class:`Int8SpeckleNN`, a CPU module with the same interface (``(N, 1, S, S)`` preprocessed
inputs -> ``(N, d)`` unit-norm float32 embeddings) whose convolutions and first fully
connected layer run on 8-bit integers. :class:`~speckle_embed.inference.embedder.SpeckleEmbedder` uses it
for ``precision="int8"`` after :meth:`~speckle_embed.inference.embedder.SpeckleEmbedder.calibrate_int8`.

Method
------
Post-training static quantization (eager mode of :mod:`torch.ao.quantization`, quantized CPU
kernels of oneDNN or FBGEMM):

1. every ``Conv -> BatchNorm`` pair is folded into one convolution (exact in eval mode);
2. ``PReLU`` with one shared slope ``a`` is replaced by ``LeakyReLU(a)`` (the same function) and,
   when ``a >= 0``, moved after the max-pooling (exact: pooling commutes with a non-decreasing
   activation; 4x fewer activations to compute). PReLU with one slope per channel runs in
   float32 between a dequantize and a re-quantize;
3. the first Linear layer's columns are permuted to the channels-last (NHWC) order of the
   quantized feature map, so flattening is a view instead of a copy;
4. observers record the range of every activation on the caller's *calibration inputs*
   (histogram observer: the clipping range that minimises the quantisation error), weights are
   quantised per output channel (symmetric int8), activations per tensor (unsigned 8 bit);
5. the remaining head (``PReLU -> Linear(hidden, d)``, 0.3 % of the arithmetic) stays float32;
6. batches are run in chunks of at most ``max_batch`` inputs so that no int8 buffer exceeds
   :data:`CHUNK_BYTES` (116 inputs for the default model): larger buffers are ``mmap``-ed and
   page-faulted afresh on every call, which cost ~20 % of the CPU time at batch 256.

Why not quantize ``PReLU`` itself: the quantized ``PReLU`` kernel of PyTorch (checked with 2.13,
``torch.ops.quantized.prelu``, every engine) multiplies *positive* inputs by the slope too
(it returns ``a * x`` for ``x > 0``), which wrecks the embeddings (relative error ~1 whatever the
calibration); the quantized ``LeakyReLU`` kernel is correct. Use :func:`check_prelu_kernel` to
test a PyTorch build.

Accuracy
--------
Quantisation error depends on the weights and on how well the calibration inputs represent
the frames to embed. With the then-shipped ``specklenn-offline-v1`` model, calibrated on 256
simulated shots of 3 structures and evaluated on 1024 shots of 7 others
(``benchmarks/bench_inference.py --precision int8``, ``docs/int8.md``): median
``|z_int8 - z_fp32|`` over the 128 coordinates of the unit-norm embeddings 0.0026, max 0.045,
cosine similarity >= 0.977 (median 0.999); a single- vs multiple-hit few-shot classifier (10
supports per class, mean distance) changes 4 labels out of 1960 and its accuracy not at all
(0.957 vs 0.958). Calibrate on *preprocessed real (or realistic simulated) frames*:
``torch.randn`` inputs have the mean and variance of standardised frames but not the heavy
right tail of ``log1p`` photon counts, so the clipping ranges are wrong (median |dz| 0.027,
min cosine 0.66 on the same model).

Limits
------
* CPU only (the quantized kernels exist for x86 and ARM CPUs, not CUDA). The oneDNN engine
  (default where the CPU has AVX-512 VNNI / AVX-VNNI) uses full 8-bit activations; without VNNI
  the ``"x86"`` engine (FBGEMM, 7-bit activations to avoid overflow of AVX2 multiply-adds) is
  used, which is a little less accurate.
* Only SpeckleNN-like models: ``features`` = blocks of ``Conv2d [-> BatchNorm2d] -> PReLU ->
  MaxPool2d`` and ``head`` = ``Flatten -> Linear -> PReLU -> Linear``. Other models raise
  :class:`TypeError`.
* The module is tied to the weights it was built from: rebuild it after changing them.
* :mod:`torch.ao.quantization` is deprecated in favour of ``torchao`` (whose CPU path for
  static int8 convolutions goes through ``torch.export`` + ``torch.compile``/Inductor and a C++
  compiler at run time); it is still shipped and working in PyTorch 2.13. If a future PyTorch
  removes it, :func:`quantize_specklenn` raises :class:`RuntimeError` saying so.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["quantize_specklenn", "Int8SpeckleNN", "default_engine", "check_prelu_kernel", "FC_MODES"]

#: Largest int8 intermediate (bytes) of one forward call: bigger batches are run in chunks, so
#: that no buffer exceeds glibc's largest ``mmap`` threshold (32 MiB). Larger buffers are mapped
#: and unmapped on every call and their page faults cost ~20 % of the CPU time at batch 256.
CHUNK_BYTES = 30 * 2**20

#: How the first fully connected layer runs: ``"int8"`` static (input already int8: no
#: dequantize/requantize), ``"dynamic"`` (float input quantised per batch,
#: :func:`torch.ao.quantization.quantize_dynamic`) or ``"float32"``.
FC_MODES = ("int8", "dynamic", "float32")

# Deprecation notices printed by torch.ao.quantization / quantized tensor factories; the
# deprecation is documented above and in docs/int8.md, so it is not repeated on every build.
_NOISE = (r"torch\.ao\.quantization is deprecated", r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
          r"must run observer before calling calculate_qparams")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _tq():
    """:mod:`torch.ao.quantization`, or a clear error where this PyTorch lacks it."""
    try:
        with _quiet():
            import torch.ao.nn.quantized  # noqa: F401
            import torch.ao.quantization as tq
    except ImportError as exc:  # pragma: no cover - depends on the PyTorch build
        raise RuntimeError(
            f"precision='int8' needs torch.ao.quantization (eager post-training quantization), which "
            f"this PyTorch {torch.__version__} does not have: {exc}. Use a PyTorch release that still "
            "ships it, or precision='bfloat16' / 'float32'.") from exc
    return tq


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    """Select the quantized engine while weights are packed (the packed weights keep it)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def default_engine() -> str:
    """``"onednn"`` on CPUs with VNNI int8 dot products (8-bit activations), else ``"x86"``."""
    engines = torch.backends.quantized.supported_engines
    has_vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    if has_vnni and "onednn" in engines:
        return "onednn"
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise RuntimeError(f"this PyTorch build has no quantized CPU engine (supported: {engines})")


def check_prelu_kernel(engine: str | None = None) -> float:
    """Max error of ``torch.ops.quantized.prelu`` against float PReLU on a small ramp.

    About one quantisation step (~0.01) for a correct kernel; ~1 for the PyTorch 2.13 kernel,
    which applies the slope to positive inputs as well (the reason :func:`quantize_specklenn`
    uses LeakyReLU).
    """
    _tq()
    with _quiet(), _engine(engine or default_engine()):
        x = torch.linspace(-2.0, 2.0, 64).reshape(1, 1, 8, 8)
        qx = torch.quantize_per_tensor(x, 4.0 / 255, 128, torch.quint8)
        qw = torch.quantize_per_tensor(torch.tensor([0.25]), 0.25 / 255, 0, torch.quint8)
        out = torch.ops.quantized.prelu(qx, qw, 2.5 / 255, 51).dequantize()
    return float((out - F.prelu(x, torch.tensor([0.25]))).abs().max())


# ----------------------------------------------------------------------------- building blocks
class _FlattenNHWC(nn.Module):
    """Flatten a channels-last map in (H, W, C) order: a view, also for quantized tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def _parse(model: nn.Module):
    """``[(conv, bn | None, prelu, pool), ...]`` and ``(fc1, prelu, fc2)`` of a SpeckleNN-like model."""
    msg = ("int8 quantization supports SpeckleNN-like models only (features = blocks of Conv2d, "
           "BatchNorm2d, PReLU, MaxPool2d; head = Flatten, Linear, PReLU, Linear); got ")
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if not isinstance(features, nn.Sequential) or not isinstance(head, nn.Sequential):
        raise TypeError(msg + type(model).__name__)
    blocks = []
    for blk in features:
        kids = list(blk) if isinstance(blk, nn.Sequential) else [blk]
        if len(kids) == 3:
            kids.insert(1, None)
        ok = (len(kids) == 4 and isinstance(kids[0], nn.Conv2d) and kids[0].groups == 1
              and (kids[1] is None or isinstance(kids[1], nn.BatchNorm2d)) and isinstance(kids[2], nn.PReLU)
              and isinstance(kids[3], nn.MaxPool2d))
        if not ok:
            raise TypeError(msg + f"the feature block {blk}")
        blocks.append(tuple(kids))
    kids = list(head)
    if not (len(kids) == 4 and isinstance(kids[0], nn.Flatten) and isinstance(kids[1], nn.Linear)
            and isinstance(kids[2], nn.PReLU) and isinstance(kids[3], nn.Linear)):
        raise TypeError(msg + f"the head {head}")
    return blocks, (kids[1], kids[2], kids[3])


def _float_features(blocks) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Float plan of the quantized feature extractor (BN folded, PReLU -> LeakyReLU) and the
    channel count of its output (for the column permutation of the first Linear)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    tq = _tq()
    layers: list[nn.Module] = [tq.QuantStub()]
    for conv, bn, act, pool in blocks:
        conv = copy.deepcopy(conv).float().cpu().eval()
        if bn is not None:
            bn = copy.deepcopy(bn).float().cpu().eval()
            if not bn.track_running_stats or bn.running_mean is None:
                raise TypeError("int8 quantization needs BatchNorm layers with running statistics")
            conv = fuse_conv_bn_eval(conv, bn)
        slope = act.weight.detach().float().cpu()
        pool = copy.deepcopy(pool)
        monotone = bool((slope >= 0).all()) and pool.padding in (0, (0, 0))
        if slope.numel() == 1:
            fn: list[nn.Module] = [nn.LeakyReLU(float(slope))]
        else:  # one slope per channel: float32 island
            island = copy.deepcopy(act).float().cpu()
            island.qconfig = None
            fn = [tq.DeQuantStub(), island, tq.QuantStub()]
        layers += [conv, pool, *fn] if monotone else [conv, *fn, pool]
    return nn.Sequential(*layers), int(blocks[-1][0].out_channels)


def _nhwc_linear(fc: nn.Linear, channels: int) -> nn.Linear:
    """Copy of ``fc`` whose inputs are read in (H, W, C) instead of (C, H, W) order."""
    out_f, in_f = fc.weight.shape
    if in_f % channels:
        raise TypeError(f"the first Linear ({in_f} inputs) does not follow a {channels}-channel feature map")
    new = copy.deepcopy(fc).float().cpu().eval()
    w = fc.weight.detach().float().cpu().reshape(out_f, channels, -1).transpose(1, 2).reshape(out_f, in_f)
    new.weight = nn.Parameter(w.contiguous(), requires_grad=False)
    return new


class Int8SpeckleNN(nn.Module):
    """Int8 CPU inference copy of a SpeckleNN embedding (built by :func:`quantize_specklenn`).

    ``forward(x)``: ``(N, 1, S, S)`` float32 preprocessed inputs -> ``(N, d)`` unit-norm
    float32 embeddings, like the float model. Inference only (no gradients).

    Attributes
    ----------
    engine : str
        Quantized engine the weights were packed for (``"onednn"``, ``"x86"``...).
    fc : str
        One of :data:`FC_MODES`.
    max_batch : int or None
        Larger batches are run in chunks of this many inputs (same result).
    calibration : dict
        ``n`` calibration inputs and, when checked, ``max_abs_diff`` / ``median_abs_diff`` of
        the embeddings against the float model and their ``min_cosine`` on those inputs.
    """

    def __init__(self, features: nn.Module, fc1: nn.Module, rest: nn.Module, *, engine: str, fc: str,
                 input_size: tuple[int, int], embedding_size: int, max_batch: int | None = None):
        super().__init__()
        self.features = features
        self.flatten = _FlattenNHWC()
        self.fc1 = fc1
        self.rest = rest
        self.engine = engine
        self.fc = fc
        self.input_size = tuple(input_size)
        self.embedding_size = int(embedding_size)
        self.max_batch = None if max_batch is None else max(1, int(max_batch))
        self.calibration: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"expected input of shape (N, 1, {self.input_size[0]}, {self.input_size[1]}), "
                             f"got {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise ValueError(f"int8 inference runs on the CPU only; got a tensor on {x.device}")
        x = x.float()
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            return torch.cat([self._forward(x[s:s + self.max_batch]) for s in range(0, x.shape[0], self.max_batch)])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(self.flatten(self.features(x.contiguous(memory_format=torch.channels_last))))
        if h.is_quantized:
            h = h.dequantize()
        return F.normalize(self.rest(h), p=2.0, dim=1)

    def extra_repr(self) -> str:
        return f"engine={self.engine!r}, fc={self.fc!r}, max_batch={self.max_batch}, calibration={self.calibration}"


def _largest_activation(features: nn.Module, x: torch.Tensor) -> int:
    """Elements of the largest convolution output of one input (the float plan, before observers)."""
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(out[0].numel()))
             for m in features.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            features(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return max(sizes, default=1)


def _as_inputs(calibration_inputs, size: tuple[int, int]) -> torch.Tensor:
    x = calibration_inputs
    x = x.detach() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != size:
        raise ValueError(f"calibration inputs must be preprocessed frames of shape (N, 1, {size[0]}, "
                         f"{size[1]}) (speckle_embed.preprocess.preprocess); got {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError("calibration needs at least one input (a few hundred representative frames is better)")
    if not x.is_floating_point():
        raise ValueError(f"calibration inputs must be float (preprocessed frames); got {x.dtype}")
    x = x.to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("calibration inputs hold NaN or inf")
    return x


def quantize_specklenn(model: nn.Module, calibration_inputs, *, engine: str | None = None, fc: str = "int8",
                       batch_size: int = 64, check: bool = True,
                       chunk_bytes: int | None = CHUNK_BYTES) -> Int8SpeckleNN:
    """Post-training static int8 quantization of a SpeckleNN embedding for CPU inference.

    Parameters
    ----------
    model : SpeckleNNEmbedding
        Float model (any device; it is not modified).
    calibration_inputs : Tensor or array, shape (N, 1, S, S)
        *Preprocessed* frames (:func:`speckle_embed.preprocess.preprocess`, or
        :meth:`SpeckleEmbedder.calibrate_int8` which prepares them from detector frames) that
        represent the data to embed; a few hundred is enough (the observers keep histograms).
    engine : str, optional
        Quantized engine: default :func:`default_engine` (``"onednn"`` with VNNI, else ``"x86"``).
    fc : {"int8", "dynamic", "float32"}, default "int8"
        How the first fully connected layer runs (:data:`FC_MODES`).
    batch_size : int, default 64
        Calibration batch size.
    check : bool, default True
        Compare with the float model on the calibration inputs, store the figures in
        ``.calibration`` and warn if the embeddings disagree grossly (min cosine < 0.9).
    chunk_bytes : int or None, default :data:`CHUNK_BYTES`
        Forward calls on larger batches run in chunks whose largest int8 activation stays
        below this many bytes (``max_batch`` of the result); ``None``: never split.

    Returns
    -------
    Int8SpeckleNN
        On the CPU, in eval mode.

    Raises
    ------
    TypeError
        The model is not SpeckleNN-like.
    ValueError
        Bad calibration inputs or ``fc``/``engine``.
    RuntimeError
        This PyTorch has no :mod:`torch.ao.quantization` or no quantized CPU engine.

    Examples
    --------
    >>> import torch
    >>> from speckle_embed.models import SpeckleNNEmbedding
    >>> model = SpeckleNNEmbedding(channels=[8, 16], hidden_size=64, embedding_size=32).eval()
    >>> q = quantize_specklenn(model, torch.randn(16, 1, 96, 96))
    >>> q(torch.randn(2, 1, 96, 96)).shape
    torch.Size([2, 32])
    """
    tq = _tq()
    if fc not in FC_MODES:
        raise ValueError(f"fc must be one of {FC_MODES}; got {fc!r}")
    engine = default_engine() if engine is None else engine
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"engine {engine!r} is not available; this PyTorch supports "
                         f"{torch.backends.quantized.supported_engines}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    blocks, (fc1, act, fc2) = _parse(model)
    size = tuple(getattr(model, "input_size", None) or ())
    if len(size) != 2:
        raise TypeError("the model must have an input_size attribute (H, W)")
    x = _as_inputs(calibration_inputs, size)
    was_training = model.training
    model.eval()
    try:
        with _quiet(), _engine(engine):
            features, channels = _float_features(blocks)
            features = features.cpu().eval()
            per_frame = _largest_activation(features, x)
            lin = _nhwc_linear(fc1, channels)
            rest = nn.Sequential(copy.deepcopy(act).float().cpu().eval(), copy.deepcopy(fc2).float().cpu().eval())
            qconfig = tq.get_default_qconfig("onednn" if engine == "onednn" else "x86")
            features.qconfig = qconfig
            if fc == "int8":
                features.append(_FlattenNHWC())  # calibrated as one graph with the Linear
                features.append(lin)
                features.append(tq.DeQuantStub())
            else:
                features.append(tq.DeQuantStub())
            tq.prepare(features, inplace=True)
            with torch.no_grad():
                for s in range(0, x.shape[0], int(batch_size)):
                    features(x[s:s + batch_size].contiguous(memory_format=torch.channels_last))
            tq.convert(features, inplace=True)
            if fc == "int8":
                # split the converted graph again: feature part | flatten | Linear | dequantize
                kids = list(features)
                features, fc_mod = nn.Sequential(*kids[:-3]), nn.Sequential(kids[-2], kids[-1])
            elif fc == "dynamic":
                fc_mod = tq.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
            else:
                fc_mod = lin
        q = Int8SpeckleNN(features, fc_mod, rest, engine=engine, fc=fc, input_size=size,
                          embedding_size=int(fc2.out_features),
                          max_batch=None if chunk_bytes is None else int(chunk_bytes) // per_frame).eval()
        q.calibration = {"n": int(x.shape[0])}
        if check:
            q.calibration.update(compare(model, q, x, batch_size=batch_size))
            if q.calibration["min_cosine"] < 0.9:
                warnings.warn(f"int8 embeddings disagree with float32 on the calibration inputs "
                              f"(min cosine {q.calibration['min_cosine']:.3f}); check the inputs are "
                              "preprocessed frames and the quantized kernels of this PyTorch "
                              "(speckle_embed.inference.int8.check_prelu_kernel)", stacklevel=2)
    finally:
        model.train(was_training)
    return q


def compare(model: nn.Module, qmodel: nn.Module, inputs, *, batch_size: int = 64) -> dict:
    """Agreement of two embedding models on the same inputs.

    Returns ``max_abs_diff`` and ``median_abs_diff`` of ``|z_q - z_float|`` over all
    coordinates, and ``min_cosine`` / ``median_cosine`` of the rows.
    """
    x = inputs if torch.is_tensor(inputs) else torch.as_tensor(np.asarray(inputs))
    dev = next(model.parameters()).device
    za, zb = [], []
    with torch.inference_mode(), _quiet():
        for s in range(0, x.shape[0], int(batch_size)):
            b = x[s:s + batch_size].float()
            za.append(F.normalize(model(b.to(dev)).float(), dim=1).cpu())
            zb.append(qmodel(b.cpu()).float())
    za, zb = torch.cat(za), torch.cat(zb)
    d = (zb - za).abs()
    cos = (za * zb).sum(1)
    return {"max_abs_diff": float(d.max()), "median_abs_diff": float(d.median()),
            "min_cosine": float(cos.min()), "median_cosine": float(cos.median())}

