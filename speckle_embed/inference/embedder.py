"""Frames in, unit-norm embeddings out: the inference half of a trained embedding network.

:class:`SpeckleEmbedder` couples an embedding model (any module of
:data:`speckle_embed.models.MODEL_REGISTRY`) with the :class:`~speckle_embed.preprocess.Preprocessing`
it was trained with, and embeds detector frames of any size and numeric dtype::

    import speckle_embed as se
    emb = se.SpeckleEmbedder.from_checkpoint("runs/exp1/best.pt")
    Z = emb.embed(frames, mask=mask)            # (N, H, W) photons -> (N, 128) float32

Frames from other detectors (other sizes, pixel sampling, beam centres): ``scale=`` and
``center=`` of :meth:`SpeckleEmbedder.embed`, explained in :mod:`speckle_embed.inference.frames`.

Non-finite pixels (NaN, inf) are treated as masked; a frame with no finite, unmasked pixel in
the model's field of view raises :class:`ValueError` naming its index (``nan_policy="raise"``
refuses any non-finite pixel instead).

Speed: only the window the model sees is converted to float32 (integer frames such as uint16
are cropped first, and skip the NaN checks they cannot need); inference runs in eval mode under
:func:`torch.inference_mode` on a copy of the model with BatchNorm folded into the convolutions
and channels-last memory; ``precision="bfloat16"`` (CUDA, or CPUs with AVX512-BF16/AMX) and
``compile=True`` are available.

int8 on the CPU (``docs/int8.md``): ``precision="int8"`` runs the SpeckleNN model with static
int8 quantization (:mod:`speckle_embed.inference.int8`); it needs one explicit calibration on
representative frames, which fixes the activation ranges::

    emb = se.load_pretrained(device="cpu", precision="int8")
    emb.calibrate_int8(frames[:256], mask=mask)   # once; deterministic for the same frames
    Z = emb.embed(frames, mask=mask)
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from speckle_embed.checkpoint import CHECKPOINT_FORMAT, CheckpointError, file_hash, weights_fingerprint
from speckle_embed.frame_checks import flat_inputs, warn_empty
from speckle_embed.inference.checkpoint_io import CheckpointIO
from speckle_embed.inference.frames import (check_frames, check_mask, check_scale, resolve_center, sample_frames,
                                            sample_mask, subsample, window_batches)
from speckle_embed.inference.int8 import CHUNK_BYTES, quantize_specklenn
from speckle_embed.inference.precision import PRECISIONS, check_int8, fold_if_exact, params_key
from speckle_embed.inference.transfer import HostToDevice
from speckle_embed.inference.views import detector_view
from speckle_embed.device import resolve_device
from speckle_embed.models import build_model
from speckle_embed.preprocess import Preprocessing
from speckle_embed.scale import estimate_scale, speckle_size

# CheckpointError, CHECKPOINT_FORMAT and file_hash are owned by speckle_embed.checkpoint (re-exported here)
__all__ = ["SpeckleEmbedder", "CheckpointError", "CHECKPOINT_FORMAT", "file_hash"]

_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_FLUSH_ROWS = 65536  # CUDA: embeddings fetched from the device every this many rows


class SpeckleEmbedder(CheckpointIO):
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
        ``"int8"``: static int8 quantization on the CPU (:mod:`speckle_embed.inference.int8`), after
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
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'float32', 'bfloat16' or 'int8'; got {precision!r}")
        if nan_policy not in ("mask", "raise"):
            raise ValueError(f"nan_policy must be 'mask' or 'raise'; got {nan_policy!r}")
        if reference_speckle_px is not None and not (np.isfinite(reference_speckle_px) and reference_speckle_px > 0):
            raise ValueError(f"reference_speckle_px must be a positive number; got {reference_speckle_px!r}")
        if precision == "int8":  # int8 runs on the CPU only: say so before any CUDA availability question
            check_int8(resolve_device("auto") if device == "auto" else torch.device(device), compile)
        self.device = resolve_device(device)
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
        self.device = resolve_device(device)
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
        self.reference_speckle_px = float(speckle_size(sample_frames(frames), sample_mask(mask, frames),
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
        if self.reference_speckle_px is None:
            raise ValueError(
                "scale='auto' needs the speckle size of the training frames, and this embedder has "
                "none (the checkpoint stores no 'reference_speckle_px'). Pass "
                "reference_speckle_px=... to SpeckleEmbedder.from_checkpoint / the constructor, or "
                "measure it on training-like frames with emb.calibrate_reference_speckle(frames); "
                "or give scale explicitly (scale=None assumes the training pixel sampling).")
        return estimate_scale(sample_frames(frames), self.reference_speckle_px, sample_mask(mask, frames),
                              center=center, reference_scale=self.preprocessing.scale, max_frames=None)

    # ------------------------------------------------------------------ inference
    def _inference_model(self) -> nn.Module:
        if self.precision == "int8":
            return self._int8_model()
        key = (params_key(self.model), str(self.device), self.compile_mode)
        if self._infer is None or self._infer_key != key:
            m = fold_if_exact(self.model, self.preprocessing.input_size, self.device)
            m = m.to(memory_format=torch.channels_last)
            if self.compile:
                m = torch.compile(m, dynamic=False, mode=self.compile_mode)
            self._infer, self._infer_key = m, key
        return self._infer

    def _int8_model(self) -> nn.Module:
        check_int8(self.device, self.compile)
        if self._int8 is None:
            raise RuntimeError(
                "precision='int8' needs a calibration first: call emb.calibrate_int8(frames, mask=mask) "
                "with a few hundred frames like those to embed (same detector, fluence, mask); it fixes "
                "the int8 activation ranges (docs/int8.md)")
        if self._int8_key != params_key(self.model):
            raise RuntimeError("the model's weights changed (or moved) since calibrate_int8(); call "
                               "calibrate_int8() again to rebuild the int8 model")
        return self._int8

    def calibrate_int8(self, frames, mask=None, *, n: int = 256, center=None, scale=None, fc: str = "int8",
                       engine: str | None = None, chunk_bytes: int | None | str = "default") -> dict:
        """Build the int8 model used by ``precision="int8"``, calibrated on these frames.

        Post-training static quantization (:func:`speckle_embed.inference.int8.quantize_specklenn`):
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
            How the first fully connected layer runs (:data:`speckle_embed.inference.int8.FC_MODES`).
        engine : str, optional
            Quantized engine (default :func:`speckle_embed.inference.int8.default_engine`).
        chunk_bytes : int or None, optional
            Batches are run in chunks whose largest int8 activation stays below this many bytes
            (default :data:`speckle_embed.inference.int8.CHUNK_BYTES`: no page faults of large
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
            The model is not SpeckleNN-like (:mod:`speckle_embed.inference.int8`).
        """
        check_int8(self.device, False)
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        sub, mask, center, used = subsample(frames, mask, center, int(n))
        inputs = torch.cat([b for _, _, b in self._batches(sub, mask, center, scale, self.batch_size)])
        q = quantize_specklenn(self.model, inputs, engine=engine, fc=fc,
                               chunk_bytes=CHUNK_BYTES if chunk_bytes == "default" else chunk_bytes)
        self._int8, self._int8_key = q, params_key(self.model)
        return {"n": used, "engine": q.engine, "fc": q.fc,
                **{k: v for k, v in q.calibration.items() if k != "n"}}

    def embed(self, frames, mask=None, *, center=None, scale=None, batch_size: int | None = None,
              progress: bool = False, return_empty: bool = False, view: int = 0):
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
        view : int, default 0
            Embed symmetry view ``view`` (0-7) of each frame about its beam centre: rotation by
            ``90 * (view % 4)`` degrees, mirrored for ``view >= 4``
            (:func:`speckle_embed.inference.views.detector_view`); 0 is the frame itself.

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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be 'float32', 'bfloat16' or 'int8'; got {self.precision!r}")
        detector_view(torch.zeros(1, 1, 1, 1), view)  # a bad view fails before any work
        x = check_frames(frames)
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
                    else contextlib.nullcontext())
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
                    inputs = detector_view(inputs, view)
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
        x = check_frames(frames)
        n, h, w = (int(v) for v in x.shape)
        bad = check_mask(mask, n, (h, w))
        cy, cx, centers = resolve_center(center, x, bad)
        if isinstance(scale, str):
            if scale != "auto":
                raise ValueError(f"scale must be a positive number, 'auto' or None; got {scale!r}")
            scale = self.estimate_scale(x, bad, center=None if centers is not None else (cy, cx))
        s = check_scale(self.preprocessing.scale if scale is None else scale, scale)
        return window_batches(x, bad, self.preprocessing, cy, cx, centers, s, bs, device=self.device,
                              h2d=self._h2d, nan_policy=self.nan_policy)
