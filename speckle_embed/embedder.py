"""Frames in, unit-norm embeddings out: the inference half of a trained embedding network.

:class:`SpeckleEmbedder` couples an embedding model (any module of
:data:`speckle_embed.models.MODEL_REGISTRY`) with the :class:`~speckle_embed.preprocess.Preprocessing`
it was trained with, and embeds detector frames of any size and numeric dtype::

    import speckle_embed as se
    emb = se.SpeckleEmbedder.from_checkpoint("runs/exp1/best.pt")
    Z = emb.embed(frames, mask=mask)            # (N, H, W) photons -> (N, 128) float32

Frames from other detectors
---------------------------
The model sees an ``input_size x input_size`` window resampled about the beam centre with
``scale`` input pixels per model pixel (default ``preprocessing.scale``: the training crop).

* **Same pixel sampling as training, other size** (e.g. 128 x 128 binned pnCCD frames with their
  own mask): ``emb.embed(frames, mask=pnccd_mask)``; the central window is used, masked pixels
  (non-zero CXI bits or ``True``) are ignored. The frame must be at least ``input_size * scale``
  pixels across for the window to be filled; pixels outside the frame count as masked.
* **Known geometry** (pixel size, distance, photon energy of both detectors):
  ``scale=speckle_embed.scale.geometric_scale(...)``; e.g. 1024 x 1024 assembled frames of
  75 um pixels against a model trained on 600 um (8x8-binned) pixels take ``scale=8.0``: each
  model pixel averages an 8 x 8 block (area-weighted, masked pixels excluded).
* **Unknown geometry**: ``scale="auto"`` measures the speckle size of the incoming frames
  (:func:`speckle_embed.scale.speckle_size`) and compares it to ``reference_speckle_px``, the
  speckle size of the training frames stored in the checkpoint (``preprocessing`` dict). When the
  checkpoint has none, assume the model was trained at its default crop and give it yourself:
  ``SpeckleEmbedder.from_checkpoint(path, reference_speckle_px=...)``, or measure it once on
  training-like frames with :meth:`SpeckleEmbedder.calibrate_reference_speckle`. One scale is
  estimated per :meth:`~SpeckleEmbedder.embed` call, from up to 64 of its frames; for
  reproducible pipelines call :meth:`~SpeckleEmbedder.estimate_scale` once and pass the number.
* **Off-centre beam**: ``center=(row, col)`` (pixels; default the geometric centre
  ``((H-1)/2, (W-1)/2)``), one per frame as an ``(N, 2)`` array, or ``center="auto"``
  (:func:`speckle_embed.scale.estimate_center`, Friedel symmetry).

Non-finite pixels (NaN, inf) are treated as masked; a frame with no finite, unmasked pixel in
the model's field of view raises :class:`ValueError` naming its index (``nan_policy="raise"``
refuses any non-finite pixel instead).

Speed: only the window the model sees is converted to float32 (integer frames such as uint16
are cropped first, and skip the NaN checks they cannot need); inference runs in eval mode under
:func:`torch.inference_mode` on a copy of the model with BatchNorm folded into the convolutions
and channels-last memory; ``precision="bfloat16"`` (CUDA, or CPUs with AVX512-BF16/AMX) and
``compile=True`` are available.

int8 on the CPU (``docs/int8.md``): ``precision="int8"`` runs the SpeckleNN model with static
int8 quantization (:mod:`speckle_embed.quantize`); it needs one explicit calibration on
representative frames, which fixes the activation ranges::

    emb = se.load_pretrained(device="cpu", precision="int8")
    emb.calibrate_int8(frames[:256], mask=mask)   # once; deterministic for the same frames
    Z = emb.embed(frames, mask=mask)
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from speckle_embed.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    file_hash,
    load_checkpoint_file,
    weights_fingerprint,
    write_checkpoint,
)
from speckle_embed.frame_checks import check_frame_size, flat_inputs, warn_empty
from speckle_embed.models import build_model, model_config
from speckle_embed.preprocess import Preprocessing
from speckle_embed.transfer import HostToDevice

# CheckpointError, CHECKPOINT_FORMAT and file_hash are owned by speckle_embed.checkpoint (re-exported here)
__all__ = ["SpeckleEmbedder", "CheckpointError", "CHECKPOINT_FORMAT", "file_hash"]

_SAMPLE_FRAMES = 64  # frames used by scale="auto" / center="auto"
_PRECISIONS = ("float32", "bfloat16", "int8")
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_FLUSH_ROWS = 65536  # CUDA: embeddings fetched from the device every this many rows


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available; "
                           "use device='auto' or 'cpu'")
    return dev


# ----------------------------------------------------------------------------- inference copy
def _fold_for_inference(model: nn.Module) -> nn.Module:
    """Copy of ``model`` (eval) with Conv+BatchNorm folded and monotone PReLU moved after MaxPool.

    Only patterns inside ``nn.Sequential`` containers are rewritten; both rewrites are exact up
    to float rounding (max-pooling commutes with a non-decreasing activation).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    for seq in list(m.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq)
        out: list[nn.Module] = []
        i = 0
        while i < len(kids):
            a = kids[i]
            b = kids[i + 1] if i + 1 < len(kids) else None
            if (isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats
                    and b.running_mean is not None):
                out.append(fuse_conv_bn_eval(a, b))
                i += 2
                continue
            if (isinstance(a, nn.PReLU) and isinstance(b, nn.MaxPool2d) and bool((a.weight >= 0).all())
                    and b.padding in (0, (0, 0))):
                out += [b, a]
                i += 2
                continue
            out.append(a)
            i += 1
        seq._modules = OrderedDict((str(j), mod) for j, mod in enumerate(out))
    return m


