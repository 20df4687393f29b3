"""Inference precision: which precisions exist, where int8 can run, and the folded float copy of a model.

:func:`fold_if_exact` gives the float copy that :meth:`~speckle_embed.inference.SpeckleEmbedder.embed`
(float32 / bfloat16) and :mod:`speckle_embed.inference.export` run: Conv+BatchNorm folded and
monotone PReLU after MaxPool (:func:`_fold_for_inference`), kept only where it agrees with the
original model on a probe input. int8 (``precision="int8"``) is :mod:`speckle_embed.inference.int8`;
:func:`check_int8` says where it can run.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["PRECISIONS", "fold_if_exact", "check_int8", "params_key"]

#: ``SpeckleEmbedder(precision=...)`` values
PRECISIONS = ("float32", "bfloat16", "int8")


# ----------------------------------------------------------------------------- float inference copy
def _fold_for_inference(model: nn.Module) -> nn.Module:
    """Copy of ``model`` (eval) with Conv+BatchNorm folded and monotone PReLU moved after MaxPool.

    Only patterns inside ``nn.Sequential`` containers are rewritten; both rewrites are exact up
    to float rounding (max-pooling commutes with a non-decreasing activation).
    """
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


def fold_if_exact(model: nn.Module, input_size: int, device: torch.device | str = "cpu") -> nn.Module:
    """:func:`_fold_for_inference` of ``model`` (eval mode) when it agrees with ``model`` on a seeded
    probe ``(2, 1, input_size, input_size)`` (atol 1e-4, rtol 1e-3); otherwise ``model`` itself
    (an exotic model runs as it is)."""
    model.eval()
    try:
        folded = _fold_for_inference(model)
        probe = torch.randn(2, 1, input_size, input_size, device=device,
                            generator=torch.Generator(device=device).manual_seed(0))
        with torch.inference_mode():
            if torch.allclose(folded(probe), model(probe), atol=1e-4, rtol=1e-3):
                return folded
    except Exception:  # noqa: BLE001 - an exotic model: run it as it is
        pass
    return model


def check_int8(device: torch.device, compile: bool) -> None:
    """Raise ``ValueError`` where ``precision="int8"`` cannot run (not the CPU, or ``compile``)."""
    if device.type != "cpu":
        raise ValueError(f"precision='int8' runs on the CPU only (quantized kernels of x86/ARM CPUs); "
                         f"the embedder is on {device}. Use device='cpu', or precision='bfloat16' on CUDA")
    if compile:
        raise ValueError("compile=True is not supported with precision='int8' (the int8 module runs "
                         "eager quantized kernels)")


def params_key(model: nn.Module) -> tuple:
    """Identity of a model's weights now (storage and version of every parameter/buffer): a cached
    inference copy built from them is stale once this changes."""
    return tuple((t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))
