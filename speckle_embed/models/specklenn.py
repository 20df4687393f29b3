"""SpeckleNN embedding network (Wang et al., IUCrJ 2023).

Default architecture, for a (N, 1, 96, 96) input::

    Conv 5x5 1->32 (no bias) -> BatchNorm -> PReLU -> MaxPool 2     # 92 -> 46
    Conv 5x5 32->64 (no bias) -> BatchNorm -> PReLU -> MaxPool 2    # 42 -> 21
    Flatten (64 * 21 * 21 = 28224) -> Linear 512 -> PReLU -> Linear 128 -> L2-normalise

Padding: the default is ``padding=0`` ("valid" convolutions), as in the published SpeckleNN
code, so that the default model has exactly the published layer shapes. ``padding=2`` (for
5x5 kernels, ``(kernel_size - 1) // 2`` in general) gives "same" convolutions, where only the
pools shrink the map (96 -> 48 -> 24, flatten 64 * 24 * 24). The flatten size is always
computed from ``input_size``. Convolutions carry no bias because a BatchNorm follows them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SpeckleNNEmbedding"]

_DEFAULT_WIDTH = 32


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be a positive int or a pair (H, W), got {value}")
    return value


class SpeckleNNEmbedding(nn.Module):
    """Convolutional embedding of diffraction patterns onto the unit hypersphere.

    ``depth`` blocks of ``Conv(kernel_size) -> BatchNorm -> PReLU -> MaxPool(pool_size)``,
    then ``Flatten -> Linear(hidden_size) -> PReLU -> Linear(embedding_size)`` and L2
    normalisation.

    Parameters
    ----------
    input_size : int or (int, int)
        Pattern size (H, W) the model is built for (default 96 x 96).
    channels : sequence of int, optional
        Output channels of each conv block (the network's width). Default ``(32, 64)``; when
        only ``depth`` is given, ``32 * 2**i`` for block ``i``.
    depth : int, optional
        Number of conv blocks; must equal ``len(channels)`` when both are given.
    in_channels : int
        Channels of the input (1 for photon-count patterns).
    kernel_size : int
        Convolution kernel size (5).
    padding : int
        Convolution zero padding: 0 ("valid", SpeckleNN's choice, default) or
        ``(kernel_size - 1) // 2`` for "same"; any value >= 0 is accepted.
    pool_size : int
        Max-pool kernel and stride (2).
    hidden_size : int
        Width of the hidden fully-connected layer (512).
    embedding_size : int
        Dimension of the output embedding (128).

    Attributes
    ----------
    features : nn.Sequential
        The conv blocks, ``features[i]`` = ``Sequential(conv, bn, prelu, pool)``.
    head : nn.Sequential
        ``Flatten, Linear, PReLU, Linear``.
    feature_size : int
        Size of the flattened feature map (input of the first Linear).

    Examples
    --------
    >>> model = SpeckleNNEmbedding()
    >>> model.feature_size
    28224
    >>> model(torch.zeros(2, 1, 96, 96)).shape
    torch.Size([2, 128])
    >>> SpeckleNNEmbedding(**model.config).config == model.config
    True
    """

    def __init__(
        self,
        input_size: int | Sequence[int] = (96, 96),
        channels: Sequence[int] | None = None,
        depth: int | None = None,
        in_channels: int = 1,
        kernel_size: int = 5,
        padding: int = 0,
        pool_size: int = 2,
        hidden_size: int = 512,
        embedding_size: int = 128,
    ) -> None:
        super().__init__()
        if channels is None:
            depth = 2 if depth is None else int(depth)
            channels = [_DEFAULT_WIDTH * 2**i for i in range(depth)]
        else:
            channels = [int(c) for c in channels]
            if depth is not None and int(depth) != len(channels):
                raise ValueError(
                    f"depth={depth} disagrees with channels={channels} ({len(channels)} blocks)"
                )
            depth = len(channels)
        if depth < 1 or min(channels) < 1:
            raise ValueError(f"need at least one conv block with >= 1 channel, got {channels}")
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("kernel_size", kernel_size, 1),
            ("padding", padding, 0),
            ("pool_size", pool_size, 1),
            ("hidden_size", hidden_size, 1),
            ("embedding_size", embedding_size, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}")

        self.input_size = _pair(input_size, "input_size")
        self.channels = channels
        self.in_channels = int(in_channels)
        self.kernel_size = int(kernel_size)
        self.padding = int(padding)
        self.pool_size = int(pool_size)
        self.hidden_size = int(hidden_size)
        self.embedding_size = int(embedding_size)

        blocks = []
        c_in = self.in_channels
        h, w = self.input_size
        for i, c_out in enumerate(channels):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, self.kernel_size, padding=self.padding, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.PReLU(),
                    nn.MaxPool2d(self.pool_size),
                )
            )
            h = (h + 2 * self.padding - self.kernel_size + 1) // self.pool_size
            w = (w + 2 * self.padding - self.kernel_size + 1) // self.pool_size
            if h < 1 or w < 1:
                raise ValueError(
                    f"input_size {self.input_size} is too small for {depth} conv blocks "
                    f"(kernel {self.kernel_size}, padding {self.padding}, pool {self.pool_size}):"
                    f" the feature map vanishes after block {i}"
                )
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.feature_size = c_in * h * w
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.feature_size, self.hidden_size),
            nn.PReLU(),
            nn.Linear(self.hidden_size, self.embedding_size),
        )

    @property
    def depth(self) -> int:
        """Number of conv blocks."""
        return len(self.channels)

    @property
    def config(self) -> dict:
        """Constructor arguments as a plain dict (ints and lists only).

        ``SpeckleNNEmbedding(**model.config)`` rebuilds the same architecture (same
        ``state_dict`` keys and shapes); checkpoints store it.
        """
        return {
            "input_size": list(self.input_size),
            "channels": list(self.channels),
            "depth": self.depth,
            "in_channels": self.in_channels,
            "kernel_size": self.kernel_size,
            "padding": self.padding,
            "pool_size": self.pool_size,
            "hidden_size": self.hidden_size,
            "embedding_size": self.embedding_size,
        }

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, feature_size={self.feature_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patterns.

        Parameters
        ----------
        x : Tensor, shape (N, in_channels, H, W), or (N, H, W) when ``in_channels == 1``
            Patterns of the size given by ``input_size``.

        Returns
        -------
        Tensor, shape (N, embedding_size)
            Unit-L2-norm embeddings.
        """
        if x.ndim == 3 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}"
            )
        return F.normalize(self.head(self.features(x)), p=2.0, dim=1)
