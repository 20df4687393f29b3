"""Device selection: the one meaning of ``device="auto"`` in this package."""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device a ``device`` setting names.

    Parameters
    ----------
    device : str or torch.device or None
        ``"auto"`` (or ``None``): CUDA when available, else the CPU. Anything else is passed
        to :class:`torch.device` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``).

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        A CUDA device is asked for explicitly but CUDA is not available (fail at set-up, not
        at the first tensor moved there).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = device if isinstance(device, torch.device) else torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} was asked for but CUDA is not available; "
                           "use device='auto' or 'cpu'")
    return dev