def _check_int8(device: torch.device, compile: bool) -> None:
    if device.type != "cpu":
        raise ValueError(f"precision='int8' runs on the CPU only (quantized kernels of x86/ARM CPUs); "
                         f"the embedder is on {device}. Use device='cpu', or precision='bfloat16' on CUDA")
    if compile:
        raise ValueError("compile=True is not supported with precision='int8' (the int8 module runs "
                         "eager quantized kernels)")


def _params_key(model: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))


# ----------------------------------------------------------------------------- input checks
def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def _check_frames(frames) -> Any:
    """Frames as an (N, H, W) numpy array, tensor or h5py-like dataset (not yet converted)."""
    if _is_tensor(frames):
        x = frames.detach()
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"frames must hold real numbers; got dtype {x.dtype}")
    elif hasattr(frames, "shape") and hasattr(frames, "dtype") and hasattr(frames, "__getitem__") \
            and not isinstance(frames, np.ndarray):
        x = frames  # h5py.Dataset and friends: read batch by batch
        if len(x.shape) == 2:
            x = np.asarray(x[()])
    else:
        x = np.asarray(frames)
    if not _is_tensor(x):
        kind = np.dtype(x.dtype).kind
        if kind not in "iuf":
            raise ValueError(f"frames must hold real numbers (int, uint or float); got dtype {x.dtype}")
    shape = tuple(x.shape)
    if len(shape) == 2:
        x = x[None]
    elif len(shape) != 3:
        raise ValueError(f"frames must have shape (N, H, W) or (H, W); got shape {shape}")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"frames must have H, W >= 1; got shape {shape}")
    return x


def _check_mask(mask, n: int, hw: tuple[int, int]) -> np.ndarray | None:
    """Boolean bad-pixel mask, (H, W) or (N, H, W), or None."""
    if mask is None:
        return None
    m = mask.detach().cpu().numpy() if _is_tensor(mask) else np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise ValueError(f"mask must be boolean or integer (non-zero = bad pixel); got dtype {m.dtype}")
    if m.shape == hw:
        pass
    elif m.ndim == 3 and m.shape == (n,) + hw:
        pass
    else:
        raise ValueError(f"mask shape {m.shape} does not match the frames: expected {hw} "
                         f"(one mask for all frames) or {(n,) + hw} (one per frame)")
    return m != 0


def _window(h: int, w: int, cy: float, cx: float, size: int, scale: float) -> tuple[int, int, int, int]:
    """Rows/cols ``r0:r1, c0:c1`` that hold every pixel ``resample_center`` can touch."""
    half = (size - 1) / 2 * scale
    k = max(int(round(scale)), 1)
    margin = k // 2 + 2
    r0 = max(int(math.floor(cy - half)) - margin, 0)
    r1 = min(int(math.ceil(cy + half)) + margin + 1, h)
    c0 = max(int(math.floor(cx - half)) - margin, 0)
    c1 = min(int(math.ceil(cx + half)) + margin + 1, w)
    if r0 >= r1 or c0 >= c1:
        raise ValueError(f"the beam centre ({cy}, {cx}) is so far outside the {h}x{w} frame that the "
                         "model's field of view holds no pixel")
    return r0, r1, c0, c1


