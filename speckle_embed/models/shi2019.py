"""CNN baseline of Shi et al. (IUCrJ 6, 331, 2019) for single vs non-single hit classification.

Shi et al. compared classification algorithms on the PR772 SPI data set; their supervised
baseline is a small convolutional network on the *downsampled* pattern: convolution layers
with ReLU and max pooling, then dense layers and a sigmoid output giving P(single). A pattern
is called a single hit when that probability is at least **0.9** (:data:`SHI2019_THRESHOLD`;
the head config ``conf/evaluate/heads/shi2019.yaml`` sets it).

The layer widths below are this package's defaults for that recipe (the classic "small CNN
for binary image classification" shape); all are constructor arguments. Default, for a
(N, 1, 64, 64) input::

    Conv 3x3 1->32  (same) -> ReLU -> MaxPool 2      # 64 -> 32
    Conv 3x3 32->32 (same) -> ReLU -> MaxPool 2      # 32 -> 16
    Conv 3x3 32->64 (same) -> ReLU -> MaxPool 2      # 16 -> 8
    Flatten (64 * 8 * 8 = 4096) -> Linear 64 -> ReLU -> Dropout 0.5 -> Linear 1

The output is the *logit* of P(single), shape (N, 1); ``torch.sigmoid`` of it is the
network's probability. A one-logit output ``z`` is the two-class softmax of ``[0, z]``, which
is how :class:`speckle_embed.heads.SupervisedHead` treats it (cross-entropy on ``[0, z]`` is
the binary cross-entropy of ``sigmoid(z)``). ``n_outputs > 1`` gives a softmax classifier.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register_model

__all__ = ["Shi2019CNN", "SHI2019_THRESHOLD"]

#: Probability of "single" at or above which Shi et al. (2019) call a pattern a single hit.
SHI2019_THRESHOLD = 0.9


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be a positive int or a pair (H, W), got {value}")
    return value


@register_model("shi2019")
class Shi2019CNN(nn.Module):
    """Small CNN (conv + ReLU + max-pool blocks, dense layers, sigmoid logit) of Shi et al. 2019.

    Parameters
    ----------
    input_size : int or (int, int)
        Size (H, W) of the downsampled pattern (default 64 x 64).
    channels : sequence of int
        Filters of each ``Conv 3x3 -> ReLU -> MaxPool 2`` block (default ``(32, 32, 64)``).
    hidden_sizes : sequence of int
        Widths of the hidden dense layers, each followed by ReLU and dropout (default ``(64,)``).
    dropout : float
        Dropout probability after each hidden dense layer (0.5).
    n_outputs : int
        1 (default): one logit of P(single); ``> 1``: softmax logits.
    in_channels : int
        Channels of the input (1).

    Examples
    --------
    >>> model = Shi2019CNN()
    >>> model(torch.zeros(3, 1, 64, 64)).shape
    torch.Size([3, 1])
    >>> model.feature_size
    4096
    """

    def __init__(
        self,
        input_size: int | Sequence[int] = (64, 64),
        channels: Sequence[int] = (32, 32, 64),
        hidden_sizes: Sequence[int] = (64,),
        dropout: float = 0.5,
        n_outputs: int = 1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        hidden_sizes = [int(h) for h in hidden_sizes]
        if not channels or min(channels) < 1 or (hidden_sizes and min(hidden_sizes) < 1):
            raise ValueError(f"need >= 1 conv block and positive widths, got {channels}, {hidden_sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for name, value in (("n_outputs", n_outputs), ("in_channels", in_channels)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        self.input_size = _pair(input_size, "input_size")
        self.channels = channels
        self.hidden_sizes = hidden_sizes
        self.dropout = float(dropout)
        self.n_outputs = int(n_outputs)
        self.in_channels = int(in_channels)

        layers = []
        c_in, (h, w) = self.in_channels, self.input_size
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in, h, w = c_out, h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"input_size {self.input_size} is too small for {len(channels)} pooling blocks"
                    f" (the feature map vanishes after block {i})")
        self.features = nn.Sequential(*layers)
        self.feature_size = c_in * h * w
        dense: list[nn.Module] = [nn.Flatten()]
        width = self.feature_size
        for hidden in hidden_sizes:
            dense += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(self.dropout)]
            width = hidden
        dense.append(nn.Linear(width, self.n_outputs))
        self.classifier = nn.Sequential(*dense)

    @property
    def config(self) -> dict:
        """Constructor arguments as a plain dict; ``build_model({"name": "shi2019", **config})``."""
        return {
            "input_size": list(self.input_size),
            "channels": list(self.channels),
            "hidden_sizes": list(self.hidden_sizes),
            "dropout": self.dropout,
            "n_outputs": self.n_outputs,
            "in_channels": self.in_channels,
        }

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, feature_size={self.feature_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (N, n_outputs): ``sigmoid`` of the single logit is P(single).

        Parameters
        ----------
        x : Tensor, shape (N, in_channels, H, W), or (N, H, W) when ``in_channels == 1``
        """
        if x.ndim == 3 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}")
        return self.classifier(self.features(x))
