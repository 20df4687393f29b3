"""Loading and saving an embedder's weights: the checkpoint half of :class:`~speckle_embed.inference.SpeckleEmbedder`.

:class:`CheckpointIO` is mixed into :class:`~speckle_embed.inference.SpeckleEmbedder`; it turns the
checkpoint files of :mod:`speckle_embed.checkpoint` (format, hash, safe loading: DESIGN.md) into
a model + :class:`~speckle_embed.preprocess.Preprocessing` and back, and keeps the identity of
the file the weights came from (``checkpoint_hash``, ``checkpoint_path``, a fingerprint of the
weights) so that saved classifiers can tell whether the weights in memory are still those.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from speckle_embed.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint_file,
    weights_fingerprint,
    write_checkpoint,
)
from speckle_embed.models import build_model, model_config
from speckle_embed.preprocess import Preprocessing

if TYPE_CHECKING:  # the subclass, for annotations only
    from speckle_embed.inference.embedder import SpeckleEmbedder

__all__ = ["CheckpointIO"]


class CheckpointIO:
    """Checkpoint methods of :class:`~speckle_embed.inference.SpeckleEmbedder` (a mixin: uses its
    ``model``, ``preprocessing``, ``reference_speckle_px``, ``metadata`` and ``checkpoint_*``
    attributes)."""

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                        trust_checkpoint: bool = False, reference_speckle_px: float | None = None,
                        weights_only: bool | None = None, **kwargs) -> SpeckleEmbedder:
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