class SpeckleEmbedder:
    """Embed diffraction frames with a trained network and its preprocessing.

    Parameters
    ----------
    model : torch.nn.Module
        Embedding network mapping ``(N, 1, S, S)`` inputs to ``(N, d)`` embeddings
        (``S = preprocessing.input_size``), e.g. :class:`~speckle_embed.models.SpeckleNNEmbedding`.
        Put in eval mode and moved to ``device``.
    preprocessing : Preprocessing, optional
        How frames become model inputs (default ``Preprocessing()``).
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
        ``"auto"``: CUDA when available, else CPU.
    batch_size : int, default 256
        Frames per forward pass.
    checkpoint_hash : str, optional
        Identity of the weights (DESIGN.md: first 16 hex of the checkpoint file's SHA-256); set
        by :meth:`from_checkpoint`, recorded by saved classifiers.
    reference_speckle_px : float, optional
        Speckle size (:func:`speckle_embed.scale.speckle_size`) of the training frames in
        training-detector pixels; needed by ``scale="auto"``.
    precision : {"float32", "bfloat16", "int8"}, default "float32"
        Autocast dtype of the forward pass; embeddings are always returned as float32.
        ``"int8"``: static int8 quantization on the CPU (:mod:`speckle_embed.quantize`), after
        :meth:`calibrate_int8`; not available on CUDA nor with ``compile=True``.
    compile : bool or str, default False
        ``torch.compile`` the inference copy of the model (the last batch is zero-padded to
        ``batch_size`` so shapes stay static). A string is the compile mode: ``"reduce-overhead"``
        replays the whole forward pass as one **CUDA graph** (fewer kernel launches: worth it
        for small batches), ``"max-autotune"`` also benchmarks kernel choices; ``True`` is
        ``"default"``.
    nan_policy : {"mask", "raise"}, default "mask"
        ``"mask"``: non-finite pixels are treated as masked. ``"raise"``: any non-finite pixel in
        the model's field of view raises ``ValueError`` naming the frame.
    metadata : dict, optional
        Training metadata (the checkpoint's ``"training"`` dict), kept for provenance.

    Attributes
    ----------
    model : torch.nn.Module
    preprocessing : Preprocessing
    device : torch.device
    embedding_size : int
    checkpoint_path : pathlib.Path or None
        File the weights were read from or last saved to.

    Examples
    --------
    >>> import numpy as np
    >>> emb = SpeckleEmbedder.random_init(device="cpu")
    >>> frames = np.random.default_rng(0).poisson(2.0, size=(3, 172, 172)).astype(np.uint16)
    >>> Z = emb.embed(frames)
    >>> Z.shape, Z.dtype, bool(np.allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-5))
    ((3, 128), dtype('float32'), True)
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing | None = None, *,
                 device: str | torch.device = "auto", batch_size: int = 256,
                 checkpoint_hash: str | None = None, reference_speckle_px: float | None = None,
                 precision: str = "float32", compile: bool | str = False, nan_policy: str = "mask",
                 metadata: dict | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        prep = Preprocessing() if preprocessing is None else preprocessing
        if isinstance(prep, dict):
            prep = Preprocessing.from_dict(prep)
        if not isinstance(prep, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing; got {type(prep).__name__}")
        expected = getattr(model, "input_size", None)
        if expected is not None and tuple(expected) != (prep.input_size, prep.input_size):
            raise ValueError(f"the model expects inputs of {tuple(expected)} pixels but the "
                             f"preprocessing produces {prep.input_size}x{prep.input_size}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be 'float32', 'bfloat16' or 'int8'; got {precision!r}")
        if nan_policy not in ("mask", "raise"):
            raise ValueError(f"nan_policy must be 'mask' or 'raise'; got {nan_policy!r}")
        if reference_speckle_px is not None and not (np.isfinite(reference_speckle_px) and reference_speckle_px > 0):
            raise ValueError(f"reference_speckle_px must be a positive number; got {reference_speckle_px!r}")
        self.device = _resolve_device(device)
        if precision == "int8":
            _check_int8(self.device, compile)
        self.model = model.to(self.device).eval()
        self.preprocessing = prep
        self.batch_size = int(batch_size)
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_path: Path | None = None
        # fingerprint of the weights that checkpoint_hash identifies (FewShotClassifier.save compares)
        self._file_fingerprint: str | None = (weights_fingerprint(self.model.state_dict())
                                              if checkpoint_hash is not None else None)
        self._file_is_plain = True
        self.reference_speckle_px = None if reference_speckle_px is None else float(reference_speckle_px)
        self.precision = precision
        if isinstance(compile, str) and compile not in _COMPILE_MODES:
            raise ValueError(f"compile must be True/False or one of {_COMPILE_MODES}; got {compile!r}")
        #: torch.compile mode, or None (eager)
        self.compile_mode: str | None = (compile if isinstance(compile, str)
                                         else ("default" if compile else None))
        self.compile = self.compile_mode is not None
        self.nan_policy = nan_policy
        self.metadata = dict(metadata or {})
        self._infer: nn.Module | None = None
        self._infer_key: tuple | None = None
        self._int8: nn.Module | None = None
        self._int8_key: tuple | None = None
        self._h2d: HostToDevice | None = None  # set by embed() on CUDA
        self._embedding_size: int | None = getattr(model, "embedding_size", None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def random_init(cls, preprocessing: Preprocessing | None = None, seed: int = 0, *,
                    model: dict | None = None, **kwargs) -> "SpeckleEmbedder":
        """An untrained embedder (random weights) to try the API before training.

        Parameters
        ----------
        preprocessing : Preprocessing, optional
            Default ``Preprocessing()``.
        seed : int, default 0
            Seeds the weights (the global torch RNG is left untouched).
        model : dict, optional
            :func:`~speckle_embed.models.build_model` config; default the SpeckleNN model for
            ``preprocessing.input_size``.
        **kwargs
            Other :class:`SpeckleEmbedder` arguments (``device``, ``batch_size``...).
        """
        prep = Preprocessing() if preprocessing is None else preprocessing
        config = {"name": "specklenn", "input_size": prep.input_size} if model is None else dict(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = build_model(config)
        return cls(net, prep, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                        trust_checkpoint: bool = False, reference_speckle_px: float | None = None,
                        weights_only: bool | None = None, **kwargs) -> "SpeckleEmbedder":
        """Rebuild an embedder from a checkpoint file (format in DESIGN.md).

        The file is read with ``torch.load(weights_only=True)`` (:mod:`speckle_embed.checkpoint`):
        loading it never runs code from it.

        Parameters
        ----------
        path : str or os.PathLike
            ``best.pt`` / ``last.pt`` written by training, :meth:`save_checkpoint`, or a shipped
            (compressed) file.
        device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
        trust_checkpoint : bool, default False
            Explicit opt-in for a file **you trust** that holds Python objects beyond plain data
            (an old checkpoint): it is then unpickled in full, which can run code it contains.
            Without it such a file raises :class:`~speckle_embed.checkpoint.UntrustedCheckpointError`.
            Convert a trusted file once with :func:`speckle_embed.checkpoint.convert_checkpoint`.
        reference_speckle_px : float, optional
            Overrides the value stored in the checkpoint (for ``scale="auto"``).
        weights_only : bool, optional
            Deprecated spelling: ``weights_only=False`` is ``trust_checkpoint=True``.
        **kwargs
            Other :class:`SpeckleEmbedder` arguments.

        Raises
        ------
        FileNotFoundError
            No such file.
        UntrustedCheckpointError
            (a :class:`CheckpointError`) The file needs arbitrary objects to load and
            ``trust_checkpoint`` is False; nothing in it ran. The message says how to convert it.
        CheckpointError
            (a ``ValueError``) The file is not a readable checkpoint, lacks keys, has another
            format, or its weights do not fit its model config. The message names the file.
        """
        if weights_only is False:
            warnings.warn("from_checkpoint(weights_only=False) is deprecated: pass trust_checkpoint=True "
                          "(only for files you trust)", DeprecationWarning, stacklevel=2)
            trust_checkpoint = True
        loaded = load_checkpoint_file(path, trust_checkpoint=bool(trust_checkpoint))
        model, prep, ref, meta = cls._parse_checkpoint(loaded.checkpoint, loaded.path)
        if reference_speckle_px is not None:
            ref = reference_speckle_px
        self = cls(model, prep, device=device, checkpoint_hash=loaded.hash, reference_speckle_px=ref,
                   metadata=meta, **kwargs)
        self.checkpoint_path = loaded.path.resolve()
        # a file that needed trust is not copied as it is by FewShotClassifier.save: rewritten plain
        self._file_is_plain = not loaded.trusted
        return self

    @staticmethod
    def _parse_checkpoint(ckpt: Any, path: Path):
        """(model, preprocessing, reference_speckle_px, metadata) of a checked checkpoint dict."""
        missing = [k for k in ("model", "state_dict", "preprocessing") if k not in ckpt]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks the key(s) {missing}")
        try:
            model = build_model(ckpt["model"])
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path}: cannot build the model from its config "
                                  f"{ckpt['model']!r}: {exc}") from exc
        try:
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path}: the weights do not fit the model config "
                                  f"(incompatible checkpoint): {exc}") from exc
        pre = ckpt["preprocessing"]
        try:
            prep = Preprocessing.from_dict(dict(pre))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path}: invalid preprocessing {pre!r}: {exc}") from exc
        ref = dict(pre).get("reference_speckle_px")
        meta = ckpt.get("training") or {}
        return model, prep, (None if ref is None else float(ref)), (meta if isinstance(meta, dict) else {})

    def checkpoint_dict(self) -> dict:
        """The checkpoint dict :meth:`save_checkpoint` writes (weights on the CPU)."""
        prep = self.preprocessing.to_dict()
        if self.reference_speckle_px is not None:
            prep["reference_speckle_px"] = float(self.reference_speckle_px)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model_config(self.model),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "preprocessing": prep,
            "training": self.metadata,
        }

    def save_checkpoint(self, path: str | os.PathLike) -> str:
        """Write a checkpoint (DESIGN.md format) atomically: a ``.tmp`` file, then a rename.

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        str
            The new file's hash. It becomes :attr:`checkpoint_hash` only if the embedder had none
            (an embedder keeps the identity of the checkpoint it was loaded from).
        """
        path = Path(os.fspath(path)).expanduser()
        ckpt = self.checkpoint_dict()
        digest = write_checkpoint(ckpt, path)
        if self.checkpoint_hash is None:
            self.checkpoint_hash = digest
            self.checkpoint_path = path.resolve()
            self._file_fingerprint = weights_fingerprint(ckpt["state_dict"])
            self._file_is_plain = True
        return digest

    def weights_fingerprint(self) -> str:
        """:func:`speckle_embed.checkpoint.weights_fingerprint` of the weights in memory now."""
        return weights_fingerprint(self.model.state_dict())

    def weights_match_checkpoint(self) -> bool:
        """Whether the weights in memory are still those of :attr:`checkpoint_hash`'s file.

        ``False`` when they were changed (fine-tuned, edited) since the embedder was loaded or
        built with a hash, or when no fingerprint of that file is known.
        """
        return self._file_fingerprint is not None and self.weights_fingerprint() == self._file_fingerprint

    # ------------------------------------------------------------------ properties
    @property
    def embedding_size(self) -> int:
        """Dimension ``d`` of the embeddings."""
        if self._embedding_size is None:
            s = self.preprocessing.input_size
            with torch.inference_mode():
                out = self.model(torch.zeros(1, 1, s, s, device=self.device))
            self._embedding_size = int(out.shape[1])
        return int(self._embedding_size)

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"SpeckleEmbedder({type(self.model).__name__}, d={self.embedding_size}, "
                f"input_size={p.input_size}, crop={p.crop}, device={str(self.device)!r}, "
                f"checkpoint_hash={self.checkpoint_hash!r})")

    def to(self, device: str | torch.device) -> "SpeckleEmbedder":
        """Move the model to ``device`` (in place); returns ``self``."""
        self.device = _resolve_device(device)
        self.model.to(self.device)
        self._infer = None
        self._h2d = None
        return self

    # ------------------------------------------------------------------ scale / centre
    def calibrate_reference_speckle(self, frames, mask=None, *, center=None) -> float:
        """Measure and store :attr:`reference_speckle_px` from training-like frames.

        Parameters
        ----------
        frames : array_like, shape (N, H, W)
            Frames of the training detector/geometry (not resampled).
        mask, center
            As :func:`speckle_embed.scale.speckle_size`.

        Returns
        -------
        float
            The speckle size in pixels, now also :attr:`reference_speckle_px` (saved by
            :meth:`save_checkpoint`).
        """
        from speckle_embed.scale import speckle_size

        self.reference_speckle_px = float(speckle_size(_sample(frames), _sample_mask(mask, frames),
                                                       center=center, max_frames=None))
        return self.reference_speckle_px

    def estimate_scale(self, frames, mask=None, *, center=None) -> float:
        """The ``scale`` that ``scale="auto"`` would use for these frames.

        ``preprocessing.scale * speckle_size(frames) / reference_speckle_px``.

        Raises
        ------
        ValueError
            If :attr:`reference_speckle_px` is unknown.
        """
        from speckle_embed.scale import estimate_scale

        if self.reference_speckle_px is None:
            raise ValueError(
                "scale='auto' needs the speckle size of the training frames, and this embedder has "
                "none (the checkpoint stores no 'reference_speckle_px'). Pass "
                "reference_speckle_px=... to SpeckleEmbedder.from_checkpoint / the constructor, or "
                "measure it on training-like frames with emb.calibrate_reference_speckle(frames); "
                "or give scale explicitly (scale=None assumes the training pixel sampling).")
        return estimate_scale(_sample(frames), self.reference_speckle_px, _sample_mask(mask, frames),
                              center=center, reference_scale=self.preprocessing.scale, max_frames=None)

    # ------------------------------------------------------------------ inference
    def _inference_model(self) -> nn.Module:
        if self.precision == "int8":
            return self._int8_model()
        key = (_params_key(self.model), str(self.device), self.compile_mode)
        if self._infer is None or self._infer_key != key:
            self.model.eval()
            m = self.model
            try:
                folded = _fold_for_inference(self.model)
                s = self.preprocessing.input_size
                probe = torch.randn(2, 1, s, s, device=self.device,
                                    generator=torch.Generator(device=self.device).manual_seed(0))
                with torch.inference_mode():
                    if torch.allclose(folded(probe), self.model(probe), atol=1e-4, rtol=1e-3):
                        m = folded
            except Exception:  # noqa: BLE001 - an exotic model: run it as it is
                m = self.model
            m = m.to(memory_format=torch.channels_last)
            if self.compile:
                m = torch.compile(m, dynamic=False, mode=self.compile_mode)
            self._infer, self._infer_key = m, key
        return self._infer

    def _int8_model(self) -> nn.Module:
        _check_int8(self.device, self.compile)
        if self._int8 is None:
            raise RuntimeError(
                "precision='int8' needs a calibration first: call emb.calibrate_int8(frames, mask=mask) "
                "with a few hundred frames like those to embed (same detector, fluence, mask); it fixes "
                "the int8 activation ranges (docs/int8.md)")
        if self._int8_key != _params_key(self.model):
            raise RuntimeError("the model's weights changed (or moved) since calibrate_int8(); call "
                               "calibrate_int8() again to rebuild the int8 model")
        return self._int8

    def calibrate_int8(self, frames, mask=None, *, n: int = 256, center=None, scale=None, fc: str = "int8",
                       engine: str | None = None, chunk_bytes: int | None | str = "default") -> dict:
        """Build the int8 model used by ``precision="int8"``, calibrated on these frames.

        Post-training static quantization (:func:`speckle_embed.quantize.quantize_specklenn`):
        up to ``n`` frames, evenly spaced over ``frames`` (deterministic: the same frames give
        the same int8 model), are preprocessed exactly as :meth:`embed` would (same ``mask``,
        ``center`` and ``scale``) and fix the range of every int8 activation. Calibrate on
        frames like those you will embed (detector, fluence, mask); values far outside the
        calibrated ranges are clipped. The int8 model is cached until the weights change and
        is not saved in checkpoints: call this again after loading.

        Parameters
        ----------
        frames : array_like, Tensor or h5py.Dataset, shape (N, H, W)
            Representative detector frames (photons).
        mask, center, scale
            As :meth:`embed` (a per-frame ``center`` array is subsampled with the frames).
        n : int, default 256
            Calibration frames (a few hundred suffice).
        fc : {"int8", "dynamic", "float32"}, default "int8"
            How the first fully connected layer runs (:data:`speckle_embed.quantize.FC_MODES`).
        engine : str, optional
            Quantized engine (default :func:`speckle_embed.quantize.default_engine`).
        chunk_bytes : int or None, optional
            Batches are run in chunks whose largest int8 activation stays below this many bytes
            (default :data:`speckle_embed.quantize.CHUNK_BYTES`: no page faults of large
            buffers); ``None`` runs whole batches.

        Returns
        -------
        dict
            ``n`` (frames used), ``engine``, ``fc`` and the agreement with float32 on the
            calibration frames: ``max_abs_diff``, ``median_abs_diff`` (of ``|z_int8 - z_fp32|``),
            ``min_cosine``, ``median_cosine``.

        Raises
        ------
        ValueError
            The embedder is not on the CPU, ``n < 1``, or the frames are invalid (as :meth:`embed`).
        TypeError
            The model is not SpeckleNN-like (:mod:`speckle_embed.quantize`).
        """
        from speckle_embed.quantize import CHUNK_BYTES, quantize_specklenn

        _check_int8(self.device, False)
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        x = _check_frames(frames)
        total = int(x.shape[0])
        if total == 0:
            raise ValueError("calibrate_int8 needs at least one frame")
        idx = np.unique(np.linspace(0, total - 1, min(total, int(n))).round().astype(np.int64))
        if _is_tensor(x):
            sub = x[torch.from_numpy(idx)]
        elif isinstance(x, np.ndarray):
            sub = x[idx]
        else:  # h5py-like: increasing indices
            sub = np.asarray(x[idx.tolist()])
        if mask is not None:
            m = mask.detach().cpu().numpy() if _is_tensor(mask) else np.asarray(mask)
            mask = m[idx] if m.ndim == 3 and m.shape[0] == total else m
        if center is not None and not isinstance(center, str):
            c = np.asarray(center.detach().cpu() if _is_tensor(center) else center, dtype=np.float64)
            if c.ndim == 2 and c.shape[0] == total:
                center = c[idx]
        inputs = torch.cat([b for _, _, b in self._batches(sub, mask, center, scale, self.batch_size)])
        q = quantize_specklenn(self.model, inputs, engine=engine, fc=fc,
                               chunk_bytes=CHUNK_BYTES if chunk_bytes == "default" else chunk_bytes)
        self._int8, self._int8_key = q, _params_key(self.model)
        return {"n": int(len(idx)), "engine": q.engine, "fc": q.fc,
                **{k: v for k, v in q.calibration.items() if k != "n"}}

    def embed(self, frames, mask=None, *, center=None, scale=None, batch_size: int | None = None,
              progress: bool = False, return_empty: bool = False):
        """Unit-norm embeddings of frames.

        Parameters
        ----------
        frames : array_like, Tensor or h5py.Dataset, shape (N, H, W) or (H, W)
            Photon counts, any real dtype (uint16, int32, float32, float64...). An h5py dataset
            is read batch by batch (only the window the model sees).
        mask : array_like, shape (H, W) or (N, H, W), optional
            Bad pixels: non-zero (CXI bits) or ``True``. Non-finite pixels are masked too.
        center : (row, col), array (N, 2), or "auto", optional
            Beam centre in input pixels (default the geometric centre); ``"auto"`` estimates one
            centre from the frames (:func:`speckle_embed.scale.estimate_center`).
        scale : float or "auto", optional
            Input pixels per model pixel; default ``preprocessing.scale`` (the training crop).
            ``"auto"``: see :meth:`estimate_scale` (needs :attr:`reference_speckle_px`).
        batch_size : int, optional
            Default :attr:`batch_size`.
        progress : bool, default False
            Show a tqdm progress bar (patterns/s).
        return_empty : bool, default False
            Also return the empty flags (below) instead of warning about them.

        Returns
        -------
        ndarray of float32, shape (N, d)
            Rows of unit L2 norm.
        empty : ndarray of bool, shape (N,)
            Only with ``return_empty=True``: frames with no photons or no contrast in the
            model's field of view (all zero, constant): their model input is flat
            (:func:`speckle_embed.frame_checks.flat_inputs`) and their embedding meaningless.

        Warns
        -----
        EmptyFrameWarning
            (a ``UserWarning``, :mod:`speckle_embed.frame_checks`) Some frames are empty; the
            message gives how many and their indices (``warning.indices``). Not issued with
            ``return_empty=True``.

        Raises
        ------
        ValueError
            Wrong number of dimensions, non-numeric dtype, frames smaller than the model's field
            of view (``input_size * scale`` pixels; the message gives both sizes), a mask of the
            wrong shape, a bad ``scale``/``center``, ``batch_size < 1``, or a frame without any
            finite unmasked pixel in the model's field of view (the message names its index);
            ``precision="int8"`` on CUDA.
        RuntimeError
            ``precision="int8"`` before :meth:`calibrate_int8`, or after the weights changed.
        """
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be 'float32', 'bfloat16' or 'int8'; got {self.precision!r}")
        x = _check_frames(frames)
        n = int(x.shape[0])
        bs = self.batch_size if batch_size is None else batch_size
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            raise ValueError(f"batch_size must be a positive integer (frames per forward pass); got {bs!r}"
                             + (" (the embedder's batch_size attribute)" if batch_size is None else ""))
        bs = int(bs)
        d = self.embedding_size
        out = np.empty((n, d), dtype=np.float32)
        empty = np.zeros(n, dtype=bool)
        if n == 0:
            return (out, empty) if return_empty else out
        model = self._inference_model()
        dev = self.device
        autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if self.precision == "bfloat16"
                    else _nullcontext())
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="pattern", unit_scale=True, desc="embed", dynamic_ncols=True)
        cuda = dev.type == "cuda"
        if cuda and self._h2d is None:
            self._h2d = HostToDevice(dev)
        pending: list[tuple[int, torch.Tensor]] = []  # CUDA: embeddings kept on the device ...
        pending_rows = 0
        flat: list[tuple[int, torch.Tensor]] = []  # empty flags, fetched once at the end

        def flush():  # ... and fetched in one copy (one host synchronisation per _FLUSH_ROWS)
            nonlocal pending_rows
            if pending:
                first = pending[0][0]
                z_all = torch.cat([z for _, z in pending]).cpu().numpy()
                out[first:first + z_all.shape[0]] = z_all
                pending.clear()
                pending_rows = 0

        try:
            with torch.inference_mode():
                for start, stop, inputs in self._batches(x, mask, center, scale, bs):
                    m = inputs.shape[0]
                    flat.append((start, flat_inputs(inputs)))
                    if self.compile and m < bs:
                        inputs = torch.cat([inputs, inputs.new_zeros((bs - m,) + inputs.shape[1:])])
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                    with autocast:
                        z = model(inputs)
                    z = F.normalize(z[:m].float(), dim=1)  # a new tensor: safe under CUDA graphs
                    if cuda:
                        pending.append((start, z))
                        pending_rows += m
                        if pending_rows >= _FLUSH_ROWS:
                            flush()
                    else:
                        out[start:stop] = z.numpy()
                    if bar is not None:
                        bar.update(m)
                flush()
        finally:
            if bar is not None:
                bar.close()
        for start, f in flat:
            empty[start:start + f.shape[0]] = f.cpu().numpy()
        if return_empty:
            return out, empty
        warn_empty(empty)
        return out

    __call__ = embed

    def _batches(self, frames, mask, center, scale, bs: int):
        """``(start, stop, inputs)`` for consecutive batches: the model inputs (n, 1, S, S) of
        frames ``start:stop`` preprocessed as :meth:`embed` does (geometry checked first)."""
        x = _check_frames(frames)
        n, h, w = (int(v) for v in x.shape)
        bad = _check_mask(mask, n, (h, w))
        prep = self.preprocessing

        # -- geometry
        centers = None
        if isinstance(center, str):
            if center != "auto":
                raise ValueError(f"center must be (row, col), an (N, 2) array, 'auto' or None; got {center!r}")
            from speckle_embed.scale import estimate_center

            center = estimate_center(_sample(x), _sample_mask(bad, x), max_frames=None)
        if center is None:
            cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        else:
            c = np.asarray(center.detach().cpu() if _is_tensor(center) else center, dtype=np.float64)
            if c.shape == (2,):
                cy, cx = float(c[0]), float(c[1])
            elif c.shape == (n, 2):
                centers = c
                cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
            else:
                raise ValueError(f"center must be (row, col) or an array of shape ({n}, 2); got shape {c.shape}")
            if not np.isfinite(c).all():
                raise ValueError("center holds NaN or inf")
        if isinstance(scale, str):
            if scale != "auto":
                raise ValueError(f"scale must be a positive number, 'auto' or None; got {scale!r}")
            scale = self.estimate_scale(x, bad, center=None if centers is not None else (cy, cx))
        s = prep.scale if scale is None else scale
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) \
                or not np.isfinite(s) or s <= 0:
            raise ValueError(f"scale must be a positive finite number (input pixels per model pixel); got {scale!r}")
        s = float(s)
        check_frame_size(h, w, prep, s)

        dev = self.device
        bad_dev = None
        if centers is None:
            r0, r1, c0, c1 = _window(h, w, cy, cx, prep.input_size, s)
            if bad is not None and bad.ndim == 2:
                if bad[r0:r1, c0:c1].all():
                    raise ValueError("the mask leaves no valid pixel in the model's field of view "
                                     f"(rows {r0}:{r1}, cols {c0}:{c1} of the {h}x{w} frame)")
                bad_dev = torch.from_numpy(np.ascontiguousarray(bad[r0:r1, c0:c1])).to(dev)
        with torch.inference_mode():
            for start in range(0, n, bs):
                stop = min(start + bs, n)
                if centers is None:
                    inputs = self._prepare(x, start, stop, (r0, r1, c0, c1), bad, bad_dev, cy, cx, s)
                else:
                    inputs = torch.cat([
                        self._prepare(x, i, i + 1, _window(h, w, centers[i, 0], centers[i, 1],
                                                           prep.input_size, s),
                                      bad, None, centers[i, 0], centers[i, 1], s)
                        for i in range(start, stop)])
                yield start, stop, inputs

    def _prepare(self, x, start: int, stop: int, win, bad, bad_dev, cy: float, cx: float,
                 s: float) -> torch.Tensor:
        """Model inputs (n, 1, S, S) of frames ``start:stop``: crop, convert, check, preprocess.

        Same result as :func:`~speckle_embed.preprocess.preprocess` of the whole frames (up to
        float rounding), in fewer passes over memory: integer frames cannot hold NaN/inf, a
        frame-independent mask is applied as one (h, w) plane, and the standardisation is done
        in place (:func:`_standardise`).
        """
        r0, r1, c0, c1 = win
        dev = self.device
        if _is_tensor(x):
            integer = not (x.is_floating_point() or x.is_complex())
            t = x[start:stop, r0:r1, c0:c1].to(device=dev, dtype=torch.float32)
        elif self._h2d is not None:  # CUDA: pinned staging, stored dtype, overlapped copy
            integer = np.dtype(x.dtype).kind in "iu"
            t = self._h2d(x[start:stop, r0:r1, c0:c1])
        else:
            integer = np.dtype(x.dtype).kind in "iu"
            block = x[start:stop, r0:r1, c0:c1]
            t = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(dev)
        if bad_dev is not None:
            m = bad_dev
        elif bad is not None:
            sub = bad[r0:r1, c0:c1] if bad.ndim == 2 else bad[start:stop, r0:r1, c0:c1]
            m = torch.from_numpy(np.ascontiguousarray(sub)).to(dev)
        else:
            m = None
        if integer:  # every pixel finite: only the mask decides (the 2-D mask was checked in _batches)
            good = None if m is None else ~m
            if m is not None and m.ndim == 3:
                has = good.flatten(1).any(1)
                if not bool(has.all()):
                    i = start + int(torch.nonzero(~has)[0, 0])
                    raise ValueError(f"frame {i} has no finite, unmasked pixel in the model's field of view "
                                     f"(rows {r0}:{r1}, cols {c0}:{c1}): entirely NaN/inf or masked")
        else:
            finite = torch.isfinite(t)
            if self.nan_policy == "raise":
                ok_all = finite.flatten(1).all(1) if m is None else (finite | m).flatten(1).all(1)
                if not bool(ok_all.all()):
                    i = start + int(torch.nonzero(~ok_all)[0, 0])
                    raise ValueError(f"frame {i} has NaN/inf pixels in the model's field of view "
                                     f"(rows {r0}:{r1}, cols {c0}:{c1}) and nan_policy='raise'")
            good = finite if m is None else finite & ~m
            has = good.flatten(1).any(1)
            if not bool(has.all()):
                i = start + int(torch.nonzero(~has)[0, 0])
                raise ValueError(f"frame {i} has no finite, unmasked pixel in the model's field of view "
                                 f"(rows {r0}:{r1}, cols {c0}:{c1}): entirely NaN/inf or masked")
            if m is None and bool(finite.all()):
                good = None
        return _preprocess_window(t, good, self.preprocessing, cy - r0, cx - c0, s)


def _preprocess_window(t: torch.Tensor, good: torch.Tensor | None, prep: Preprocessing, cy: float, cx: float,
                       s: float) -> torch.Tensor:
    """:func:`~speckle_embed.preprocess.preprocess` of a float32 window ``t`` (n, h, w) whose usable
    pixels are ``good`` ((h, w), (n, h, w) or None = all); returns (n, 1, S, S)."""
    from speckle_embed.preprocess import resample_center

    size = prep.input_size
    n, h, w = t.shape
    r0, c0 = cy - (size - 1) / 2, cx - (size - 1) / 2
    if s == 1.0 and float(r0).is_integer() and float(c0).is_integer() and r0 >= 0 and c0 >= 0 \
            and r0 + size <= h and c0 + size <= w:  # plain crop (the case of resample_center)
        r0, c0 = int(r0), int(c0)
        x = t[:, r0:r0 + size, c0:c0 + size]
        valid = None if good is None else good[..., r0:r0 + size, c0:c0 + size]
    else:
        g = torch.ones((h, w), dtype=torch.bool, device=t.device) if good is None else good
        x, valid = resample_center(t, g.expand(n, h, w), size, s, (cy, cx))
    return _standardise(x, valid, log=prep.log, eps=prep.eps)[:, None]


def _standardise(x: torch.Tensor, valid: torch.Tensor | None, *, log: bool, eps: float) -> torch.Tensor:
    """:func:`~speckle_embed.preprocess.normalise` (log1p, per-frame standardisation over the valid
    pixels, invalid -> 0) with one new tensor and in-place passes; ``valid`` (h, w), (n, h, w)
    or None (all valid)."""
    y = x.clamp_min(0.0)  # new, contiguous
    n = y.shape[0]
    if valid is not None:
        y.masked_fill_(~valid, 0.0)
    if log:
        y.log1p_()  # log1p(0) = 0 keeps invalid pixels at 0
    flat = y.view(n, -1)
    if valid is None:
        var, mean = torch.var_mean(flat, dim=1, correction=0, keepdim=True)
        flat.sub_(mean).div_(var.sqrt_().add_(eps))
        return y
    vf = (valid.reshape(1, -1) if valid.ndim == 2 else valid.reshape(n, -1)).to(y.dtype)
    count = vf.sum(1, keepdim=True).clamp_min(1.0)
    mean = flat.sum(1, keepdim=True) / count
    flat.sub_(mean).mul_(vf)  # invalid pixels back to 0
    std = torch.linalg.vector_norm(flat, dim=1, keepdim=True).div_(count.sqrt())
    flat.div_(std.add_(eps))
    return y


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _sample(frames, max_frames: int = _SAMPLE_FRAMES) -> np.ndarray:
    """Up to ``max_frames`` frames spread evenly over ``frames``, as a float32 numpy array."""
    x = _check_frames(frames)
    n = int(x.shape[0])
    idx = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.int64))
    if _is_tensor(x):
        return x[torch.from_numpy(idx)].float().cpu().numpy()
    if isinstance(x, np.ndarray):
        return np.asarray(x[idx], dtype=np.float32)
    return np.stack([np.asarray(x[int(i)], dtype=np.float32) for i in idx])


def _sample_mask(mask, frames, max_frames: int = _SAMPLE_FRAMES):
    """The mask matching :func:`_sample` (per-frame masks are subsampled alike)."""
    if mask is None:
        return None
    m = mask.detach().cpu().numpy() if _is_tensor(mask) else np.asarray(mask)
    if m.ndim == 3:
        n = m.shape[0]
        idx = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.int64))
        return m[idx]
    return m
