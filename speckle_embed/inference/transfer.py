"""Host-to-device copies of frame batches through pinned staging buffers (the GPU input path).

A batch of detector frames usually sits in host memory as ``uint16`` (a NumPy array or an
HDF5 dataset read block by block). :class:`HostToDevice` moves the window the model sees to the
GPU with as little host work and as few bytes as possible:

1. the window is copied **once**, straight from the frames into a page-locked (pinned) buffer,
   in its stored dtype (2 bytes per uint16 pixel instead of 4 for float32);
2. the buffer goes to the GPU with ``non_blocking=True`` on a dedicated copy stream, so the copy
   of batch *i + 1* overlaps the network running on batch *i*; the compute stream waits for
   the copy by an event, never by a host synchronisation;
3. a ring of ``n_buffers`` staging buffers (default 2: double buffering) lets the host fill the
   next buffer while the previous one is still being copied; a buffer is reused only after the
   event of its last copy has completed;
4. on the device the raw bytes are reinterpreted and widened to float32 (``uint16`` travels as
   ``int16`` bits and is widened with ``& 0xFFFF``, since CUDA kernels for ``torch.uint16`` are
   limited).

On the CPU (or with ``pin=False``) the same ring runs without pinning or streams: that is how
the CI, which has no GPU, tests the byte handling.

Example
-------
>>> import numpy as np, torch
>>> h2d = HostToDevice(torch.device("cpu"))
>>> frames = np.arange(12, dtype=np.uint16).reshape(1, 3, 4) + 65000
>>> h2d(frames[:, 1:3, 1:3]).tolist()
[[[65005.0, 65006.0], [65009.0, 65010.0]]]
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["HostToDevice"]

# dtype kinds/sizes that travel as raw bytes and are widened on the device: numpy dtype ->
# (torch dtype to view the bytes as, mask that restores the unsigned value after widening)
_UNSIGNED = {np.dtype(np.uint16): (torch.int16, torch.int32, 0xFFFF),
             np.dtype(np.uint32): (torch.int32, torch.int64, 0xFFFFFFFF)}
_DIRECT = {np.dtype(t): getattr(torch, n) for t, n in (
    (np.uint8, "uint8"), (np.int8, "int8"), (np.int16, "int16"), (np.int32, "int32"),
    (np.int64, "int64"), (np.float16, "float16"), (np.float32, "float32"), (np.float64, "float64"))}


class HostToDevice:
    """Copy host blocks (any numeric NumPy dtype) to ``device`` as float32 tensors.

    Parameters
    ----------
    device : torch.device
    n_buffers : int, default 2
        Staging buffers in the ring (2 = double buffering).
    pin : bool, optional
        Page-locked buffers, a copy stream and ``non_blocking`` copies. Default: ``device`` is
        CUDA. ``pin=False`` on CUDA gives plain synchronous copies (for comparison).

    Notes
    -----
    The tensor returned by a call is valid on the device's current stream; the staging
    buffer it came from is refilled ``n_buffers`` calls later, after its copy has finished.
    """

    def __init__(self, device: torch.device | str, n_buffers: int = 2, *, pin: bool | None = None):
        self.device = torch.device(device)
        if n_buffers < 1:
            raise ValueError(f"n_buffers must be >= 1; got {n_buffers}")
        self.pin = (self.device.type == "cuda") if pin is None else bool(pin)
        if self.pin and self.device.type != "cuda":
            raise ValueError("pinned staging needs a CUDA device")
        self.stream = torch.cuda.Stream(self.device) if self.pin else None
        self._buffers: list[torch.Tensor | None] = [None] * int(n_buffers)
        self._events: list = [None] * int(n_buffers)
        self._next = 0
        self.bytes_copied = 0

    def _buffer(self, nbytes: int) -> tuple[int, torch.Tensor]:
        slot = self._next
        self._next = (self._next + 1) % len(self._buffers)
        if self._events[slot] is not None:
            self._events[slot].synchronize()  # the last copy out of this buffer is done
            self._events[slot] = None
        buf = self._buffers[slot]
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin)
            self._buffers[slot] = buf
        return slot, buf

    def __call__(self, block) -> torch.Tensor:
        """``block`` (array_like (..., h, w), numeric) -> float32 tensor on the device, same shape."""
        a = np.asarray(block)
        dt = a.dtype
        if not dt.isnative:
            a = a.astype(dt.newbyteorder("="))
            dt = a.dtype
        if dt not in _UNSIGNED and dt not in _DIRECT:
            if dt.kind not in "biuf":
                raise TypeError(f"frames must be real numbers; got dtype {dt}")
            a = a.astype(np.float32)  # bool, uint64, float128...: convert on the host
            dt = a.dtype
        slot, buf = self._buffer(a.nbytes)
        staged = buf[:a.nbytes]
        staged.numpy().view(dt).reshape(a.shape)[...] = a  # the one host copy
        if self.pin:
            with torch.cuda.stream(self.stream):
                raw = staged.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            self._events[slot] = done
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            raw.record_stream(current)  # the caching allocator must not reuse it early
        else:
            raw = staged.to(self.device, copy=True)
        self.bytes_copied += a.nbytes
        if dt in _UNSIGNED:
            bits, wide, mask = _UNSIGNED[dt]
            return (raw.view(bits).to(wide) & mask).to(torch.float32).view(a.shape)
        return raw.view(_DIRECT[dt]).to(torch.float32).view(a.shape)

    def synchronize(self) -> None:
        """Wait for every copy still in flight (before the staging buffers are freed)."""
        for ev in self._events:
            if ev is not None:
                ev.synchronize()
